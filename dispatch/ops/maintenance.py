"""The engine's maintenance loop: analytics partitions ahead, retention, scheduled backups.

Every ``interval_s`` a round runs, in whichever engine process gets the maintenance lock (a
session advisory lock on the control database, tried, never waited for: the others log that
they skipped the round). A round

1. creates the analytics partitions of the coming months in every tenant schema (cheap when
   they exist, and a month boundary never finds a tenant without its partition), and the
   control plane's ``data_access_log`` months likewise, dropping its months older than
   ``WAKALA_ACCESS_LOG_KEEP_MONTHS`` unless retention is off (``schema.retention.control``);
2. runs retention when it is due: ``WAKALA_RETENTION_INTERVAL_S`` after the last complete run,
   read from ``retention_runs`` (so processes that come and go share one schedule instead of
   each keeping its own clock), and not before a random delay of at most
   ``WAKALA_RETENTION_JITTER_S`` after this process started (engines restarted together do not
   all reach for the lock at the same moment, and a restart loop does not run retention on
   every start);
3. runs due backups (``schema.backups.service.run_due_backups``) when backup settings are
   given; that module is imported only then;
4. drops the old schemas of tenant moves whose grace period is over
   (``schema.moves.cleanup.cleanup_moves``; ``WAKALA_MOVE_GRACE_S``, 7 days by default);
5. samples every database's health into ``database_metrics`` (``schema.monitoring``;
   ``WAKALA_DB_METRICS``, on by default) and prunes samples older than
   ``WAKALA_DB_METRICS_KEEP_DAYS``.

Beside the rounds, and in every engine process (not only the lock holder: each process's
/metrics shows them), ``run_operator_samples`` reads every ``WAKALA_OPS_SAMPLE_S`` (30 s; 0
turns it off) what ``wakala status`` reads, with its functions: the location worker's lag
from the broker (``wakala_location_lag_messages``) and the backup ages from the control plane
(``wakala_backup_age_seconds``, ``wakala_backup_stale_tenants``). Each part is bounded by
``SAMPLE_TIMEOUT_S``; a part that cannot be read is counted
(``wakala_ops_sample_failures_total``) and stops being reported until it can, so a scrape
never waits for it and never shows a figure nobody measured lately.

A round that fails is logged and the loop goes on; the lock dies with its connection, so a
process killed mid-round leaves nothing taken. Retention works in short transactions (see
``schema.retention.runner``), so the engine's own writes never wait behind it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dispatch.core.metrics import OPS_SAMPLE_FAILURES, forget_sample, record_sample
from dispatch.core.settings import EngineSettings
from dispatch.ops.status import BACKUP_STALE_S, backup_gap_s, consumer_lag, read_last_backups
from schema.monitoring import sample_and_record
from schema.moves.cleanup import cleanup_moves
from schema.retention.control import AccessLogReport, access_log_retention
from schema.retention.policies import RetentionSettings
from schema.retention.runner import (
    RetentionReport,
    ensure_partitions_ahead,
    maintenance_lock,
    run_retention,
    seconds_since_last_full_run,
)
from schema.settings import PostgresSettings
from streams.settings import StreamSettings

__all__ = ["RoundResult", "maintenance_round", "run_maintenance", "run_operator_samples", "sample_operator_metrics"]

FIRST_ROUND_S = (60.0, 180.0)
SAMPLE_TIMEOUT_S = 5.0

log = logging.getLogger(__name__)


@dataclass
class RoundResult:
    """What one round did; ``ran`` is False when another process held the lock."""

    ran: bool
    partitions_created: int = 0
    retention: RetentionReport | None = None
    backups: list[Any] | None = None
    old_schemas_dropped: int = 0
    metrics_recorded: int = 0
    access_log: AccessLogReport | None = None


async def maintenance_round(settings: PostgresSettings, retention_settings: RetentionSettings, *,
                            retention: bool, backups: Any = None) -> RoundResult:
    """One round (see the module docstring); ``retention``: whether retention may run in it."""
    async with maintenance_lock(settings) as control:
        if control is None:
            log.info("maintenance round skipped: another engine process is running one")
            return RoundResult(False)
        result = RoundResult(True)
        result.partitions_created = await ensure_partitions_ahead(settings, retention_settings)
        result.access_log = await access_log_retention(
            settings, keep_months=retention_settings.access_log_keep_months,
            months_ahead=retention_settings.partitions_ahead, drop=retention_settings.enabled)
        if retention and retention_settings.enabled:
            since = await seconds_since_last_full_run(control)
            if since is None or since >= retention_settings.interval_s:
                result.retention = await run_retention(settings, retention_settings)
        if backups is not None:
            from schema.backups.service import run_due_backups

            result.backups = list(await run_due_backups(settings, backups))
        result.old_schemas_dropped = len(await cleanup_moves(settings))
        result.metrics_recorded = await sample_and_record(settings)
    report = result.retention
    log.info("maintenance round: %d analytics partition(s) created; access log: %d month(s) made, %d dropped; "
             "retention %s; backups %s; %d moved tenant's old schema(s) dropped; %d database metric(s) recorded",
             result.partitions_created, len(result.access_log.created), len(result.access_log.dropped),
             ("not due" if retention and retention_settings.enabled else "off") if report is None else
             f"run {report.run_id}: {report.deleted} row(s) deleted, {len(report.errors)} error(s), "
             f"{len(report.refused)} refused polic(ies)",
             "off" if result.backups is None else f"{len(result.backups)} done", result.old_schemas_dropped,
             result.metrics_recorded)
    return result


async def _sample_lag(streams: StreamSettings, timeout_s: float, fresh_s: float) -> None:
    async with asyncio.timeout(timeout_s * 2):
        lag, _ = await consumer_lag(streams, timeout_s)
    record_sample("wakala_location_lag_messages", lag, fresh_s=fresh_s)


async def _sample_backups(settings: PostgresSettings, timeout_s: float, fresh_s: float) -> None:
    import asyncpg

    async with asyncio.timeout(timeout_s):
        conn = await asyncpg.connect(settings.control.url(), timeout=timeout_s)
        try:
            await conn.execute(f"SET statement_timeout = {int(timeout_s * 1000)}")
            rows = await read_last_backups(conn)
        finally:
            await conn.close()
    now = datetime.now(UTC)
    gaps = [backup_gap_s(r["completed_at"], r["created_at"], now) for r in rows]
    record_sample("wakala_backup_age_seconds", max(gaps, default=0.0), fresh_s=fresh_s, ageing=True)
    record_sample("wakala_backup_stale_tenants", sum(g > BACKUP_STALE_S for g in gaps), fresh_s=fresh_s)


async def sample_operator_metrics(settings: PostgresSettings, streams: StreamSettings, *,
                                  fresh_s: float, timeout_s: float = SAMPLE_TIMEOUT_S) -> list[str]:
    """One sample of the worker's lag and the backup ages, both parts at once and each bounded;
    returns the parts that failed (counted, logged, and no longer reported)."""
    parts = {"lag": (_sample_lag(streams, timeout_s, fresh_s), ("wakala_location_lag_messages",)),
             "backups": (_sample_backups(settings, timeout_s, fresh_s),
                         ("wakala_backup_age_seconds", "wakala_backup_stale_tenants"))}
    results = await asyncio.gather(*(coro for coro, _ in parts.values()), return_exceptions=True)
    failed = []
    for (part, (_, names)), result in zip(parts.items(), results, strict=True):
        if isinstance(result, BaseException):
            if isinstance(result, asyncio.CancelledError):
                raise result
            failed.append(part)
            OPS_SAMPLE_FAILURES.labels(part).inc()
            for name in names:
                forget_sample(name)
            log.info("operator sample of %s failed: %s: %s", part, type(result).__name__, result)
    return failed


async def run_operator_samples(settings: PostgresSettings, streams: StreamSettings, *, interval_s: float,
                               timeout_s: float = SAMPLE_TIMEOUT_S) -> None:
    """Forever: ``sample_operator_metrics`` every ``interval_s``, each value fresh for three
    intervals (a sample or two may fail before a figure stops being reported). The first
    sample comes one interval after the start, not at it: engines started together (a deploy,
    a crash loop) would otherwise all open a broker client and a control connection at the
    moment they fill their pools, and an engine that lives less than an interval (a test, a
    failed start) never samples at all."""
    fresh_s = 3 * interval_s + 2 * timeout_s
    while True:
        await asyncio.sleep(interval_s)
        await sample_operator_metrics(settings, streams, fresh_s=fresh_s, timeout_s=timeout_s)


async def run_maintenance(settings: PostgresSettings, *, interval_s: float, retention: bool,
                          backups: Any = None, retention_settings: RetentionSettings | None = None,
                          first_after_s: float | None = None, streams: StreamSettings | None = None,
                          sample_s: float | None = None) -> None:
    """Forever: a round every ``interval_s``, retention in it once due.

    The first round comes ``first_after_s`` after the start (default: a random 60-180 s).
    Nothing in a round is urgent at start-up (partitions are created ahead by months,
    provisioning and ``wakala migrate`` create them too), and a round opens a connection to
    every database: engines restarted together (a deploy, a crash loop) would otherwise all
    open them at the moment they also fill their pools.

    ``backups``: a ``schema.backups.settings.BackupSettings`` to run due backups in each
    round, or None. ``retention_settings`` defaults to ``RetentionSettings.from_env()``.

    ``run_operator_samples`` runs beside the rounds every ``sample_s`` (default
    ``WAKALA_OPS_SAMPLE_S``; 0: not at all), over ``streams`` (default
    ``StreamSettings.from_env()``)."""
    if sample_s is None:
        sample_s = EngineSettings.from_env().ops_sample_s
    sampler = None
    if sample_s > 0:
        sampler = asyncio.create_task(run_operator_samples(settings, streams or StreamSettings.from_env(),
                                                           interval_s=sample_s), name="operator-samples")
    try:
        await _rounds(settings, interval_s=interval_s, retention=retention, backups=backups,
                      retention_settings=retention_settings, first_after_s=first_after_s)
    finally:
        if sampler is not None:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)


async def _rounds(settings: PostgresSettings, *, interval_s: float, retention: bool, backups: Any,
                  retention_settings: RetentionSettings | None, first_after_s: float | None) -> None:
    settings_ = retention_settings or RetentionSettings.from_env()
    first = random.uniform(*FIRST_ROUND_S) if first_after_s is None else first_after_s  # noqa: S311 - spreading
    await asyncio.sleep(first)
    not_before = time.monotonic() + random.uniform(0.0, settings_.jitter_s)  # noqa: S311 - spreading, not security
    while True:
        may_retain = retention and time.monotonic() >= not_before
        try:
            await maintenance_round(settings, settings_, retention=may_retain, backups=backups)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("maintenance round failed; the next one in %.0f s", interval_s)
        wait = interval_s
        if retention and not may_retain:
            wait = min(interval_s, max(0.0, not_before - time.monotonic()))
        await asyncio.sleep(wait)
