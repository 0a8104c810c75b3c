"""`wakala bench tracking`: N customers watching M deliveries while their drivers ping.

Set-up (not measured) uses admin paths: a bench tenant with a vendor, M ready orders whose
deliveries are assigned (``transition`` offer + accept) to M fresh drivers, the Redis copies
the dispatcher would have written on the accept (``dispatch.active``, the driver's delivery
set), the drivers on shift, and one tracking link per delivery (``issue_link``). Then the
engine runs as in production (`wakala engine all`: the API process with its tracking hub, and
the location worker), on fresh location topics.

Load, through the public interfaces only:
- M drivers on the driver websocket (this process), one fix every ``1/hz`` s each, moving
  slowly far from their pickups (no geofence fires);
- N watchers on ``/v1/track/{token}`` (``clients`` processes), spread evenly over the M
  deliveries, each reading every frame.

Measured over ``duration_s`` once every watcher has had time to connect:
- latency of each position frame: the watcher's receive time minus ``received_at``, the time
  the gateway accepted the ping (carried by the tracking document into the frame); one clock,
  one machine;
- frames/s delivered to all watchers together (positions, statuses, heartbeats);
- alongside, gateway accept -> Redis write (the location worker's own samples), so the
  hub's share of the latency can be read off; and the CPU each part used.
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing as mp
import os
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import redis.asyncio as aioredis

from dispatch.deliveries.store import insert_delivery, transition
from dispatch.identity.auth import issue_driver_token
from dispatch.identity.drivers import NewDriver, create_driver
from dispatch.identity.users import create_vendor
from dispatch.matching import active
from dispatch.matching.keys import deliveries_key
from dispatch.tracking.links import issue_link
from geo import destination
from loadtest.ingest import (
    _children,
    _cpu_seconds,
    _delete_topics,
    _pids_of,
    _wait_http,
    fresh_streams,
)
from loadtest.processes import free_port, spawn_wakala, stop
from loadtest.report import emit, percentiles_ms
from schema.db import TenantDatabase
from schema.errors import TenantExists
from schema.settings import PostgresSettings
from schema.tenants import create_tenant, list_tenants
from streams.keys import INGEST_LATENCY_KEY
from streams.location_store import LocationStore
from streams.settings import StreamSettings

BENCH_SLUG = "bench-tracking"
VENDOR_AT = (-26.2360, 27.9090)   # Orlando, Soweto
ORDER_SQL = """
INSERT INTO orders (order_number, customer_id, vendor_id, status, subtotal, total_amount, delivery_fee,
                    delivery_address, delivery_location)
