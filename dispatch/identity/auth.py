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
from typing import Generic, Protocol, TypeVar

from redis.asyncio import Redis

from dispatch.core.errors import EXPIRED_TOKEN, RATE_LIMITED, REVOKED_TOKEN, UNKNOWN_TOKEN, Refusal
from dispatch.core.ids import InvalidId, parse_uuid
from dispatch.core.settings import EdgeSettings
from dispatch.web.failures import FailureLimiter
from dispatch.web.ttlcache import TTLCache
from schema.db import TenantDatabase
from schema.errors import InvalidTenantId, TenantNotActive, UnknownTenant, WakalaError

log = logging.getLogger(__name__)


def token_pattern(prefix: str) -> re.Pattern[str]:
    """Every kind of token's shape: ``<prefix>_<tenant uuid hex>_<43 base64url characters>``
    (``wkd`` driver app, ``wkg`` tracker, ``wku`` user, ``wkt`` tracking link). Group 1 is the
    tenant, which routes the lookup to its shard."""
    return re.compile(rf"^{prefix}_([0-9a-f]{{32}})_([A-Za-z0-9_-]{{43}})$")


TOKEN_RE = token_pattern("wkd")
REVOCATIONS_CHANNEL = "auth:revocations"
# On the same channel, ``refresh:<hash>``: the token stays valid but what it stands for changed
# (a driver withdrew or gave consent to location tracking); processes forget the cached
# principal and close that token's sockets so the app reconnects and is verified afresh.
REFRESH_PREFIX = "refresh:"
RECONNECT_MIN_S = 0.1
RECONNECT_MAX_S = 5.0

# A driver's app token and a tracker key (``dispatch.identity.trackers``) differ only in their
# token_type and prefix: one statement each, made from these.
ISSUE_SQL_OF = """
INSERT INTO auth_tokens (user_id, token_hash, token_type, expires_at, metadata)
SELECT d.user_id, $2, '{token_type}', now() + make_interval(secs => $3), jsonb_build_object('driver_id', d.id)
FROM drivers d WHERE d.id = $1 AND d.user_id IS NOT NULL AND d.status = 'active'
RETURNING id, expires_at
"""
VERIFY_SQL_OF = """
SELECT t.id, t.expires_at, t.revoked_at, d.id AS driver_id, d.vehicle_type, d.has_cold_storage,
       d.status AS driver_status, coalesce(d.metadata->>'location_tracking', '') = 'withdrawn' AS tracking_withdrawn
FROM auth_tokens t
JOIN drivers d ON d.id = (t.metadata->>'driver_id')::uuid AND d.user_id = t.user_id
WHERE t.token_hash = $1 AND t.token_type = '{token_type}'
"""
TOKEN_PREFIX = {"driver": "wkd", "tracker": "wkg"}
ISSUE_SQL = {kind: ISSUE_SQL_OF.format(token_type=kind) for kind in TOKEN_PREFIX}
VERIFY_SQL = VERIFY_SQL_OF.format(token_type="driver")
LIVE_DRIVER_TOKENS_SQL = """
SELECT token_hash FROM auth_tokens
WHERE token_type IN ('driver', 'tracker') AND (metadata->>'driver_id')::uuid = $1 AND revoked_at IS NULL
  AND expires_at > now()
"""
REVOKED_AMONG_SQL = """
SELECT token_hash FROM auth_tokens WHERE token_hash = ANY($1::text[]) AND revoked_at IS NOT NULL
"""
REVOKE_SQL = """
UPDATE auth_tokens SET revoked_at = now()
WHERE id = $1 AND token_type = $2 AND revoked_at IS NULL
RETURNING token_hash
"""


_REFUSAL_TEXT = {UNKNOWN_TOKEN: "the token is not valid", REVOKED_TOKEN: "the token was revoked"}


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
    tracking_withdrawn: bool = False      # the driver withdrew consent to location tracking


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
                             ttl_s: float = 30 * 86400, *, token_type: str = "driver") -> IssuedToken:
    """A new app token (or, with ``token_type="tracker"``, a tracker key) for an active driver
    with a user account; shown once, only its hash is stored. ``UnknownDriver`` otherwise."""
    if not 60 <= ttl_s <= 366 * 86400:
        raise WakalaError(f"token lifetime must be between 60 s and 366 days, got {ttl_s:g} s")
    try:
        did = parse_uuid(str(driver_id), "driver_id")
    except InvalidId:
        raise UnknownDriver(f"driver id is not a UUID: {str(driver_id)[:40]!r}") from None
    placement = await db.placement(tenant_id)
    token = f"{TOKEN_PREFIX[token_type]}_{placement.tenant_id.hex}_{secrets.token_urlsafe(32)}"
    async with db.tenant_transaction(placement.tenant_id) as tx:
        row = await tx.fetchrow(ISSUE_SQL[token_type], did, hash_token(token), float(ttl_s))
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
        await _publish_revocation(redis, token_hash)
    return token_hash is not None


