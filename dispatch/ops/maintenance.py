"""The engine's maintenance loop: analytics partitions ahead, retention, scheduled backups.

Every ``interval_s`` a round runs, in whichever engine process gets the maintenance lock (a
session advisory lock on the control database, tried, never waited for: the others log that
they skipped the round). A round

1. creates the analytics partitions of the coming months in every tenant schema (cheap when
   they exist, and a month boundary never finds a tenant without its partition);
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
from typing import Any

from schema.monitoring import sample_and_record
from schema.moves.cleanup import cleanup_moves
from schema.retention.policies import RetentionSettings
from schema.retention.runner import (
    RetentionReport,
    ensure_partitions_ahead,
    maintenance_lock,
    run_retention,
    seconds_since_last_full_run,
)
from schema.settings import PostgresSettings

__all__ = ["RoundResult", "maintenance_round", "run_maintenance"]

FIRST_ROUND_S = (60.0, 180.0)

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


async def maintenance_round(settings: PostgresSettings, retention_settings: RetentionSettings, *,
                            retention: bool, backups: Any = None) -> RoundResult:
    """One round (see the module docstring); ``retention``: whether retention may run in it."""
    async with maintenance_lock(settings) as control:
        if control is None:
            log.info("maintenance round skipped: another engine process is running one")
            return RoundResult(False)
        result = RoundResult(True)
        result.partitions_created = await ensure_partitions_ahead(settings, retention_settings)
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
    log.info("maintenance round: %d analytics partition(s) created; retention %s; backups %s; "
             "%d moved tenant's old schema(s) dropped; %d database metric(s) recorded", result.partitions_created,
             ("not due" if retention and retention_settings.enabled else "off") if report is None else
             f"run {report.run_id}: {report.deleted} row(s) deleted, {len(report.errors)} error(s), "
             f"{len(report.refused)} refused polic(ies)",
             "off" if result.backups is None else f"{len(result.backups)} done", result.old_schemas_dropped,
             result.metrics_recorded)
    return result


async def run_maintenance(settings: PostgresSettings, *, interval_s: float, retention: bool,
                          backups: Any = None, retention_settings: RetentionSettings | None = None,
                          first_after_s: float | None = None) -> None:
    """Forever: a round every ``interval_s``, retention in it once due.

    The first round comes ``first_after_s`` after the start (default: a random 60-180 s).
    Nothing in a round is urgent at start-up (partitions are created ahead by months,
    provisioning and ``wakala migrate`` create them too), and a round opens a connection to
    every database: engines restarted together (a deploy, a crash loop) would otherwise all
    open them at the moment they also fill their pools.

    ``backups``: a ``schema.backups.settings.BackupSettings`` to run due backups in each
    round, or None. ``retention_settings`` defaults to ``RetentionSettings.from_env()``."""
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
