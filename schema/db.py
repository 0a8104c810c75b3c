"""The engine's one way into tenant data: per-shard pools and ``tenant_transaction``.

The engine connects as the application role (owns nothing, no BYPASSRLS). Each
``tenant_transaction`` routes to the tenant's shard and sets ``search_path`` and
``app.current_tenant_id`` with ``set_config(..., true)``: both die with the transaction, so a
connection handed to the next user (by our pool or by PgBouncer in transaction mode) carries
nothing over. With ``WAKALA_PGBOUNCER=1`` prepared-statement caching is off, exactly as
PgBouncer in transaction mode needs.

Round trips are the cost of a short transaction (placing an order is a dozen statements of
well under a millisecond each), so a transaction spends none it does not need:

* ``BEGIN`` and the two ``set_config`` calls go in one simple-query message (asyncpg's
  ``Connection.transaction()`` would send ``BEGIN`` alone first). The values are inlined as
  quoted literals: the schema name is the control plane's ``tenant_<hex>`` and the tenant a
  parsed UUID, and both are quoted anyway (``_literal``).
* Pools do not run asyncpg's session reset (``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN
  *; RESET ALL``) on every release: nothing here leaves session state behind. Every setting
  is transaction-local, advisory locks are ``_xact_`` locks, LISTEN runs on its own
  connections (the outbox relay's), no cursor outlives its transaction. ``_release`` only
  rolls back a connection still inside a transaction, which a cancelled caller can leave.
  The reset's query used to be a health check too: a connection whose ``BEGIN``, ``COMMIT``
  or ``ROLLBACK`` failed or was cancelled may still have a statement in flight, so
  ``tenant_transaction`` terminates it instead of handing it back (the pool opens another).
  A connection whose session ended while it sat idle in the pool fails at ``BEGIN``, before
  anything was done: it is terminated and one more is tried (``_begun``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg

from schema.errors import (
    DatabaseUnavailable,
    ShardError,
    TenantMoved,
    TenantNotActive,
    TenantPaused,
    UnknownTenant,
)
from schema.moves.fence import NOTIFY_CHANNEL
from schema.settings import DSN, PostgresSettings
from schema.tenants import parse_tenant_id

PLACEMENT_SQL = """
SELECT m.shard_id, m.schema_name, t.status, s.host, s.port, s.database_name,
       m.writes_paused_at IS NOT NULL AS paused
FROM tenant_shard_mapping m
JOIN tenants t ON t.id = m.tenant_id
JOIN shard_map s ON s.shard_id = m.shard_id
WHERE m.tenant_id = $1
"""
ACTIVE_TENANTS_SQL = """
SELECT t.id FROM tenants t JOIN tenant_shard_mapping m ON m.tenant_id = t.id
WHERE t.status = 'active' ORDER BY t.created_at, t.id
"""
SHARD_ADDRESSES_SQL = """
SELECT host, port, database_name FROM shard_map ORDER BY shard_id
"""
SET_TENANT_SQL = """
SELECT set_config('search_path', $1, true), set_config('app.current_tenant_id', $2, true)
"""
# One message: the transaction begins and is scoped to the tenant (see the module docstring).
BEGIN_TENANT_SQL = ("BEGIN{mode}; SELECT set_config('search_path', {path}, true), "
                    "set_config('app.current_tenant_id', {tenant}, true)")
PLACEMENT_TTL_S = 30.0
UNKNOWN_TTL_S = 5.0             # "no such tenant" remembered this long (a tenant created since waits as long)
UNKNOWN_MAX = 10_000            # guessed tenant ids remembered at most (least recently asked out first)
CONTROL_ACQUIRE_TIMEOUT_S = 5.0
# A pooled connection that fails at BEGIN like this lost its session while idle (see _begun).
_STALE_AT_BEGIN = (asyncpg.exceptions._base.InternalClientError, asyncpg.PostgresConnectionError,
                   asyncpg.InterfaceError, asyncpg.OperatorInterventionError)
PAUSE_WAIT_S = 4.0              # a transaction of a tenant whose move is switching waits this long, then 503
PAUSE_POLL_S = 0.1              # how often a waiting transaction asks again (a notification wakes it sooner)
# What a statement of the application role meets in a schema fenced off by a move: no USAGE,
# so its tables, functions and types are not found (or, qualified, not permitted); or the
# move's locks, when a writer in flight deadlocks with them and PostgreSQL picks the writer.
_FENCED = (asyncpg.InsufficientPrivilegeError, asyncpg.UndefinedTableError, asyncpg.UndefinedFunctionError,
           asyncpg.UndefinedObjectError, asyncpg.InvalidSchemaNameError, asyncpg.DeadlockDetectedError,
           asyncpg.LockNotAvailableError)
# A control-plane query that fails with these means the server is gone or going: unavailable.
_CONTROL_DOWN = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                 asyncpg.OperatorInterventionError)


def _literal(text: str) -> str:
    """A PostgreSQL string literal (standard_conforming_strings: quotes doubled, no escapes)."""
    if "\0" in text:
        raise ValueError("a NUL cannot be in a PostgreSQL literal")
    return "'" + text.replace("'", "''") + "'"


def begin_tenant_sql(schema_name: str, tenant_id: uuid.UUID, *, readonly: bool = False) -> str:
    """The one message that begins a transaction scoped to a tenant's schema and rows."""
    path = '"' + schema_name.replace('"', '""') + '", public'
    return BEGIN_TENANT_SQL.format(mode=" READ ONLY" if readonly else "", path=_literal(path),
                                   tenant=_literal(str(tenant_id)))


