"""``wakala status``: one screen of live health for an operator at a terminal.

What it reads, each part under its own time limit (a dead or silent service costs at most
``timeout_s`` per part, and the parts run concurrently, so the command never hangs):

* services: PostgreSQL (the control database and each shard of ``shard_map`` not retired), Redis and the
  broker, up or down with the round-trip time of the check (``dispatch.ops.checks``);
* shards: status, tenants, database size, connections (``pg_stat_activity``);
* open deliveries by state, summed over every tenant schema the control plane maps (read as
  the owner, one short transaction per tenant that declares the tenant, since row-level
  security is forced even for the owner);
* unfinished tenant moves (``tenant_migrations`` not completed, cleaned or failed);
* the last completed backup per tenant and its age, flagged past ``BACKUP_STALE_S`` (26 h:
  a daily schedule plus slack);
* the location worker's consumer lag: end offsets of the locations topic minus what its
  group has done (the larger of its committed offset and the offset it last landed in
  Redis, as the load test reads it); "unknown" with the reason when it cannot be read;
* when ``database_metrics`` was last sampled.

The verdict (exit status 1) is "something is down or unreadable": a service check failed or a
part could not be read. Stale backups and unfinished moves are flagged on screen and in the
JSON but do not change the exit status: they are work for an operator, not an outage.

The report is plain data (:class:`StatusReport`); rendering and the verdict are pure
functions, tested without services.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from dispatch.core.console import format_table
from dispatch.ops.checks import ServiceStatus, check_kafka, check_postgres, check_redis

__all__ = ["BACKUP_STALE_S", "StatusReport", "backup_age_flag", "backup_gap_s", "consumer_lag", "gather_status",
           "read_last_backups", "render", "to_json", "verdict"]

BACKUP_STALE_S = 26 * 3600
OPEN_DELIVERY_STATES = ("pending", "offered", "unassigned", "assigned", "at_pickup", "picked_up")
_TENANT_SCHEMA = re.compile(r"^tenant_[0-9a-f]{12}$")


@dataclass
class ServiceCheck:
    name: str
    ok: bool
    latency_ms: float | None
    detail: str


@dataclass
class StatusReport:
    """Everything ``wakala status`` shows; ``errors`` names the parts that could not be read."""

    checked_at: datetime
    services: list[ServiceCheck] = field(default_factory=list)
    shards: list[dict[str, Any]] = field(default_factory=list)
    deliveries: dict[str, int] = field(default_factory=dict)
    moves: list[dict[str, Any]] = field(default_factory=list)
    backups: list[dict[str, Any]] = field(default_factory=list)
    consumer_lag: int | None = None
    consumer_lag_detail: str = "unknown"
    metrics_sampled_at: datetime | None = None
    errors: list[str] = field(default_factory=list)


# ---- pure: verdict, flags, rendering -------------------------------------------------------

def verdict(report: StatusReport) -> bool:
    """True when every service answered and every part was read."""
    return bool(report.services) and all(s.ok for s in report.services) and not report.errors


def backup_age_flag(completed_at: datetime | None, now: datetime) -> tuple[float | None, bool]:
    """(age in seconds, stale?) of a tenant's last completed backup; never backed up is stale."""
    if completed_at is None:
        return None, True
    age = (now - completed_at).total_seconds()
    return age, age > BACKUP_STALE_S


