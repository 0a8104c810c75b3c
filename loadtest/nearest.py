"""`wakala bench nearest`: k nearest available drivers among N in a metro, four ways.

Run once per fleet size (``--sizes 5000,50000``). Set-up (not measured): N available drivers
spread uniformly over a Johannesburg bounding box, loaded at the same positions into
- our Redis availability index through ``LocationStore`` (a fresh random tenant id and driver
  ids; every key is deleted afterwards), and from there into an in-process
  ``FleetReplica`` the way the location worker feeds it (``AvailabilityPublisher`` after
  each landed batch; the replica is started, and resynced, before the load),
- a plain Redis GEO set (``GEOADD``), for ``GEOSEARCH``,
- Postgres: the ``bench-nearest`` tenant (created once, reused), N drivers with
  ``current_location`` set and ``is_available``.

Measured, one query at a time from one process, for Q random pickup points after a warm-up:
- ``replica``: ``nearest`` as the dispatcher calls it, answered by the replica (k, radius R:
  ``max_pickup_m = R × circuity``); the engine's path;
- ``redis_h3``: ``nearest_from_redis``, the fallback while the replica is not ready;
- ``GEOSEARCH key FROMLONLAT lng lat BYRADIUS R m ASC COUNT k``;
- ``nearest_from_postgis`` (k).
Reported per size: p50/p99 latency and queries/s per method, the ratio of the replica's
queries/s to GEOSEARCH's, how many round trips and candidates the Redis search reads per
query, how often the methods agree on the k nearest (the same positions in each store), how
long the replica takes to resync N drivers, and how long a landed ping takes to reach it.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import redis.asyncio as aioredis

from dispatch.core.console import format_table
from dispatch.matching.fleet_replica import AvailabilityPublisher, FleetReplica
from dispatch.matching.nearest import DriverFacts, nearest, nearest_from_postgis, nearest_from_redis
from dispatch.matching.ranking import Job
from geo import CIRCUITY
from loadtest.report import emit, percentiles_ms
from schema.connect import connection
from schema.db import TenantDatabase
from schema.errors import TenantExists
from schema.settings import PostgresSettings
from schema.tenants import create_tenant, list_tenants
from streams.keys import available_key, location_key, state_key
from streams.location_store import LocationStore
from streams.records import DriverPing
from streams.settings import StreamSettings

BENCH_SLUG = "bench-nearest"
# Johannesburg metro, roughly Soweto to Sandton to Germiston: ~45 km × 50 km.
BBOX_LAT = (-26.40, -25.95)
BBOX_LNG = (27.80, 28.25)
VEHICLES = ("motorbike", "car", "bakkie")

BULK_DRIVERS_SQL = """
INSERT INTO drivers (first_name, last_name, license_number, vehicle_type, vehicle_registration)
SELECT 'Bench', lpad(n::text, 7, '0'), 'NEAR-' || lpad(n::text, 7, '0'), 'motorbike',
       'NB ' || lpad(n::text, 7, '0')
FROM unnest($1::int[]) AS n
ON CONFLICT (license_number) DO NOTHING
"""
DRIVER_IDS_SQL = """
SELECT id FROM drivers WHERE license_number LIKE 'NEAR-%' ORDER BY license_number LIMIT $1
"""
NOT_AVAILABLE_SQL = "UPDATE drivers SET is_available = false WHERE license_number LIKE 'NEAR-%'"
PLACE_DRIVERS_SQL = """
UPDATE drivers AS d
SET current_location = ST_SetSRID(ST_MakePoint(u.lng, u.lat), 4326)::geography,
    vehicle_type = u.vehicle, has_cold_storage = u.cold, is_available = true, status = 'active'
FROM unnest($1::uuid[], $2::float8[], $3::float8[], $4::text[], $5::bool[])
     AS u(id, lat, lng, vehicle, cold)
