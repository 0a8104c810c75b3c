"""Per-driver bearer tokens: issued once, stored hashed in the tenant's auth_tokens, revocable, expiring.

A token reads ``wkd_<tenant uuid hex>_<secret>``: the tenant part routes the lookup to the
right shard without a global index; the secret (256 random bits) is what is checked, by its
SHA-256 (a slow password hash buys nothing against 256-bit secrets and would cost every
request). Verified tokens are cached per process for ``cache_ttl_s``; revocation publishes on
Redis so every gateway process drops the token at once, and the cache never outlives
``expires_at``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from redis.asyncio import Redis

from dispatch.core.errors import EXPIRED_TOKEN, REVOKED_TOKEN, UNKNOWN_TOKEN, Refusal
from dispatch.core.ids import InvalidId, parse_uuid
from schema.db import TenantDatabase
from schema.errors import InvalidTenantId, TenantNotActive, UnknownTenant, WakalaError

log = logging.getLogger(__name__)

TOKEN_RE = re.compile(r"^wkd_([0-9a-f]{32})_([A-Za-z0-9_-]{43})$")
REVOCATIONS_CHANNEL = "auth:revocations"

ISSUE_SQL = """
INSERT INTO auth_tokens (user_id, token_hash, token_type, expires_at, metadata)
SELECT d.user_id, $2, 'driver', now() + make_interval(secs => $3), jsonb_build_object('driver_id', d.id)
FROM drivers d WHERE d.id = $1 AND d.user_id IS NOT NULL AND d.status = 'active'
RETURNING id, expires_at
"""
VERIFY_SQL = """
SELECT t.id, t.expires_at, t.revoked_at, d.id AS driver_id, d.vehicle_type, d.has_cold_storage,
       d.status AS driver_status
FROM auth_tokens t
JOIN drivers d ON d.id = (t.metadata->>'driver_id')::uuid AND d.user_id = t.user_id
WHERE t.token_hash = $1 AND t.token_type = 'driver'
"""
REVOKE_SQL = """
UPDATE auth_tokens SET revoked_at = now()
WHERE id = $1 AND token_type = $2 AND revoked_at IS NULL
RETURNING token_hash
"""


class UnknownDriver(WakalaError):
    """No active driver with this id in this tenant."""


class TokenRejected(Refusal):
    """A bearer token refused (401): ``reason`` is unknown_token, revoked_token or
    expired_token. Its own type because every caller catches exactly this case: the gateway
    counts it, the API adds ``WWW-Authenticate``, the vendor socket closes 4401."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(401, reason, message)


@dataclass(frozen=True, slots=True)
class AuthDriver:
    tenant_id: str
    driver_id: str
    vehicle_type: str
    has_cold_storage: bool
    token_id: str
    token_hash: str
    expires_at: float


P = TypeVar("P")


@dataclass(frozen=True)
class IssuedToken:
    token: str
    token_id: uuid.UUID
    expires_at: datetime


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_token(token: object) -> uuid.UUID:
    """The tenant a well-formed token belongs to; TokenRejected for anything else."""
    if not isinstance(token, str) or not (match := TOKEN_RE.match(token)):
        raise TokenRejected(UNKNOWN_TOKEN, "the token is not a Wakala driver token")
    return uuid.UUID(match.group(1))


async def issue_driver_token(db: TenantDatabase, tenant_id: object, driver_id: object,
                             ttl_s: float = 30 * 86400) -> IssuedToken:
    if not 60 <= ttl_s <= 366 * 86400:
        raise WakalaError(f"token lifetime must be between 60 s and 366 days, got {ttl_s:g} s")
    try:
        did = parse_uuid(str(driver_id), "driver_id")
    except InvalidId:
        raise UnknownDriver(f"driver id is not a UUID: {str(driver_id)[:40]!r}") from None
    placement = await db.placement(tenant_id)
    token = f"wkd_{placement.tenant_id.hex}_{secrets.token_urlsafe(32)}"
    async with db.tenant_transaction(placement.tenant_id) as tx:
        row = await tx.fetchrow(ISSUE_SQL, did, hash_token(token), float(ttl_s))
    if row is None:
        raise UnknownDriver(f"no active driver {did} with a user account in tenant {placement.tenant_id}")
    return IssuedToken(token, row["id"], row["expires_at"])


