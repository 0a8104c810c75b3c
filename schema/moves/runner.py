"""``wakala tenant move``: one tenant's schema to another shard while it keeps working.

The steps (``schema.moves.plan.STEPS``) and why each is safe to repeat:

1. **preparing**: the target schema is built by the tenant migrations (the same files that
   built the source, so the tables match column for column; ``migrate_tenant_schema`` skips
   what is applied). A target schema that already holds rows is refused, not overwritten.
2. **copying**: publication on the source, slot, subscription on the target
   (``schema.moves.replication``: each created only if missing). PostgreSQL copies every
   table and then streams changes; the move waits for every table to be ready. With
   ``method = 'copy'`` (a server without ``wal_level = logical``, only with ``--offline``) the
   tenant is paused and fenced first and the tables are copied with ``COPY`` in one target
   transaction (``schema.moves.copying``).
3. **catching_up**: wait until the slot's unconfirmed WAL is small.
4. **switching**: pause and fence (``schema.moves.fence``), wait for the target to confirm
   the source's last change, copy the sequences, compare row counts and checksums of every
   table on both sides (``schema.checksums``). A difference unpauses and unfences the
   source and stops the move (resumable); nothing switches.
5. **switched**: one control-plane transaction moves the mapping, clears the pause, records
   the pause and notifies the engines (they route to the new shard at once).
6. **completed**: the subscription, slot and publication are dropped. The old schema stays,
   fenced, until ``cleanup_moves`` (``--cleanup`` or the grace period).

The step is recorded before its work; ``WAKALA_MOVE_CRASH_AFTER=<point>`` kills the process
with SIGKILL at a named point (after a step's work, before the next is recorded), which is
how the tests prove that a rerun after a crash anywhere ends in the same state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import asyncpg

from schema.checksums import checksums, differences, row_count, schema_tables, total_rows
from schema.connect import connection
from schema.errors import MoveError, UnknownTenant
from schema.migrate import lock, migrate_tenant_schema, unlock
from schema.moves import copying, fence, replication
from schema.moves.cleanup import CLEANED_SQL, drop_tenant_schema
from schema.moves.plan import (
    STEPS,
    MovePlan,
    ShardInfo,
    TableSize,
    refuse_move,
    replication_name,
    step_index,
)
from schema.settings import DSN, PostgresSettings, env_number
from schema.tenants import parse_tenant_id

TENANT_SQL = """
SELECT m.shard_id, m.schema_name, t.status FROM tenant_shard_mapping m JOIN tenants t ON t.id = m.tenant_id
WHERE m.tenant_id = $1
"""
SHARDS_SQL = "SELECT shard_id, shard_name, status, host, port, database_name, weight FROM shard_map"
OPEN_MOVE_SQL = """
SELECT * FROM tenant_migrations WHERE tenant_id = $1 AND status NOT IN ('completed', 'cleaned', 'failed')
"""
INSERT_MOVE_SQL = """
INSERT INTO tenant_migrations (id, tenant_id, source_shard, target_shard, status, schema_name, method)
VALUES ($1, $2, $3, $4, 'started', $5, $6) RETURNING *
"""
SET_STATUS_SQL = "UPDATE tenant_migrations SET status = $2, updated_at = now() WHERE id = $1"
SET_COPIED_SQL = """
UPDATE tenant_migrations SET rows_copied = $2, copy_seconds = $3, updated_at = now() WHERE id = $1
"""
SET_LAG_SQL = "UPDATE tenant_migrations SET catchup_lag_bytes = $2, updated_at = now() WHERE id = $1"
SWITCH_MAPPING_SQL = """
UPDATE tenant_shard_mapping SET shard_id = $2, writes_paused_at = NULL
WHERE tenant_id = $1 AND shard_id = $3
RETURNING extract(epoch FROM clock_timestamp() - $4::timestamptz) * 1000 AS pause_ms
"""
PAUSED_AT_SQL = "SELECT writes_paused_at FROM tenant_shard_mapping WHERE tenant_id = $1"
SWITCHED_SQL = """
UPDATE tenant_migrations SET status = 'switched', pause_ms = $2, checksums = $3, updated_at = now()
WHERE id = $1
"""
COMPLETED_SQL = """
UPDATE tenant_migrations SET status = 'completed', completed_at = now(),
       cleanup_after = now() + make_interval(secs => $2), updated_at = now()
