"""Online tenant moves by logical replication, on a private PostgreSQL cluster with
``wal_level = logical`` (the shared server runs with ``replica`` and is never restarted).

The first test is the move an operator does on a live engine: orders placed and drivers
pinging through the engine for the moving tenant and for another tenant while the move
copies, catches up, pauses and switches. The second kills the move with SIGKILL at every
step and reruns it: each run ends where an uninterrupted move ends.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace

import asyncpg
import orjson
import pytest

from dispatch.identity.auth import issue_driver_token
from dispatch.identity.drivers import NewDriver, create_driver
from dispatch.ops.postgres_cluster import private_postgres
from loadtest.orders import OrdersBench, populate_bench_tenant
from loadtest.orders_load import TRANSPORT_ERRORS, ApiConnection, order_body
from loadtest.tenant_data import fill_tenant, tenant_on_shard
from schema.checksums import checksums, differences
from schema.connect import connection
from schema.db import TenantDatabase
from schema.migrate import migrate
from schema.moves.cleanup import cleanup_moves
from schema.moves.plan import replication_name
from schema.moves.runner import MoveOptions, MoveResult, move_tenant
from schema.settings import DSN, PostgresSettings
from tests.integration.engine_helpers import running_app
from tests.integration.gateway.support import ping

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
async def logical(_redis_leftovers) -> AsyncIterator[PostgresSettings]:
    """A control plane and two shards migrated on a private cluster with logical replication."""
    async with private_postgres(logical=True) as cluster:
        settings = replace(PostgresSettings.from_env(), control=DSN.parse(cluster.dsn("wakala_control")),
                           shard_databases=("wakala_shard_0", "wakala_shard_1"))
        await migrate(settings)
        yield settings
        await _redis_leftovers.note_ids_in(settings)


def _shard(settings, shard_id: int) -> DSN:
    return settings.control.with_database(settings.shard_databases[shard_id])


async def _replication_leftovers(settings, name: str) -> list[str]:
    found = []
    for shard_id in (0, 1):
        async with connection(_shard(settings, shard_id)) as conn:
            for what, sql in (("publication", "SELECT 1 FROM pg_publication WHERE pubname = $1"),
                              ("subscription", "SELECT 1 FROM pg_subscription WHERE subname = $1"),
                              ("slot", "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1")):
                if await conn.fetchval(sql, name):
                    found.append(f"{what} on shard {shard_id}")
    return found


async def test_a_tenant_moves_while_orders_and_pings_flow_and_nothing_is_lost(logical, stream_settings) -> None:
    mover = await tenant_on_shard(logical, 0, "Moving Spaza")
    other = await tenant_on_shard(logical, 0, "Staying Spaza")
    bench = OrdersBench(customers=10, products=20)
    async with TenantDatabase(logical) as db:
        shops = {t.id: await populate_bench_tenant(db, t, bench) for t in (mover, other)}
        driver = await create_driver(db, mover.id, NewDriver("Thabo", "Mover", "+27721234567", "LIC-MOVE-1",
                                                             "motorbike", "GP 123-456"))
        driver_token = (await issue_driver_token(db, mover.id, driver, ttl_s=3600)).token
    await fill_tenant(logical, mover.id, 3000)

    acknowledged: dict[uuid.UUID, list[str]] = {mover.id: [], other.id: []}
    refused: dict[uuid.UUID, Counter] = {mover.id: Counter(), other.id: Counter()}
    pings: Counter = Counter()
    stop = asyncio.Event()

    async def place_orders(tenant_id, seed: int, port: int) -> None:
        rng, conn, shop = random.Random(seed), ApiConnection(port), shops[tenant_id]
        try:
            while not stop.is_set():
                body = orjson.dumps(order_body(shop, rng))
                try:
                    answer = await conn.post("/v1/orders", body, {"Authorization": f"Bearer {rng.choice(shop.tokens)}"})
                except TRANSPORT_ERRORS as exc:
                    refused[tenant_id][type(exc).__name__] += 1
                    continue
                if answer.status == 201:
                    acknowledged[tenant_id].append(answer.json["id"])
                else:
                    refused[tenant_id][f"{answer.status} {answer.reason()}"] += 1
        finally:
            conn.close()

    async def ping_along(port: int) -> None:
        conn = ApiConnection(port)
        try:
            while not stop.is_set():
                body = orjson.dumps({"pings": [ping(driver)]})
                answer = await conn.post("/v1/drivers/locations", body, {"Authorization": f"Bearer {driver_token}"})
                pings[answer.status] += 1
                await asyncio.sleep(0.05)
        finally:
            conn.close()

    async with running_app(logical, stream_settings, max_pending_orders=1_000_000, ping_rate_limit=100_000) as (addr, _state):
        port = int(addr.split(":")[1])
        load = [asyncio.create_task(place_orders(mover.id, i, port)) for i in range(3)]
        load += [asyncio.create_task(place_orders(other.id, 10 + i, port)) for i in range(2)]
        load.append(asyncio.create_task(ping_along(port)))
        await asyncio.sleep(1.0)
        try:
            result = await move_tenant(logical, mover.id, 1, MoveOptions())
            await asyncio.sleep(1.0)   # and on, on the new shard
        finally:
            stop.set()
            await asyncio.gather(*load)
    assert isinstance(result, MoveResult) and result.status == "completed" and result.method == "logical"
    print(f"\nmoved {result.rows} rows in {result.copy_seconds:.2f} s; catch-up lag {result.catchup_lag_bytes} B; "
          f"write pause {result.pause_ms:.0f} ms; orders acknowledged: mover {len(acknowledged[mover.id])}, "
          f"other {len(acknowledged[other.id])}; mover refused {dict(refused[mover.id])}; pings {dict(pings)}")
    assert result.pause_ms is not None and result.pause_ms > 0
    # The other tenant saw no error at all; the mover at most 503s (retry), pings were taken.
    assert refused[other.id] == Counter() and len(acknowledged[other.id]) > 0
    assert set(refused[mover.id]) <= {"503 unavailable"}, refused[mover.id]
    assert set(pings) <= {202, 503} and pings[202] > 0, pings
    # Every acknowledged order of the mover is on the new shard, whole.
    async with connection(_shard(logical, 1)) as target:
        schema = f'"{mover.schema_name}"'
        found = {str(r["id"]) for r in await target.fetch(
            f"SELECT id FROM {schema}.orders WHERE id = ANY($1::uuid[])", acknowledged[mover.id])}  # noqa: S608
        assert found == set(acknowledged[mover.id]) and len(found) > 0
        orphans = (f"SELECT count(*) FROM {schema}.orders o WHERE NOT EXISTS "  # noqa: S608 - a schema name
                   f"(SELECT 1 FROM {schema}.order_items i WHERE i.order_id = o.id)")
        assert await target.fetchval(orphans) == 0
    assert await _replication_leftovers(logical, replication_name(result.move_id)) == []
    # The old schema goes at cleanup, and only then.
    async with connection(_shard(logical, 0)) as source:
        assert await source.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", mover.schema_name)
        await cleanup_moves(logical, mover.id)
        assert not await source.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", mover.schema_name)


def _wakala(settings, *args: str, crash_after: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "WAKALA_CONTROL_DSN": settings.control.url(),
           "WAKALA_SHARD_DATABASES": ",".join(settings.shard_databases)}
    env.pop("WAKALA_MOVE_CRASH_AFTER", None)
    if crash_after:
        env["WAKALA_MOVE_CRASH_AFTER"] = crash_after
    return subprocess.run([sys.executable, "-m", "dispatch.cli", *args], env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("point", ["started", "preparing", "copying", "catching_up", "fenced", "switched"])
async def test_a_move_killed_at_any_step_ends_the_same_when_rerun(logical, point: str) -> None:
    tenant = await tenant_on_shard(logical, 0, f"Crash {point}")
    await fill_tenant(logical, tenant.id, 200)
    async with connection(_shard(logical, 0)) as source:
        before = await checksums(source, tenant.schema_name)
    started = time.monotonic()
    crashed = _wakala(logical, "tenant", "move", str(tenant.id), "--to", "1", crash_after=point)
    assert crashed.returncode == -9, crashed.stdout + crashed.stderr
    rerun = _wakala(logical, "tenant", "move", str(tenant.id), "--to", "1")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    print(f"\nkilled after {point}, rerun done in {time.monotonic() - started:.1f} s")
    async with connection(logical.control) as control:
        [move] = await control.fetch("SELECT id, status FROM tenant_migrations WHERE tenant_id = $1", tenant.id)
        mapping = await control.fetchrow("SELECT shard_id, writes_paused_at FROM tenant_shard_mapping "
                                         "WHERE tenant_id = $1", tenant.id)
    assert move["status"] == "completed"
    assert mapping["shard_id"] == 1 and mapping["writes_paused_at"] is None
    async with connection(_shard(logical, 1)) as target:
        assert differences(before, await checksums(target, tenant.schema_name)) == []
    assert await _replication_leftovers(logical, replication_name(move["id"])) == []
    async with TenantDatabase(logical) as db, db.tenant_transaction(tenant.id, readonly=True) as tx:
        assert await tx.fetchval("SELECT count(*) FROM orders") == 200
    async with connection(_shard(logical, 0)) as source:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            app = await asyncpg.connect(_shard(logical, 0).with_user(logical.app_role, logical.app_password).url())
            try:
                await app.fetchval(f'SELECT count(*) FROM "{tenant.schema_name}".orders')  # noqa: S608
            finally:
                await app.close()
        assert await source.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", tenant.schema_name)
