"""`wakala bench ingest`: N synthetic drivers through the real gateway, broker, agent and Redis.

Set-up (not measured) uses admin paths: a bench tenant, N drivers and their tokens written in
bulk, every driver on shift. Then the engine runs as it does in production: gateway
process(es) (`wakala engine api`) and the location worker (`wakala engine worker`), on fresh
topics. Client processes open one websocket per driver and send what a phone sends: a fix
every 1/hz seconds, uploaded every ``upload_every_s`` seconds in one message.

Measured, over a window after every driver is connected:
- end-to-end pings/s: pings the agent accepted into Redis per second (``metrics:ingest:counts``);
- latency from gateway accept (``received_at``) to Redis write, sampled by the agent;
- in the same run, a baseline: the same Redis script fed directly from this process with
  pipelining (``LocationStore.write_batch``), and the ratio of the two.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import random
import secrets
import time
import uuid
from dataclasses import dataclass, replace

import redis.asyncio as aioredis

from dispatch.identity.auth import hash_token
from loadtest.processes import free_port, spawn_wakala, stop
from loadtest.report import emit, percentiles_ms
from schema.db import TenantDatabase
from schema.errors import TenantExists
from schema.settings import PostgresSettings
from schema.tenants import create_tenant, list_tenants
from streams.keys import INGEST_COUNTS_KEY, INGEST_LATENCY_KEY
from streams.location_store import LocationStore
from streams.records import DriverPing
from streams.settings import StreamSettings

BENCH_SLUG = "bench-ingest"
CENTRE = (-26.2041, 28.0473)       # Johannesburg CBD; drivers spread ~25 km around it
SPREAD_DEG = 0.22

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


@dataclass(frozen=True)
class IngestBench:
    drivers: int = 20_000
    hz: float = 1.0
    upload_every_s: float = 5.0
    duration_s: float = 30.0
    gateways: int = 2
    clients: int = 2
    baseline_pings: int = 200_000


def _cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes, from /proc (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


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


async def _prepare(pg: PostgresSettings, streams: StreamSettings, n: int) -> tuple[str, list[tuple[str, str]]]:
    """The bench tenant, n drivers on shift, a fresh token each; returns (tenant, [(driver, token)])."""
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
            await tx.execute(BULK_TOKENS_SQL, [r["user_id"] for r in rows], [hash_token(t) for t in tokens],
                             [r["id"] for r in rows])
    redis = aioredis.from_url(streams.redis_url)
    store = LocationStore(redis, streams)
    try:
        for i in range(0, len(rows), 50):
            await asyncio.gather(*(store.start_shift(str(tenant_id), str(r["id"]), r["vehicle_type"])
                                   for r in rows[i:i + 50]))
    finally:
        await redis.aclose()
    return str(tenant_id), [(str(r["id"]), t) for r, t in zip(rows, tokens, strict=True)]


def _client_process(addr: str, drivers: list[tuple[str, str]], bench: IngestBench, stop_at: float,
                    results: mp.Queue) -> None:
    import gc

    import uvloop

    gc.set_threshold(50_000, 20, 100)   # 10k live websockets: as in the gateway
    uvloop.run(_client_main(addr, drivers, bench, stop_at, results))


async def _client_main(addr: str, drivers, bench: IngestBench, stop_at: float, results: mp.Queue) -> None:
    import websockets

    counts = {"connected": 0, "acked": 0, "errors": 0, "failed": 0, "sent": 0}
    rng = random.Random(os.getpid())
    connected: set[str] = set()

    async def one(driver_id: str, token: str) -> None:
        lat = CENTRE[0] + rng.uniform(-SPREAD_DEG, SPREAD_DEG)
        lng = CENTRE[1] + rng.uniform(-SPREAD_DEG, SPREAD_DEG)
        heading = rng.uniform(0, 360)
        await asyncio.sleep(rng.uniform(0, bench.upload_every_s))   # phones do not start in step
        for attempt in range(6):   # a driver app reconnects with backoff, as phones on bad networks do
            try:
                await session(driver_id, token, lat, lng, heading)
                return
            except (TimeoutError, OSError, websockets.WebSocketException) as exc:
                reason = f"failed:{type(exc).__name__}"
                counts[reason] = counts.get(reason, 0) + 1
                if attempt == 5 or time.time() > stop_at:
                    counts["failed"] += 1
                    return
                counts["reconnects"] = counts.get("reconnects", 0) + 1
                await asyncio.sleep(min(8.0, 0.5 * 2 ** attempt) * rng.uniform(0.5, 1.5))

    async def session(driver_id: str, token: str, lat: float, lng: float, heading: float) -> None:
        async with websockets.connect(f"ws://{addr}/v1/drivers/stream", open_timeout=60,
                                      additional_headers={"Authorization": f"Bearer {token}"},
                                      ping_interval=None, max_queue=4) as ws:
            if json.loads(await ws.recv()).get("type") != "ready":
                raise websockets.InvalidMessage("no ready frame")
            connected.add(driver_id)
            per_upload = max(1, round(bench.hz * bench.upload_every_s))
            seq = 0
            while time.time() < stop_at:
                now = time.time()
                pings = [{"driver_id": driver_id, "lat": lat + 0.00004 * k, "lng": lng, "accuracy": 6.0,
                          "speed": 4.5, "heading": heading,
                          "timestamp": now - (per_upload - 1 - k) / bench.hz}
                         for k in range(per_upload)]   # ~4 m per fix: a motorbike in traffic
                lat += 0.00004 * per_upload
                seq += 1
                await ws.send(json.dumps({"type": "pings", "seq": seq, "pings": pings}))
                counts["sent"] += per_upload
                reply = json.loads(await ws.recv())
                if reply.get("type") == "ack":
                    counts["acked"] += reply["accepted"]
                else:
                    counts["errors"] += 1
                await asyncio.sleep(max(0.0, bench.upload_every_s - (time.time() - now)))

    await asyncio.gather(*(one(d, t) for d, t in drivers))
    counts["connected"] = len(connected)
    results.put(counts)


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
            await redis.delete(*[f"driver:state:{d}" for d in ids[i:i + 1000]],
                               *[f"driver:location:{d}" for d in ids[i:i + 1000]])
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


async def run_ingest_bench(bench: IngestBench) -> dict[str, object]:
    pg = PostgresSettings.from_env()
    streams = fresh_streams()
    print(f"preparing {bench.drivers} drivers ...", flush=True)
    tenant_id, drivers = await _prepare(pg, streams, bench.drivers)
    port = free_port()
    env = dict(os.environ, WAKALA_HTTP_PORT=str(port), WAKALA_LOCATIONS_TOPIC=streams.locations_topic,
               WAKALA_DEAD_LETTERS_TOPIC=streams.dead_letters_topic, WAKALA_APP_ID=streams.app_id,
               WAKALA_INGEST_LATENCY_SAMPLES="1",
               WAKALA_PING_RATE_LIMIT=str(int(bench.hz * bench.upload_every_s * 4 + 10)))
    os.makedirs(".wakala", exist_ok=True)
    worker = spawn_wakala(["engine", "worker"], env, ".wakala/bench-worker.log")
    api = spawn_wakala(["engine", "api", "--workers", str(bench.gateways)], env, ".wakala/bench-api.log")
    redis = aioredis.from_url(streams.redis_url)
    procs: list[mp.Process] = []
    try:
        addr = f"127.0.0.1:{port}"
        await _wait_http(addr)
        ramp_s = bench.upload_every_s + max(10.0, bench.drivers / 1500)
        stop_at = time.time() + ramp_s + bench.duration_s
        ctx = mp.get_context("spawn")
        results = ctx.Queue()
        for i in range(bench.clients):
            part = drivers[i::bench.clients]
            proc = ctx.Process(target=_client_process, args=(addr, part, bench, stop_at, results))
            proc.start()
            procs.append(proc)
        print(f"connecting {bench.drivers} driver websockets (ramp {ramp_s:.0f} s), then measuring "
              f"{bench.duration_s:.0f} s ...", flush=True)
        await asyncio.sleep(ramp_s)
        for proc, name in ((worker, "worker"), (api, "api")):
            if proc.poll() is not None:
                raise RuntimeError(f"the {name} process exited ({proc.returncode}); see .wakala/bench-{name}.log")
        await redis.delete(INGEST_LATENCY_KEY)
        groups = {
            "gateway": [api.pid, *_children(api.pid)], "worker": [worker.pid],
            "load clients": [p.pid for p in procs if p.pid], "redis": _pids_of("redis-server"),
            "broker": _pids_of("tansu"), "postgres": _pids_of("postgres"),
        }
        cpu0 = {name: _cpu_seconds(pids) for name, pids in groups.items()}
        start_count = int(await redis.hget(INGEST_COUNTS_KEY, "accepted") or 0)
        t0 = time.perf_counter()
        await asyncio.sleep(bench.duration_s)
        end_count = int(await redis.hget(INGEST_COUNTS_KEY, "accepted") or 0)
        elapsed = time.perf_counter() - t0
        cpu_share = {name: round((_cpu_seconds(pids) - cpu0[name]) / elapsed, 2) for name, pids in groups.items()}
        latencies = [float(x) for x in await redis.lrange(INGEST_LATENCY_KEY, 0, -1)]
        client_counts = {"connected": 0, "acked": 0, "errors": 0, "failed": 0, "sent": 0}
        for proc in procs:
            proc.join(timeout=bench.upload_every_s + 60)
        while not results.empty():
            for k, v in results.get().items():
                client_counts[k] = client_counts.get(k, 0) + v
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        stop(api)
        stop(worker)
        await _delete_topics(streams)
    e2e = (end_count - start_count) / elapsed
    print("running the in-process baseline ...", flush=True)
    baseline = await _baseline(streams, tenant_id, bench.drivers, bench.baseline_pings)
    await redis.aclose()
    lat = percentiles_ms(latencies)
    figures = {
        "bench": "ingest", "drivers": bench.drivers, "drivers_connected": client_counts["connected"],
        "offered_pings_per_s": round(bench.drivers * bench.hz, 1),
        "pings_per_s": round(e2e, 1), "baseline_pings_per_s": round(baseline, 1),
        "ratio_vs_baseline": round(e2e / baseline, 3) if baseline else None,
        "latency_samples": len(latencies), **lat,
        "client_errors": client_counts["errors"], "client_failures": client_counts["failed"],
        "client_failure_kinds": {k: v for k, v in client_counts.items() if k.startswith("failed:")},
        "window_s": round(elapsed, 1), "gateways": bench.gateways, "cpus": os.cpu_count(),
        "cpu_cores_used": cpu_share,
    }
    emit("wakala bench ingest", [
        ("drivers (connected)", f"{bench.drivers} ({client_counts['connected']})"),
        ("offered load", f"{bench.drivers * bench.hz:,.0f} pings/s ({bench.hz:g} Hz, uploads every {bench.upload_every_s:g} s)"),
        ("end to end (gateway -> Kafka -> agent -> Redis)", f"{e2e:,.0f} pings/s over {elapsed:.0f} s"),
        ("baseline (same Redis script, one process)", f"{baseline:,.0f} pings/s"),
        ("ratio end to end / baseline", figures["ratio_vs_baseline"]),
        ("latency gateway accept -> Redis p50 / p99", f"{lat['p50_ms']} / {lat['p99_ms']} ms ({len(latencies)} samples)"),
        ("client errors / failed connections", f"{client_counts['errors']} / {client_counts['failed']}"),
        *((f"CPU cores used: {name}", share) for name, share in cpu_share.items()),
    ], figures)
    return figures
