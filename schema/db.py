"""The engine's one way into tenant data: per-shard pools and ``tenant_transaction``.

The engine connects as the application role (owns nothing, no BYPASSRLS). Each
``tenant_transaction`` routes to the tenant's shard and sets ``search_path`` and
``app.current_tenant_id`` with ``set_config(..., true)``: both die with the transaction, so a
connection handed to the next user (by our pool or by PgBouncer in transaction mode) carries
nothing over. With ``WAKALA_PGBOUNCER=1`` prepared-statement caching is off and the pool does
no session reset, exactly as PgBouncer would behave.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg

from schema.errors import DatabaseUnavailable, ShardError, TenantNotActive, UnknownTenant
from schema.settings import DSN, PostgresSettings
from schema.tenants import parse_tenant_id

PLACEMENT_SQL = """
SELECT m.shard_id, m.schema_name, t.status, s.host, s.port, s.database_name
FROM tenant_shard_mapping m
JOIN tenants t ON t.id = m.tenant_id
JOIN shard_map s ON s.shard_id = m.shard_id
WHERE m.tenant_id = $1
"""
SET_TENANT_SQL = """
SELECT set_config('search_path', $1, true), set_config('app.current_tenant_id', $2, true)
"""
PLACEMENT_TTL_S = 30.0


@dataclass(frozen=True)
class Placement:
    tenant_id: uuid.UUID
    shard_id: int
    schema_name: str
    status: str
    shard: DSN
    fetched_at: float


@dataclass
class ShardPools:
    write: asyncpg.Pool
    read: asyncpg.Pool


async def _no_reset(conn: asyncpg.Connection) -> None:
    """PgBouncer in transaction mode does not reset sessions; neither do we in that mode."""


class TenantDatabase:
    """Pools per shard (read and write) and tenant-scoped transactions."""

    def __init__(self, settings: PostgresSettings) -> None:
        self.settings = settings
        self._control: asyncpg.Pool | None = None
        self._pools: dict[int, ShardPools] = {}
        self._placements: dict[uuid.UUID, Placement] = {}
        self._pool_lock = asyncio.Lock()

    def _app_dsn(self, dsn: DSN) -> DSN:
        return dsn.with_user(self.settings.app_role, self.settings.app_password)

    async def _create_pool(self, dsn: DSN, size: int) -> asyncpg.Pool:
        kwargs: dict = {
            "min_size": min(2, size),
            "max_size": size,
            "timeout": self.settings.connect_timeout_s,
            "command_timeout": 60,
        }
        if self.settings.pgbouncer:
            kwargs.update(statement_cache_size=0, reset=_no_reset)
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
            self._control = await self._create_pool(self.settings.control, 2)

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
        """Where a tenant lives, from ``tenant_shard_mapping`` (cached briefly)."""
        tid = parse_tenant_id(tenant_id)
        cached = self._placements.get(tid)
        if cached is not None and time.monotonic() - cached.fetched_at < PLACEMENT_TTL_S:
            return cached
        await self.start()
        assert self._control is not None
        row = await self._control.fetchrow(PLACEMENT_SQL, tid)
        if row is None:
            self._placements.pop(tid, None)
            raise UnknownTenant(f"no tenant {tid} is registered; see `wakala tenant list`")
        placement = Placement(
            tid, row["shard_id"], row["schema_name"], row["status"],
            DSN(row["host"], row["port"], self.settings.control.user, row["database_name"],
                self.settings.control.password),
            time.monotonic(),
        )
        self._placements[tid] = placement
        return placement

    def forget_placement(self, tenant_id: uuid.UUID) -> None:
        """Drop a cached placement (after a tenant moved or changed status)."""
        self._placements.pop(tenant_id, None)

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
        if placement.status != "active":
            raise TenantNotActive(f"tenant {placement.tenant_id} is {placement.status}, not active")
        pools = await self._shard_pools(placement)
        pool = pools.read if readonly else pools.write
        if pool is None:
            raise ShardError(f"shard {placement.shard_id} has no pool")
        async with pool.acquire() as conn, conn.transaction(readonly=readonly):
            await conn.execute(
                SET_TENANT_SQL, f'"{placement.schema_name}", public', str(placement.tenant_id)
            )
            yield conn