async def refresh_driver_tokens(db: TenantDatabase, redis: Redis | None, tenant_id: object,
                                driver_id: object) -> int:
    """Tell every process to forget what it cached for the driver's live tokens (and close
    their sockets) so their next use reads the driver afresh; the number of tokens."""
    did = parse_uuid(str(driver_id), "driver_id")
    async with db.tenant_transaction(tenant_id, readonly=True) as tx:
        hashes = [r["token_hash"] for r in await tx.fetch(LIVE_DRIVER_TOKENS_SQL, did)]
    if redis is not None:
        for token_hash in hashes:
            await _publish_revocation(redis, REFRESH_PREFIX + token_hash)
    return len(hashes)


async def _publish_revocation(redis: Redis, token_hash: str) -> None:
    """Tell every process; the revocation is committed already, so a Redis error here is not
    the caller's failure. One retry covers a pooled connection that a Redis restart left
    dead; past that the token fails every new verification once caches expire (and a
    listener that lost Redis too re-checks its tokens in use when it reconnects)."""
    for attempt in (1, 2):
        try:
            await redis.publish(REVOCATIONS_CHANNEL, token_hash)
            return
        except Exception as exc:  # noqa: BLE001 - after the commit nothing may turn into an error
            if attempt == 2:
                log.warning("revocation committed but not published (%s): new verifications refuse "
                            "the token once caches expire; sockets already open with it stay open", exc)


class AuthThrottled(TokenRejected):
    """Too many refused tokens from one client address lately: 429 ``rate_limited`` with
    ``Retry-After``, answered before any lookup. A ``TokenRejected`` so that every caller that
    already turns a bad token away does the same here; its ``status`` and ``headers`` say 429."""

    def __init__(self, retry_after_s: int) -> None:
        Refusal.__init__(self, 429, RATE_LIMITED,
                         f"too many refused tokens from this address; retry in {retry_after_s} s",
                         headers={"Retry-After": str(retry_after_s)})


class Expiring(Protocol):
    expires_at: float   # Unix seconds


def expires_in(principal: Expiring, now: float | None = None) -> float:
    """Seconds until a verified principal's token expires (negative once it has): what a
    socket holder waits on to close a connection whose token runs out while it is open."""
    return principal.expires_at - (time.time() if now is None else now)


