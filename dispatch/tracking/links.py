"""Tracking links: an unguessable, expiring token that lets anyone holding it watch one delivery.

A token reads ``wkt_<tenant uuid hex>_<secret>``: the tenant part routes the lookup to the
tenant's shard (as ``wkd_``/``wku_`` tokens do), the secret is 256 random bits
(``secrets.token_urlsafe(32)``). Only its SHA-256 is stored, in the tenant's
``tracking_links`` (migration 0013), with the delivery it shows. A token is shown once, in the
answer to the request that made it.

Validity is decided by the delivery, not by a stored expiry: a link works while its delivery
is not terminal and for ``grace_s`` (``WAKALA_TRACKING_LINK_GRACE_S``, default one hour) after
it became terminal (``delivered_at`` / ``cancelled_at`` / ``failed_at``). A revoked link is
refused like an unknown one.

Refusals are ``dispatch.core.errors.Refusal``s. A token the socket refuses is a
``LinkRefused`` carrying the websocket close code and reason it answers with: ``4401
invalid_token`` for anything malformed, unknown, revoked or of a tenant that does not exist
(one answer, so a guesser learns nothing), ``4410 expired_token`` once the grace is over. A
link that cannot be made is a 409 (``not_ready`` before the order's delivery exists,
``tracking_ended`` after the grace); an order that is not the caller's a 404.

Revoking (``revoke_order_links``: the order's customer or vendor over REST) sets
``revoked_at`` on every link of every delivery of the order, whoever made it: links carry no
maker, and a link sent to the wrong number is the order's problem, not one link's. Postgres
decides at once (``resolve_link`` reads it on every connection; tracking links are never
cached), and the token hashes go out on ``tracking:revocations`` so every engine's hub closes
the open sockets of those links (4401 ``revoked_token``). The publish repeats the hashes of
the order's links revoked before too: a retry after a failed publish (Redis away: 503) closes
what the first attempt could not, and revoking again is harmless.
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

from redis.asyncio import Redis

from dispatch.commerce.orders.lifecycle import OrderNotFound
from dispatch.core.errors import EXPIRED_TOKEN, INVALID_TOKEN, NOT_READY, TRACKING_ENDED, Refusal
from dispatch.core.ids import InvalidId, optional_uuid, parse_uuid
from dispatch.identity.auth import hash_token, token_pattern
from schema.db import TenantDatabase
from schema.errors import InvalidTenantId, TenantNotActive, UnknownTenant

__all__ = [
    "CLOSE_EXPIRED",
    "CLOSE_INVALID",
    "EXPIRED_TOKEN",
    "INVALID_TOKEN",
    "LINK_REVOCATIONS_CHANNEL",
    "IssuedLink",
    "LinkRefused",
    "TrackingLink",
    "issue_link",
    "link_expires_at",
    "parse_tracking_token",
    "resolve_link",
    "revoke_links",
    "revoke_order_links",
]

TOKEN_RE = token_pattern("wkt")
CLOSE_INVALID = 4401
CLOSE_EXPIRED = 4410   # with EXPIRED_TOKEN, "expired_token"
LINK_REVOCATIONS_CHANNEL = "tracking:revocations"   # payload: a revoked link's token hash

# The order's latest delivery, if the caller owns the order ($3 customer / $4 vendor; NULL:
# not checked) and its link would still be valid now (grace $5 seconds).
ISSUE_SQL = """
WITH target AS (
    SELECT d.id,
           coalesce(d.delivered_at, d.cancelled_at, d.failed_at,
                    CASE WHEN d.status IN ('delivered', 'failed', 'cancelled') THEN d.updated_at END) AS ended_at
    FROM orders o JOIN deliveries d ON d.order_id = o.id
    WHERE o.id = $1 AND ($3::uuid IS NULL OR o.customer_id = $3) AND ($4::uuid IS NULL OR o.vendor_id = $4)
    ORDER BY d.created_at DESC, d.id
    LIMIT 1
)
INSERT INTO tracking_links (delivery_id, token_hash)
SELECT id, $2 FROM target WHERE ended_at IS NULL OR ended_at + make_interval(secs => $5) > now()
RETURNING delivery_id
"""
# Why nothing was issued: the order is not the caller's, has no delivery yet, or ended.
WHY_NOT_SQL = """
SELECT (SELECT count(*) FROM deliveries d WHERE d.order_id = o.id) AS deliveries
FROM orders o
WHERE o.id = $1 AND ($2::uuid IS NULL OR o.customer_id = $2) AND ($3::uuid IS NULL OR o.vendor_id = $3)
"""
RESOLVE_SQL = """
SELECT l.id, l.delivery_id, l.revoked_at,
       coalesce(d.delivered_at, d.cancelled_at, d.failed_at,
                CASE WHEN d.status IN ('delivered', 'failed', 'cancelled') THEN d.updated_at END) AS ended_at