VALUES ($1, $2, $3, 'ready', 100, 125, 25.00, '{}', ST_SetSRID(ST_MakePoint($5, $4), 4326)::geography)
RETURNING id
"""


@dataclass(frozen=True)
class TrackingBench:
    watchers: int = 5_000
    deliveries: int = 100
    hz: float = 1.0            # pings per driver per second
    duration_s: float = 30.0
    clients: int = 2           # watcher processes
    workers: int = 1           # engine api processes (each runs a hub)


@dataclass
class Assigned:
    delivery_id: str
    order_id: str
    driver_id: str
    driver_token: str
    link: str
    start: tuple[float, float]


async def _prepare(pg: PostgresSettings, streams: StreamSettings, bench: TrackingBench) -> tuple[str, list[Assigned]]:
    try:
        tenant_id = (await create_tenant(pg, "Bench Tracking", slug=BENCH_SLUG)).id
    except TenantExists:
        tenant_id = next(t.id for t in await list_tenants(pg) if t.slug == BENCH_SLUG)
    tenant = str(tenant_id)
    run = uuid.uuid4().hex[:8]
    rng = random.Random(run)
    redis = aioredis.from_url(streams.redis_url)
    store = LocationStore(redis, streams)
    out: list[Assigned] = []
    try:
        async with TenantDatabase(pg) as db:
            vendor = await create_vendor(db, tenant, {
                "business_name": f"Bench Tracking Spaza {run}", "address": {"suburb": "Orlando"},
                "lat": VENDOR_AT[0], "lng": VENDOR_AT[1], "delivery_radius_m": 20_000})
            async with db.tenant_transaction(tenant) as tx:
                customer = await tx.fetchval("INSERT INTO customers (first_name) VALUES ('Bench') RETURNING id")
            for i in range(bench.deliveries):
                dropoff = destination(*VENDOR_AT, rng.uniform(0, 360), rng.uniform(1_000, 4_000))
                async with db.tenant_transaction(tenant) as tx:
                    order = await tx.fetchval(ORDER_SQL, f"BT-{run}-{i:05d}", customer, uuid.UUID(vendor), *dropoff)
                    delivery = await insert_delivery(tx, tenant, order, VENDOR_AT, dropoff)
                driver = str(await create_driver(db, tenant, NewDriver(
                    "Bench", f"Tracker{i}", f"+2778{rng.randrange(10**7):07d}", f"BTRACK-{run}-{i:05d}",
                    "motorbike", f"BT {i:05d}")))
                token = (await issue_driver_token(db, tenant, driver, ttl_s=6 * 3600)).token
                await transition(db, tenant, delivery, "offer", driver_id=driver, actor="bench")
                await transition(db, tenant, delivery, "accept", actor=driver)
                # what the dispatcher writes on an accept: the hot copy the tracker reads
                await redis.sadd(deliveries_key(driver), str(delivery))
                await active.write(redis, active.ActiveDelivery(
                    str(delivery), tenant, driver, "motorbike", "assigned", VENDOR_AT, dropoff,
                    round(time.time() * 1000)))
                await store.start_shift(tenant, driver, "motorbike")
                link = await issue_link(db, tenant, order, grace_s=3600)
                # ~1-2 km from the pickup: far outside its geofence for the whole run
                start = destination(*VENDOR_AT, rng.uniform(0, 360), rng.uniform(1_000, 2_000))
                out.append(Assigned(str(delivery), str(order), driver, token, link.token, start))
    finally:
        await redis.aclose()
    return tenant, out


async def _cleanup(pg: PostgresSettings, streams: StreamSettings, tenant: str, assigned: list[Assigned]) -> None:
    """Cancel the bench deliveries and forget their Redis copies and drivers."""
    redis = aioredis.from_url(streams.redis_url)
    store = LocationStore(redis, streams)
    try:
        async with TenantDatabase(pg) as db:
            for a in assigned:
                try:
                    await transition(db, tenant, a.delivery_id, "cancel", actor="bench", reason="bench over")
                except Exception as exc:  # noqa: BLE001 - best effort; say what was left
                    print(f"note: delivery {a.delivery_id} not cancelled ({exc})", flush=True)
                await active.delete(redis, a.delivery_id)
                await redis.srem(deliveries_key(a.driver_id), a.delivery_id)
                await store.end_shift(a.driver_id)
    finally:
        await redis.aclose()


async def _drive(addr: str, assigned: list[Assigned], hz: float, stop_at: float, counts: Counter) -> None:
    """The drivers' phones: one fix per 1/hz s each, over the driver websocket."""
    import websockets

    rng = random.Random(11)

    async def one(a: Assigned) -> None:
        lat, lng = a.start
        heading = rng.uniform(0, 360)
        await asyncio.sleep(rng.uniform(0, 1 / hz))   # phones do not ping in step
        async with websockets.connect(f"ws://{addr}/v1/drivers/stream", open_timeout=60, compression=None,
                                      additional_headers={"Authorization": f"Bearer {a.driver_token}"}) as ws:
            if json.loads(await ws.recv()).get("type") != "ready":
                counts["refused"] += 1
                return

            async def acks() -> None:
                async for raw in ws:
                    counts["acked" if json.loads(raw).get("type") == "ack" else "errors"] += 1

            reader = asyncio.create_task(acks())
            seq = 0
            try:
                while time.time() < stop_at:
                    started = time.time()
                    lat, lng = destination(lat, lng, heading, 4.0 / hz)   # ~4 m/s
                    seq += 1
                    await ws.send(json.dumps({"type": "ping", "seq": seq, "driver_id": a.driver_id, "lat": lat,
                                              "lng": lng, "accuracy": 5.0, "speed": 4.0, "heading": heading,
                                              "timestamp": started}))
                    counts["sent"] += 1
                    await asyncio.sleep(max(0.0, 1 / hz - (time.time() - started)))
            finally:
                reader.cancel()

    await asyncio.gather(*(one(a) for a in assigned), return_exceptions=True)