def backup_gap_s(completed_at: datetime | None, created_at: datetime | None, now: datetime) -> float:
    """Seconds a tenant has gone without a backup: since its last completed one, or since it was
    created when it has none (so a new tenant is not overdue before its first schedule came)."""
    since = completed_at or created_at
    return 0.0 if since is None else max(0.0, (now - since).total_seconds())


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def render(report: StatusReport) -> str:
    """The terminal screen: one table per part, then the verdict line."""
    now = report.checked_at
    parts = [format_table(["service", "state", "latency", "detail"],
                          [(s.name, "up" if s.ok else "DOWN",
                            "-" if s.latency_ms is None else f"{s.latency_ms:.0f} ms", s.detail)
                           for s in report.services])]
    if report.shards:
        parts.append(format_table(["shard", "status", "tenants", "size", "connections"],
                                  [(f"{s['shard_id']} {s['name']}", s["status"], s["tenants"],
                                    human_bytes(s.get("size_bytes")),
                                    "?" if s.get("connections") is None else s["connections"])
                                   for s in report.shards]))
    states = [(state, n) for state, n in sorted(report.deliveries.items()) if n]
    parts.append(format_table(["open deliveries", "count"], states or [("(none)", 0)]))
    if report.moves:
        parts.append(format_table(["unfinished move", "tenant", "from", "to", "status", "since"],
                                  [(m["id"][:8], m["tenant_id"][:8], m["source_shard"], m["target_shard"],
                                    m["status"], human_age(m["age_s"])) for m in report.moves]))
    if report.backups:
        parts.append(format_table(["tenant", "last backup", "age", ""],
                                  [(b["slug"], b["completed_at"] or "never", human_age(b["age_s"]),
                                    "STALE" if b["stale"] else "") for b in report.backups]))
    lag = report.consumer_lag_detail if report.consumer_lag is None else f"{report.consumer_lag} message(s)"
    sampled = ("never" if report.metrics_sampled_at is None else
               f"{report.metrics_sampled_at.isoformat(timespec='seconds')} "
               f"({human_age((now - report.metrics_sampled_at).total_seconds())} ago)")
    lines = [f"location worker lag: {lag}", f"database metrics sampled: {sampled}"]
    lines += [f"error: {e}" for e in report.errors]
    stale = sum(1 for b in report.backups if b["stale"])
    lines.append("verdict: " + ("all up" if verdict(report) else "NOT all up")
                 + (f"; {stale} tenant(s) without a backup in 26 h" if stale else "")
                 + (f"; {len(report.moves)} move(s) unfinished" if report.moves else ""))
    parts.append("\n".join(lines))
    return "\n\n".join(parts)


def to_json(report: StatusReport) -> dict[str, Any]:
    """The report as one JSON-ready object (times ISO 8601), with ``ok`` the verdict."""
    data = asdict(report)
    data["checked_at"] = report.checked_at.isoformat()
    data["metrics_sampled_at"] = report.metrics_sampled_at and report.metrics_sampled_at.isoformat()
    data["ok"] = verdict(report)
    return data


# ---- I/O ------------------------------------------------------------------------------------

async def _timed(name: str, check) -> ServiceCheck:
    started = time.monotonic()
    status: ServiceStatus = await check
    latency = (time.monotonic() - started) * 1000
    return ServiceCheck(name, status.ok, round(latency, 1) if status.ok else None, status.detail)


async def _bounded(report: StatusReport, part: str, timeout_s: float, coro) -> Any:
    """Run one part within ``timeout_s``; a failure becomes an error line, never an exception."""
    try:
        async with asyncio.timeout(timeout_s):
            return await coro
    except TimeoutError:
        report.errors.append(f"{part}: no answer within {timeout_s:g}s")
    except Exception as exc:  # noqa: BLE001 - the status screen names any failure and goes on
        report.errors.append(f"{part}: {type(exc).__name__}: {exc}"[:300])
    return None


