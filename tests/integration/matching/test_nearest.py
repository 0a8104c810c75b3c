"""dispatch/nearest.py against real Redis and real PostGIS: the same drivers in both, the same answers."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass, replace

import pytest
import redis.asyncio as aioredis

from dispatch.matching.nearest import (
    DriverFacts,
    load_driver_facts,
    nearest,
    nearest_from_postgis,
    nearest_from_redis,
)
from dispatch.matching.ranking import Job
from geo import destination
from schema.db import TenantDatabase
from schema.tenants import create_tenant
from streams.keys import available_key, location_key, state_key
from streams.location_store import LocationStore
from streams.records import DriverPing

pytestmark = pytest.mark.timeout(60)

SOWETO = (-26.2485, 27.8540)
VEHICLES = ("motorbike", "car", "bakkie")
N_DRIVERS = 300
SPREAD_M = 4_000.0

INSERT_DRIVERS_SQL = """
INSERT INTO drivers (id, first_name, last_name, license_number, vehicle_type, vehicle_registration,
                     has_cold_storage, current_location, is_available)
SELECT u.id, 'Test', 'Driver', 'NEAR-' || u.id::text, u.vehicle, 'GP ' || left(u.id::text, 8),
       u.cold, ST_SetSRID(ST_MakePoint(u.lng, u.lat), 4326)::geography, true
FROM unnest($1::uuid[], $2::text[], $3::bool[], $4::float8[], $5::float8[])
     AS u(id, vehicle, cold, lat, lng)