def _watcher_process(addr: str, links: list[str], window: tuple[float, float], results: mp.Queue) -> None:
    import gc

    import uvloop

    gc.set_threshold(50_000, 20, 100)   # thousands of live websockets: as in the engine
    uvloop.run(_watchers(addr, links, window, results))


async def _watchers(addr: str, links: list[str], window: tuple[float, float], results: mp.Queue) -> None:
    import websockets

    start, end = window
    latencies: list[float] = []
    counts: Counter[str] = Counter()
    connecting = asyncio.Semaphore(50)

    async def one(link: str) -> None:
        try:
            async with connecting:
                ws = await websockets.connect(f"ws://{addr}/v1/track/{link}", open_timeout=120, compression=None,
                                              max_queue=256)
                if json.loads(await ws.recv()).get("type") != "snapshot":
                    counts["no_snapshot"] += 1
                    return
            counts["connected"] += 1
            async with ws:
                while True:
                    remaining = end - time.time()
                    if remaining <= 0:
                        return
                    try:
                        raw = await asyncio.wait_for(ws.recv(), remaining)
                    except TimeoutError:
                        return
                    now = time.time()
                    if now < start:
                        continue
                    counts["frames"] += 1
                    frame = json.loads(raw)
                    if frame["type"] == "position":
                        counts["positions"] += 1
                        latencies.append((now - frame["received_at"]) * 1000)
        except websockets.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else "none"
            counts[f"closed:{code}"] += 1
        except (OSError, TimeoutError, websockets.WebSocketException) as exc:
            counts[f"failed:{type(exc).__name__}"] += 1

    await asyncio.gather(*(one(link) for link in links))
    results.put((dict(counts), latencies))