CONTROL_SQL = {
    "shards": """SELECT s.shard_id, s.shard_name, s.host, s.port, s.database_name, s.status,
                        count(m.tenant_id) AS tenants
                 FROM shard_map s LEFT JOIN tenant_shard_mapping m USING (shard_id)
                 GROUP BY s.shard_id ORDER BY s.shard_id""",
    "tenants": """SELECT t.id, t.slug, m.shard_id, m.schema_name FROM tenants t
                  JOIN tenant_shard_mapping m ON m.tenant_id = t.id
                  WHERE t.status IN ('active', 'suspended') ORDER BY t.slug""",
    "moves": """SELECT id, tenant_id, source_shard, target_shard, status,
                       extract(epoch FROM now() - started_at)::float8 AS age_s
                FROM tenant_migrations WHERE status NOT IN ('completed', 'cleaned', 'failed')
                ORDER BY started_at""",
    "backups": """SELECT t.slug, max(b.completed_at) AS completed_at, t.created_at
                  FROM tenants t LEFT JOIN backup_log b ON b.tenant_id = t.id AND b.status = 'completed'
                  WHERE t.status = 'active' GROUP BY t.slug, t.created_at ORDER BY t.slug""",
    "metrics": "SELECT max(recorded_at) FROM database_metrics",
}
SHARD_SQL = """SELECT pg_database_size(current_database()) AS size_bytes,
                      (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()) AS connections"""
OPEN_DELIVERIES_SQL = """SELECT status, count(*) AS n FROM {schema}.deliveries
                         WHERE status = ANY($1::text[]) GROUP BY status"""


async def _read_control(report: StatusReport, pg, timeout_s: float) -> tuple[list, list]:
    import asyncpg

    conn = await asyncpg.connect(pg.control.url(), timeout=timeout_s)
    try:
        await conn.execute(f"SET statement_timeout = {int(timeout_s * 1000)}")
        shards = await conn.fetch(CONTROL_SQL["shards"])
        tenants = await conn.fetch(CONTROL_SQL["tenants"])
        report.moves = [{"id": str(r["id"]), "tenant_id": str(r["tenant_id"]), "source_shard": r["source_shard"],
                         "target_shard": r["target_shard"], "status": r["status"], "age_s": r["age_s"]}
                        for r in await conn.fetch(CONTROL_SQL["moves"])]
        for r in await read_last_backups(conn):
            age, stale = backup_age_flag(r["completed_at"], report.checked_at)
            report.backups.append({"slug": r["slug"], "age_s": age, "stale": stale,
                                   "completed_at": r["completed_at"] and r["completed_at"].isoformat(
                                       timespec="seconds")})
        report.metrics_sampled_at = await conn.fetchval(CONTROL_SQL["metrics"])
    finally:
        await conn.close()
    return shards, tenants


async def _read_shard(report: StatusReport, pg, shard, tenants, timeout_s: float) -> dict[str, int]:
    """Size and connections of one shard, and its tenants' open deliveries by state."""
    import asyncpg

    from schema.migrate import shard_dsn

    row = report.shards[[s["shard_id"] for s in report.shards].index(shard["shard_id"])]
    conn = await asyncpg.connect(shard_dsn(pg, shard).url(), timeout=timeout_s)
    counts: dict[str, int] = {}
    try:
        await conn.execute(f"SET statement_timeout = {int(timeout_s * 1000)}")
        r = await conn.fetchrow(SHARD_SQL)
        row["size_bytes"], row["connections"] = r["size_bytes"], r["connections"]
        for tenant in tenants:
            if tenant["shard_id"] != shard["shard_id"] or not _TENANT_SCHEMA.match(tenant["schema_name"]):
                continue
            async with conn.transaction(readonly=True):
                await conn.execute("SELECT set_config('app.current_tenant_id', $1, true)", str(tenant["id"]))
                rows = await conn.fetch(OPEN_DELIVERIES_SQL.format(schema=tenant["schema_name"]),
                                        list(OPEN_DELIVERY_STATES))
            for d in rows:
                counts[d["status"]] = counts.get(d["status"], 0) + d["n"]
    finally:
        await conn.close()
    return counts


async def read_last_backups(conn) -> list:
    """Each active tenant's slug, last completed backup (or None) and creation time, from the
    control plane (``conn``: a connection as its owner)."""
    return await conn.fetch(CONTROL_SQL["backups"])