FROM tracking_links l JOIN deliveries d ON d.id = l.delivery_id
WHERE l.token_hash = $1
"""
# Revoke every live link of the order's deliveries if the caller owns the order ($2 customer /
# $3 vendor; NULL: not checked). found: 0 when the order is not the caller's; fresh: the hashes
# revoked now; earlier: those revoked before (published again, see the module's docstring).
REVOKE_ORDER_SQL = """
WITH target AS (
    SELECT o.id FROM orders o
    WHERE o.id = $1 AND ($2::uuid IS NULL OR o.customer_id = $2) AND ($3::uuid IS NULL OR o.vendor_id = $3)
), earlier AS (
    SELECT l.token_hash FROM tracking_links l JOIN deliveries d ON d.id = l.delivery_id
    WHERE d.order_id IN (SELECT id FROM target) AND l.revoked_at IS NOT NULL
), fresh AS (
    UPDATE tracking_links l SET revoked_at = now()
    FROM deliveries d
    WHERE d.id = l.delivery_id AND d.order_id IN (SELECT id FROM target) AND l.revoked_at IS NULL
    RETURNING l.token_hash
)
SELECT (SELECT count(*) FROM target) AS found,
       array(SELECT token_hash FROM fresh) AS fresh,
       array(SELECT token_hash FROM earlier) AS earlier
"""
REVOKE_SQL = """
UPDATE tracking_links SET revoked_at = now()
WHERE delivery_id = $1 AND revoked_at IS NULL
RETURNING token_hash
"""


class LinkRefused(Refusal):
    """The tracking socket refuses the token: ``code`` and ``reason`` are its close frame
    (status 401 for 4401, 410 for 4410, should an HTTP route ever answer one)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(410 if code == CLOSE_EXPIRED else 401, reason, f"{code} {reason}")
        self.code = code


@dataclass(frozen=True, slots=True)
class IssuedLink:
    token: str
    delivery_id: str

    @property
    def url(self) -> str:
        return f"/t/{self.token}"


@dataclass(frozen=True, slots=True)
class TrackingLink:
    """A valid link: what it shows, and until when (None: the delivery is still running)."""

    tenant_id: str
    delivery_id: str
    link_id: str
    token_hash: str
    expires_at: float | None


def parse_tracking_token(token: object) -> uuid.UUID:
    """The tenant a well-formed tracking token names; LinkRefused(4401) for anything else."""
    if not isinstance(token, str) or not (match := TOKEN_RE.match(token)):
        raise LinkRefused(CLOSE_INVALID, INVALID_TOKEN)
    return uuid.UUID(match.group(1))


def link_expires_at(ended_at: datetime | None, grace_s: float) -> float | None:
    """Epoch seconds after which a link of a delivery that ended at ``ended_at`` is refused;
    None while the delivery runs."""
    return None if ended_at is None else ended_at.timestamp() + grace_s


