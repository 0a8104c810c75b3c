"""Retention's I/O: apply the active policies to every tenant schema, in small batches.

For each shard (one owner connection), each tenant schema on it, each active policy: the rows
:mod:`schema.retention.policies` calls old go in batches, each its own transaction with a
``lock_timeout`` and a ``statement_timeout``, with a pause between batches. A batch that
times out or cannot get a lock ends that table for this run (recorded with the error; the next
run goes on from the start); nothing else stops. Every transaction declares the schema's tenant
(``app.current_tenant_id``), so row-level security lets an owner that is not a superuser see the
rows it deletes, and only them.

``analytics_events`` loses whole monthly partitions older than the cutoff (``DROP TABLE``, under
the same lock timeout: it needs a moment's exclusive lock on the parent, and a busy parent
means "next run") and old rows of its default partition in batches; the run then creates the
months ahead (``ensure_analytics_partitions``).

A run writes one ``retention_runs`` row and, per (tenant, table, policy), one
``data_deletion_log`` row with the count (zero included), written after each tenant so an
interrupted run keeps what it logged. A dry run counts the same batches without locking or
deleting, and writes nothing. Tenants being moved between shards are skipped: a move compares
checksums of both copies, and rows vanishing on one side would fail it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from schema.connect import connection
from schema.errors import UnknownTenant
from schema.migrate import shard_dsn
from schema.retention.policies import (
    CATALOGUE,
    Policy,
    RetentionPolicyError,
    RetentionSettings,
    count_batch_sql,
    delete_batch_sql,
    order_ids_batch_sql,
    order_unit_sql,
    partitions_to_drop,
    quote_ident,
    validate_policy,
    validate_reason,
    validate_table,
)
from schema.settings import PostgresSettings

log = logging.getLogger(__name__)

MAINTENANCE_LOCK_KEY = 0x77616B616C6172  # "wakalar": one maintenance round (or CLI run) at a time

POLICIES_SQL = """
SELECT id::text AS id, table_name, retention_days, archive_after_days, delete_after_days,
       conditions::text AS conditions, is_active, reason, updated_at
FROM data_retention_policies ORDER BY table_name, conditions::text
"""
UPSERT_POLICY_SQL = """
INSERT INTO data_retention_policies (table_name, retention_days, is_active, reason)
VALUES ($1, $2, $3, $4)
ON CONFLICT (table_name, conditions) DO UPDATE
SET retention_days = EXCLUDED.retention_days, delete_after_days = NULL,
    is_active = EXCLUDED.is_active, reason = COALESCE(EXCLUDED.reason, data_retention_policies.reason),
    updated_at = now()
RETURNING id::text AS id, table_name, retention_days, archive_after_days, delete_after_days,
          conditions::text AS conditions, is_active, reason, updated_at
"""
FIND_TENANT_SQL = "SELECT id::text FROM tenants WHERE id::text = $1 OR slug = $1"
# Active and suspended tenants (a suspended tenant's data ages too), not while they move.
TENANTS_SQL = """
SELECT m.tenant_id::text AS tenant_id, m.schema_name, s.shard_id, s.host, s.port, s.database_name
FROM tenant_shard_mapping m
JOIN tenants t ON t.id = m.tenant_id
JOIN shard_map s ON s.shard_id = m.shard_id
WHERE t.status IN ('active', 'suspended') AND s.status <> 'retired'
  AND ($1::uuid IS NULL OR m.tenant_id = $1::uuid)
  AND NOT EXISTS (SELECT 1 FROM tenant_migrations mv WHERE mv.tenant_id = m.tenant_id
                  AND mv.status NOT IN ('completed', 'cleaned', 'failed'))
