"""`wakala bench ingest`: synthetic drivers through the real gateway, broker, worker and Redis, in load steps.

Set-up (not measured) uses admin paths: a bench tenant, the drivers of the largest step and a
fresh token each, written in bulk, every driver on shift. Then the engine runs as it does in
production: gateway process(es) (`wakala engine api`) and the location worker (`wakala engine
worker`), on fresh topics, up for the whole run. The offered load rises in steps (``--steps``,
pings/s): a step is ``load / hz`` drivers, each sending ``hz`` fixes per second uploaded together
every ``upload_every_s`` seconds, from fresh client processes (``loadtest.ingest_clients``)
that connect at a bounded rate (``loadtest.ingest_load``).

Measured per step, over a window once every driver is connected (or the ramp's time limit
passed, which fails the step):
- end-to-end pings/s: pings the worker accepted into Redis per second (``metrics:ingest:counts``);
- latency from gateway accept (``received_at``) to Redis write, sampled by the worker;
- client failures and error frames, by kind; CPU cores used by each part, from /proc.
The verdict per step and the headline (``max_sustained_pings_per_s``) follow the rule in
``loadtest.ingest_steps``; stepping stops after a clear failure. In the same run, a baseline:
the same Redis script fed directly from this process with pipelining
(``LocationStore.write_batch``).

Why 2 Hz uploads every 5 s by default: each upload still carries 10 fixes (as 1 Hz every
10 s would), so the gateway's message rate per ping is the same, but the top step needs half
the sockets; at 1 Hz the 60,000 pings/s step would be 60,000 sockets, beyond the open-file
limit of two gateway processes (and of the load clients) on a machine with a 20,000 limit.
The old single-step shape is ``--steps 20000 --hz 1 --upload-every 5``.

Cleanup: the run's topics, the tokens it issued and the bench drivers' Redis state go at the
end; the bench tenant and its driver rows stay as fixtures for the next run.
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import secrets
import time
import uuid
from dataclasses import dataclass, replace

import redis.asyncio as aioredis

from dispatch.core.console import format_table
from dispatch.identity.auth import hash_token
from loadtest.ingest_clients import CENTRE, SPREAD_DEG, ClientPlan
from loadtest.ingest_load import run_step
from loadtest.ingest_steps import (
    SUSTAINED_RULE,
    StepResult,
    clearly_failed,
    plan_steps,
    sockets_fit,
    summary,
    why_not_sustained,
)
from loadtest.processes import free_port, spawn_wakala, stop
from loadtest.report import emit
from schema.db import TenantDatabase
from schema.errors import TenantExists
from schema.settings import PostgresSettings
from schema.tenants import create_tenant, list_tenants
from streams.keys import INGEST_LATENCY_KEY, available_key, location_key, state_key
from streams.location_store import LocationStore
from streams.records import DriverPing
from streams.settings import StreamSettings

BENCH_SLUG = "bench-ingest"
BULK_DRIVERS_SQL = """
WITH u AS (
    INSERT INTO users (phone_number, name, role)
    SELECT '+2779' || lpad(n::text, 7, '0'), 'Bench driver ' || n, 'driver' FROM unnest($1::int[]) AS n
    ON CONFLICT (phone_number) DO UPDATE SET updated_at = now()
    RETURNING id, phone_number
)
INSERT INTO drivers (user_id, first_name, last_name, license_number, vehicle_type, vehicle_registration)
SELECT u.id, 'Bench', right(u.phone_number, 7), 'BENCH-' || right(u.phone_number, 7),
       (ARRAY['motorbike', 'car', 'bakkie'])[1 + (right(u.phone_number, 7)::int % 3)],
       'BN ' || right(u.phone_number, 7)
FROM u
ON CONFLICT (license_number) DO NOTHING
"""
DRIVERS_SQL = "SELECT id, user_id, vehicle_type FROM drivers WHERE license_number LIKE 'BENCH-%' ORDER BY license_number LIMIT $1"
BULK_TOKENS_SQL = """
INSERT INTO auth_tokens (user_id, token_hash, token_type, expires_at, metadata)
SELECT u, h, 'driver', now() + interval '1 day', jsonb_build_object('driver_id', d)
FROM unnest($1::uuid[], $2::text[], $3::uuid[]) AS t(u, h, d)
"""
DELETE_TOKENS_SQL = "DELETE FROM auth_tokens WHERE token_hash = ANY($1::text[])"


@dataclass(frozen=True)
class IngestBench:
    steps_pings_per_s: tuple[float, ...] = (10_000, 20_000, 40_000, 60_000)
    hz: float = 2.0
    upload_every_s: float = 5.0
    duration_s: float = 20.0
    connect_rate_per_s: float = 2_000.0
    gateways: int = 2
    clients: int = 2
    baseline_pings: int = 200_000
    ack_timeout_s: float = 30.0


def _cpu_by_pid(pids: list[int]) -> dict[int, float]:
    """utime + stime of each of these processes that is alive, from /proc (Linux), in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            seconds[pid] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return seconds