WHERE d.id = u.id
"""


@dataclass(frozen=True)
class NearestBench:
    sizes: tuple[int, ...] = (5_000, 50_000)
    queries: int = 2_000
    warmup: int = 200
    k: int = 10
    radius_m: float = 5_000.0  # great-circle search radius, the same for every method
    seed: int = 20240515


@dataclass(frozen=True)
class Fleet:
    lats: list[float]
    lngs: list[float]
    vehicles: list[str]
    cold: list[bool]


def _fleet(n: int, rng: random.Random) -> Fleet:
    return Fleet([rng.uniform(*BBOX_LAT) for _ in range(n)], [rng.uniform(*BBOX_LNG) for _ in range(n)],
                 [rng.choice(VEHICLES) for _ in range(n)], [rng.random() < 0.2 for _ in range(n)])


async def _load_postgres(pg: PostgresSettings, db: TenantDatabase, fleet: Fleet) -> tuple[str, list[str]]:
    """The bench tenant with exactly len(fleet) available drivers at the fleet's positions."""
    try:
        tenant_id = (await create_tenant(pg, "Bench Nearest", slug=BENCH_SLUG)).id
    except TenantExists:
        tenant_id = next(t.id for t in await list_tenants(pg) if t.slug == BENCH_SLUG)
    n = len(fleet.lats)
    async with db.tenant_transaction(tenant_id) as tx:
        have = await tx.fetchval("SELECT count(*) FROM drivers WHERE license_number LIKE 'NEAR-%'")
        if have < n:
            await tx.execute(BULK_DRIVERS_SQL, list(range(have, n)))
        ids = [r["id"] for r in await tx.fetch(DRIVER_IDS_SQL, n)]
        await tx.execute(NOT_AVAILABLE_SQL)
        await tx.execute(PLACE_DRIVERS_SQL, ids, fleet.lats, fleet.lngs, fleet.vehicles, fleet.cold)
    # Fresh statistics, as autovacuum would give a table this size: with none the planner
    # expects a handful of rows and sorts them all instead of walking the GiST index.
    placement = await db.placement(tenant_id)
    async with connection(placement.shard) as owner:
        ident = await owner.fetchval("SELECT quote_ident($1)", placement.schema_name)
        await owner.execute(f"ANALYZE {ident}.drivers")
    return str(tenant_id), [str(i) for i in ids]


async def _load_redis(store: LocationStore, tenant_id: str, ids: list[str], fleet: Fleet,
                      publisher: AvailabilityPublisher) -> None:
    # Concurrency below the client's connection-pool limit (100 by default).
    for i in range(0, len(ids), 64):
        await asyncio.gather(*(store.start_shift(tenant_id, d, v)
                               for d, v in zip(ids[i:i + 64], fleet.vehicles[i:i + 64], strict=True)))
    now = time.time()
    pings = [DriverPing(v=1, driver_id=d, tenant_id=tenant_id, lat=lat, lng=lng, accuracy_m=5.0,
                        speed_mps=0.0, heading_deg=0.0, ts=now, received_at=now, vehicle_type=v)
             for d, lat, lng, v in zip(ids, fleet.lats, fleet.lngs, fleet.vehicles, strict=True)]
    for i in range(0, len(pings), 5_000):
        outcome = await store.write_batch(pings[i:i + 5_000])
        if outcome.accepted != len(pings[i:i + 5_000]):
            raise RuntimeError(f"the location store refused bench pings: {outcome.counts}")
        # What the location worker's observer does with every landed batch.
        await publisher.publish(p.driver_id for p in outcome.accepted_pings)


async def _load_geo(redis: aioredis.Redis, key: str, ids: list[str], fleet: Fleet) -> None:
    pipe = redis.pipeline(transaction=False)
    for i in range(0, len(ids), 5_000):
        members: list[object] = []
        for d, lat, lng in zip(ids[i:i + 5_000], fleet.lats[i:i + 5_000], fleet.lngs[i:i + 5_000],
                               strict=True):
            members += (lng, lat, d)
        pipe.geoadd(key, members)
    await pipe.execute()


async def _forget_redis(redis: aioredis.Redis, store: LocationStore, tenant_id: str, ids: list[str],
                        fleet: Fleet, geo_key: str) -> None:
    keys = {available_key(tenant_id, store.cell_of(lat, lng))
            for lat, lng in zip(fleet.lats, fleet.lngs, strict=True)}
    keys.update(location_key(d) for d in ids)
    keys.update(state_key(d) for d in ids)
    keys.add(geo_key)
    listed = list(keys)
    pipe = redis.pipeline(transaction=False)
    for i in range(0, len(listed), 1_000):
        pipe.delete(*listed[i:i + 1_000])
    await pipe.execute()


async def _timed(query: Callable[[float, float], Awaitable[list[str]]],
                 points: list[tuple[float, float]], warmup: int) -> tuple[list[float], float, list[list[str]]]:
    """Latencies (ms) of one query per point, the wall time of the measured ones, and the answers."""
    for lat, lng in points[:warmup]:
        await query(lat, lng)
    latencies: list[float] = []
    answers: list[list[str]] = []
    clock = time.perf_counter
    started = clock()
    for lat, lng in points[warmup:]:
        t0 = clock()
        answer = await query(lat, lng)
        latencies.append((clock() - t0) * 1000)
        answers.append(answer)
    return latencies, clock() - started, answers


