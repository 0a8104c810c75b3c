"""Database metrics: sample every shard and the control database, record, prune.

Each round of the maintenance loop (the process holding the maintenance lock, so one
sampler at a time) calls :func:`sample_and_record`. It connects as the owner to the control
database (``shard_id`` NULL) and to each shard of ``shard_map``, and reads, from the
statistics views only (no table is scanned):

* ``connections`` per state (``metadata.state``) and ``connections_total``;
* ``database_size`` (bytes) and the ``table_size`` of the ten largest tables;
* ``cache_hit_ratio`` (blocks found in shared buffers / blocks asked for, since the
  statistics were reset; NULL before any block was read);
* ``dead_tuples`` of the ten tables with the most;
* ``longest_transaction_age`` (seconds; 0 when no other transaction is open);
* ``statement_mean_time`` of the five slowest statements, only when the extension
  ``pg_stat_statements`` is installed in that database; otherwise one ``slow_statements``
  row with a NULL value and ``metadata.skipped`` saying so;
* ``reachable`` 1, or 0 with ``metadata.error`` when the database did not answer (the others
  are still sampled: one dead shard must not blind the rest).

Each database is read under ``statement_timeout`` and a connect timeout, so a stuck server
costs the round seconds, not the round. :func:`record` writes a shard's rows in one
statement (``unnest`` of column arrays); :func:`prune_metrics` deletes old rows in batches of
``batch`` (short transactions: a month of backlog never holds a long lock on the table).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Mapping
from datetime import UTC, datetime

import asyncpg

from schema.connect import connection
from schema.errors import DatabaseUnavailable, WakalaError
from schema.migrate import SHARDS_SQL, shard_dsn
from schema.monitoring_rules import Metric, MetricsSettings, insert_columns, truncate_query
from schema.settings import DSN, PostgresSettings

__all__ = ["MonitoringError", "prune_metrics", "record", "sample_and_record", "sample_database_metrics"]

log = logging.getLogger(__name__)

SAMPLE_TIMEOUT_S = 10.0
TOP_TABLES = 10
TOP_STATEMENTS = 5

CONNECTIONS_SQL = """
SELECT coalesce(state, 'background') AS state, count(*) AS n
FROM pg_stat_activity WHERE datname = current_database() GROUP BY 1 ORDER BY 1
"""
DATABASE_SIZE_SQL = "SELECT pg_database_size(current_database())"
TABLE_SIZES_SQL = """
SELECT n.nspname AS schema_name, c.relname AS table_name, pg_total_relation_size(c.oid) AS bytes
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%'
ORDER BY bytes DESC, 1, 2 LIMIT $1
"""
CACHE_HIT_SQL = """
SELECT CASE WHEN blks_hit + blks_read = 0 THEN NULL
            ELSE blks_hit::float8 / (blks_hit + blks_read) END
FROM pg_stat_database WHERE datname = current_database()
"""
DEAD_TUPLES_SQL = """
SELECT schemaname AS schema_name, relname AS table_name, n_dead_tup, n_live_tup, last_autovacuum
FROM pg_stat_user_tables WHERE n_dead_tup > 0 ORDER BY n_dead_tup DESC, 1, 2 LIMIT $1
"""
LONGEST_TRANSACTION_SQL = """
SELECT coalesce(extract(epoch FROM max(clock_timestamp() - xact_start)), 0)::float8
FROM pg_stat_activity
WHERE datname = current_database() AND xact_start IS NOT NULL AND pid <> pg_backend_pid()
"""
HAS_STATEMENTS_SQL = "SELECT extversion FROM pg_extension WHERE extname = 'pg_stat_statements'"
SLOWEST_STATEMENTS_SQL = """
SELECT query, calls, mean_exec_time, total_exec_time
FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY mean_exec_time DESC LIMIT $1
"""
INSERT_SQL = """
INSERT INTO database_metrics (shard_id, metric_name, metric_value, metric_unit, metadata, recorded_at)
SELECT $1::int, name, value, unit, meta::jsonb, at
FROM unnest($2::text[], $3::numeric[], $4::text[], $5::text[], $6::timestamptz[]) AS t(name, value, unit, meta, at)
"""
PRUNE_SQL = """
DELETE FROM database_metrics WHERE id IN (
    SELECT id FROM database_metrics WHERE recorded_at < now() - make_interval(days => $1)
    ORDER BY id LIMIT $2)