def _machine_cpu_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores, every process), from /proc/stat: the
    machine is shared, so the parts' sum is read against it."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes together, from /proc (Linux)."""
    return sum(_cpu_by_pid(pids).values())


def _pids_of(name: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == name:
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


async def _prepare(pg: PostgresSettings, streams: StreamSettings,
                   n: int) -> tuple[str, list[tuple[int, str, str]], list[str]]:
    """The bench tenant, n drivers on shift with no stored position, a fresh token each.

    Returns (tenant, [(index, driver, token)], token hashes). A position left by an earlier run
    is dropped first: this run's positions start elsewhere, and would be refused as jumps.
    """
    try:
        tenant = await create_tenant(pg, "Bench Ingest", slug=BENCH_SLUG)
        tenant_id = tenant.id
    except TenantExists:
        tenant_id = next(t.id for t in await list_tenants(pg) if t.slug == BENCH_SLUG)
    async with TenantDatabase(pg) as db:
        async with db.tenant_transaction(tenant_id) as tx:
            have = await tx.fetchval("SELECT count(*) FROM drivers WHERE license_number LIKE 'BENCH-%'")
            if have < n:
                await tx.execute(BULK_DRIVERS_SQL, list(range(have, n)))
            rows = await tx.fetch(DRIVERS_SQL, n)
            tokens = [f"wkd_{tenant_id.hex}_{secrets.token_urlsafe(32)}" for _ in rows]
            hashes = [hash_token(t) for t in tokens]
            await tx.execute(BULK_TOKENS_SQL, [r["user_id"] for r in rows], hashes, [r["id"] for r in rows])
    redis = aioredis.from_url(streams.redis_url)
    store = LocationStore(redis, streams)
    try:
        await _forget_positions(redis, str(tenant_id), [str(r["id"]) for r in rows])
        for i in range(0, len(rows), 50):
            await asyncio.gather(*(store.start_shift(str(tenant_id), str(r["id"]), r["vehicle_type"])
                                   for r in rows[i:i + 50]))
    except BaseException:
        await _cleanup(pg, streams, str(tenant_id), [str(r["id"]) for r in rows], hashes)
        raise
    finally:
        await redis.aclose()
    drivers = [(i, str(r["id"]), t) for i, (r, t) in enumerate(zip(rows, tokens, strict=True))]
    return str(tenant_id), drivers, hashes


async def _forget_positions(redis: aioredis.Redis, tenant_id: str, driver_ids: list[str],
                            states: bool = False) -> None:
    """Drop the drivers' stored positions and the tenant's availability cells (and, with
    ``states``, their shift state): the bench tenant is the bench's own."""
    for i in range(0, len(driver_ids), 1000):
        chunk = driver_ids[i:i + 1000]
        await redis.delete(*[location_key(d) for d in chunk], *([state_key(d) for d in chunk] if states else []))
    cells = [k async for k in redis.scan_iter(match=available_key(tenant_id, "*"), count=1000)]
    for i in range(0, len(cells), 1000):
        await redis.delete(*cells[i:i + 1000])


async def _cleanup(pg: PostgresSettings, streams: StreamSettings, tenant_id: str, driver_ids: list[str],
                   hashes: list[str]) -> None:
    """Give back what the run created: its tokens and its drivers' Redis state."""
    async with TenantDatabase(pg) as db:
        async with db.tenant_transaction(uuid.UUID(tenant_id)) as tx:
            await tx.execute(DELETE_TOKENS_SQL, hashes)
    redis = aioredis.from_url(streams.redis_url)
    try:
        await _forget_positions(redis, tenant_id, driver_ids, states=True)
    finally:
        await redis.aclose()


async def _baseline(streams: StreamSettings, tenant_id: str, n_drivers: int, n: int) -> float:
    """The same Redis script, fed directly with pipelined batches from this one process.

    Fresh drivers on shift, each moving ~4 m per 1 s fix, so every write is an accepted,
    indexed one, exactly the work the agent does for the end-to-end pings.
    """
    redis = aioredis.from_url(streams.redis_url)
    store = LocationStore(redis, streams)
    rng = random.Random(7)
    ids = [str(uuid.uuid4()) for _ in range(n_drivers)]
    starts = [(CENTRE[0] + rng.uniform(-SPREAD_DEG, SPREAD_DEG), CENTRE[1] + rng.uniform(-SPREAD_DEG, SPREAD_DEG))
              for _ in ids]
    now = time.time()
    pings = [
        DriverPing(v=1, driver_id=ids[i % n_drivers], tenant_id=tenant_id,
                   lat=starts[i % n_drivers][0] + 0.00004 * (i // n_drivers), lng=starts[i % n_drivers][1],
                   accuracy_m=6.0, speed_mps=4.5, heading_deg=0.0, ts=now + i // n_drivers,
                   received_at=now, vehicle_type="motorbike")
        for i in range(n)
    ]
    try:
        for i in range(0, n_drivers, 50):
            await asyncio.gather(*(store.start_shift(tenant_id, d, "motorbike") for d in ids[i:i + 50]))
        accepted = 0
        started = time.perf_counter()
        for i in range(0, n, 1000):
            outcome = await store.write_batch(pings[i:i + 1000])
            accepted += outcome.accepted
        rate = accepted / (time.perf_counter() - started)
        for i in range(0, n_drivers, 1000):
            await redis.delete(*[state_key(d) for d in ids[i:i + 1000]],
                               *[location_key(d) for d in ids[i:i + 1000]])
        return rate
    finally:
        await redis.aclose()


async def _delete_topics(streams: StreamSettings) -> None:
    """The bundled broker keeps topics in memory: give back what this run created."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=streams.kafka_bootstrap)
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        doomed = [t for t in existing if streams.app_id in t or t in (
            streams.locations_topic, streams.dead_letters_topic)]
        if doomed:
            await admin.delete_topics(doomed)
    except Exception as exc:  # noqa: BLE001 - cleanup is best effort; say so
        print(f"note: could not delete the bench topics ({exc})", flush=True)
    finally:
        await admin.close()


async def _wait_http(addr: str, limit_s: float = 30) -> None:
    host, port = addr.split(":")
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection(host, int(port))
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.2)
    raise RuntimeError(f"the gateway at {addr} did not start; see .wakala/bench-api.log")


def fresh_streams() -> StreamSettings:
    """Stream settings with location topics and a consumer group of this bench run only."""
    suffix = uuid.uuid4().hex[:8]
    return replace(StreamSettings.from_env(), locations_topic=f"driver-locations-bench-{suffix}",
                   dead_letters_topic=f"dead-letters-bench-{suffix}", app_id=f"wakala-bench-{suffix}")


def _check_fits(bench: IngestBench, drivers: int) -> None:
    """Refuse, with the way out, a largest step whose sockets cannot fit the open-file limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:   # the engine and the clients inherit it
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    for processes, who, flag in ((bench.gateways, "gateway", "--gateways"), (bench.clients, "load-client", "--clients")):
        if not sockets_fit(drivers, processes, soft):
            raise SystemExit(f"{drivers} driver sockets over {processes} {who} processes exceed the open-file "
                             f"limit ({soft} per process): raise {flag}, raise --hz (fewer drivers per ping/s), "
                             f"or lower --steps")


async def run_ingest_bench(bench: IngestBench) -> dict[str, object]:
    steps = plan_steps(bench.steps_pings_per_s, bench.hz)
    _check_fits(bench, steps[-1].drivers)
    pg = PostgresSettings.from_env()
    streams = fresh_streams()
    print(f"preparing {steps[-1].drivers} drivers ...", flush=True)
    tenant_id, drivers, hashes = await _prepare(pg, streams, steps[-1].drivers)
    port = free_port()
    per_window = bench.hz * max(bench.upload_every_s, 10.0)   # the engine's rate window is 10 s
    env = dict(os.environ, WAKALA_HTTP_PORT=str(port), WAKALA_LOCATIONS_TOPIC=streams.locations_topic,
               WAKALA_DEAD_LETTERS_TOPIC=streams.dead_letters_topic, WAKALA_APP_ID=streams.app_id,
               WAKALA_INGEST_LATENCY_SAMPLES="1", WAKALA_PING_RATE_LIMIT=str(int(per_window * 4 + 10)))
    os.makedirs(".wakala", exist_ok=True)
    worker = spawn_wakala(["engine", "worker"], env, ".wakala/bench-worker.log")
    api = spawn_wakala(["engine", "api", "--workers", str(bench.gateways)], env, ".wakala/bench-api.log")
    redis = aioredis.from_url(streams.redis_url)
    results: list[StepResult] = []

    def cpu_seconds(client_pids: list[int]) -> dict[str, dict[int, float]]:
        """Listed afresh at each snapshot: Postgres backends and gateway workers come and go."""
        groups = {"gateway": [api.pid, *_children(api.pid)], "worker": [worker.pid, *_children(worker.pid)],
                  "load clients": client_pids, "redis": _pids_of("redis-server"), "broker": _pids_of("tansu"),
                  "postgres": _pids_of("postgres")}
        return {**{name: _cpu_by_pid(pids) for name, pids in groups.items()}, "machine": {0: _machine_cpu_seconds()}}

    def engine_alive() -> None:
        for proc, name in ((worker, "worker"), (api, "api")):
            if proc.poll() is not None:
                raise RuntimeError(f"the {name} process exited ({proc.returncode}); see .wakala/bench-{name}.log")

    try:
        addr = f"127.0.0.1:{port}"
        await _wait_http(addr)
        plan = ClientPlan(url=f"ws://{addr}/v1/drivers/stream", hz=bench.hz, upload_every_s=bench.upload_every_s,
                          connect_rate_per_s=bench.connect_rate_per_s, origin_ts=time.time(),
                          ack_timeout_s=bench.ack_timeout_s)
        for n, step in enumerate(steps):
            if n:
                await asyncio.sleep(3)   # the gateway notices the last step's sockets are gone
            print(f"step {n + 1}/{len(steps)}: {step.offered_pings_per_s:,.0f} pings/s offered by {step.drivers} "
                  f"drivers, connecting at {bench.connect_rate_per_s:,.0f}/s ...", flush=True)
            result = await run_step(step, drivers, plan, bench.clients, bench.duration_s, redis, cpu_seconds,
                                    engine_alive)
            results.append(result)
            print(f"  achieved {result.pings_per_s:,.0f} pings/s, p99 {result.p99_ms} ms, "
                  f"failures {result.client_failures}", flush=True)
            if clearly_failed(result) and n + 1 < len(steps):
                print("  a clear failure: no higher step", flush=True)
                break
    finally:
        stop(api)
        stop(worker)
        await redis.delete(INGEST_LATENCY_KEY)   # what the worker sampled after the last window
        await redis.aclose()
        await _delete_topics(streams)
    print("running the in-process baseline ...", flush=True)
    try:
        baseline = await _baseline(streams, tenant_id, steps[-1].drivers, bench.baseline_pings)
    finally:
        await _cleanup(pg, streams, tenant_id, [d for _, d, _ in drivers], hashes)
    figures = {"bench": "ingest", **summary(results, baseline), "hz": bench.hz,
               "upload_every_s": bench.upload_every_s, "window_s": bench.duration_s,
               "connect_rate_per_s": bench.connect_rate_per_s, "gateways": bench.gateways,
               "clients": bench.clients, "cpus": os.cpu_count()}
    _print_steps(results)
    emit("wakala bench ingest", [
        ("shape", f"{bench.hz:g} Hz fixes, uploads every {bench.upload_every_s:g} s, {bench.gateways} gateways, "
                  f"{bench.clients} load clients, {bench.duration_s:g} s windows"),
        ("sustained means", SUSTAINED_RULE),
        ("max sustained (achieved at the highest sustained step)",
         f"{figures['max_sustained_pings_per_s']} pings/s (offered {figures['max_sustained_offered_pings_per_s']}), "
         f"p99 {figures['p99_ms']} ms"),
        ("best achieved, any step", f"{figures['pings_per_s']:,.1f} pings/s"),
        ("baseline (same Redis script, one process)", f"{baseline:,.0f} pings/s"),
        ("ratio best achieved / baseline", figures["ratio_vs_baseline"]),
        ("ratio max sustained / baseline", figures["sustained_ratio_vs_baseline"]),
    ], figures)
    return figures


def _print_steps(results: list[StepResult]) -> None:
    parts = list(results[0].cpu_cores_used) if results else []
    rows = []
    for r in results:
        why = why_not_sustained(r)
        rows.append([
            f"{r.step.offered_pings_per_s:,.0f}", f"{r.client_sent_pings_per_s:,.0f}", f"{r.pings_per_s:,.0f}",
            f"{r.drivers_connected}/{r.step.drivers}", f"{r.drivers_connected / r.ramp_s:,.0f}" if r.ramp_s else "",
            r.p50_ms, r.p99_ms, f"{r.client_failures} ({r.ramp_failures})", r.client_errors, *(r.cpu_cores_used.get(p) for p in parts),
            "no: " + "; ".join(why) if why else "yes",
        ])
    print(f"load steps (sustained: {SUSTAINED_RULE}); sent = pings the clients sent in the window, "
          "achieved = pings the worker wrote to Redis; cpu in cores, machine = every process on it, the bench's and others'")
    print(format_table(["offered/s", "sent/s", "achieved/s", "connected", "connects/s", "p50 ms", "p99 ms",
                        "failures (ramp)", "errors", *(f"cpu {p}" for p in parts), "sustained"], rows))
    for r in results:
        if r.failure_kinds:
            print(f"  {r.step.offered_pings_per_s:,.0f}/s, failure and error kinds over ramp and window: " + ", ".join(
                f"{k} {v}" for k, v in sorted(r.failure_kinds.items())))
