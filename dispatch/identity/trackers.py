"""Tracker keys: how a GPS tracker or Traccar Client stands in for a driver's app.

The OsmAnd protocol has no header for a token: the device identifier travels in every request
(``id=...`` in the query, ``device_id`` in Traccar Client's JSON), often over plain HTTP on
carrier networks and in server logs. So a tracker gets a key of its own, never the driver's
app token: ``wkt_<tenant hex>_<256 random bits>``, stored hashed in ``auth_tokens`` with
``token_type = 'tracker'``, revocable like a token (``wakala driver token revoke --tracker``),
valid for a year by default (a tracker is set up once and left alone). The tenant part routes
the lookup to the shard, as for driver tokens. A leaked key lets someone report positions for
that one driver, nothing else: it is refused on every other route.

Verification is the driver tokens' own (``TokenAuthenticator``: cache, revocations from every
process, a budget of made-up keys per address), with its own lookup.
"""

from __future__ import annotations

import re
import secrets
import uuid

from dispatch.core.errors import UNKNOWN_TOKEN
from dispatch.core.ids import InvalidId, parse_uuid
from dispatch.identity.auth import (
    DriverAuthenticator,
    IssuedToken,
    TokenRejected,
    UnknownDriver,
    hash_token,
)
from schema.db import TenantDatabase
from schema.errors import WakalaError

__all__ = ["TRACKER_TTL_S", "TrackerAuthenticator", "issue_tracker_key", "parse_tracker_key"]

TRACKER_RE = re.compile(r"^wkt_([0-9a-f]{32})_([A-Za-z0-9_-]{43})$")
TRACKER_TTL_S = 366 * 86400
ISSUE_SQL = """
INSERT INTO auth_tokens (user_id, token_hash, token_type, expires_at, metadata)
SELECT d.user_id, $2, 'tracker', now() + make_interval(secs => $3), jsonb_build_object('driver_id', d.id)
FROM drivers d WHERE d.id = $1 AND d.user_id IS NOT NULL AND d.status = 'active'
RETURNING id, expires_at
"""
VERIFY_SQL = """
SELECT t.id, t.expires_at, t.revoked_at, d.id AS driver_id, d.vehicle_type, d.has_cold_storage,
       d.status AS driver_status, coalesce(d.metadata->>'location_tracking', '') = 'withdrawn' AS tracking_withdrawn
FROM auth_tokens t
JOIN drivers d ON d.id = (t.metadata->>'driver_id')::uuid AND d.user_id = t.user_id
WHERE t.token_hash = $1 AND t.token_type = 'tracker'
"""


def parse_tracker_key(key: object) -> uuid.UUID:
    """The tenant a well-formed tracker key belongs to; TokenRejected for anything else."""
    if not isinstance(key, str) or not (match := TRACKER_RE.match(key)):
        raise TokenRejected(UNKNOWN_TOKEN, "the device identifier is not a Wakala tracker key")
    return uuid.UUID(match.group(1))


async def issue_tracker_key(db: TenantDatabase, tenant_id: object, driver_id: object,
                            ttl_s: float = TRACKER_TTL_S) -> IssuedToken:
    """A new tracker key for an active driver with a user account (shown once; only its hash
    is stored). ``UnknownDriver`` otherwise."""
    if not 60 <= ttl_s <= 3 * 366 * 86400:
        raise WakalaError(f"tracker key lifetime must be between 60 s and 3 years, got {ttl_s:g} s")
    try:
        did = parse_uuid(str(driver_id), "driver_id")
    except InvalidId:
        raise UnknownDriver(f"driver id is not a UUID: {str(driver_id)[:40]!r}") from None
    placement = await db.placement(tenant_id)
    key = f"wkt_{placement.tenant_id.hex}_{secrets.token_urlsafe(32)}"
    async with db.tenant_transaction(placement.tenant_id) as tx:
        row = await tx.fetchrow(ISSUE_SQL, did, hash_token(key), float(ttl_s))
    if row is None:
        raise UnknownDriver(f"no active driver {did} with a user account in tenant {placement.tenant_id}")
    return IssuedToken(key, row["id"], row["expires_at"])


class TrackerAuthenticator(DriverAuthenticator):
    """Tracker keys (``wkt_...``): the OsmAnd route. Its principal is the driver's, so the
    pings it accepts are that driver's and nobody else's."""

    verify_sql = VERIFY_SQL

    def parse(self, token: object) -> uuid.UUID:
        return parse_tracker_key(token)