WHERE id = $1
"""
FAILED_SQL = """
UPDATE tenant_migrations SET status = 'failed', error_message = $2, completed_at = now(), updated_at = now()
WHERE id = $1
"""
SIZES_SQL = """
SELECT c.relname, greatest(c.reltuples, 0)::bigint AS rows, pg_total_relation_size(c.oid) AS bytes
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY c.relname
"""
LEFT_BEHIND_SQL = """
SELECT id FROM tenant_migrations WHERE tenant_id = $1 AND source_shard = $2 AND status = 'completed'
"""
APPLIED_SQL = "SELECT version FROM public.schema_migrations WHERE scope = $1 ORDER BY version"
SEQUENCES_SQL = "SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = $1"
MATVIEWS_SQL = "SELECT matviewname FROM pg_matviews WHERE schemaname = $1"
CATCHUP_BYTES = 1 << 20          # the switch starts once the slot is this close to the source
GRACE_S = 7 * 86400.0            # the old schema is kept this long after a move (WAKALA_MOVE_GRACE_S)
Progress = Callable[[str, dict], None]


@dataclass
class MoveOptions:
    dry_run: bool = False
    offline: bool = False             # allow the paused COPY method when wal_level is not logical
    method: str | None = None         # force 'copy' (with offline) even where logical would work
    catchup_timeout_s: float = 600.0
    switch_timeout_s: float = 30.0
    grace_s: float = field(default_factory=lambda: env_number(os.environ, "WAKALA_MOVE_GRACE_S", GRACE_S,
                                                              0, 10 * 365 * 86400))
    progress: Progress | None = None


@dataclass
class MoveResult:
    move_id: uuid.UUID
    tenant_id: uuid.UUID
    source: int
    target: int
    method: str
    status: str
    rows: int = 0
    copy_seconds: float | None = None
    catchup_lag_bytes: int | None = None
    catchup_seconds: float | None = None
    pause_ms: float | None = None
    resumed_from: str | None = None
    pause_phases_ms: dict[str, float] = field(default_factory=dict)   # where the write pause went


def _crash_point(point: str) -> None:
    """Fault injection for the crash tests: SIGKILL ourselves at a named point."""
    if os.environ.get("WAKALA_MOVE_CRASH_AFTER") == point:
        os.kill(os.getpid(), signal.SIGKILL)


def _shard(row: asyncpg.Record) -> ShardInfo:
    return ShardInfo(row["shard_id"], row["shard_name"], row["status"], row["host"], row["port"],
                     row["database_name"], float(row["weight"]))


def shard_address(settings: PostgresSettings, shard: ShardInfo) -> DSN:
    return DSN(shard.host, shard.port, settings.control.user, shard.database, settings.control.password)


class Move:
    """One move's connections and record; ``run`` walks the steps from the recorded one."""

    def __init__(self, settings: PostgresSettings, options: MoveOptions, control: asyncpg.Connection,
                 src: asyncpg.Connection, dst: asyncpg.Connection, plan: MovePlan, record: asyncpg.Record):
        self.settings, self.options = settings, options
        self.control, self.src, self.dst = control, src, dst
        self.plan, self.record = plan, record
        self.id: uuid.UUID = record["id"]
        self.name = replication_name(self.id)
        self.schema = plan.schema_name
        self.result = MoveResult(self.id, plan.tenant_id, plan.source.shard_id, plan.target.shard_id,
                                 record["method"], record["status"], resumed_from=plan.resume_status)
        self.tables: list[str] = []

    def _say(self, event: str, **fields: object) -> None:
        if self.options.progress is not None:
            self.options.progress(event, fields)

    async def _status(self, status: str) -> None:
        await self.control.execute(SET_STATUS_SQL, self.id, status)
        self.result.status = status
        self._say("step", step=status)

    async def run(self) -> MoveResult:
        at = step_index(self.record["status"])
        self.tables = await schema_tables(self.src, self.schema)
        logical = self.record["method"] == "logical"
        if at <= step_index("preparing"):
            await self._status("preparing")
            await self._prepare()
            _crash_point("preparing")
        if at <= step_index("copying"):
            await self._status("copying")
            await (self._copy_logical() if logical else self._copy_paused())
            _crash_point("copying")
        if at <= step_index("catching_up") and logical:
            await self._status("catching_up")
            await self._catch_up()
            _crash_point("catching_up")
        if at <= step_index("switching"):
            await self._status("switching")
            await self._switch(logical)
            _crash_point("switched")
        if at <= step_index("switched"):
            if logical:
                await replication.drop_replication(self.src, self.dst, self.name)
            await self.control.execute(COMPLETED_SQL, self.id, self.options.grace_s)
            self.result.status = "completed"
            self._say("step", step="completed")
        return self.result

    async def _prepare(self) -> None:
        await lock(self.control)   # no `wakala migrate` or provisioning changes schemas meanwhile
        try:
            # Moving back to a shard the tenant left: its old schema there (kept, fenced, for
            # the grace period) is older than the live one; it is dropped, not reused.
            for old in await self.control.fetch(LEFT_BEHIND_SQL, self.plan.tenant_id, self.plan.target.shard_id):
                await drop_tenant_schema(self.dst, self.schema)
                await self.control.execute(CLEANED_SQL, old["id"])
            await migrate_tenant_schema(self.dst, self.settings, self.schema, str(self.plan.tenant_id))
            await fence.unfence(self.dst, self.schema, self.settings.app_role)
        finally:
            await unlock(self.control)
        held = await row_count(self.dst, self.schema)
        if held:
            raise MoveError(f"{self.schema} on shard {self.plan.target.shard_id} already holds {held} rows "
                            "that are not this move's; drop that schema first (it is not the tenant's live copy)")

    async def _copy_logical(self) -> None:
        start = time.monotonic()
        await replication.ensure_publication(self.src, self.name, self.schema, self.tables)
        await replication.ensure_slot(self.src, self.name)
        await replication.ensure_subscription(self.dst, self.name, shard_address(self.settings, self.plan.source))
        while True:
            ready, total = await replication.sync_states(self.dst, self.name)
            self._say("copy", ready=ready, total=total,
                      rows=await replication.target_rows(self.dst, self.schema), rows_expected=self.plan.rows)
            if total and ready == total:
                break
            if time.monotonic() - start > self.options.catchup_timeout_s:
                raise MoveError(f"the initial copy did not finish within {self.options.catchup_timeout_s:g} s "
                                f"({ready}/{total} tables ready); it goes on in the server: rerun to resume")
            await asyncio.sleep(0.1)
        await self._refresh_views()
        rows = await row_count(self.dst, self.schema)
        self.result.rows, self.result.copy_seconds = rows, time.monotonic() - start
        await self.control.execute(SET_COPIED_SQL, self.id, rows, self.result.copy_seconds)

    async def _copy_paused(self) -> None:
        await fence.pause(self.control, self.plan.tenant_id)
        await fence.fence(self.src, self.schema, self.tables, self.settings.app_role)
        start = time.monotonic()
        rows = await copying.copy_schema(self.src, self.dst, self.schema, self.tables,
                                         progress=lambda n: self._say("copy", rows=n, rows_expected=self.plan.rows))
        await self._refresh_views()
        self.result.rows, self.result.copy_seconds = rows, time.monotonic() - start
        await self.control.execute(SET_COPIED_SQL, self.id, rows, self.result.copy_seconds)

    async def _refresh_views(self) -> None:
        for row in await self.dst.fetch(MATVIEWS_SQL, self.schema):
            await self.dst.execute(f"REFRESH MATERIALIZED VIEW {copying.qualified(self.schema, row['matviewname'])}")

    async def _catch_up(self) -> None:
        start = time.monotonic()
        while (lag := await replication.lag_bytes(self.src, self.name)) is None or lag > CATCHUP_BYTES:
            if time.monotonic() - start > self.options.catchup_timeout_s:
                raise MoveError(f"the target is still {lag} bytes behind after {self.options.catchup_timeout_s:g} s; "
                                "rerun to resume")
            await asyncio.sleep(0.05)
        self.result.catchup_lag_bytes, self.result.catchup_seconds = lag, time.monotonic() - start
        await self.control.execute(SET_LAG_SQL, self.id, lag)
        self._say("lag", bytes=lag)

    async def _same_migrations(self) -> None:
        src = [r["version"] for r in await self.src.fetch(APPLIED_SQL, self.schema)]
        dst = [r["version"] for r in await self.dst.fetch(APPLIED_SQL, self.schema)]
        if src != dst:
            raise MoveError(f"the source and target schemas differ in migrations ({src[-1:]} vs {dst[-1:]}): "
                            "run `wakala migrate` and rerun the move")

    async def _switch(self, logical: bool) -> None:
        await self._same_migrations()
        phases, mark = self.result.pause_phases_ms, time.perf_counter()

        def lap(name: str) -> None:
            nonlocal mark
            now = time.perf_counter()
            phases[name] = round((now - mark) * 1000, 1)
            mark = now

        await fence.pause(self.control, self.plan.tenant_id)
        lap("pause")
        self._say("pause")
        await fence.fence(self.src, self.schema, self.tables, self.settings.app_role)
        lap("fence")
        _crash_point("fenced")
        try:
            if logical:
                lsn = await replication.current_lsn(self.src)
                await replication.wait_flushed(self.src, self.name, lsn, timeout_s=self.options.switch_timeout_s)
                lap("last_change")
                await self._copy_sequences()
            sums = await self._verify(logical)
            lap("verify")
        except BaseException as exc:
            if not isinstance(exc, MoveError):
                raise   # a crash or a lost connection: the tenant stays paused and fenced for the rerun
            await fence.unfence(self.src, self.schema, self.settings.app_role)
            await fence.unpause(self.control, self.plan.tenant_id)
            await self.control.execute(SET_STATUS_SQL, self.id, "catching_up" if logical else "preparing")
            raise
        async with self.control.transaction():
            paused_at = await self.control.fetchval(PAUSED_AT_SQL, self.plan.tenant_id)
            pause_ms = await self.control.fetchval(SWITCH_MAPPING_SQL, self.plan.tenant_id, self.plan.target.shard_id,
                                                   self.plan.source.shard_id, paused_at)
            if pause_ms is None:
                raise MoveError("the tenant's mapping changed under the move; nothing switched")
            summary = {t: [s.rows, s.checksum] for t, s in sums.items()}
            await self.control.execute(SWITCHED_SQL, self.id, pause_ms, json.dumps(summary))
            await fence.notify(self.control, self.plan.tenant_id)
        lap("switch")
        self.result.pause_ms = float(pause_ms)
        self.result.status = "switched"
        self._say("switched", pause_ms=float(pause_ms))

    async def _copy_sequences(self) -> None:
        for row in await self.src.fetch(SEQUENCES_SQL, self.schema):
            if row["last_value"] is not None:
                await self.dst.execute("SELECT setval($1::regclass, $2, true)",
                                       copying.qualified(self.schema, row["sequencename"]), row["last_value"])

    async def _verify(self, logical: bool) -> dict:
        """Both sides counted and summed at once; a logical move retries briefly (the last
        apply may land a moment after the slot confirmed it)."""
        for attempt in range(4):
            src, dst = await asyncio.gather(checksums(self.src, self.schema, self.tables),
                                            checksums(self.dst, self.schema, self.tables))
            wrong = differences(src, dst)
            if not wrong:
                self._say("verified", tables=len(src), rows=total_rows(src))
                return src
            if not logical or attempt == 3:
                raise MoveError("the copy differs from the source, so nothing switched: " + "; ".join(wrong[:5]))
            await asyncio.sleep(0.2)
        raise AssertionError("unreachable")


