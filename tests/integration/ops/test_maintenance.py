"""The maintenance loop across engine processes: one round at a time, retention once when due."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from dispatch.ops.maintenance import maintenance_round, run_maintenance
from schema.connect import connection
from schema.retention.policies import RetentionSettings
from schema.tenants import create_tenant

# Twenty old rows in batches of two with a pause: a retention run lasts well over a second.
SLOW = RetentionSettings(jitter_s=0.0, batch_size=2, pause_s=0.1, lock_timeout_ms=500,
                         statement_timeout_ms=10_000)


async def _tenant_with_old_messages(settings, n=20):
    tenant = await create_tenant(settings, "Maintained Spaza")
    shard = settings.control.with_database(settings.shard_databases[tenant.shard_id])
    async with connection(shard) as conn, conn.transaction():
        await conn.execute("SELECT set_config('search_path', $1, true), "
                           "set_config('app.current_tenant_id', $2, true)",
                           f"{tenant.schema_name}, public", str(tenant.id))
        await conn.executemany(
            "INSERT INTO whatsapp_messages (message_id, conversation_id, from_number, to_number,"
            " direction, type, content, created_at) VALUES ($1, 'c', '+27820000001', '+27820000002',"
            " 'inbound', 'text', '{}', $2)",
            [(f"m{i}", datetime.now(UTC) - timedelta(days=400)) for i in range(n)])
    return tenant


async def _runs(settings):
    async with connection(settings.control) as conn:
        return await conn.fetch("SELECT * FROM retention_runs ORDER BY started_at")


async def _deleted(settings, table):
    async with connection(settings.control) as conn:
        return await conn.fetchval(
            "SELECT coalesce(sum(deleted_count), 0) FROM data_deletion_log WHERE table_name = $1", table)


async def test_two_rounds_at_once_one_runs_and_the_other_skips(platform):
    await _tenant_with_old_messages(platform)

    first, second = await asyncio.gather(
        maintenance_round(platform, SLOW, retention=True),
        maintenance_round(platform, SLOW, retention=True))

    assert sorted([first.ran, second.ran]) == [False, True]
    ran = first if first.ran else second
    assert ran.retention is not None and ran.retention.deleted == 20
    assert len(await _runs(platform)) == 1


async def test_two_engine_loops_run_retention_once_and_the_other_skips_its_round(platform, caplog):
    await _tenant_with_old_messages(platform)
    caplog.set_level(logging.INFO, logger="dispatch.ops.maintenance")

    loops = [asyncio.create_task(run_maintenance(platform, interval_s=0.2, retention=True, backups=None,
                                                 retention_settings=SLOW, first_after_s=0)) for _ in range(2)]
    try:
        for _ in range(200):
            runs = await _runs(platform)
            if runs and runs[0]["status"] == "completed":
                break
            await asyncio.sleep(0.1)
        # both loops go round a few more times: until a round has found retention not due (a
        # round also samples every database and so takes a while on a busy machine)
        for _ in range(300):
            if any("retention not due" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.1)
    finally:
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)

    runs = await _runs(platform)
    assert [r["status"] for r in runs] == ["completed"]     # once: the next rounds found it not due
    assert await _deleted(platform, "whatsapp_messages") == 20
    messages = [r.getMessage() for r in caplog.records]
    assert any("skipped: another engine process" in m for m in messages)
    assert any("retention not due" in m for m in messages)
    assert all(not loop.done() or loop.cancelled() for loop in loops)


async def test_retention_runs_again_once_its_interval_has_passed(platform):
    await _tenant_with_old_messages(platform, n=3)
    fast = RetentionSettings(jitter_s=0.0, pause_s=0.0)

    assert (await maintenance_round(platform, fast, retention=True)).retention is not None
    assert (await maintenance_round(platform, fast, retention=True)).retention is None
    assert (await maintenance_round(platform, RetentionSettings(interval_s=0.0), retention=True)).retention
    assert (await maintenance_round(platform, fast, retention=False)).retention is None
    assert len(await _runs(platform)) == 2


async def test_a_round_creates_the_analytics_months_ahead(platform):
    tenant = await create_tenant(platform, "Ahead Spaza")
    result = await maintenance_round(platform, RetentionSettings(partitions_ahead=6), retention=False)
    assert result.ran and result.partitions_created >= 3
    month = datetime.now(UTC).replace(day=1)
    for _ in range(6):
        month = (month + timedelta(days=32)).replace(day=1)
    shard = platform.control.with_database(platform.shard_databases[tenant.shard_id])
    async with connection(shard) as conn:
        assert await conn.fetchval("SELECT to_regclass($1)",
                                   f"{tenant.schema_name}.analytics_events_y{month:%Y}m{month:%m}")