async def revoke_token(db: TenantDatabase, redis: Redis | None, tenant_id: object, token_id: object,
                       token_type: str = "driver") -> bool:
    """Revoke a token (``driver`` or a user's ``access`` token) by id; True if it was live.
    Every process drops it immediately."""
    try:
        tid = parse_uuid(str(token_id), "token_id")
    except InvalidId:
        raise WakalaError(f"token id is not a UUID: {str(token_id)[:40]!r}") from None
    async with db.tenant_transaction(tenant_id) as tx:
        token_hash = await tx.fetchval(REVOKE_SQL, tid, token_type)
    if token_hash and redis is not None:
        await redis.publish(REVOCATIONS_CHANNEL, token_hash)
    return token_hash is not None


class TokenAuthenticator(Generic[P]):
    """Verifies one kind of bearer token against the tenant's shard, with a short per-process
    cache that revocations (published by any process) clear at once. Subclasses say how a
    token is parsed and looked up."""

    def __init__(self, db: TenantDatabase, redis: Redis, *, cache_ttl_s: float = 60.0,
                 negative_ttl_s: float = 2.0) -> None:
        self.db = db
        self.redis = redis
        self.cache_ttl_s = cache_ttl_s
        self.negative_ttl_s = negative_ttl_s
        self._cache: dict[str, tuple[float, P | TokenRejected]] = {}
        self._listener: asyncio.Task | None = None
        self._revoked_callbacks: list = []

    verify_sql: str              # one row by $1 = token hash: revoked_at, expires_at, the principal
    status_column: str           # the row's column that must read 'active'

    def parse(self, token: object) -> uuid.UUID:
        raise NotImplementedError

    def principal(self, tenant_id: uuid.UUID, token_hash: str, row) -> P:
        raise NotImplementedError

    async def _lookup(self, tenant_id: uuid.UUID, token_hash: str) -> P | TokenRejected:
        async with self.db.tenant_transaction(tenant_id, readonly=True) as tx:
            row = await tx.fetchrow(self.verify_sql, token_hash)
        if row is None or row[self.status_column] != "active":
            return TokenRejected(UNKNOWN_TOKEN, "the token is not valid")
        if row["revoked_at"] is not None:
            return TokenRejected(REVOKED_TOKEN, "the token was revoked")
        return self.principal(tenant_id, token_hash, row)

    def on_revoked(self, callback) -> None:
        """Call ``callback(token_hash)`` when any process revokes a token (to close its sockets)."""
        self._revoked_callbacks.append(callback)

    async def start(self) -> None:
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(REVOCATIONS_CHANNEL)
        self._listener = asyncio.create_task(self._listen(pubsub))

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener

    async def _listen(self, pubsub) -> None:
        try:
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                token_hash = message["data"].decode() if isinstance(message["data"], bytes) else message["data"]
                self._cache[token_hash] = (
                    time.monotonic() + self.cache_ttl_s,
                    TokenRejected(REVOKED_TOKEN, "the token was revoked"),
                )
                for callback in self._revoked_callbacks:
                    callback(token_hash)
        finally:
            await pubsub.aclose()

    async def verify(self, token: object) -> P:
        tenant_id = self.parse(token)
        assert isinstance(token, str)
        token_hash = hash_token(token)
        now_mono = time.monotonic()
        cached = self._cache.get(token_hash)
        if cached is not None and cached[0] > now_mono:
            result = cached[1]
        else:
            try:
                result = await self._lookup(tenant_id, token_hash)
            except (UnknownTenant, InvalidTenantId, TenantNotActive):
                result = TokenRejected(UNKNOWN_TOKEN, "the token is not valid")
            ttl = self.negative_ttl_s if isinstance(result, TokenRejected) else self.cache_ttl_s
            self._cache[token_hash] = (now_mono + ttl, result)
        if isinstance(result, TokenRejected):
            raise result.with_traceback(None)   # cached: do not grow one traceback per request
        if result.expires_at <= time.time():
            raise TokenRejected(EXPIRED_TOKEN, "the token has expired; ask for a new one")
        return result


class DriverAuthenticator(TokenAuthenticator[AuthDriver]):
    """Driver tokens (``wkd_...``): the gateway's websocket and HTTP ingest."""

    verify_sql = VERIFY_SQL
    status_column = "driver_status"

    def parse(self, token: object) -> uuid.UUID:
        return parse_token(token)

    def principal(self, tenant_id: uuid.UUID, token_hash: str, row) -> AuthDriver:
        return AuthDriver(
            tenant_id=str(tenant_id), driver_id=str(row["driver_id"]), vehicle_type=row["vehicle_type"],
            has_cold_storage=bool(row["has_cold_storage"]), token_id=str(row["id"]),
            token_hash=token_hash, expires_at=row["expires_at"].timestamp(),
        )