async def _release(conn: asyncpg.Connection) -> None:
    """The pools' reset: only a connection left inside a transaction needs anything (a
    ROLLBACK); there is no session state to clear (see the module docstring). A connection
    that cannot roll back is terminated here, quietly: the pool replaces it, and an error
    raised from a release would hide the caller's own."""
    if conn.is_closed() or not conn.is_in_transaction():
        return
    try:
        await conn.execute("ROLLBACK")
    except Exception:   # noqa: BLE001 - see the docstring
        conn.terminate()


async def _ended_or_dropped(conn: asyncpg.Connection, sql: str) -> None:
    """Run ``BEGIN ...`` or ``COMMIT``; if that fails or is cancelled the connection's state is
    unknown (a statement may still be in flight), so it is terminated before the error goes
    on, and the pool opens a fresh one. The pools' release runs no query that would notice
    (``_release``), so this is where a half-used connection is kept out of the pool."""
    try:
        await conn.execute(sql)
    except BaseException:
        with contextlib.suppress(Exception):
            conn.terminate()
        raise


async def _begun(pool: asyncpg.Pool, begin: str) -> asyncpg.Connection:
    """A pooled connection inside ``BEGIN``. A connection whose session the server ended
    while it sat idle in the pool (``pg_terminate_backend``, a restart) can be handed out
    before asyncpg has seen the socket close; it fails at ``BEGIN``, before anything was
    done, so it is dropped (``_ended_or_dropped`` terminates it) and one more is tried. Any
    other failure, or a second one, is the caller's."""
    for attempt in range(2):
        conn = await pool.acquire()
        try:
            await _ended_or_dropped(conn, begin)
            return conn
        except _STALE_AT_BEGIN:
            await pool.release(conn)
            if attempt:
                raise
        except BaseException:
            await pool.release(conn)
            raise
    raise AssertionError("unreachable")


async def _roll_back(conn: asyncpg.Connection) -> None:
    """Roll back after the caller's exception, which stays the one raised: a rollback that
    fails (the server ended the session, so the pool has already taken the connection back)
    terminates the connection instead of replacing what the caller sees with its own error.
    Only a cancellation arriving during the rollback is raised in its place."""
    try:
        await conn.execute("ROLLBACK")
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            conn.terminate()
        raise
    except Exception:   # noqa: BLE001 - the caller's exception is the one that matters
        with contextlib.suppress(Exception):
            conn.terminate()   # a connection in an unknown state never goes back to the pool


@dataclass(frozen=True)
class Placement:
    tenant_id: uuid.UUID
    shard_id: int
    schema_name: str
    status: str
    shard: DSN
    fetched_at: float
    paused: bool = False

    @functools.cached_property
    def begin_write(self) -> str:
        return begin_tenant_sql(self.schema_name, self.tenant_id)

    @functools.cached_property
    def begin_read(self) -> str:
        return begin_tenant_sql(self.schema_name, self.tenant_id, readonly=True)


