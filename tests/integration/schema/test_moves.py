"""Tenant moves on the shared server (wal_level = replica, so the paused COPY method): what a
move copies and proves, how engines follow it, what is refused, abort, drain and rebalance.
The online method (logical replication, a private cluster) is in ``test_moves_online.py``."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import asyncpg
import pytest

from loadtest.tenant_data import fill_tenant, tenant_on_shard
from schema.checksums import checksums, differences
from schema.connect import connection
from schema.db import TenantDatabase
from schema.errors import InvalidTenantId, MoveError, TenantMoved, TenantPaused, UnknownTenant
from schema.moves import fence
from schema.moves.cleanup import cleanup_moves
from schema.moves.fleet import drain_shard, rebalance
from schema.moves.plan import MovePlan
from schema.moves.runner import MoveOptions, MoveResult, abort_move, move_tenant
from schema.tenants import create_tenant

OFFLINE = MoveOptions(offline=True)


async def _sums(settings, shard_id: int, schema_name: str):
    async with connection(settings.control.with_database(settings.shard_databases[shard_id])) as conn:
        return await checksums(conn, schema_name)


async def _schema_exists(settings, shard_id: int, schema_name: str) -> bool:
    async with connection(settings.control.with_database(settings.shard_databases[shard_id])) as conn:
        return bool(await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema_name))


async def _control(settings, sql: str, *args):
    async with connection(settings.control) as conn:
        return await conn.fetch(sql, *args)


async def _orders_seen_by_engine(db: TenantDatabase, tenant_id) -> int:
    async with db.tenant_transaction(tenant_id, readonly=True) as tx:
        return await tx.fetchval("SELECT count(*) FROM orders")


async def test_a_move_copies_every_row_proves_it_and_the_engine_follows(platform) -> None:
    tenant = await tenant_on_shard(platform, 0, "Mover")
    await fill_tenant(platform, tenant.id, 300)
    before = await _sums(platform, 0, tenant.schema_name)
    async with TenantDatabase(platform) as stale:
        assert await _orders_seen_by_engine(stale, tenant.id) == 300   # its placement: shard 0, cached
        result = await move_tenant(platform, tenant.id, 1, OFFLINE)
        assert isinstance(result, MoveResult) and result.status == "completed" and result.method == "copy"
        assert result.rows == sum(s.rows for s in before.values()) and result.pause_ms is not None
        assert differences(before, await _sums(platform, 1, tenant.schema_name)) == []
        # A process that did not hear of the move meets the fence, is told to retry, and then routes anew.
        with pytest.raises(TenantMoved):
            await _orders_seen_by_engine(stale, tenant.id)
        assert await _orders_seen_by_engine(stale, tenant.id) == 300
    [row] = await _control(platform, "SELECT shard_id, writes_paused_at FROM tenant_shard_mapping WHERE tenant_id = $1",
                           tenant.id)
    assert row["shard_id"] == 1 and row["writes_paused_at"] is None
    [move] = await _control(platform, "SELECT status, checksums, cleanup_after FROM tenant_migrations WHERE tenant_id = $1",
                            tenant.id)
    assert move["status"] == "completed" and move["cleanup_after"] is not None
    # The old schema is kept (fenced) until cleanup, then dropped.
    assert await _schema_exists(platform, 0, tenant.schema_name)
    async with connection(platform.control.with_database(platform.shard_databases[0])) as src:
        assert await fence.is_fenced(src, tenant.schema_name, platform.app_role)
    assert [c.schema_name for c in await cleanup_moves(platform, tenant.id)] == [tenant.schema_name]
    assert not await _schema_exists(platform, 0, tenant.schema_name)
    assert await cleanup_moves(platform, tenant.id) == []


async def test_an_engine_that_listens_routes_to_the_new_shard_without_an_error(platform) -> None:
    tenant = await tenant_on_shard(platform, 1, "Mover")
    await fill_tenant(platform, tenant.id, 20)
    async with TenantDatabase(platform) as db:
        watcher = asyncio.create_task(db.watch_placements(retry_s=0.1))
        try:
            for _ in range(100):
                if db.watching:
                    break
                await asyncio.sleep(0.02)
            assert db.watching
            assert await _orders_seen_by_engine(db, tenant.id) == 20
            await move_tenant(platform, tenant.id, 0, OFFLINE)
            await asyncio.sleep(0.2)   # the notification
            assert (await db.placement(tenant.id)).shard_id == 0
            assert await _orders_seen_by_engine(db, tenant.id) == 20
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)


async def test_transactions_wait_out_a_pause_and_give_up_with_503_when_it_lasts(platform) -> None:
    tenant = await tenant_on_shard(platform, 0, "Mover")
    async with TenantDatabase(platform) as db, connection(platform.control) as control:
        await fence.pause(control, tenant.id)
        db.forget_placement(tenant.id)
        db.pause_wait_s = 0.3
        with pytest.raises(TenantPaused):
            await _orders_seen_by_engine(db, tenant.id)
        db.pause_wait_s = 5.0
        waiting = asyncio.create_task(_orders_seen_by_engine(db, tenant.id))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await fence.unpause(control, tenant.id)
        assert await asyncio.wait_for(waiting, 3) == 0


async def test_bad_requests_are_refused_and_change_nothing(platform) -> None:
    tenant = await tenant_on_shard(platform, 0, "Mover")
    await _control(platform, "UPDATE shard_map SET status = 'retired' WHERE shard_id = 1")
    cases = [
        (UnknownTenant, uuid.uuid4(), 1),
        (InvalidTenantId, "not-a-uuid'; DROP TABLE tenants; --", 1),
        (MoveError, tenant.id, 0),        # the shard it is on
        (MoveError, tenant.id, 1),        # retired
        (MoveError, tenant.id, 99),       # no such shard
        (MoveError, tenant.id, -1),
    ]
    for error, who, target in cases:
        with pytest.raises(error):
            await move_tenant(platform, who, target, OFFLINE)
    await _control(platform, "UPDATE shard_map SET status = 'active' WHERE shard_id = 1")
    with pytest.raises(MoveError, match="wal_level"):
        await move_tenant(platform, tenant.id, 1)          # online needs logical replication here
    plan = await move_tenant(platform, tenant.id, 1, MoveOptions(dry_run=True))
    assert isinstance(plan, MovePlan) and plan.method == "copy" and plan.steps()
    assert await _control(platform, "SELECT 1 FROM tenant_migrations") == []
    assert not await _schema_exists(platform, 1, tenant.schema_name)
    with pytest.raises(MoveError, match="no unfinished move"):
        await abort_move(platform, tenant.id)


def _wakala(settings, *args: str, crash_after: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "WAKALA_CONTROL_DSN": settings.control.url(),
           "WAKALA_SHARD_DATABASES": ",".join(settings.shard_databases)}
    if crash_after:
        env["WAKALA_MOVE_CRASH_AFTER"] = crash_after
    return subprocess.run([sys.executable, "-m", "dispatch.cli", *args], env=env, capture_output=True,
                          text=True, timeout=120)


async def test_a_move_killed_after_the_fence_leaves_the_tenant_paused_and_abort_gives_it_back(platform) -> None:
    tenant = await tenant_on_shard(platform, 0, "Mover")
    await fill_tenant(platform, tenant.id, 50)
    before = await _sums(platform, 0, tenant.schema_name)
    crashed = _wakala(platform, "tenant", "move", str(tenant.id), "--to", "1", "--offline", crash_after="copying")
    assert crashed.returncode == -9, crashed.stderr
    # Killed mid-move: writes paused and the source fenced, nothing switched, no half state served.
    [row] = await _control(platform, "SELECT shard_id, writes_paused_at FROM tenant_shard_mapping WHERE tenant_id = $1",
                           tenant.id)
    assert row["shard_id"] == 0 and row["writes_paused_at"] is not None
    with pytest.raises(MoveError, match="unfinished move to shard 1"):
        await move_tenant(platform, tenant.id, 0, OFFLINE)
    aborted = _wakala(platform, "tenant", "move", str(tenant.id), "--abort")
    assert aborted.returncode == 0, aborted.stderr
    assert not await _schema_exists(platform, 1, tenant.schema_name)
    async with TenantDatabase(platform) as db:
        assert await _orders_seen_by_engine(db, tenant.id) == 50
    assert differences(before, await _sums(platform, 0, tenant.schema_name)) == []
    [move] = await _control(platform, "SELECT status, error_message FROM tenant_migrations WHERE tenant_id = $1",
                            tenant.id)
    assert move["status"] == "failed" and "aborted" in move["error_message"]


async def test_a_drain_empties_and_retires_a_shard_and_a_rebalance_spreads_tenants_again(platform) -> None:
    tenants = [await create_tenant(platform, f"Drained {i}") for i in range(4)]
    on_zero = [t for t in tenants if t.shard_id == 0]
    planned, _ = await drain_shard(platform, 0, MoveOptions(offline=True, dry_run=True))
    assert {m.tenant_id for m in planned} == {t.id for t in on_zero}
    assert (await _control(platform, "SELECT status FROM shard_map WHERE shard_id = 0"))[0]["status"] == "active"
    planned, results = await drain_shard(platform, 0, OFFLINE)
    assert len(results) == len(on_zero) and all(r.status == "completed" for r in results)
    rows = await _control(platform, "SELECT shard_id, count(*) AS n FROM tenant_shard_mapping GROUP BY shard_id")
    assert {r["shard_id"]: r["n"] for r in rows} == {1: 4}
    assert (await _control(platform, "SELECT status FROM shard_map WHERE shard_id = 0"))[0]["status"] == "retired"
    with pytest.raises(MoveError, match="retired already"):
        await drain_shard(platform, 0, OFFLINE)
    await cleanup_moves(platform)   # nothing is due yet (grace period)
    await _control(platform, "UPDATE shard_map SET status = 'active' WHERE shard_id = 0")
    planned, results = await rebalance(platform, OFFLINE)
    assert len(planned) == 2 and all(m.target == 0 for m in planned)
    rows = await _control(platform, "SELECT shard_id, count(*) AS n FROM tenant_shard_mapping GROUP BY shard_id")
    assert {r["shard_id"]: r["n"] for r in rows} == {0: 2, 1: 2}
    assert (await rebalance(platform, OFFLINE))[0] == []
    async with TenantDatabase(platform) as db:
        for t in tenants:
            assert await _orders_seen_by_engine(db, t.id) == 0


async def test_the_fence_stops_a_writer_that_queued_behind_it(platform) -> None:
    """A writer that never heard of the pause and waits on the move's locks fails when they go:
    it never writes into the schema that nobody will read again."""
    tenant = await tenant_on_shard(platform, 0, "Mover")
    shard0 = platform.control.with_database(platform.shard_databases[0])
    app = shard0.with_user(platform.app_role, platform.app_password)
    async with connection(shard0) as owner:
        tables = [r["relname"] for r in await owner.fetch(
            "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND relkind IN ('r', 'p') AND NOT relispartition", tenant.schema_name)]
        holder = await asyncpg.connect(shard0.url())
        try:
            await holder.execute("BEGIN")
            await holder.execute(f'LOCK TABLE "{tenant.schema_name}".categories IN ROW EXCLUSIVE MODE')
            fencing = asyncio.create_task(fence.fence(owner, tenant.schema_name, tables, platform.app_role,
                                                      lock_timeout_s=5))
            await asyncio.sleep(fence.DRAIN_WAIT_S + 0.3)   # the writers-in-flight wait ends; the locks queue
            writer = await asyncpg.connect(app.url())
            try:
                await writer.execute("BEGIN")
                await writer.execute(f"SELECT set_config('search_path', '\"{tenant.schema_name}\", public', true), "
                                     f"set_config('app.current_tenant_id', '{tenant.id}', true)")
                write = asyncio.create_task(writer.execute("INSERT INTO categories (name, slug) VALUES ('late', 'late')"))
                await asyncio.sleep(0.2)
                assert not write.done() and not fencing.done()
                await holder.execute("COMMIT")        # the write in flight ends; the fence goes through
                await asyncio.wait_for(fencing, 5)
                with pytest.raises((asyncpg.InsufficientPrivilegeError, asyncpg.UndefinedTableError)):
                    await asyncio.wait_for(write, 5)
            finally:
                await writer.close()
        finally:
            await holder.close()
        assert await owner.fetchval(f'SELECT count(*) FROM "{tenant.schema_name}".categories') == 0  # noqa: S608


async def test_a_restore_is_refused_while_the_tenant_is_moving(platform, tmp_path) -> None:
    from schema.backups import BackupSettings, backup_tenant, restore
    from schema.backups.errors import RestoreRefused

    tenant = await tenant_on_shard(platform, 0, "Mover")
    await fill_tenant(platform, tenant.id, 10)
    backups = BackupSettings.from_env({"WAKALA_BACKUP_DIR": str(tmp_path), "WAKALA_BACKUP_KEY": "a" * 64})
    taken = await backup_tenant(platform, backups, tenant.id)
    crashed = _wakala(platform, "tenant", "move", str(tenant.id), "--to", "1", "--offline", crash_after="preparing")
    assert crashed.returncode == -9, crashed.stderr
    with pytest.raises(RestoreRefused, match="being moved"):
        await restore(platform, backups, str(taken.backup_id), replace=True)
    assert (await abort_move(platform, tenant.id)).startswith("aborted")
    async with TenantDatabase(platform) as db:
        assert await _orders_seen_by_engine(db, tenant.id) == 10


async def test_an_offline_move_killed_after_its_copy_committed_is_redone_not_doubled(platform) -> None:
    tenant = await tenant_on_shard(platform, 0, "Mover")
    await fill_tenant(platform, tenant.id, 40)
    before = await _sums(platform, 0, tenant.schema_name)
    crashed = _wakala(platform, "tenant", "move", str(tenant.id), "--to", "1", "--offline", crash_after="copying")
    assert crashed.returncode == -9, crashed.stderr
    rerun = _wakala(platform, "tenant", "move", str(tenant.id), "--to", "1", "--offline")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert differences(before, await _sums(platform, 1, tenant.schema_name)) == []
    async with TenantDatabase(platform) as db:
        assert await _orders_seen_by_engine(db, tenant.id) == 40
