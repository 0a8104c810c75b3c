"""Retention of the control plane's access log: ``data_access_log`` by whole months.

The log is partitioned by month (control migration 0009). Every maintenance round makes the
partitions of the coming months (``months_ahead``) and drops the months that ended before the
retention period (``keep_months``, 24 by default: POPIA sets no term for such a log; two
years lets a person who asks "who looked at my data" get an answer about last year too, and
an operator who needs another term sets ``WAKALA_ACCESS_LOG_KEEP_MONTHS``). A drop is logged in ``data_deletion_log`` (tenant
NULL, the partition's row count) like the tenant tables' retention. A month whose rows landed
in the default partition (a partition made too late) cannot get its own partition; that is
logged and the rows stay in the default partition, from which the round deletes rows older
than the period in one bounded statement.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import asyncpg

from schema.connect import connection
from schema.retention.policies import partitions_to_drop
from schema.settings import PostgresSettings

__all__ = ["AccessLogReport", "access_log_retention", "month_bounds"]

log = logging.getLogger(__name__)

PARENT = "data_access_log"
PARTITIONS_SQL = """
SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'public.data_access_log'::regclass
"""
DELETION_LOG_SQL = """
INSERT INTO data_deletion_log (tenant_id, table_name, deleted_count, dry_run, batches, partitions_dropped, cutoff)
VALUES (NULL, 'data_access_log', $1, false, 1, $2::text[], $3)
"""
DEFAULT_DELETE_SQL = """
DELETE FROM data_access_log_default WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM data_access_log_default WHERE created_at < $1 LIMIT $2))
"""


@dataclass
class AccessLogReport:
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    deleted_rows: int = 0


def _month(d: date, add: int) -> date:
    index = d.year * 12 + d.month - 1 + add
    return date(index // 12, index % 12 + 1, 1)


def month_bounds(now: datetime, months_ahead: int) -> list[tuple[str, date, date]]:
    """(partition name, first day, first day of the next month) for this month and
    ``months_ahead`` more."""
    first = _month(now.astimezone(UTC).date(), 0)
    out = []
    for k in range(months_ahead + 1):
        start = _month(first, k)
        out.append((f"{PARENT}_y{start.year:04d}m{start.month:02d}", start, _month(start, 1)))
    return out


async def access_log_retention(settings: PostgresSettings, *, keep_months: int = 24, months_ahead: int = 3,
                               now: datetime | None = None, batch: int = 10_000, drop: bool = True) -> AccessLogReport:
    """One round: partitions ahead and, with ``drop``, expired months dropped (see the module
    docstring)."""
    if not 1 <= keep_months <= 1200:
        raise ValueError(f"keep_months must be from 1 to 1200, got {keep_months}")
    now = now or datetime.now(UTC)
    report = AccessLogReport()
    async with connection(settings.control) as conn:
        await conn.execute("SET lock_timeout = '2s'")
        existing = {r["relname"] for r in await conn.fetch(PARTITIONS_SQL)}
        for name, start, end in month_bounds(now, months_ahead):
            if name in existing:
                continue
            try:
                await conn.execute(f'CREATE TABLE "{name}" PARTITION OF {PARENT} '
                                   f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')")
                report.created.append(name)
            except asyncpg.PostgresError as exc:
                log.warning("access log partition %s not created: %s", name, exc)
        if not drop:
            return report
        cutoff_month = _month(now.astimezone(UTC).date(), -keep_months)
        cutoff = datetime(cutoff_month.year, cutoff_month.month, 1, tzinfo=UTC)
        for name in partitions_to_drop(sorted(existing), cutoff.year, cutoff.month, PARENT):
            async with conn.transaction():
                rows = await conn.fetchval(f'SELECT count(*) FROM "{name}"')   # noqa: S608 - a partition name we matched
                await conn.execute(f'DROP TABLE "{name}"')
                await conn.execute(DELETION_LOG_SQL, rows, [name], cutoff)
            report.dropped.append(name)
            report.deleted_rows += rows
        deleted = int((await conn.execute(DEFAULT_DELETE_SQL, cutoff, batch)).split()[-1])
        if deleted:
            await conn.execute(DELETION_LOG_SQL, deleted, [], cutoff)
            report.deleted_rows += deleted
    return report