@dataclass
class ShardPools:
    write: asyncpg.Pool
    read: asyncpg.Pool


class TenantDatabase:
    """Pools per shard (read and write) and tenant-scoped transactions.

    The control plane is asked where a tenant lives at most once per ``PLACEMENT_TTL_S`` per
    tenant; ids that name no tenant (anyone can put a made-up id in a token) are remembered
    as unknown for ``unknown_ttl_s``, at most ``unknown_max`` of them, so repeating one costs
    nothing. Concurrent lookups of one tenant share one query (a fleet reconnecting after a
    restart asks for the same few tenants thousands of times at once). The control pool is
    small, so waiting for it is bounded by ``control_acquire_timeout_s``: past that the
    caller gets ``DatabaseUnavailable`` (retry later) instead of queueing behind a flood.
    """

    def __init__(self, settings: PostgresSettings, *, unknown_ttl_s: float = UNKNOWN_TTL_S,
                 unknown_max: int = UNKNOWN_MAX,
                 control_acquire_timeout_s: float = CONTROL_ACQUIRE_TIMEOUT_S) -> None:
        self.settings = settings
        self._control: asyncpg.Pool | None = None
        self._pools: dict[int, ShardPools] = {}
        self._placements: dict[uuid.UUID, Placement] = {}
        self._unknown: OrderedDict[uuid.UUID, float] = OrderedDict()   # tenant id -> when forgotten
        self._lookups: dict[uuid.UUID, asyncio.Task[Placement]] = {}
        self.unknown_ttl_s = unknown_ttl_s
        self.unknown_max = unknown_max
        self.control_acquire_timeout_s = control_acquire_timeout_s
        self.pause_wait_s = PAUSE_WAIT_S
        self._placement_changed = asyncio.Event()
        self.watching = False
        self._pool_lock = asyncio.Lock()

    def _app_dsn(self, dsn: DSN) -> DSN:
        return dsn.with_user(self.settings.app_role, self.settings.app_password)

    async def _create_pool(self, dsn: DSN, size: int) -> asyncpg.Pool:
        kwargs: dict = {
            "min_size": min(2, size),
            "max_size": size,
            "timeout": self.settings.connect_timeout_s,
            "command_timeout": 60,
            "reset": _release,
        }
        if self.settings.pgbouncer:
            kwargs.update(statement_cache_size=0)
        try:
            return await asyncpg.create_pool(self._app_dsn(dsn).url(), **kwargs)
        except (TimeoutError, OSError) as exc:
            raise DatabaseUnavailable(
                f"PostgreSQL at {dsn.host}:{dsn.port}/{dsn.database} does not answer ({exc}); "
                "run `wakala services up`"
            ) from None
        except asyncpg.InvalidCatalogNameError:
            raise DatabaseUnavailable(
                f"database {dsn.database!r} does not exist; run `wakala migrate`"
            ) from None

    async def start(self) -> None:
        if self._control is None:
            async with self._pool_lock:   # concurrent first uses make one pool, not several
                if self._control is None:
                    self._control = await self._create_pool(self.settings.control, 2)

    def pool_stats(self) -> list[tuple[int, str, int, int]]:
        """(shard id, 'write' or 'read', connections open, idle) of every pool (for metrics)."""
        return [(shard_id, kind, pool.get_size(), pool.get_idle_size())
                for shard_id, pools in list(self._pools.items())
                for kind, pool in (("write", pools.write), ("read", pools.read))]

    async def close(self) -> None:
        pools = [p for sp in self._pools.values() for p in (sp.write, sp.read)]
        if self._control is not None:
            pools.append(self._control)
        self._pools.clear()
        self._control = None
        await asyncio.gather(*(p.close() for p in pools))

    async def __aenter__(self) -> TenantDatabase:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def placement(self, tenant_id: object) -> Placement:
        """Where a tenant lives, from ``tenant_shard_mapping`` (cached briefly; unknown ids
        too). UnknownTenant if none; DatabaseUnavailable if the control plane cannot answer."""
        tid = parse_tenant_id(tenant_id)
        cached = self._placements.get(tid)
        now = time.monotonic()
        if cached is not None and now - cached.fetched_at < PLACEMENT_TTL_S:
            return cached
        until = self._unknown.get(tid)
        if until is not None:
            if until > now:
                raise UnknownTenant(f"no tenant {tid} is registered; see `wakala tenant list`")
            del self._unknown[tid]
        lookup = self._lookups.get(tid)
        if lookup is None:
            lookup = self._lookups[tid] = asyncio.ensure_future(self._fetch_placement(tid))
            lookup.add_done_callback(lambda done: self._lookup_done(tid, done))
        try:
            # Shielded: one caller giving up (a client hanging up) does not cancel the others' answer.
            return await asyncio.shield(lookup)
        except DatabaseUnavailable:
            if cached is not None:   # a known tenant keeps working on its last placement meanwhile
                return cached
            raise

    def _lookup_done(self, tid: uuid.UUID, done: asyncio.Task[Placement]) -> None:
        if self._lookups.get(tid) is done:
            del self._lookups[tid]
        if not done.cancelled():
            done.exception()   # retrieved: every waiter may have gone

    async def _control_fetchrow(self, sql: str, *args: object) -> asyncpg.Record | None:
        return (await self._control_fetch(sql, *args, one=True))[0]

    async def _control_fetch(self, sql: str, *args: object, one: bool = False) -> list:
        await self.start()
        assert self._control is not None
        try:
            async with self._control.acquire(timeout=self.control_acquire_timeout_s) as conn:
                return [await conn.fetchrow(sql, *args)] if one else await conn.fetch(sql, *args)
        except TimeoutError:
            raise DatabaseUnavailable(
                f"the control database gave no connection or answer within {self.control_acquire_timeout_s:g} s "
                "(busy or down); retry later") from None
        except _CONTROL_DOWN as exc:
            raise DatabaseUnavailable(f"the control database does not answer ({type(exc).__name__}); "
                                      "retry later") from None

    async def _fetch_placement(self, tid: uuid.UUID) -> Placement:
        row = await self._control_fetchrow(PLACEMENT_SQL, tid)
        if row is None:
            self._placements.pop(tid, None)
            if self.unknown_ttl_s > 0:
                self._unknown[tid] = time.monotonic() + self.unknown_ttl_s
                self._unknown.move_to_end(tid)
                while len(self._unknown) > self.unknown_max:
                    self._unknown.popitem(last=False)
            raise UnknownTenant(f"no tenant {tid} is registered; see `wakala tenant list`")
        placement = Placement(
            tid, row["shard_id"], row["schema_name"], row["status"],
            DSN(row["host"], row["port"], self.settings.control.user, row["database_name"],
                self.settings.control.password),
            time.monotonic(), row["paused"],
        )
        self._placements[tid] = placement
        return placement

    async def _wait_unpaused(self, placement: Placement) -> Placement:
        """Hold a transaction while the tenant's move switches shards (``writes_paused_at``):
        ask again every ``PAUSE_POLL_S`` or when a placement notification arrives, and give
        up after ``pause_wait_s`` with TenantPaused (503, retry)."""
        deadline = time.monotonic() + self.pause_wait_s
        while placement.paused:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TenantPaused(f"tenant {placement.tenant_id} is switching shards; retry in a second")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._placement_changed.wait(), min(PAUSE_POLL_S, remaining))
            self.forget_placement(placement.tenant_id)
            placement = await self.placement(placement.tenant_id)
        return placement

    async def _moved_away(self, placement: Placement) -> bool:
        """After a statement failed as a fenced schema fails: is the tenant really moving or
        moved (then the caller hears TenantMoved), or is it a plain error of the statement?"""
        self.forget_placement(placement.tenant_id)
        try:
            now = await self.placement(placement.tenant_id)
        except DatabaseUnavailable:
            return False
        return now.paused or now.shard_id != placement.shard_id

    def _on_placement_notice(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            self.forget_placement(uuid.UUID(payload))
        except ValueError:
            self._placements.clear()   # not ours to parse: forgetting everything is always safe
        self._placement_changed.set()
        self._placement_changed = asyncio.Event()

    async def watch_placements(self, *, retry_s: float = 1.0) -> None:
        """LISTEN for placement changes (a move pausing or switching a tenant) on the control
        database, as the application role, and forget the cached placement at once: engine
        processes route to a tenant's new shard within a round trip of the switch, not a
        cache TTL later. Runs until cancelled; a lost connection is reopened after
        ``retry_s``, and every placement is forgotten then (notices may have been missed)."""
        while True:
            try:
                conn = await asyncpg.connect(self._app_dsn(self.settings.control).url(),
                                             timeout=self.settings.connect_timeout_s)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await asyncio.sleep(retry_s)
                continue
            try:
                closed = asyncio.Event()
                conn.add_termination_listener(lambda _c, closed=closed: closed.set())
                await conn.add_listener(NOTIFY_CHANNEL, self._on_placement_notice)
                self._placements.clear()
                self.watching = True
                await closed.wait()
            finally:
                self.watching = False
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 2)
            await asyncio.sleep(retry_s)

    def forget_placement(self, tenant_id: uuid.UUID) -> None:
        """Drop a cached placement, or a cached "unknown" (after a tenant moved, changed
        status or was created): the next use asks the control plane."""
        self._placements.pop(tenant_id, None)
        self._unknown.pop(tenant_id, None)

    async def control_fetch(self, sql: str, *args: object) -> list:
        """A query on the control database through the engine's control pool (application
        role; what it may read and write there is what its grants allow)."""
        return await self._control_fetch(sql, *args)

    async def ping(self) -> None:
        """``select 1`` through the control pool (readiness; the caller bounds the wait)."""
        await self._control_fetch("SELECT 1")

    async def shard_addresses(self) -> list[tuple[str, int, str]]:
        """(host, port, database) of every shard, read as the application role through the
        control pool (for the outbox relays' LISTEN connections)."""
        return [(r["host"], r["port"], r["database_name"]) for r in await self._control_fetch(SHARD_ADDRESSES_SQL)]

    async def active_tenant_ids(self) -> list[uuid.UUID]:
        """Every active tenant, oldest first, read as the application role through the
        control pool (the engine needs no owner connection to list its tenants)."""
        return [row["id"] for row in await self._control_fetch(ACTIVE_TENANTS_SQL)]

    async def _shard_pools(self, placement: Placement) -> ShardPools:
        pools = self._pools.get(placement.shard_id)
        if pools is not None:
            return pools
        async with self._pool_lock:
            pools = self._pools.get(placement.shard_id)
            if pools is None:
                write = await self._create_pool(placement.shard, self.settings.write_pool_size)
                read = await self._create_pool(placement.shard, self.settings.read_pool_size)
                pools = self._pools[placement.shard_id] = ShardPools(write, read)
        return pools

    @contextlib.asynccontextmanager
    async def tenant_transaction(
        self, tenant_id: object, *, readonly: bool = False
    ) -> AsyncIterator[asyncpg.Connection]:
        """A transaction on the tenant's shard that sees and writes that tenant's rows only.

        Raises InvalidTenantId (not a UUID), UnknownTenant, TenantNotActive before touching a
        shard. Read-only transactions use the read pool (replicas, when shard_map grows them).
        """
        placement = await self.placement(tenant_id)
        if placement.paused:
            placement = await self._wait_unpaused(placement)
        if placement.status != "active":
            raise TenantNotActive(f"tenant {placement.tenant_id} is {placement.status}, not active")
        pools = await self._shard_pools(placement)
        pool = pools.read if readonly else pools.write
        if pool is None:
            raise ShardError(f"shard {placement.shard_id} has no pool")
        begin = placement.begin_read if readonly else placement.begin_write
        conn = await _begun(pool, begin)
        try:
            try:
                yield conn
            except BaseException as exc:
                await _roll_back(conn)
                if isinstance(exc, _FENCED) and await self._moved_away(placement):
                    raise TenantMoved(f"tenant {placement.tenant_id} is moving or has moved off shard "
                                      f"{placement.shard_id}; retry") from exc
                raise
            await _ended_or_dropped(conn, "COMMIT")
        finally:
            await pool.release(conn)