async def consumer_lag(streams, timeout_s: float, redis_ok: bool = True) -> tuple[int, str]:
    """Messages the location worker's group has yet to process on the locations topic, and what
    was read (the engine's ``wakala_location_lag_messages`` samples it too). LookupError when
    the topic does not exist; each broker request is bounded by ``timeout_s``, the whole is
    the caller's to bound."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.keys import ingest_offsets_key

    consumer = AIOKafkaConsumer(bootstrap_servers=streams.kafka_bootstrap, group_id=streams.app_id,
                                enable_auto_commit=False, request_timeout_ms=max(1000, int(timeout_s * 1000)),
                                client_id="wakala-status")
    try:
        await consumer.start()
        await consumer.topics()
        partitions = sorted(consumer.partitions_for_topic(streams.locations_topic) or ())
        if not partitions:
            raise LookupError(f"topic {streams.locations_topic!r} does not exist on the broker")
        tps = [TopicPartition(streams.locations_topic, p) for p in partitions]
        consumer.assign(tps)  # by hand: reads the group's offsets without joining it
        ends = await consumer.end_offsets(tps)
        done = {tp.partition: await consumer.committed(tp) or 0 for tp in tps}
        source = "committed offsets"
        if redis_ok:
            import redis.asyncio as aioredis

            client = aioredis.from_url(streams.redis_url, socket_connect_timeout=timeout_s,
                                       socket_timeout=timeout_s)
            try:
                landed = await client.hgetall(ingest_offsets_key(streams.app_id, streams.locations_topic))
            finally:
                await client.aclose()
            for k, v in landed.items():
                done[int(k)] = max(done.get(int(k), 0), int(v))
            source = "landed/committed offsets"
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout_s):
                await consumer.stop()
    lag = sum(max(0, end - done.get(tp.partition, 0)) for tp, end in ends.items())
    return lag, f"group {streams.app_id!r} on {streams.locations_topic!r} ({len(tps)} partitions, {source})"


async def gather_status(pg, streams, *, timeout_s: float = 3.0) -> StatusReport:
    """Read everything ``wakala status`` shows; never raises for a service that is down."""
    report = StatusReport(checked_at=datetime.now(UTC))
    control, redis, kafka = await asyncio.gather(
        _timed("postgres control", check_postgres(pg.control.url(), timeout_s)),
        _timed("redis", check_redis(streams.redis_url, timeout_s)),
        _timed("broker", check_kafka(streams.kafka_bootstrap, timeout_s)))
    report.services = [control]
    shards, tenants = [], []
    if control.ok:
        read = await _bounded(report, "control plane", timeout_s, _read_control(report, pg, timeout_s))
        shards, tenants = read or ([], [])
    from schema.migrate import shard_dsn

    report.shards = [{"shard_id": s["shard_id"], "name": s["shard_name"], "status": s["status"],
                      "tenants": s["tenants"], "size_bytes": None, "connections": None} for s in shards]
    live = [s for s in shards if s["status"] != "retired"]  # a retired shard's database may be gone
    checks = await asyncio.gather(*(_timed(f"postgres shard {s['shard_id']} {s['shard_name']}",
                                           check_postgres(shard_dsn(pg, s).url(), timeout_s)) for s in live))
    report.services += [*checks, redis, kafka]
    per_shard = await asyncio.gather(*(
        _bounded(report, f"shard {s['shard_id']}", timeout_s * 2, _read_shard(report, pg, s, tenants, timeout_s))
        for s, check in zip(live, checks, strict=True) if check.ok))
    report.deliveries = dict.fromkeys(OPEN_DELIVERY_STATES, 0)
    for counts in per_shard:
        for state, n in (counts or {}).items():
            report.deliveries[state] = report.deliveries.get(state, 0) + n
    if kafka.ok:
        lag = await _bounded(report, "consumer lag", timeout_s * 2, consumer_lag(streams, timeout_s, redis.ok))
        if lag is not None:
            report.consumer_lag, report.consumer_lag_detail = lag
        else:
            report.consumer_lag_detail = "unknown (" + report.errors.pop() + ")"
    else:
        report.consumer_lag_detail = "unknown (the broker is down)"
    return report