"""


@dataclass
class Seeded:
    tenant_id: str
    db: TenantDatabase
    store: LocationStore
    facts: dict[str, DriverFacts]
    positions: dict[str, tuple[float, float]]


def ping(tenant_id: str, driver_id: str, lat: float, lng: float, vehicle: str) -> DriverPing:
    now = time.time()
    return DriverPing(v=1, driver_id=driver_id, tenant_id=tenant_id, lat=lat, lng=lng, accuracy_m=5.0,
                      speed_mps=0.0, heading_deg=0.0, ts=now, received_at=now, vehicle_type=vehicle)


async def put_live(store: LocationStore, tenant_id: str, drivers: list[tuple[str, float, float, str]]) -> None:
    """Start each driver's shift and write one ping each (the ingest path's own writer)."""
    for i in range(0, len(drivers), 50):
        await asyncio.gather(*(store.start_shift(tenant_id, d, v) for d, _, _, v in drivers[i:i + 50]))
    outcome = await store.write_batch([ping(tenant_id, d, lat, lng, v) for d, lat, lng, v in drivers])
    assert outcome.accepted == len(drivers)


async def forget_live(redis: aioredis.Redis, store: LocationStore, tenant_id: str,
                      drivers: list[tuple[str, float, float, str]]) -> None:
    keys = {location_key(d) for d, *_ in drivers} | {state_key(d) for d, *_ in drivers}
    keys |= {available_key(tenant_id, store.cell_of(lat, lng)) for _, lat, lng, _ in drivers}
    await redis.delete(*keys)


@pytest.fixture
async def seeded(platform, stream_settings):
    """300 available drivers around Soweto, identical in Postgres (drivers) and Redis (index)."""
    rng = random.Random(20240515)
    tenant = await create_tenant(platform, "Nearest Spaza")
    tenant_id = str(tenant.id)
    drivers = []
    cold = []
    for _ in range(N_DRIVERS):
        lat, lng = destination(*SOWETO, rng.uniform(0, 360), SPREAD_M * rng.random() ** 0.5)
        drivers.append((str(uuid.uuid4()), lat, lng, rng.choice(VEHICLES)))
        cold.append(rng.random() < 0.2)
    redis = aioredis.from_url(stream_settings.redis_url)
    store = LocationStore(redis, stream_settings)
    async with TenantDatabase(platform) as db:
        async with db.tenant_transaction(tenant.id) as tx:
            await tx.execute(INSERT_DRIVERS_SQL, [uuid.UUID(d) for d, *_ in drivers],
                             [v for *_, v in drivers], cold, [d[1] for d in drivers],
                             [d[2] for d in drivers])
        try:
            await put_live(store, tenant_id, drivers)
            yield Seeded(tenant_id, db, store, await load_driver_facts(db, tenant.id),
                         {d: (lat, lng) for d, lat, lng, _ in drivers})
        finally:
            await forget_live(redis, store, tenant_id, drivers)
            await redis.aclose()


def job_at(tenant_id: str, lat: float, lng: float, **overrides) -> Job:
    fields = dict(tenant_id=tenant_id, pickup_lat=lat, pickup_lng=lng, dropoff_lat=SOWETO[0],
                  dropoff_lng=SOWETO[1], vehicle_types=None, needs_cold_storage=False,
                  max_pickup_m=10_000.0)
    fields.update(overrides)
    return Job(**fields)


def random_pickups(n: int, seed: int) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    return [destination(*SOWETO, rng.uniform(0, 360), (SPREAD_M + 1_500) * rng.random() ** 0.5)
            for _ in range(n)]


def ids(ranked) -> list[str]:
    return [r.driver_id for r in ranked]


async def both(s: Seeded, job: Job, **kw) -> tuple[list[str], list[str]]:
    exclude = kw.pop("exclude", frozenset())
    live = await nearest_from_redis(s.store, job, exclude=exclude, driver_facts=s.facts, **kw)
    stored = await nearest_from_postgis(s.db, job, exclude=exclude, **kw)
    return ids(live), ids(stored)


async def test_redis_and_postgis_return_the_same_ten_nearest_in_the_same_order(seeded):
    for lat, lng in random_pickups(150, seed=1):
        live, stored = await both(seeded, job_at(seeded.tenant_id, lat, lng), k=10)
        assert len(live) == 10
        assert live == stored


async def test_redis_answer_is_the_exact_top_k_of_all_drivers(seeded):
    """Brute force over every seeded driver: the ring search stops neither early nor wrong."""
    from geo import distance_m

    for lat, lng in random_pickups(40, seed=2):
        job = job_at(seeded.tenant_id, lat, lng)
        live = await nearest_from_redis(seeded.store, job, k=10, driver_facts=seeded.facts)
        brute = sorted(seeded.positions, key=lambda d: (distance_m(lat, lng, *seeded.positions[d]), d))
        assert ids(live) == brute[:10]


async def test_vehicle_cold_storage_exclude_and_radius_filters_agree(seeded):
    s = seeded
    pickups = random_pickups(40, seed=3)
    for i, (lat, lng) in enumerate(pickups):
        base = job_at(s.tenant_id, lat, lng)
        bakkies = replace(base, vehicle_types=frozenset({"bakkie"}))
        live, stored = await both(s, bakkies)
        assert live == stored and live
        assert {(await s.store.get(d))["vehicle"] for d in live} == {"bakkie"}

        cold = replace(base, needs_cold_storage=True, vehicle_types=frozenset({"car", "bakkie"}))
        live, stored = await both(s, cold, k=5)
        assert live == stored and live
        assert all(s.facts[d].has_cold_storage for d in live)

        nearest_three = ids(await nearest_from_postgis(s.db, base, k=3))
        live, stored = await both(s, base, exclude=frozenset(nearest_three))
        assert live == stored and not set(live) & set(nearest_three)

        close = replace(base, max_pickup_m=300.0 + 40 * i)
        live, stored = await both(s, close)
        assert live == stored
        assert all(r.distance_m <= close.max_pickup_m
                   for r in await nearest_from_redis(s.store, close, driver_facts=s.facts))

    nowhere = job_at(s.tenant_id, *pickups[0], vehicle_types=frozenset())
    assert await both(s, nowhere) == ([], [])


async def test_a_driver_whose_location_expired_is_not_returned_by_redis(seeded, stream_settings):
    s = seeded
    short = LocationStore(s.store.redis, replace(stream_settings, location_ttl_s=0.5))
    quiet = str(uuid.uuid4())
    at = destination(*SOWETO, 45.0, 10.0)
    try:
        await put_live(short, s.tenant_id, [(quiet, *at, "motorbike")])
        job = job_at(s.tenant_id, *SOWETO)
        assert ids(await nearest_from_redis(s.store, job, k=1))[0] == quiet
        await asyncio.sleep(0.7)
        assert quiet not in ids(await nearest_from_redis(s.store, job, k=10))
    finally:
        await forget_live(s.store.redis, s.store, s.tenant_id, [(quiet, *at, "motorbike")])


async def test_nearest_falls_back_to_postgis_only_when_redis_has_nothing(seeded):
    s = seeded
    job = job_at(s.tenant_id, *SOWETO)
    live = await nearest(s.store, s.db, job, driver_facts=s.facts)
    assert live.source == "redis" and len(live.candidates) == 10

    # Same tenant, same job, but the live index is gone (a Redis restart, or every key expired).
    drivers = [(d, lat, lng, "car") for d, (lat, lng) in s.positions.items()]
    await forget_live(s.store.redis, s.store, s.tenant_id, drivers)
    assert await nearest_from_redis(s.store, job) == []
    fallback = await nearest(s.store, s.db, job, driver_facts=s.facts)
    assert fallback.source == "postgis"
    assert ids(fallback.candidates) == ids(live.candidates)
