"""The availability replica against the real Redis: it answers what the Redis index answers,
sees a ping the worker's observer landed and a claim's status change, and a stale copy of it
cannot assign a driver twice."""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import replace

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from dispatch.matching.claims import DriverClaims
from dispatch.matching.fleet_replica import FleetReplica
from dispatch.matching.keys import (
    deliveries_key,
    delivery_driver_key,
    delivery_offer_key,
    offer_key,
)
from dispatch.matching.nearest import nearest, nearest_from_postgis, nearest_from_redis
from dispatch.tracking.worker import tracker_factory
from geo import destination
from streams.location_store import LocationStore
from streams.records import DriverPing
from streams.settings import StreamSettings
from tests.integration.matching.test_nearest import (  # noqa: F401 - seeded is a fixture
    SOWETO,
    forget_live,
    ids,
    job_at,
    put_live,
    random_pickups,
    seeded,
)
from tests.integration.private_services import private_redis
from tests.integration.streams.harness import eventually, raw
from tests.integration.streams.harness import ping as harness_ping
from tests.integration.streams.test_streams import (  # noqa: F401 - the fixture gives back the topics it created
    _delete_created_topics,
    create_topics,
    running_worker,
)

pytestmark = pytest.mark.timeout(120)


@contextlib.asynccontextmanager
async def running(redis: aioredis.Redis, settings, **kw):
    replica = FleetReplica(redis, settings, **kw)
    await replica.start(wait_s=30)
    try:
        yield replica
    finally:
        await replica.stop()


async def test_the_replica_answers_what_redis_and_postgis_answer(seeded, stream_settings):  # noqa: F811 - the imported fixture
    s = seeded
    async with running(s.store.redis, stream_settings, channel=f"test:{uuid.uuid4()}") as replica:
        assert replica.ready
        some = 0
        for i, (lat, lng) in enumerate(random_pickups(120, seed=7)):
            kw = {}
            if i % 3 == 1:
                kw["vehicle_types"] = frozenset({"car"})
            if i % 5 == 2:
                kw["needs_cold_storage"] = True
            job = job_at(s.tenant_id, lat, lng, max_pickup_m=[2_000.0, 10_000.0][i % 2], **kw)
            mine = replica.nearest(job, k=10, driver_facts=s.facts)
            live = await nearest_from_redis(s.store, job, k=10, driver_facts=s.facts)
            stored = await nearest_from_postgis(s.db, job, k=10)
            assert mine == live
            assert ids(mine) == ids(stored)
            some += bool(mine)
        assert some > 60
        found = await nearest(s.store, s.db, job_at(s.tenant_id, *SOWETO), driver_facts=s.facts,
                              replica=replica)
        assert found.source == "replica" and len(found.candidates) == 10


async def test_a_ping_landed_through_the_worker_observer_reaches_the_replica(seeded, stream_settings):  # noqa: F811 - the imported fixture
    """The worker's observer (``tracker_factory``) publishes what Redis holds after the write."""
    s = seeded
    observer = tracker_factory(stream_settings)(s.store.redis, None)
    async with running(s.store.redis, stream_settings) as replica:
        driver, was = next(iter(s.positions.items()))
        far = destination(*was, 45.0, 600.0)   # a minute later: a plausible move
        now = time.time()
        moved_ping = DriverPing(v=1, driver_id=driver, tenant_id=s.tenant_id, lat=far[0], lng=far[1],
                                accuracy_m=5.0, speed_mps=0.0, heading_deg=0.0, ts=now + 60,
                                received_at=now, vehicle_type="car")
        outcome = await s.store.write_batch([moved_ping])
        assert outcome.accepted == 1
        landed = time.perf_counter()
        await observer.on_pings(outcome.accepted_pings)

        async def moved() -> bool:
            return replica.index.seen_of(driver) == outcome.redis_now_ms

        await eventually(moved, within=1.0, every=0.001)
        assert time.perf_counter() - landed < 1.0
        near_far = replica.nearest(job_at(s.tenant_id, *far), k=10, driver_facts=s.facts)
        (mine,) = [r for r in near_far if r.driver_id == driver]
        assert (mine.candidate.lat, mine.candidate.lng) == far and mine.candidate.vehicle_type == "car"
        assert near_far == await nearest_from_redis(s.store, job_at(s.tenant_id, *far), k=10,
                                                    driver_facts=s.facts)