ORDER BY s.shard_id, m.schema_name
"""
START_RUN_SQL = """
INSERT INTO retention_runs (dry_run, tenant_id, table_name) VALUES (false, $1::uuid, $2) RETURNING id::text
"""
FINISH_RUN_SQL = """
UPDATE retention_runs SET status = $2, finished_at = now(), error_message = $3 WHERE id = $1::uuid
"""
# Seconds since the last complete, unrestricted, real run finished (the database's clock, so
# engine hosts with skewed clocks agree); NULL when there was none.
SINCE_LAST_FULL_RUN_SQL = """
SELECT extract(epoch FROM now() - max(finished_at))::float8 FROM retention_runs
WHERE status = 'completed' AND NOT dry_run AND tenant_id IS NULL AND table_name IS NULL
"""
LOG_SQL = """
INSERT INTO data_deletion_log (tenant_id, table_name, deleted_count, policy_id, run_id, dry_run,
                               batches, duration_ms, partitions_dropped, cutoff, error_message)
VALUES ($1::uuid, $2, $3, $4::uuid, $5::uuid, false, $6, $7, $8::text[], $9, $10)
"""
# Every batch's transaction: bounded waits, and the schema's tenant declared for RLS.
BATCH_SETUP_SQL = """
SELECT set_config('lock_timeout', $1, true), set_config('statement_timeout', $2, true),
       set_config('app.current_tenant_id', $3, true)