def _machine_busy_s() -> float:
    """CPU seconds every process of the machine has used (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


async def run_tracking_bench(bench: TrackingBench) -> dict[str, object]:
    pg = PostgresSettings.from_env()
    streams = fresh_streams()
    print(f"preparing {bench.deliveries} assigned deliveries and their drivers ...", flush=True)
    tenant, assigned = await _prepare(pg, streams, bench)
    port = free_port()
    env = dict(os.environ, WAKALA_HTTP_PORT=str(port), WAKALA_LOCATIONS_TOPIC=streams.locations_topic,
               WAKALA_DEAD_LETTERS_TOPIC=streams.dead_letters_topic, WAKALA_APP_ID=streams.app_id,
               WAKALA_INGEST_LATENCY_SAMPLES="1")
    os.makedirs(".wakala", exist_ok=True)
    engine = spawn_wakala(["engine", "all", "--workers", str(bench.workers)], env, ".wakala/bench-tracking.log")
    redis = aioredis.from_url(streams.redis_url)
    procs: list[mp.Process] = []
    driving: asyncio.Task | None = None
    driver_counts: Counter[str] = Counter()
    try:
        addr = f"127.0.0.1:{port}"
        await _wait_http(addr)
        await asyncio.sleep(3)   # the location worker joins its topic
        ramp_s = max(20.0, bench.watchers / 200)
        window = (time.time() + ramp_s, time.time() + ramp_s + bench.duration_s)
        driving = asyncio.create_task(_drive(addr, assigned, bench.hz, window[1] + 2, driver_counts))
        ctx = mp.get_context("spawn")
        results = ctx.Queue()
        links = [assigned[i % len(assigned)].link for i in range(bench.watchers)]
        for i in range(bench.clients):
            proc = ctx.Process(target=_watcher_process, args=(addr, links[i::bench.clients], window, results))
            proc.start()
            procs.append(proc)
        print(f"{bench.deliveries} drivers pinging at {bench.hz:g} Hz; connecting {bench.watchers} watchers "
              f"(ramp {ramp_s:.0f} s), then measuring {bench.duration_s:.0f} s ...", flush=True)
        await asyncio.sleep(max(0.0, window[0] - time.time()))
        if engine.poll() is not None:
            raise RuntimeError(f"the engine exited ({engine.returncode}); see .wakala/bench-tracking.log")
        await redis.delete(INGEST_LATENCY_KEY)
        engine_pids = {"engine api + hub": [engine.pid], "location worker": _children(engine.pid)} \
            if bench.workers == 1 else {"engine (api processes + location worker)": [engine.pid, *_children(engine.pid)]}
        groups = {
            **engine_pids,
            "watcher clients": [p.pid for p in procs if p.pid], "redis": _pids_of("redis-server"),
            "broker": _pids_of("tansu"), "postgres": _pids_of("postgres"),
        }
        cpu0 = {name: _cpu_seconds(pids) for name, pids in groups.items()}
        busy0 = _machine_busy_s()
        t0 = time.perf_counter()
        await asyncio.sleep(max(0.0, window[1] - time.time()))
        elapsed = time.perf_counter() - t0
        cpu = {name: round((_cpu_seconds(pids) - cpu0[name]) / elapsed, 2) for name, pids in groups.items()}
        # everything else on the machine (this process's drivers, other work): a shared machine shows here
        cpu["everything else"] = round(max(0.0, (_machine_busy_s() - busy0) / elapsed - sum(cpu.values())), 2)
        ingest = [float(x) for x in await redis.lrange(INGEST_LATENCY_KEY, 0, -1)]
        counts: Counter[str] = Counter()
        latencies: list[float] = []
        for _ in procs:
            part, samples = results.get(timeout=120)
            counts.update(part)
            latencies += samples
        for proc in procs:
            proc.join(timeout=30)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        if driving is not None:
            driving.cancel()
            await asyncio.gather(driving, return_exceptions=True)
        stop(engine)
        await redis.aclose()
        await _delete_topics(streams)
        await _cleanup(pg, streams, tenant, assigned)
    lat = percentiles_ms(latencies)
    ingest_lat = percentiles_ms(ingest)
    duration = bench.duration_s
    figures = {
        "bench": "tracking", "watchers": bench.watchers, "deliveries": bench.deliveries,
        "watchers_connected": counts["connected"], "hz": bench.hz, "window_s": round(elapsed, 1),
        "p50_ms": lat["p50_ms"], "p90_ms": lat["p90_ms"], "p99_ms": lat["p99_ms"], "max_ms": lat["max_ms"],
        "frames_per_s": round(counts["frames"] / duration, 1),
        "positions_per_s": round(counts["positions"] / duration, 1),
        "offered_positions_per_s": round(bench.watchers * bench.hz, 1),
        "latency_samples": len(latencies),
        "ingest_p50_ms": ingest_lat["p50_ms"], "ingest_p99_ms": ingest_lat["p99_ms"],
        "pings_sent": driver_counts["sent"], "pings_acked": driver_counts["acked"],
        "closes_and_failures": {k: v for k, v in counts.items() if k.startswith(("closed:", "failed:", "no_"))},
        "workers": bench.workers, "cpus": os.cpu_count(), "cpu_cores_used": cpu,
    }
    target = "met" if lat["p99_ms"] is not None and lat["p99_ms"] < 250 else "NOT met"
    emit(f"wakala bench tracking: {bench.watchers} watchers on {bench.deliveries} deliveries, "
         f"drivers pinging at {bench.hz:g} Hz", [
        ("watchers connected", f"{counts['connected']} of {bench.watchers}"),
        ("ping accepted -> frame at the watcher p50 / p90 / p99",
         f"{lat['p50_ms']} / {lat['p90_ms']} / {lat['p99_ms']} ms ({len(latencies):,} frames; "
         f"target p99 < 250 ms: {target})"),
        ("  of which gateway -> Redis (location worker) p50 / p99", f"{ingest_lat['p50_ms']} / {ingest_lat['p99_ms']} ms"),
        ("frames delivered / s (all watchers)", f"{figures['frames_per_s']:,}"),
        ("positions delivered / s (offered: watchers x Hz)",
         f"{figures['positions_per_s']:,} ({figures['offered_positions_per_s']:,})"),
        ("pings sent / acked", f"{driver_counts['sent']} / {driver_counts['acked']}"),
        ("closes and failures", figures["closes_and_failures"] or "none"),
        *((f"CPU cores used: {name}", share) for name, share in cpu.items()),
    ], figures)
    if not math.isfinite(lat["p99_ms"] or math.nan):
        print("no position frame was measured; see .wakala/bench-tracking.log", flush=True)
    return figures