async def test_a_claim_and_a_shift_end_leave_the_replica_within_a_second(seeded, stream_settings):  # noqa: F811 - the imported fixture
    s = seeded
    claims = DriverClaims(s.store.redis)
    delivery = str(uuid.uuid4())
    async with running(s.store.redis, stream_settings, channel=f"test:{uuid.uuid4()}") as replica:
        job = job_at(s.tenant_id, *SOWETO)
        first, second = (r.driver_id for r in replica.nearest(job, k=2, driver_facts=s.facts))
        try:
            assert await claims.offer(first, delivery) and await claims.accept(first, delivery)

            async def gone() -> bool:
                return first not in ids(replica.nearest(job, k=10, driver_facts=s.facts))

            await eventually(gone, within=1.0, every=0.001)
            await s.store.end_shift(second)

            async def ended() -> bool:
                return second not in ids(replica.nearest(job, k=10, driver_facts=s.facts))

            await eventually(ended, within=1.0, every=0.001)
            assert await claims.release(first, delivery)

            async def back() -> bool:
                return ids(replica.nearest(job, k=1, driver_facts=s.facts)) == [first]

            await eventually(back, within=1.0, every=0.001)
            assert replica.nearest(job, k=10, driver_facts=s.facts) == await nearest_from_redis(
                s.store, job, k=10, driver_facts=s.facts)
        finally:
            await s.store.redis.delete(deliveries_key(first), delivery_driver_key(delivery))


async def test_a_stale_replica_cannot_assign_a_driver_twice(seeded, stream_settings):  # noqa: F811 - the imported fixture
    """A replica that missed a claim still proposes the driver; the claim refuses it and the
    next candidate is offered, as ``OfferEngine._advance`` goes down its list."""
    s = seeded
    claims = DriverClaims(s.store.redis)
    first_job, second_job = str(uuid.uuid4()), str(uuid.uuid4())
    async with running(s.store.redis, stream_settings, channel=f"test:{uuid.uuid4()}") as replica:
        async def deaf(driver_ids):   # this replica never learns of status changes
            return []

        replica.read_rows = deaf
        job = job_at(s.tenant_id, *SOWETO)
        taken = replica.nearest(job, k=10, driver_facts=s.facts)[0].driver_id
        offered: list[str] = []
        try:
            assert await claims.offer(taken, first_job) and await claims.accept(taken, first_job)
            assert await LocationStore(s.store.redis, s.store.settings).status(taken) == "busy"
            stale = replica.nearest(job, k=10, driver_facts=s.facts)
            assert stale[0].driver_id == taken          # the replica is behind
            for candidate in stale:
                if await claims.offer(candidate.driver_id, second_job):
                    offered.append(candidate.driver_id)
                    break
            assert offered == [stale[1].driver_id]
            assert await claims.active_deliveries(taken) == {first_job}
            assert await claims.offer_of(taken) is None
        finally:
            await s.store.redis.delete(
                deliveries_key(taken), delivery_driver_key(first_job), delivery_offer_key(second_job),
                *(offer_key(d) for d in offered))


async def test_a_replica_started_late_resyncs_and_drops_what_redis_dropped(seeded, stream_settings):  # noqa: F811 - the imported fixture
    s = seeded
    async with running(s.store.redis, stream_settings, channel=f"test:{uuid.uuid4()}") as replica:
        index = replica.index.tenant(s.tenant_id)
        assert index is not None and index.candidates == len(s.positions)
        driver = next(iter(s.positions))
        await s.store.redis.delete(f"driver:location:{driver}")   # as if its TTL had run out
        assert await replica.resync() >= 0
        assert replica.index.seen_of(driver) is None