async def run_nearest_bench(bench: NearestBench = NearestBench()) -> dict[str, object]:
    """Every size in turn; one table per size, then one JSON line with all of them."""
    if not bench.sizes or any(n < 1 for n in bench.sizes):
        raise ValueError(f"sizes must be positive driver counts, got {bench.sizes}")
    by_size: dict[str, dict[str, object]] = {}
    for drivers in bench.sizes:
        figures, rows = await _run_size(bench, drivers)
        by_size[str(drivers)] = figures
        _table(drivers, rows)
    summary: dict[str, object] = {
        "bench": "nearest", "sizes": list(bench.sizes), "queries": bench.queries, "k": bench.k,
        "radius_m": bench.radius_m, "by_drivers": by_size,
        "queries_per_s_ratio_vs_geosearch": {n: f["queries_per_s_ratio_vs_geosearch"]
                                             for n, f in by_size.items()},
        "replica_p99_ms": {n: f["methods"]["replica"]["p99_ms"] for n, f in by_size.items()},
        "same_top_k_replica_vs_postgis": {n: f["same_top_k_replica_vs_postgis"]
                                          for n, f in by_size.items()},
    }
    emit("wakala bench nearest: summary", [
        (f"{n} drivers: replica / geosearch queries/s (ratio); replica p99; same top k as PostGIS",
         f"{f['methods']['replica']['queries_per_s']:,} / {f['methods']['redis_geosearch']['queries_per_s']:,} "
         f"({f['queries_per_s_ratio_vs_geosearch']}); {f['methods']['replica']['p99_ms']} ms; "
         f"{f['same_top_k_replica_vs_postgis']}")
        for n, f in by_size.items()], summary)
    return summary


def _table(drivers: int, rows: list[tuple[str, object]]) -> None:
    print(f"wakala bench nearest: {drivers} drivers")
    print(format_table(["measure", "value"], rows), flush=True)


async def _wait_for(check: Callable[[], bool], within_s: float) -> float:
    """Seconds until ``check()`` holds (polled every millisecond); raises after ``within_s``."""
    clock = time.perf_counter
    t0 = clock()
    while not check():
        if clock() - t0 > within_s:
            raise RuntimeError(f"not reached within {within_s} s")
        await asyncio.sleep(0.001)
    return clock() - t0


async def _feed_lag_ms(store: LocationStore, publisher: AvailabilityPublisher, replica: FleetReplica,
                       tenant_id: str, ids: list[str], fleet: Fleet, samples: int = 50) -> dict[str, float | None]:
    """Landed ping -> visible in the replica: write one newer ping as the worker does (write,
    then publish), and time until the replica holds its new ``seen_ms``. The position stays
    (the clean-up deletes the cells of the loaded positions)."""
    lags: list[float] = []
    for i in range(min(samples, len(ids))):
        d, v = ids[i], fleet.vehicles[i]
        lat, lng = fleet.lats[i], fleet.lngs[i]
        now = time.time()
        outcome = await store.write_batch([DriverPing(
            v=1, driver_id=d, tenant_id=tenant_id, lat=lat, lng=lng, accuracy_m=5.0, speed_mps=0.0,
            heading_deg=0.0, ts=now + 1 + i, received_at=now, vehicle_type=v)])
        landed = time.perf_counter()
        await publisher.publish([d])
        seen = outcome.redis_now_ms
        await _wait_for(lambda d=d, seen=seen: (replica.index.seen_of(d) or 0) >= seen, 5.0)
        lags.append((time.perf_counter() - landed) * 1000)
    return percentiles_ms(lags)