"""


class MonitoringError(WakalaError):
    """A metrics call got an argument out of range (the message names it)."""


async def _sample_one(conn: asyncpg.Connection, shard_id: int | None, at: datetime) -> list[Metric]:
    def m(name: str, value: float | None, unit: str, **meta: object) -> Metric:
        return Metric(shard_id, name, None if value is None else float(value), unit, at, dict(meta))

    out: list[Metric] = [m("reachable", 1, "bool")]
    rows = await conn.fetch(CONNECTIONS_SQL)
    out += [m("connections", r["n"], "connections", state=r["state"]) for r in rows]
    out.append(m("connections_total", sum(r["n"] for r in rows), "connections"))
    out.append(m("database_size", await conn.fetchval(DATABASE_SIZE_SQL), "bytes"))
    out += [m("table_size", r["bytes"], "bytes", schema=r["schema_name"], table=r["table_name"])
            for r in await conn.fetch(TABLE_SIZES_SQL, TOP_TABLES)]
    out.append(m("cache_hit_ratio", await conn.fetchval(CACHE_HIT_SQL), "ratio"))
    out += [m("dead_tuples", r["n_dead_tup"], "rows", schema=r["schema_name"], table=r["table_name"],
              live=r["n_live_tup"], last_autovacuum=r["last_autovacuum"])
            for r in await conn.fetch(DEAD_TUPLES_SQL, TOP_TABLES)]
    out.append(m("longest_transaction_age", await conn.fetchval(LONGEST_TRANSACTION_SQL), "seconds"))
    out += await _slowest_statements(conn, m)
    return out


async def _slowest_statements(conn: asyncpg.Connection, m) -> list[Metric]:
    version = await conn.fetchval(HAS_STATEMENTS_SQL)
    if version is None:
        return [m("slow_statements", None, "ms",
                  skipped="pg_stat_statements is not installed in this database "
                          "(CREATE EXTENSION pg_stat_statements; it needs shared_preload_libraries)")]
    try:
        rows = await conn.fetch(SLOWEST_STATEMENTS_SQL, TOP_STATEMENTS)
    except asyncpg.PostgresError as exc:  # installed but not preloaded: the view refuses to read
        return [m("slow_statements", None, "ms", skipped=f"pg_stat_statements {version}: {exc}")]
    return [m("statement_mean_time", r["mean_exec_time"], "ms", query=truncate_query(r["query"]),
              calls=r["calls"], total_ms=round(float(r["total_exec_time"]), 3)) for r in rows]


async def _sample_database(dsn: DSN, shard_id: int | None, at: datetime, timeout_s: float) -> list[Metric]:
    try:
        async with asyncio.timeout(timeout_s):
            async with connection(dsn, connect_timeout=timeout_s) as conn:
                await conn.execute(f"SET statement_timeout = {int(timeout_s * 1000)}")
                return await _sample_one(conn, shard_id, at)
    except (TimeoutError, OSError, DatabaseUnavailable, asyncpg.PostgresError,
            asyncpg.InterfaceError) as exc:
        log.warning("database metrics: %s (shard %s) not sampled: %s", dsn.redacted(), shard_id, exc)
        return [Metric(shard_id, "reachable", 0.0, "bool", at,
                       {"error": f"{type(exc).__name__}: {exc}"[:300]})]


async def sample_database_metrics(settings: PostgresSettings, *,
                                  timeout_s: float = SAMPLE_TIMEOUT_S) -> list[Metric]:
    """One reading of the control database and every shard in ``shard_map``."""
    at = datetime.now(UTC)
    async with connection(settings.control, connect_timeout=timeout_s) as conn:
        shards = await conn.fetch(SHARDS_SQL)
    # One database after another: a round holds one extra connection at a time, not one
    # per shard at once (the server's connections are shared with the engines' pools).
    samples = [await _sample_database(settings.control, None, at, timeout_s)]
    for s in shards:
        samples.append(await _sample_database(shard_dsn(settings, s), s["shard_id"], at, timeout_s))
    return [metric for sample in samples for metric in sample]


async def record(settings: PostgresSettings, metrics: list[Metric]) -> int:
    """Write ``metrics`` to ``database_metrics``: one INSERT per shard; returns rows written."""
    by_shard: Mapping[int | None, list[Metric]] = defaultdict(list)
    for metric in metrics:
        by_shard[metric.shard_id].append(metric)
    async with connection(settings.control) as conn, conn.transaction():
        for shard_id, rows in by_shard.items():
            await conn.execute(INSERT_SQL, shard_id, *insert_columns(rows))
    return len(metrics)


async def prune_metrics(settings: PostgresSettings, keep_days: int = 30, *, batch: int = 5000,
                        max_batches: int = 200) -> int:
    """Delete rows older than ``keep_days`` days, ``batch`` rows per statement, at most
    ``max_batches`` statements (what is left goes next round); returns rows deleted."""
    if not isinstance(keep_days, int) or isinstance(keep_days, bool) or not 1 <= keep_days <= 3650:
        raise MonitoringError(f"keep_days must be a whole number of days in 1..3650, got {keep_days!r}")
    if not 1 <= batch <= 100_000 or not 1 <= max_batches <= 100_000:
        raise MonitoringError(f"batch and max_batches must be in 1..100000, got {batch}, {max_batches}")
    deleted = 0
    async with connection(settings.control) as conn:
        for _ in range(max_batches):
            n = int((await conn.execute(PRUNE_SQL, keep_days, batch)).split()[-1])
            deleted += n
            if n < batch:
                break
    return deleted


async def sample_and_record(settings: PostgresSettings, env: Mapping[str, str] | None = None) -> int:
    """The maintenance round's step: sample, record and prune when ``WAKALA_DB_METRICS`` is on.

    Returns the rows recorded (0 when off). A failure is logged, not raised: metrics are an
    aid, and the round's other steps have run before this one."""
    metrics_settings = MetricsSettings.from_env(env)
    if not metrics_settings.enabled:
        return 0
    try:
        written = await record(settings, await sample_database_metrics(settings))
        await prune_metrics(settings, metrics_settings.keep_days)
    except (TimeoutError, OSError, WakalaError, asyncpg.PostgresError, asyncpg.InterfaceError):
        log.exception("database metrics not recorded this round")
        return 0
    return written