@contextlib.asynccontextmanager
async def _connections(settings: PostgresSettings, source: ShardInfo, target: ShardInfo) -> AsyncIterator[tuple]:
    async with connection(shard_address(settings, source)) as src, \
            connection(shard_address(settings, target)) as dst:
        yield src, dst


async def plan_move(control: asyncpg.Connection, settings: PostgresSettings, tenant: object,
                    target_shard: int, *, offline: bool, dry_run: bool = False,
                    method: str | None = None) -> tuple[MovePlan, asyncpg.Record | None]:
    tenant_id = parse_tenant_id(tenant)
    row = await control.fetchrow(TENANT_SQL, tenant_id)
    if row is None:
        raise UnknownTenant(f"no tenant {tenant_id} is registered; see `wakala tenant list`")
    if row["status"] not in ("active", "suspended"):
        raise MoveError(f"tenant {tenant_id} is {row['status']}; only active or suspended tenants move")
    shards = {r["shard_id"]: _shard(r) for r in await control.fetch(SHARDS_SQL)}
    open_move = await control.fetchrow(OPEN_MOVE_SQL, tenant_id)
    if open_move is not None and open_move["target_shard"] != target_shard:
        raise MoveError(f"tenant {tenant_id} has an unfinished move to shard {open_move['target_shard']} "
                        f"(status {open_move['status']}); rerun it with --to {open_move['target_shard']} "
                        "or abort it with --abort")
    source = shards[open_move["source_shard"] if open_move is not None else row["shard_id"]]
    if open_move is None:
        refuse_move(row["shard_id"], shards.get(target_shard), target_shard)
    target = shards[target_shard]
    async with connection(shard_address(settings, source)) as src:
        sizes = tuple(TableSize(r["relname"], r["rows"], r["bytes"]) for r in await src.fetch(SIZES_SQL, row["schema_name"]))
        level = await replication.wal_level(src)
    if method not in (None, "logical", "copy"):
        raise MoveError(f"method must be logical or copy, got {method!r}")
    if method == "logical" and level != "logical":
        raise MoveError(f"shard {source.shard_id} runs with wal_level = {level}: no logical replication")
    method = open_move["method"] if open_move is not None else (
        method or ("logical" if level == "logical" else "copy"))
    if method == "copy" and not offline and not dry_run:
        raise MoveError(f"shard {source.shard_id} runs with wal_level = {level}, so the tenant cannot be copied "
                        "while it takes writes: set wal_level = logical (ALTER SYSTEM, then restart PostgreSQL) "
                        "for an online move, or pass --offline to pause the tenant's writes for the whole copy")
    plan = MovePlan(tenant_id, row["schema_name"], source, target, method, sizes,
                    open_move["status"] if open_move is not None else None)
    return plan, open_move