class TokenAuthenticator(Generic[P]):
    """Verifies one kind of bearer token against the tenant's shard, with a short per-process
    cache that revocations (published by any process) clear at once. Subclasses say how a
    token is parsed and looked up.

    Everything a client can make this remember is bounded: verified tokens in an LRU of
    ``cache_max`` entries for ``cache_ttl_s``; refusals in a separate, smaller LRU for only
    ``negative_ttl_s`` (a flood of made-up tokens cannot push real ones out, and a token
    issued a moment after a refusal works at once). With ``failures`` (one per process,
    shared by the authenticators) a client address past its refusal budget is answered 429
    before any cache or database lookup; ``verify`` counts refusals only when told the
    ``client``.

    Only ``unknown_token`` refusals count against an address: that is what made-up tokens
    earn, while an expired or revoked token was once real (a driver's app retrying with a
    stale token behind a carrier's shared address must not lock out its neighbours).

    The revocation listener outlives Redis errors: it reconnects with backoff and, because a
    revocation published while it was away is lost, forgets every verified token then (each
    is looked up again on its next use) and re-checks the tokens verified lately and not yet
    expired (one query per tenant), calling ``on_revoked`` for those revoked meanwhile."""

    def __init__(self, db: TenantDatabase, redis: Redis, *, cache_ttl_s: float = 60.0,
                 negative_ttl_s: float = 2.0, cache_max: int = 100_000, refused_max: int = 10_000,
                 failures: FailureLimiter | None = None) -> None:
        self.db = db
        self.redis = redis
        self.cache_ttl_s = cache_ttl_s
        self.negative_ttl_s = negative_ttl_s
        self.failures = failures
        self._verified: TTLCache[str, P] = TTLCache(cache_max, cache_ttl_s)
        self._refused: TTLCache[str, str] = TTLCache(min(refused_max, cache_max), negative_ttl_s)
        # Tokens verified lately and not expired (hash -> tenant), kept until they expire: after a
        # Redis outage these are checked for revocations that were missed. Only verified tokens
        # get here, so no client can fill it with made-up ones.
        self._live: TTLCache[str, uuid.UUID] = TTLCache(cache_max, cache_ttl_s)
        self._announced: TTLCache[str, bool] = TTLCache(cache_max, cache_ttl_s)
        self._rechecks: set[asyncio.Task] = set()
        self._listener: asyncio.Task | None = None
        self._revoked_callbacks: list = []
        self._refreshed_callbacks: list = []
        self.subscriptions = 0          # successful (re)subscriptions to the revocation channel
        self._subscribed = asyncio.Condition()

    @classmethod
    def from_settings(cls, db: TenantDatabase, redis: Redis, engine: EdgeSettings,
                      failures: FailureLimiter | None = None) -> TokenAuthenticator[P]:
        """An authenticator with the engine's cache and refusal limits; pass one ``failures``
        to every authenticator of a process so a client's refusals count once."""
        if failures is None:
            failures = FailureLimiter(engine.auth_failure_limit, engine.auth_failure_window_s)
        return cls(db, redis, cache_ttl_s=engine.token_cache_s, cache_max=engine.token_cache_max,
                   failures=failures)

    verify_sql: str              # one row by $1 = token hash: revoked_at, expires_at, the principal
    status_column: str           # the row's column that must read 'active'

    def parse(self, token: object) -> uuid.UUID:
        raise NotImplementedError

    def principal(self, tenant_id: uuid.UUID, token_hash: str, row) -> P:
        raise NotImplementedError

    def cached(self) -> tuple[int, int]:
        """How many verified and refused tokens this process holds (both bounded)."""
        return len(self._verified), len(self._refused)

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

    def on_refreshed(self, callback) -> None:
        """Call ``callback(token_hash)`` when any process says a token's principal changed."""
        self._refreshed_callbacks.append(callback)

    async def start(self) -> None:
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(REVOCATIONS_CHANNEL)
        await self._now_subscribed(pubsub, again=False)
        self._listener = asyncio.create_task(self._listen(pubsub))

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        for task in list(self._rechecks):
            task.cancel()
        await asyncio.gather(*self._rechecks, return_exceptions=True)

    async def wait_subscribed(self, count: int) -> None:
        """Until the revocation channel has been subscribed ``count`` times (1 = started)."""
        async with self._subscribed:
            await self._subscribed.wait_for(lambda: self.subscriptions >= count)

    async def _now_subscribed(self, pubsub, *, again: bool) -> None:
        if again:
            log.warning("revocation channel subscribed again; tokens in use will be checked again")
            self._missed_revocations()
        if pubsub.connection is not None:
            # redis-py may reconnect (and resubscribe) inside listen() without raising: hear of it.
            pubsub.connection.register_connect_callback(self._on_reconnect)
        async with self._subscribed:
            self.subscriptions += 1
            self._subscribed.notify_all()

    def _on_reconnect(self, connection) -> None:
        self._missed_revocations()

    def _missed_revocations(self) -> None:
        """Revocations published while the subscription was down are lost; the database has
        them (a revocation commits before it is published). Forget every verified token so
        each is looked up again, and look up the tokens in use now to tell ``on_revoked``
        about the ones revoked meanwhile (their sockets close as if the message had come)."""
        self._verified.clear()
        if self._live:
            task = asyncio.create_task(self._recheck_live())
            self._rechecks.add(task)
            task.add_done_callback(self._rechecks.discard)

    async def _recheck_live(self) -> None:
        by_tenant: dict[uuid.UUID, list[str]] = {}
        for token_hash, tenant_id in self._live.items():
            by_tenant.setdefault(tenant_id, []).append(token_hash)
        for tenant_id, hashes in by_tenant.items():
            try:
                async with self.db.tenant_transaction(tenant_id, readonly=True) as tx:
                    revoked = await tx.fetch(REVOKED_AMONG_SQL, hashes)
            except Exception:  # noqa: BLE001 - one tenant's failure does not stop the others' check
                log.exception("re-checking tenant %s's tokens after a Redis reconnect failed", tenant_id)
                continue
            for row in revoked:
                self._revoked(row["token_hash"])

    async def _close(self, pubsub) -> None:
        if pubsub.connection is not None:   # the connection goes back to the pool: not ours to hear
            pubsub.connection.deregister_connect_callback(self._on_reconnect)
        with contextlib.suppress(Exception):
            await pubsub.aclose()

    def _revoked(self, token_hash: str) -> None:
        # Told once per revocation: a re-check after a reconnect that read the database before
        # the message arrived would otherwise tell the callbacks a second time. (Not keyed on
        # ``_refused``: a verification may have found the revocation first, and its sockets
        # still have to close.)
        if self._announced.get(token_hash) is not None:
            return
        self._announced.set(token_hash, True)
        self._verified.pop(token_hash)
        self._live.pop(token_hash)
        self._refused.set(token_hash, REVOKED_TOKEN, self.cache_ttl_s)
        for callback in self._revoked_callbacks:
            callback(token_hash)

    def _refreshed(self, token_hash: str) -> None:
        self._verified.pop(token_hash)
        for callback in self._refreshed_callbacks:
            callback(token_hash)

    async def _listen(self, pubsub) -> None:
        delay = RECONNECT_MIN_S
        try:
            while True:
                try:
                    if pubsub is None:
                        pubsub = self.redis.pubsub()
                        await pubsub.subscribe(REVOCATIONS_CHANNEL)
                        await self._now_subscribed(pubsub, again=True)
                    delay = RECONNECT_MIN_S
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            data = message["data"]
                            text = data.decode() if isinstance(data, bytes) else data
                            if text.startswith(REFRESH_PREFIX):
                                self._refreshed(text[len(REFRESH_PREFIX):])
                            else:
                                self._revoked(text)
                    raise ConnectionError("the revocation subscription ended")
                except Exception as exc:  # noqa: BLE001 - any error: the listener must outlive it
                    log.warning("revocation listener lost Redis (%s); retrying in %.1f s", exc, delay)
                if pubsub is not None:
                    await self._close(pubsub)
                pubsub = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
        finally:
            if pubsub is not None:
                await self._close(pubsub)

    async def verify(self, token: object, client: str | None = None) -> P:
        """The principal of a live token, or ``TokenRejected`` (401; 429 ``AuthThrottled``
        when ``client``, the caller's address, has had too many refusals lately). Without
        ``client`` nothing is counted or throttled (callers that know no address)."""
        if client is not None and self.failures is not None:
            retry_after = self.failures.retry_after(client)
            if retry_after is not None:
                raise AuthThrottled(retry_after)
        try:
            return await self._verify(token)
        except TokenRejected as exc:
            if client is not None and self.failures is not None and exc.reason == UNKNOWN_TOKEN:
                self.failures.failed(client)
            raise

    async def _verify(self, token: object) -> P:
        tenant_id = self.parse(token)
        assert isinstance(token, str)
        token_hash = hash_token(token)
        reason = self._refused.get(token_hash)
        result = None if reason is not None else self._verified.get(token_hash)
        if reason is None and result is None:
            try:
                looked_up = await self._lookup(tenant_id, token_hash)
            except (UnknownTenant, InvalidTenantId, TenantNotActive):
                looked_up = TokenRejected(UNKNOWN_TOKEN, "the token is not valid")
            if isinstance(looked_up, TokenRejected):
                reason = looked_up.reason
                self._refused.set(token_hash, reason)
            elif (reason := self._refused.get(token_hash)) is None:   # not revoked meanwhile
                result = looked_up
                self._verified.set(token_hash, result)
                self._live.set(token_hash, tenant_id, result.expires_at - time.time())
        if reason is not None:
            raise TokenRejected(reason, _REFUSAL_TEXT[reason])
        assert result is not None
        if result.expires_at <= time.time():
            self._verified.pop(token_hash)
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
            tracking_withdrawn=bool(row["tracking_withdrawn"]),
        )