"""
PARTITIONS_SQL = """
SELECT c.relname FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
JOIN pg_class p ON p.oid = i.inhparent
JOIN pg_namespace n ON n.oid = p.relnamespace
WHERE n.nspname = $1 AND p.relname = 'analytics_events'
"""
COUNT_TABLE_SQL = "SELECT count(*) FROM {table}"
DROP_TABLE_SQL = "DROP TABLE {table}"
ENSURE_PARTITIONS_SQL = "SELECT ensure_analytics_partitions($1)"


def _table_error(exc: asyncpg.PostgresError) -> str:
    """What ends one table's run but not the run: an error the server raised (a lock or a
    statement that took too long, a deadlock, a foreign key a newer migration added). A lost
    connection is re-raised: it ends the run."""
    if isinstance(exc, asyncpg.PostgresConnectionError):
        raise exc
    return f"{exc.__class__.__name__}: {exc}"[:1000]


@dataclass
class TableOutcome:
    """What a policy did (or, in a dry run, would do) to one table of one tenant."""

    tenant_id: str
    schema_name: str
    table: str
    policy_id: str | None
    cutoff: datetime
    deleted: int = 0
    batches: int = 0
    duration_ms: int = 0
    partitions_dropped: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class RetentionReport:
    run_id: str | None
    dry_run: bool
    outcomes: list[TableOutcome] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)       # policies that failed validation
    partitions_created: int = 0

    @property
    def deleted(self) -> int:
        return sum(o.deleted for o in self.outcomes)

    @property
    def errors(self) -> list[str]:
        return [f"{o.schema_name}.{o.table}: {o.error}" for o in self.outcomes if o.error]


@dataclass(frozen=True)
class PolicyRow:
    """A policy as stored, with the reason the runner would refuse it (None: it would run)."""

    id: str
    table_name: str
    retention_days: int
    delete_after_days: int | None
    conditions: str
    is_active: bool
    reason: str | None
    problem: str | None


def _row_dict(row: asyncpg.Record) -> dict:
    out = dict(row)
    try:
        out["conditions"] = json.loads(row["conditions"] or "{}")
    except ValueError:
        out["conditions"] = row["conditions"]
    return out


async def list_policies(settings: PostgresSettings, *, allow_financial: bool = False) -> list[PolicyRow]:
    async with connection(settings.control) as conn:
        rows = await conn.fetch(POLICIES_SQL)
    out = []
    for row in rows:
        problem = None
        try:
            validate_policy(_row_dict(row), allow_financial=allow_financial)
        except RetentionPolicyError as exc:
            problem = str(exc)
        out.append(PolicyRow(row["id"], row["table_name"], row["retention_days"], row["delete_after_days"],
                             row["conditions"], row["is_active"], row["reason"], problem))
    return out


async def set_policy(settings: PostgresSettings, table: str, days: int, *, active: bool,
                     allow_financial: bool, reason: str | None = None) -> PolicyRow:
    """Create or change the unconditional policy of ``table`` (validated first)."""
    validate_policy({"table_name": table, "retention_days": days, "is_active": active},
                    allow_financial=allow_financial)
    reason = validate_reason(reason)
    async with connection(settings.control) as conn:
        row = await conn.fetchrow(UPSERT_POLICY_SQL, table, days, active, reason)
    return PolicyRow(row["id"], row["table_name"], row["retention_days"], row["delete_after_days"],
                     row["conditions"], row["is_active"], row["reason"], None)


@contextlib.asynccontextmanager
async def maintenance_lock(settings: PostgresSettings) -> AsyncIterator[asyncpg.Connection | None]:
    """Try the maintenance lock (a session advisory lock on the control database) and hold it
    for the block, yielding the control connection that holds it; None, holding nothing, when
    another session has it. The lock dies with its connection: a process killed mid-round
    never leaves it taken."""
    async with connection(settings.control) as conn:
        got = await conn.fetchval("SELECT pg_try_advisory_lock($1)", MAINTENANCE_LOCK_KEY)
        try:
            yield conn if got else None
        finally:
            if got:
                await conn.execute("SELECT pg_advisory_unlock($1)", MAINTENANCE_LOCK_KEY)


async def seconds_since_last_full_run(conn: asyncpg.Connection) -> float | None:
    """How long ago the last complete, unrestricted, real run finished (None: never)."""
    return await conn.fetchval(SINCE_LAST_FULL_RUN_SQL)


async def resolve_tenant(conn: asyncpg.Connection, tenant: str) -> str:
    """A tenant id or slug (the CLI's --tenant) -> the tenant's id."""
    found = None
    if 0 < len(tenant) <= 100 and tenant.isprintable():
        found = await conn.fetchval(FIND_TENANT_SQL, tenant)
    if found is None:
        raise UnknownTenant(f"no tenant with id or slug {tenant[:80]!r}; see `wakala tenant list`")
    return found


class _Batches:
    """Runs one tenant's policies on its shard connection, batch by batch."""

    def __init__(self, conn: asyncpg.Connection, tenant_id: str, schema_name: str,
                 retention: RetentionSettings, dry_run: bool) -> None:
        self.conn, self.tenant_id, self.schema_name = conn, tenant_id, schema_name
        self.retention, self.dry_run = retention, dry_run
        self.setup = (f"{retention.lock_timeout_ms}ms", f"{retention.statement_timeout_ms}ms", tenant_id)

    def _outcome(self, policy: Policy, cutoff: datetime, table: str | None = None) -> TableOutcome:
        return TableOutcome(self.tenant_id, self.schema_name, table or policy.table, policy.id, cutoff)

    async def apply(self, policy: Policy, now: datetime) -> list[TableOutcome]:
        cutoff = now - timedelta(days=policy.days)
        started = time.perf_counter()
        if policy.rule.kind == "orders":
            outcomes = await self._orders(policy, cutoff)
        else:
            outcome = self._outcome(policy, cutoff)
            outcomes = [outcome]
            try:
                if policy.rule.kind == "partitioned":
                    await self._drop_partitions(policy, cutoff, outcome)
                    await self._rows(policy, cutoff, outcome, f"{policy.table}_default")
                else:
                    await self._rows(policy, cutoff, outcome)
            except asyncpg.PostgresError as exc:
                outcome.error = _table_error(exc)
        elapsed = round((time.perf_counter() - started) * 1000)
        for outcome in outcomes:
            outcome.duration_ms = elapsed
            if outcome.error:
                log.warning("retention %s.%s stopped: %s (next run goes on)",
                            self.schema_name, outcome.table, outcome.error)
        return outcomes

    async def _rows(self, policy: Policy, cutoff: datetime, outcome: TableOutcome,
                    table: str | None = None) -> None:
        sql = (count_batch_sql if self.dry_run else delete_batch_sql)(policy, self.schema_name, table)
        cursor: object = (0, 0)
        size = self.retention.batch_size
        while True:
            async with self.conn.transaction():
                await self.conn.execute(BATCH_SETUP_SQL, *self.setup)
                row = await self.conn.fetchrow(sql, cutoff, size, cursor, *policy.condition_values())
            outcome.batches += 1
            outcome.deleted += row["scanned"] if self.dry_run else row["deleted"]
            if row["scanned"] < size:
                return
            cursor = row["last"]
            await asyncio.sleep(self.retention.pause_s)

    async def _drop_partitions(self, policy: Policy, cutoff: datetime, outcome: TableOutcome) -> None:
        names = [r["relname"] for r in await self.conn.fetch(PARTITIONS_SQL, self.schema_name)]
        utc = cutoff.astimezone(UTC)
        for name in partitions_to_drop(names, utc.year, utc.month):
            qualified = f"{quote_ident(self.schema_name)}.{quote_ident(name)}"
            async with self.conn.transaction():
                await self.conn.execute(BATCH_SETUP_SQL, *self.setup)
                rows = await self.conn.fetchval(COUNT_TABLE_SQL.format(table=qualified))
                if not self.dry_run:
                    await self.conn.execute(DROP_TABLE_SQL.format(table=qualified))
            outcome.batches += 1
            outcome.deleted += rows
            outcome.partitions_dropped.append(name)
            await asyncio.sleep(self.retention.pause_s)

    async def _orders(self, policy: Policy, cutoff: datetime) -> list[TableOutcome]:
        unit = order_unit_sql(self.schema_name, delete=not self.dry_run)
        outcomes = {table: self._outcome(policy, cutoff, table) for table, _ in unit}
        ids_sql = order_ids_batch_sql(self.schema_name, lock=not self.dry_run)
        cursor = uuid.UUID(int=0)
        size = self.retention.batch_size
        try:
            while True:
                async with self.conn.transaction():
                    await self.conn.execute(BATCH_SETUP_SQL, *self.setup)
                    ids = [r["id"] for r in await self.conn.fetch(ids_sql, cutoff, size, cursor)]
                    for table, sql in unit if ids else ():
                        outcomes[table].deleted += await self.conn.fetchval(sql, ids)
                for outcome in outcomes.values():
                    outcome.batches += 1
                if len(ids) < size:
                    break
                cursor = ids[-1]
                await asyncio.sleep(self.retention.pause_s)
        except asyncpg.PostgresError as exc:
            outcomes["orders"].error = _table_error(exc)
        return list(outcomes.values())


async def _ensure_partitions(conn: asyncpg.Connection, tenant_id: str, schema_name: str,
                             retention: RetentionSettings) -> int:
    async with conn.transaction():
        await conn.execute(BATCH_SETUP_SQL, f"{retention.lock_timeout_ms}ms",
                           f"{retention.statement_timeout_ms}ms", tenant_id)
        await conn.execute("SELECT set_config('search_path', $1, true)",
                           f"{quote_ident(schema_name)}, public")
        return await conn.fetchval(ENSURE_PARTITIONS_SQL, retention.partitions_ahead)


async def _tenants_by_shard(control: asyncpg.Connection, tenant_id: str | None) -> dict[int, list]:
    shards: dict[int, list] = {}
    for row in await control.fetch(TENANTS_SQL, tenant_id):
        shards.setdefault(row["shard_id"], []).append(row)
    return shards


async def ensure_partitions_ahead(settings: PostgresSettings, retention: RetentionSettings) -> int:
    """The analytics partitions of the coming months in every tenant schema; how many were made.
    A tenant whose parent table is busy (lock timeout) is left for the next round."""
    created = 0
    async with connection(settings.control) as control:
        shards = await _tenants_by_shard(control, None)
    for rows in shards.values():
        async with connection(shard_dsn(settings, rows[0])) as conn:
            for row in rows:
                try:
                    created += await _ensure_partitions(conn, row["tenant_id"], row["schema_name"], retention)
                except asyncpg.PostgresError as exc:
                    log.warning("analytics partitions of %s not created this round: %s",
                                row["schema_name"], _table_error(exc))
    return created


def _active_policies(rows: list[asyncpg.Record], table: str | None, allow_financial: bool,
                     report: RetentionReport) -> list[Policy]:
    policies = []
    for row in rows:
        if not row["is_active"] or (table is not None and row["table_name"] != table):
            continue
        try:
            policies.append(validate_policy(_row_dict(row), allow_financial=allow_financial))
        except RetentionPolicyError as exc:
            report.refused.append(f"policy {row['id']} ({str(row['table_name'])[:80]!r}): {exc}")
            log.error("retention policy %s refused: %s", row["id"], exc)
    return policies


async def run_retention(settings: PostgresSettings, retention: RetentionSettings, *,
                        dry_run: bool = False, tenant: str | None = None, table: str | None = None,
                        now: datetime | None = None) -> RetentionReport:
    """Apply the active policies (only ``table``'s, only in ``tenant`` when given)."""
    if table is not None:
        validate_table(table)
    now = now or datetime.now(UTC)
    report = RetentionReport(None, dry_run)
    async with connection(settings.control) as control:
        tenant_id = None if tenant is None else await resolve_tenant(control, tenant)
        policies = _active_policies(await control.fetch(POLICIES_SQL), table,
                                    retention.allow_financial, report)
        shards = await _tenants_by_shard(control, tenant_id)
        if not dry_run:
            report.run_id = await control.fetchval(START_RUN_SQL, tenant_id, table)
        try:
            for rows in shards.values():
                async with connection(shard_dsn(settings, rows[0])) as conn:
                    for row in rows:
                        await _one_tenant(control, conn, row, policies, retention, report, now)
        except BaseException as exc:
            # Best effort: a cancelled or broken control connection may not take it (the row
            # then stays 'running', which no schedule counts).
            if report.run_id:
                with contextlib.suppress(Exception):
                    await asyncio.shield(control.execute(FINISH_RUN_SQL, report.run_id, "failed",
                                                         f"{exc.__class__.__name__}: {exc}"[:1000]))
            raise
        if report.run_id:
            await control.execute(FINISH_RUN_SQL, report.run_id, "completed", None)
    log.info("retention %s: %d row(s) %s in %d table run(s), %d refused polic(ies), %d error(s)",
             "dry run" if dry_run else f"run {report.run_id}", report.deleted,
             "would go" if dry_run else "deleted", len(report.outcomes), len(report.refused),
             len(report.errors))
    return report


async def _one_tenant(control: asyncpg.Connection, conn: asyncpg.Connection, row: asyncpg.Record,
                      policies: list[Policy], retention: RetentionSettings,
                      report: RetentionReport, now: datetime) -> None:
    batches = _Batches(conn, row["tenant_id"], row["schema_name"], retention, dry_run=report.dry_run)
    outcomes: list[TableOutcome] = []
    for policy in policies:
        outcomes += await batches.apply(policy, now)
    if not report.dry_run and any(p.rule.kind == "partitioned" for p in policies):
        try:
            report.partitions_created += await _ensure_partitions(
                conn, row["tenant_id"], row["schema_name"], retention)
        except asyncpg.PostgresError as exc:
            log.warning("analytics partitions of %s not created this run: %s", row["schema_name"],
                        _table_error(exc))
    report.outcomes += outcomes
    if not report.dry_run and outcomes:
        await control.executemany(LOG_SQL, [
            (o.tenant_id, o.table, o.deleted, o.policy_id, report.run_id, o.batches, o.duration_ms,
             o.partitions_dropped, o.cutoff, o.error) for o in outcomes])


__all__ = ["CATALOGUE", "PolicyRow", "RetentionReport", "TableOutcome", "ensure_partitions_ahead",
           "list_policies", "maintenance_lock", "resolve_tenant", "run_retention",
           "seconds_since_last_full_run", "set_policy"]