async def move_tenant(settings: PostgresSettings, tenant: object, target_shard: int,
                      options: MoveOptions | None = None) -> MovePlan | MoveResult:
    """Move (or resume moving) a tenant to ``target_shard``; with ``dry_run`` only the plan."""
    options = options or MoveOptions()
    async with connection(settings.control) as control:
        plan, record = await plan_move(control, settings, tenant, target_shard, offline=options.offline,
                                       dry_run=options.dry_run, method=options.method)
        if options.dry_run:
            return plan
        if record is None:
            try:
                record = await control.fetchrow(INSERT_MOVE_SQL, uuid.uuid4(), plan.tenant_id, plan.source.shard_id,
                                                plan.target.shard_id, plan.schema_name, plan.method)
            except asyncpg.UniqueViolationError:
                raise MoveError(f"another move of tenant {plan.tenant_id} started just now; rerun to resume it") from None
            _crash_point("started")
        async with _connections(settings, plan.source, plan.target) as (src, dst):
            return await Move(settings, options, control, src, dst, plan, record).run()


async def abort_move(settings: PostgresSettings, tenant: object) -> str:
    """Undo an unfinished move that has not switched: the tenant keeps (or gets back) its
    source schema, replication objects and the target schema are dropped."""
    tenant_id = parse_tenant_id(tenant)
    async with connection(settings.control) as control:
        record = await control.fetchrow(OPEN_MOVE_SQL, tenant_id)
        if record is None:
            raise MoveError(f"tenant {tenant_id} has no unfinished move")
        if step_index(record["status"]) >= step_index("switched"):
            raise MoveError(f"the move of tenant {tenant_id} has switched already; finish it by rerunning "
                            f"`wakala tenant move {tenant_id} --to {record['target_shard']}`")
        shards = {r["shard_id"]: _shard(r) for r in await control.fetch(SHARDS_SQL)}
        source, target = shards[record["source_shard"]], shards[record["target_shard"]]
        async with _connections(settings, source, target) as (src, dst):
            await fence.unfence(src, record["schema_name"], settings.app_role)
            await fence.unpause(control, tenant_id)
            if record["method"] == "logical":
                await replication.drop_replication(src, dst, replication_name(record["id"]))
            await drop_tenant_schema(dst, record["schema_name"])
        await control.execute(FAILED_SQL, record["id"], "aborted by the operator")
    return f"aborted the move of tenant {tenant_id} to shard {record['target_shard']}; it stays on shard " \
           f"{record['source_shard']}"


__all__ = ["STEPS", "MoveOptions", "MoveResult", "abort_move", "move_tenant", "plan_move", "shard_address"]