async def test_a_location_key_of_another_type_reads_as_no_location_and_the_feed_lives(seeded, stream_settings):  # noqa: F811 - the imported fixture
    s = seeded
    async with running(s.store.redis, stream_settings, channel=f"test:{uuid.uuid4()}") as replica:
        driver = next(iter(s.positions))
        await s.store.redis.delete(f"driver:location:{driver}")
        await s.store.redis.set(f"driver:location:{driver}", "not a hash", ex=60)   # another writer's mistake
        assert await replica.resync() >= 0   # the script reads every driver, the bad key among them
        assert replica.ready
        index = replica.index.tenant(s.tenant_id)
        assert index is not None and index.candidates == len(s.positions) - 1


async def test_a_ping_through_the_running_worker_reaches_the_replica(platform, stream_settings):
    """The whole path: Kafka -> the location worker (the engine's observer) -> Redis -> the
    availability channel -> the replica; then a shift end leaves it."""
    settings = replace(stream_settings, locations_partitions=1)
    redis = aioredis.from_url(settings.redis_url)
    store = LocationStore(redis, settings)
    driver, tenant = str(uuid.uuid4()), str(uuid.uuid4())
    at = destination(*SOWETO, 10.0, 250.0)
    await create_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=2)
    await producer.start()
    try:
        await store.start_shift(tenant, driver, "motorbike")
        async with running(redis, settings) as replica, \
                running_worker(settings, platform, observer=tracker_factory(settings)):
            await producer.send_and_wait(settings.locations_topic, raw(harness_ping(driver, tenant, *at, time.time())),
                                         key=driver.encode())
            job = job_at(tenant, *SOWETO)

            async def offered() -> list[str]:
                return ids(replica.nearest(job, k=10) or [])

            assert await eventually(offered, within=20, every=0.005) == [driver]
            assert replica.nearest(job, k=10) == await nearest_from_redis(store, job, k=10)
            await store.end_shift(driver)

            async def left() -> bool:
                return replica.nearest(job, k=10) == []

            await eventually(left, within=1.0, every=0.001)
    finally:
        await producer.stop()
        await forget_live(redis, store, tenant, [(driver, *at, "motorbike")])
        await redis.aclose()


async def test_after_a_redis_restart_or_flush_the_replica_resyncs_before_it_answers():
    async with private_redis() as server:
        settings = replace(StreamSettings.from_env(), redis_url=server.url)
        redis = aioredis.from_url(server.url)
        store = LocationStore(redis, settings)
        tenant = str(uuid.uuid4())
        drivers = [(str(uuid.uuid4()), *destination(*SOWETO, 40.0 * i, 300.0 * i), "car") for i in range(5)]
        try:
            await put_live(store, tenant, drivers)
            async with running(redis, settings) as replica:
                job = job_at(tenant, *SOWETO)
                assert len(replica.nearest(job, k=10)) == 5
                await server.restart()   # comes back empty: the feed is lost
                await redis.connection_pool.disconnect()   # this test's own pooled connections are dead too

                async def not_ready() -> bool:
                    return not replica.ready

                await eventually(not_ready, within=5, every=0.01)
                assert replica.nearest(job, k=10) is None      # the caller asks Redis instead
                await eventually(lambda: _async(replica.ready), within=15, every=0.05)
                assert replica.nearest(job, k=10) == []        # resynced: Redis has nobody
                await put_live(store, tenant, drivers[:2])    # written outside the worker path
                assert await replica.resync() == 2
                assert ids(replica.nearest(job, k=10)) == [drivers[0][0], drivers[1][0]]
                await redis.flushall()                          # a null invalidation

                async def emptied() -> bool:
                    return replica.ready and replica.nearest(job, k=10) == []

                await eventually(emptied, within=5, every=0.01)
        finally:
            await redis.aclose()


async def _async(value: object) -> object:
    return value