async def issue_link(db: TenantDatabase, tenant_id: object, order_id: object, *, grace_s: float,
                     customer_id: object | None = None, vendor_id: object | None = None) -> IssuedLink:
    """A new link to the order's delivery, for its customer (``customer_id``) or its vendor
    (``vendor_id``); neither: staff. OrderNotFound (404) when the order is not the caller's;
    a 409 ``Refusal`` before ``ready`` (no delivery yet) or after the grace."""
    try:
        oid = parse_uuid(str(order_id), "order_id")
    except InvalidId:
        raise OrderNotFound(order_id) from None
    placement = await db.placement(tenant_id)
    token = f"wkt_{placement.tenant_id.hex}_{secrets.token_urlsafe(32)}"
    customer = optional_uuid(None if customer_id is None else str(customer_id), "customer_id")
    vendor = optional_uuid(None if vendor_id is None else str(vendor_id), "vendor_id")
    async with db.tenant_transaction(placement.tenant_id) as tx:
        delivery_id = await tx.fetchval(ISSUE_SQL, oid, hash_token(token), customer, vendor, float(grace_s))
        if delivery_id is None:
            deliveries = await tx.fetchval(WHY_NOT_SQL, oid, customer, vendor)
            if deliveries is None:
                raise OrderNotFound(oid)
            if deliveries == 0:
                raise Refusal(409, NOT_READY, "the order has no delivery yet; a link can be made once it is ready")
            raise Refusal(409, TRACKING_ENDED, "the delivery ended too long ago to be tracked")
    return IssuedLink(token, str(delivery_id))


async def resolve_link(db: TenantDatabase, token: object, *, grace_s: float,
                       now: float | None = None) -> TrackingLink:
    """The link a token opens, or LinkRefused (4401 invalid_token / 4410 expired_token)."""
    tenant = parse_tracking_token(token)
    assert isinstance(token, str)
    token_hash = hash_token(token)
    try:
        async with db.tenant_transaction(tenant, readonly=True) as tx:
            row = await tx.fetchrow(RESOLVE_SQL, token_hash)
    except (UnknownTenant, InvalidTenantId, TenantNotActive):
        raise LinkRefused(CLOSE_INVALID, INVALID_TOKEN) from None
    if row is None or row["revoked_at"] is not None:
        raise LinkRefused(CLOSE_INVALID, INVALID_TOKEN)
    expires_at = link_expires_at(row["ended_at"], grace_s)
    if expires_at is not None and expires_at <= (time.time() if now is None else now):
        raise LinkRefused(CLOSE_EXPIRED, EXPIRED_TOKEN)
    return TrackingLink(str(tenant), str(row["delivery_id"]), str(row["id"]), token_hash, expires_at)


async def revoke_links(db: TenantDatabase, redis: Redis | None, tenant_id: object, delivery_id: object) -> int:
    """Revoke every live link of a delivery (a link sent to the wrong number); open tracking
    sockets of those links are closed by every engine (4401). Returns how many were live."""
    async with db.tenant_transaction(tenant_id) as tx:
        hashes = [r["token_hash"] for r in await tx.fetch(REVOKE_SQL, parse_uuid(str(delivery_id), "delivery_id"))]
    if redis is not None:
        for token_hash in hashes:
            await redis.publish(LINK_REVOCATIONS_CHANNEL, token_hash)
    return len(hashes)


async def revoke_order_links(db: TenantDatabase, redis: Redis | None, tenant_id: object, order_id: object, *,
                             customer_id: object | None = None, vendor_id: object | None = None) -> int:
    """Revoke every live link of the order's deliveries, for its customer (``customer_id``) or
    its vendor (``vendor_id``); neither: staff. Returns how many were live (0 when already
    revoked, or before any link was made). OrderNotFound (404) when the order is not the
    caller's. Every engine closes the open sockets of the order's revoked links."""
    try:
        oid = parse_uuid(str(order_id), "order_id")
    except InvalidId:
        raise OrderNotFound(order_id) from None
    customer = optional_uuid(None if customer_id is None else str(customer_id), "customer_id")
    vendor = optional_uuid(None if vendor_id is None else str(vendor_id), "vendor_id")
    async with db.tenant_transaction(tenant_id) as tx:
        row = await tx.fetchrow(REVOKE_ORDER_SQL, oid, customer, vendor)
    if not row["found"]:
        raise OrderNotFound(oid)
    if redis is not None:
        for token_hash in [*row["fresh"], *row["earlier"]]:
            await redis.publish(LINK_REVOCATIONS_CHANNEL, token_hash.strip())
    return len(row["fresh"])