async def _run_size(bench: NearestBench, drivers: int) -> tuple[dict[str, object], list[tuple[str, object]]]:
    pg = PostgresSettings.from_env()
    # A long TTL: the bench writes each position once and must not watch it expire mid-run.
    streams = replace(StreamSettings.from_env(), location_ttl_s=1_800.0)
    rng = random.Random(bench.seed + drivers)
    fleet = _fleet(drivers, rng)
    points = [(rng.uniform(*BBOX_LAT), rng.uniform(*BBOX_LNG))
              for _ in range(bench.warmup + bench.queries)]
    live_tenant = str(uuid.uuid4())
    live_ids = [str(uuid.uuid4()) for _ in range(drivers)]
    geo_key = f"bench:nearest:geo:{live_tenant}"
    channel = f"bench:nearest:availability:{live_tenant}"   # this run's own feed
    redis = aioredis.from_url(streams.redis_url)
    store = LocationStore(redis, streams)
    publisher = AvailabilityPublisher(redis, channel)
    replica = FleetReplica(redis, streams, channel=channel)
    late = FleetReplica(redis, streams, channel=channel)
    facts = {d: DriverFacts(c) for d, c in zip(live_ids, fleet.cold, strict=True)}
    max_pickup_m = bench.radius_m * CIRCUITY
    k = bench.k
    try:
        async with TenantDatabase(pg) as db:
            await replica.start(wait_s=120)
            print(f"loading {drivers} drivers into Postgres, the Redis index (and the replica) and a GEO set ...",
                  flush=True)
            t0 = time.perf_counter()
            pg_tenant, pg_ids = await _load_postgres(pg, db, fleet)
            t_pg = time.perf_counter() - t0
            await _load_redis(store, live_tenant, live_ids, fleet, publisher)
            await _load_geo(redis, geo_key, live_ids, fleet)
            t_all = time.perf_counter() - t0

            def replica_has_all() -> bool:
                index = replica.index.tenant(live_tenant)
                return index is not None and index.candidates == drivers

            await _wait_for(replica_has_all, 30.0)
            t_resync = time.perf_counter()
            await late.start(wait_s=300)
            resync_s = time.perf_counter() - t_resync
            late_index = late.index.tenant(live_tenant)
            if late_index is None or late_index.candidates != drivers:
                raise RuntimeError("a replica started after the load did not resync every driver")
            await late.stop()
            print(f"loaded in {t_all:.1f} s (Postgres {t_pg:.1f} s); a replica resyncs in {resync_s:.2f} s; "
                  f"{bench.queries} queries per method after {bench.warmup} warm-up ...", flush=True)

            # As the engine does at start-up (dispatch.app): the loaded heap is frozen, so the
            # collector's full passes do not walk it in the middle of the measured queries.
            gc.collect()
            gc.freeze()

            def job(tenant: str, lat: float, lng: float) -> Job:
                return Job(tenant, lat, lng, lat, lng, None, False, max_pickup_m)

            async def ours(lat: float, lng: float) -> list[str]:
                found = await nearest(store, db, job(live_tenant, lat, lng), k=k, driver_facts=facts,
                                      replica=replica)
                if found.source != "replica":
                    raise RuntimeError(f"the replica did not answer (source {found.source})")
                return [r.driver_id for r in found.candidates]

            async def redis_h3(lat: float, lng: float) -> list[str]:
                found = await nearest_from_redis(store, job(live_tenant, lat, lng), k=k,
                                                 driver_facts=facts)
                return [r.driver_id for r in found]

            async def geosearch(lat: float, lng: float) -> list[str]:
                found = await redis.execute_command(
                    "GEOSEARCH", geo_key, "FROMLONLAT", lng, lat, "BYRADIUS", bench.radius_m, "m",
                    "ASC", "COUNT", k)
                return [m.decode() for m in found]

            async def postgis(lat: float, lng: float) -> list[str]:
                found = await nearest_from_postgis(db, job(pg_tenant, lat, lng), k=k)
                return [r.driver_id for r in found]

            results = {}
            for name, query in (("replica", ours), ("redis_h3", redis_h3), ("redis_geosearch", geosearch),
                                ("postgis_knn", postgis)):
                results[name] = await _timed(query, points, bench.warmup)

            profile = await _profile_ours(store, live_tenant, points[bench.warmup:][:500], max_pickup_m,
                                          k, facts)
            lag = await _feed_lag_ms(store, publisher, replica, live_tenant, live_ids, fleet)
            # Off shift again: an engine started later would otherwise rebuild every bench
            # driver into Redis from Postgres (dispatch.matching.recovery).
            async with db.tenant_transaction(pg_tenant) as tx:
                await tx.execute(NOT_AVAILABLE_SQL)
    finally:
        gc.unfreeze()
        await replica.stop()
        await late.stop()
        await _forget_redis(redis, store, live_tenant, live_ids, fleet, geo_key)
        await redis.aclose()

    # The same position index in every store: compare answers as fleet indexes.
    live_index = {d: i for i, d in enumerate(live_ids)}
    pg_index = {d: i for i, d in enumerate(pg_ids)}
    as_index = {"replica": live_index, "redis_h3": live_index, "redis_geosearch": live_index,
                "postgis_knn": pg_index}
    answers = {name: [[as_index[name][d] for d in a] for a in r[2]] for name, r in results.items()}
    agree = {other: _same_fraction(answers["replica"], answers[other])
             for other in ("redis_h3", "redis_geosearch", "postgis_knn")}

    methods: dict[str, dict[str, float | None]] = {}
    for name, (latencies, wall_s, _) in results.items():
        p = percentiles_ms(latencies)
        methods[name] = {"p50_ms": p["p50_ms"], "p99_ms": p["p99_ms"], "max_ms": p["max_ms"],
                         "queries_per_s": round(len(latencies) / wall_s)}
    geo_qps = methods["redis_geosearch"]["queries_per_s"] or 0
    qps_ratio = round((methods["replica"]["queries_per_s"] or 0) / geo_qps, 2) if geo_qps else None
    ours_p99 = methods["redis_h3"]["p99_ms"] or 0.0
    geo_p99 = methods["redis_geosearch"]["p99_ms"] or 0.0
    figures: dict[str, object] = {
        "drivers": drivers, "queries": bench.queries, "k": k, "radius_m": bench.radius_m,
        "methods": methods,
        "queries_per_s_ratio_vs_geosearch": qps_ratio,
        "redis_h3_queries_per_s_ratio_vs_geosearch": round((methods["redis_h3"]["queries_per_s"] or 0) / geo_qps, 2)
        if geo_qps else None,
        "p99_ratio_redis_h3_to_geosearch": round(ours_p99 / geo_p99, 2) if geo_p99 else None,
        "redis_h3_round_trips_mean": profile["round_trips_mean"],
        "redis_h3_candidates_read_mean": profile["candidates_mean"],
        "redis_h3_time_in_redis_calls_share": profile["redis_share"],
        "same_top_k_replica_vs_redis_h3": agree["redis_h3"],
        "same_top_k_replica_vs_geosearch": agree["redis_geosearch"],
        "same_top_k_replica_vs_postgis": agree["postgis_knn"],
        "replica_resync_s": round(resync_s, 3),
        "replica_feed_lag_p50_ms": lag["p50_ms"], "replica_feed_lag_max_ms": lag["max_ms"],
    }
    rows: list[tuple[str, object]] = [
        ("drivers / queries / k / radius", f"{drivers} / {bench.queries} / {k} / {bench.radius_m:g} m"),
    ]
    for name, m in methods.items():
        rows.append((f"{name} p50 / p99 / max", f"{m['p50_ms']} / {m['p99_ms']} / {m['max_ms']} ms"))
        rows.append((f"{name} queries/s (one connection, sequential)", f"{m['queries_per_s']:,}"))
    rows += [
        ("queries/s ratio replica / geosearch", qps_ratio),
        ("redis_h3: round trips, candidates read per query (mean)",
         f"{profile['round_trips_mean']} / {profile['candidates_mean']}"),
        ("redis_h3: share of time inside available_in_cells", profile["redis_share"]),
        ("same top k: replica vs redis_h3 / geosearch / postgis",
         f"{agree['redis_h3']} / {agree['redis_geosearch']} / {agree['postgis_knn']}"),
        ("replica: resync of every driver (a replica started after the load)", f"{resync_s:.3f} s"),
        ("replica: landed ping -> in the replica, p50 / max of 50", f"{lag['p50_ms']} / {lag['max_ms']} ms"),
    ]
    return figures, rows


