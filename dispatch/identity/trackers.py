"""Tracker keys: how a GPS tracker or Traccar Client stands in for a driver's app.

The OsmAnd protocol has no header for a token: the device identifier travels in every request
(``id=...`` in the query, ``device_id`` in Traccar Client's JSON), often over plain HTTP on
carrier networks and in server logs. So a tracker gets a key of its own, never the driver's
app token: ``wkg_<tenant hex>_<256 random bits>``, stored hashed in ``auth_tokens`` with
``token_type = 'tracker'``, revocable like a token (``wakala driver token revoke --tracker``),
valid for a year by default (a tracker is set up once and left alone). The tenant part routes
the lookup to the shard, as for driver tokens. A leaked key lets someone report positions for
that one driver, nothing else: it is refused on every other route.

Verification is the driver tokens' own (``TokenAuthenticator``: cache, revocations from every
process, a budget of made-up keys per address), with its own lookup.
"""

from __future__ import annotations

import uuid

from dispatch.core.errors import UNKNOWN_TOKEN
from dispatch.identity.auth import (
    TOKEN_PREFIX,
    VERIFY_SQL_OF,
    DriverAuthenticator,
    IssuedToken,
    TokenRejected,
    issue_driver_token,
    token_pattern,
)
from schema.db import TenantDatabase

__all__ = ["TRACKER_TTL_S", "TrackerAuthenticator", "issue_tracker_key", "parse_tracker_key"]

TRACKER_RE = token_pattern(TOKEN_PREFIX["tracker"])
TRACKER_TTL_S = 366 * 86400   # the longest any token lives
VERIFY_SQL = VERIFY_SQL_OF.format(token_type="tracker")


def parse_tracker_key(key: object) -> uuid.UUID:
    """The tenant a well-formed tracker key belongs to; TokenRejected for anything else."""
    if not isinstance(key, str) or not (match := TRACKER_RE.match(key)):
        raise TokenRejected(UNKNOWN_TOKEN, "the device identifier is not a Wakala tracker key")
    return uuid.UUID(match.group(1))


async def issue_tracker_key(db: TenantDatabase, tenant_id: object, driver_id: object,
                            ttl_s: float = TRACKER_TTL_S) -> IssuedToken:
    """A new tracker key for an active driver with a user account (shown once; only its hash
    is stored). ``UnknownDriver`` otherwise."""
    return await issue_driver_token(db, tenant_id, driver_id, ttl_s, token_type="tracker")


class TrackerAuthenticator(DriverAuthenticator):
    """Tracker keys (``wkg_...``, g for GPS device; ``wkt_`` is a tracking link): the OsmAnd
    route. Its principal is the driver's, so the pings it accepts are that driver's and nobody
    else's."""

    verify_sql = VERIFY_SQL

    def parse(self, token: object) -> uuid.UUID:
        return parse_tracker_key(token)
