"""Database metrics against real databases: sampled per shard, recorded, pruned in batches."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from schema.connect import connection
from schema.monitoring import (
    MonitoringError,
    prune_metrics,
    record,
    sample_and_record,
    sample_database_metrics,
)
from schema.monitoring_rules import Metric


def _by(metrics, shard_id, name):
    return [m for m in metrics if m.shard_id == shard_id and m.name == name]


async def test_a_sample_reads_the_control_database_and_every_shard(platform):
    metrics = await sample_database_metrics(platform)
    for shard_id in (None, 0, 1):
        assert [m.value for m in _by(metrics, shard_id, "reachable")] == [1.0]
        (size,) = _by(metrics, shard_id, "database_size")
        assert size.value > 1_000_000 and size.unit == "bytes"  # PostGIS alone is megabytes
        tables = _by(metrics, shard_id, "table_size")
        assert 1 <= len(tables) <= 10
        assert [t.value for t in tables] == sorted((t.value for t in tables), reverse=True)
        assert all(t.metadata["schema"] and t.metadata["table"] for t in tables)
        (total,) = _by(metrics, shard_id, "connections_total")
        assert total.value >= 1  # the sampler's own connection
        assert sum(m.value for m in _by(metrics, shard_id, "connections")) == total.value
        (ratio,) = _by(metrics, shard_id, "cache_hit_ratio")
        assert ratio.value is None or 0.0 <= ratio.value <= 1.0
        (age,) = _by(metrics, shard_id, "longest_transaction_age")
        assert 0.0 <= age.value < 24 * 3600
        assert len(_by(metrics, shard_id, "dead_tuples")) <= 10
        statements = _by(metrics, shard_id, "statement_mean_time")
        skipped = _by(metrics, shard_id, "slow_statements")
        assert (len(skipped) == 1 and skipped[0].value is None and skipped[0].metadata["skipped"]
                and not statements) or (not skipped and len(statements) <= 5)
    assert len({m.recorded_at for m in metrics}) == 1


async def test_a_dead_shard_is_reported_unreachable_and_the_others_are_still_sampled(platform):
    async with connection(platform.control) as conn:
        await conn.execute("INSERT INTO shard_map (shard_id, shard_name, host, port, database_name) "
                           "VALUES (7, 'gone', '127.0.0.1', 1, 'nowhere')")
    started = time.monotonic()
    metrics = await sample_database_metrics(platform, timeout_s=2.0)
    assert time.monotonic() - started < 10
    (dead,) = _by(metrics, 7, "reachable")
    assert dead.value == 0.0 and dead.metadata["error"]
    assert [m.name for m in metrics if m.shard_id == 7] == ["reachable"]
    assert _by(metrics, 0, "database_size") and _by(metrics, 1, "database_size")


async def test_recording_writes_one_row_per_reading_with_its_shard(platform):
    metrics = await sample_database_metrics(platform)
    assert await record(platform, metrics) == len(metrics)
    async with connection(platform.control) as conn:
        rows = await conn.fetch("SELECT shard_id, count(*) AS n, count(DISTINCT recorded_at) AS times "
                                "FROM database_metrics GROUP BY shard_id ORDER BY shard_id NULLS FIRST")
        size = await conn.fetchval("SELECT metric_value FROM database_metrics "
                                   "WHERE shard_id = 0 AND metric_name = 'database_size'")
        meta = await conn.fetchval("SELECT metadata->>'table' FROM database_metrics "
                                   "WHERE metric_name = 'table_size' LIMIT 1")
    assert [(r["shard_id"], r["n"]) for r in rows] == [
        (s, sum(1 for m in metrics if m.shard_id == s)) for s in (None, 0, 1)]
    assert all(r["times"] == 1 for r in rows)
    assert size == _by(metrics, 0, "database_size")[0].value and meta


async def test_the_switch_off_records_nothing(platform):
    assert await sample_and_record(platform, {"WAKALA_DB_METRICS": "off"}) == 0
    written = await sample_and_record(platform, {"WAKALA_DB_METRICS": "1"})
    async with connection(platform.control) as conn:
        assert await conn.fetchval("SELECT count(*) FROM database_metrics") == written > 10


async def test_pruning_deletes_old_rows_in_bounded_batches(platform):
    now = datetime.now(UTC)
    old = [Metric(0, "database_size", float(i), "bytes", now - timedelta(days=31 + i)) for i in range(25)]
    young = [Metric(0, "database_size", 1.0, "bytes", now - timedelta(days=29)) for _ in range(5)]
    await record(platform, old + young)
    assert await prune_metrics(platform, 30, batch=10, max_batches=1) == 10
    assert await prune_metrics(platform, 30, batch=10) == 15
    async with connection(platform.control) as conn:
        assert await conn.fetchval("SELECT count(*) FROM database_metrics") == 5
    assert await prune_metrics(platform, 30) == 0
    assert await prune_metrics(platform, 1) == 5


@pytest.mark.parametrize("keep_days", [0, -1, 3651, 1.5, True, "30", None])
async def test_hostile_retention_periods_are_refused(platform, keep_days):
    with pytest.raises(MonitoringError, match="keep_days"):
        await prune_metrics(platform, keep_days)