def _same_fraction(a: list[list[int]], b: list[list[int]]) -> float:
    return round(sum(x == y for x, y in zip(a, b, strict=True)) / max(1, len(a)), 4)


async def _profile_ours(store: LocationStore, tenant: str, points: list[tuple[float, float]],
                        max_pickup_m: float, k: int, facts: dict[str, DriverFacts]) -> dict[str, float]:
    """Where a nearest_from_redis query spends its time: calls, rows read, time in Redis calls."""
    calls = rows = 0
    in_redis = 0.0
    real = store.available_in_cells

    async def counted(tenant_id: str, cells: list[str]) -> list[tuple[str, float, float, str, int]]:
        nonlocal calls, rows, in_redis
        t0 = time.perf_counter()
        found = await real(tenant_id, cells)
        in_redis += time.perf_counter() - t0
        calls += 1
        rows += len(found)
        return found

    store.available_in_cells = counted  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        for lat, lng in points:
            await nearest_from_redis(store, Job(tenant, lat, lng, lat, lng, None, False, max_pickup_m),
                                     k=k, driver_facts=facts)
        total = time.perf_counter() - t0
    finally:
        del store.available_in_cells
    n = max(1, len(points))
    return {"round_trips_mean": round(calls / n, 2), "candidates_mean": round(rows / n, 1),
            "redis_share": round(in_redis / total, 2) if total else 0.0}
