"""Driver claims against a real Redis: offers and accepts are atomic under any concurrency."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from dispatch.matching.claims import DriverClaims, InvalidClaimSettings
from dispatch.matching.keys import (
    deliveries_key,
    delivery_driver_key,
    delivery_offer_key,
    offer_key,
)
from schema.ids import InvalidId
from streams.keys import available_key, location_key, state_key
from streams.location_store import LocationStore
from streams.records import DriverPing

pytestmark = pytest.mark.timeout(60)
SOWETO = (-26.2485, 27.8540)


def ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


class Fleet:
    """Drivers and deliveries of one test, on a shared Redis; every key is deleted afterwards."""

    def __init__(self, redis: aioredis.Redis, store: LocationStore) -> None:
        self.redis = redis
        self.store = store
        self.tenant = str(uuid.uuid4())
        self.cell = store.cell_of(*SOWETO)
        self.drivers: list[str] = []
        self.deliveries: list[str] = []

    async def on_shift(self, n: int, *, located: bool = True) -> list[str]:
        """n drivers on shift (available); with a live location in one cell when located."""
        drivers = ids(n)
        self.drivers += drivers
        if located:
            now = time.time()
            await self.store.write_batch([
                DriverPing(v=1, driver_id=d, tenant_id=self.tenant, lat=SOWETO[0], lng=SOWETO[1],
                           accuracy_m=5.0, speed_mps=0.0, heading_deg=0.0, ts=now,
                           received_at=now, vehicle_type="motorbike")
                for d in drivers
            ])
        for d in drivers:
            await self.store.start_shift(self.tenant, d, "motorbike")
        return drivers

    def new_deliveries(self, n: int) -> list[str]:
        deliveries = ids(n)
        self.deliveries += deliveries
        return deliveries

    async def indexed(self) -> set[str]:
        return {row[0] for row in await self.store.available_in_cells(self.tenant, [self.cell])}

    async def cleanup(self) -> None:
        keys = [available_key(self.tenant, self.cell)]
        for d in self.drivers:
            keys += [offer_key(d), deliveries_key(d), state_key(d), location_key(d)]
        for x in self.deliveries:
            keys += [delivery_offer_key(x), delivery_driver_key(x)]
        for start in range(0, len(keys), 500):
            await self.redis.delete(*keys[start:start + 500])


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def fleet(redis: aioredis.Redis, stream_settings) -> AsyncIterator[Fleet]:
    fleet = Fleet(redis, LocationStore(redis, stream_settings))
    yield fleet
    await fleet.cleanup()


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


# -- the concurrency proof ---------------------------------------------------------------------

async def storm(engines: list[DriverClaims], fleet: Fleet, capacity: int) -> None:
    """Rounds of every (driver, delivery) offer at once, then every accept at once.

    Each round, each driver wins exactly one offer and each delivery at most one, until the
    drivers are full; then no offer succeeds. Accepts of offers never won all fail.
    """
    drivers = await fleet.on_shift(5)
    remaining = fleet.new_deliveries(300)
    held: dict[str, set[str]] = {d: set() for d in drivers}
    for round_no in range(capacity + 1):
        pairs = [(d, x) for x in remaining for d in drivers]
        random.shuffle(pairs)
        results = await asyncio.gather(*(
            engines[i % len(engines)].offer(d, x) for i, (d, x) in enumerate(pairs)
        ))
        won = [pair for pair, ok in zip(pairs, results, strict=True) if ok]
        per_driver = Counter(d for d, _ in won)
        per_delivery = Counter(x for _, x in won)
        assert all(n == 1 for n in per_driver.values()), per_driver
        assert all(n == 1 for n in per_delivery.values()), per_delivery
        if round_no < capacity:
            assert sorted(per_driver) == sorted(drivers)     # nobody idles while work waits
        else:
            assert won == []                                  # everyone is full
        for d, x in won:
            assert await engines[0].offer_of(d) == x

        lost = random.sample([p for p, ok in zip(pairs, results, strict=True) if not ok], 300)
        attempts = won + lost
        random.shuffle(attempts)
        accepted = await asyncio.gather(*(
            engines[i % len(engines)].accept(d, x) for i, (d, x) in enumerate(attempts)
        ))
        assert {p for p, ok in zip(attempts, accepted, strict=True) if ok} == set(won)
        for d, x in won:
            held[d].add(x)
        taken = {x for _, x in won}
        remaining = [x for x in remaining if x not in taken]

        expected_status = "busy" if round_no + 1 >= capacity else "available"
        for d in drivers:
            assert await engines[0].offer_of(d) is None
            assert await engines[0].active_deliveries(d) == held[d]
            assert len(held[d]) <= capacity
            assert await fleet.store.status(d) == expected_status
        assert await fleet.indexed() == (set() if expected_status == "busy" else set(drivers))

    every = [x for d in drivers for x in held[d]]
    assert len(every) == len(set(every)) == 5 * capacity   # no delivery went to two drivers
    for d in drivers:
        for x in held[d]:
            assert await engines[0].driver_of(x) == d


@pytest.mark.parametrize("capacity", [1, 2])
async def test_hundreds_of_concurrent_offers_over_a_pool_claim_each_driver_at_most_once(
    fleet: Fleet, redis_url: str, capacity: int
) -> None:
    pool = aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=50, timeout=20)
    client = aioredis.Redis.from_pool(pool)
    try:
        await storm([DriverClaims(client, capacity=capacity)], fleet, capacity)
    finally:
        await client.aclose()


@pytest.mark.parametrize("capacity", [1, 2])
async def test_several_engine_processes_racing_never_double_claim_a_driver(
    fleet: Fleet, redis_url: str, capacity: int
) -> None:
    clients = [aioredis.Redis.from_pool(
        aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=10, timeout=20))
        for _ in range(6)]
    try:
        await storm([DriverClaims(c, capacity=capacity) for c in clients], fleet, capacity)
    finally:
        for c in clients:
            await c.aclose()


async def test_mixed_offers_accepts_declines_and_releases_keep_every_invariant(
    fleet: Fleet, redis_url: str
) -> None:
    capacity = 2
    drivers = await fleet.on_shift(5)
    deliveries = fleet.new_deliveries(300)
    client = aioredis.Redis.from_pool(
        aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=50, timeout=20))
    claims = DriverClaims(client, capacity=capacity)
    accepted_by: Counter[str] = Counter()
    released: Counter[str] = Counter()
    stop = asyncio.Event()
    violations: list[str] = []

    async def worker(seed: int) -> None:
        rnd = random.Random(seed)
        for _ in range(40):
            d, x = rnd.choice(drivers), rnd.choice(deliveries)
            if not await claims.offer(d, x):
                continue
            if rnd.random() < 0.3:
                assert await claims.decline(d, x)
            elif await claims.accept(d, x):
                accepted_by[x] += 1
                if rnd.random() < 0.5:
                    await asyncio.sleep(0)
                    assert await claims.release(d, x)
                    released[x] += 1

    async def watcher() -> None:
        while not stop.is_set():
            for d in drivers:
                if len(await claims.active_deliveries(d)) > capacity:
                    violations.append(d)
            await asyncio.sleep(0)

    watching = asyncio.create_task(watcher())
    try:
        await asyncio.gather(*(worker(seed) for seed in range(100)))
    finally:
        stop.set()
        await watching
        await client.aclose()

    assert violations == []
    assert sum(accepted_by.values()) > 5
    held = {d: await claims_read(fleet, d) for d in drivers}
    every = [x for xs in held.values() for x in xs]
    assert len(every) == len(set(every))
    for d, xs in held.items():
        assert len(xs) <= capacity
        assert await fleet.store.status(d) == ("busy" if len(xs) == capacity else "available")
        for x in xs:
            assert accepted_by[x] - released[x] == 1
    for x in deliveries:
        assert accepted_by[x] - released[x] == sum(x in xs for xs in held.values())


async def claims_read(fleet: Fleet, driver: str) -> set[str]:
    return {m.decode() for m in await fleet.redis.smembers(deliveries_key(driver))}


# -- offers expire, are declined, survive restarts -------------------------------------------

async def test_an_expired_offer_frees_the_driver_and_can_no_longer_be_accepted(
    fleet: Fleet, redis: aioredis.Redis
) -> None:
    claims = DriverClaims(redis, offer_ttl_s=0.3)
    driver, other = await fleet.on_shift(2)
    first, second = fleet.new_deliveries(2)
    assert await claims.offer(driver, first)
    assert not await claims.offer(driver, second)       # one open offer per driver
    assert not await claims.offer(other, first)         # one open offer per delivery

    async def expired() -> bool:
        return await claims.offer_of(driver) is None

    await eventually(expired, within=2.0)
    assert not await claims.accept(driver, first)
    assert not await claims.decline(driver, first)      # the engine's timer finds nothing left
    assert await claims.active_deliveries(driver) == set()
    assert await claims.offer(other, first)             # the delivery is free again
    assert await claims.offer(driver, second)           # and so is the driver


async def test_a_declined_offer_frees_driver_and_delivery(fleet: Fleet, redis: aioredis.Redis) -> None:
    claims = DriverClaims(redis)
    driver, other = await fleet.on_shift(2)
    first, second = fleet.new_deliveries(2)
    assert await claims.offer(driver, first)
    assert not await claims.decline(driver, second)     # not the open offer: nothing changes
    assert await claims.offer_of(driver) == first
    assert await claims.decline(driver, first)
    assert not await claims.decline(driver, first)
    assert not await claims.accept(driver, first)
    assert await claims.offer(other, first)
    assert await claims.offer(driver, second)


async def test_offers_survive_an_engine_restart(fleet: Fleet, redis_url: str) -> None:
    driver, = await fleet.on_shift(1)
    delivery, = fleet.new_deliveries(1)
    before = aioredis.from_url(redis_url)
    assert await DriverClaims(before).offer(driver, delivery)
    await before.aclose()

    after = aioredis.from_url(redis_url)
    try:
        claims = DriverClaims(after)
        assert await claims.offer_of(driver) == delivery
        assert await claims.accept(driver, delivery)
        assert await claims.active_deliveries(driver) == {delivery}
    finally:
        await after.aclose()


# -- status and the availability index --------------------------------------------------------

async def test_accepting_makes_the_driver_busy_and_unindexed_and_release_restores_it(
    fleet: Fleet, redis: aioredis.Redis
) -> None:
    claims = DriverClaims(redis)
    driver, = await fleet.on_shift(1)
    first, second = fleet.new_deliveries(2)
    assert await fleet.indexed() == {driver}
    assert await claims.offer(driver, first)
    assert await claims.accept(driver, first)
    assert await fleet.store.status(driver) == "busy"
    assert (await fleet.store.get(driver))["status"] == "busy"
    assert await fleet.indexed() == set()
    assert not await claims.offer(driver, second)       # a busy driver cannot be offered
    assert not await claims.accept(driver, first)       # the offer was consumed

    assert await claims.release(driver, first)
    assert not await claims.release(driver, first)      # repeating a release is harmless
    assert await fleet.store.status(driver) == "available"
    assert await fleet.indexed() == {driver}
    assert await claims.driver_of(first) is None
    assert await claims.offer(driver, second)


async def test_release_without_a_live_location_makes_available_and_leaves_indexing_to_the_next_ping(
    fleet: Fleet, redis: aioredis.Redis
) -> None:
    claims = DriverClaims(redis)
    driver, = await fleet.on_shift(1, located=False)
    delivery, = fleet.new_deliveries(1)
    assert await claims.offer(driver, delivery) and await claims.accept(driver, delivery)
    assert await fleet.store.status(driver) == "busy"
    assert await claims.release(driver, delivery)
    assert await fleet.store.status(driver) == "available"
    assert await fleet.indexed() == set()


async def test_an_active_delivery_cannot_be_offered_to_anyone_else(
    fleet: Fleet, redis: aioredis.Redis
) -> None:
    claims = DriverClaims(redis, capacity=2)
    driver, other = await fleet.on_shift(2)
    delivery, = fleet.new_deliveries(1)
    assert await claims.offer(driver, delivery) and await claims.accept(driver, delivery)
    assert await fleet.store.status(driver) == "available"   # one slot left (multi-drop)
    assert not await claims.offer(other, delivery)
    assert not await claims.offer(driver, delivery)
    assert await claims.driver_of(delivery) == driver


async def test_busy_offline_and_never_started_drivers_cannot_be_offered(
    fleet: Fleet, redis: aioredis.Redis
) -> None:
    claims = DriverClaims(redis)
    busy, offline = await fleet.on_shift(2)
    delivery, = fleet.new_deliveries(1)
    assert await fleet.store.set_status(busy, "busy", expect="available")
    await fleet.store.end_shift(offline)
    assert not await claims.offer(busy, delivery)
    assert not await claims.offer(offline, delivery)

    stranger = ids(1)[0]
    fleet.drivers.append(stranger)
    assert not await claims.offer(stranger, delivery)   # no driver:state: offline by contract
    assert await DriverClaims(redis, require_shift=False).offer(stranger, delivery)


async def test_an_offer_to_a_driver_who_went_offline_cannot_be_accepted(
    fleet: Fleet, redis: aioredis.Redis
) -> None:
    claims = DriverClaims(redis)
    driver, other = await fleet.on_shift(2)
    delivery, = fleet.new_deliveries(1)
    assert await claims.offer(driver, delivery)
    await fleet.store.end_shift(driver)
    assert not await claims.accept(driver, delivery)
    assert await claims.offer_of(driver) is None        # withdrawn, the delivery is free again
    assert await fleet.store.status(driver) == "offline"
    assert await claims.offer(other, delivery)


# -- bad input ----------------------------------------------------------------------------------

HOSTILE = [
    "",
    "42",
    "not-a-uuid",
    "x" * 100_000,
    "1; DROP TABLE drivers; --",
    "' OR 1=1 --",
    "x') redis.call('FLUSHALL') --",
    "*",
    "driver:offer:*",
    "00000000-0000-0000-0000-00000000000g",
    "3f2b8c1e-9a4d-4c1b-8e2f-0a1b2c3d4e5f\n",
    "3f2b8c1e-9a4d-4c1b-8e2f-0a1b2c3d4e5f:evil",
    None,
    12345,
    b"3f2b8c1e-9a4d-4c1b-8e2f-0a1b2c3d4e5f",
]


@pytest.mark.parametrize("bad", HOSTILE, ids=lambda v: repr(v)[:30])
async def test_hostile_ids_are_refused_before_touching_redis(bad, fleet: Fleet) -> None:
    unreachable = aioredis.Redis(host="127.0.0.1", port=1)   # any I/O would raise ConnectionError
    claims = DriverClaims(unreachable)
    good = str(uuid.uuid4())
    calls = [
        lambda: claims.offer(bad, good), lambda: claims.offer(good, bad),
        lambda: claims.accept(bad, good), lambda: claims.accept(good, bad),
        lambda: claims.decline(bad, good), lambda: claims.decline(good, bad),
        lambda: claims.release(bad, good), lambda: claims.release(good, bad),
        lambda: claims.offer_of(bad), lambda: claims.active_deliveries(bad),
        lambda: claims.driver_of(bad),
    ]
    try:
        for call in calls:
            with pytest.raises(InvalidId, match="must be a UUID") as caught:
                await call()
            assert len(str(caught.value)) < 200
    finally:
        await unreachable.aclose()
    if isinstance(bad, str):
        assert not await fleet.redis.exists(offer_key(bad), delivery_offer_key(bad),
                                            deliveries_key(bad), delivery_driver_key(bad))


async def test_ids_are_stored_in_canonical_form(fleet: Fleet, redis: aioredis.Redis) -> None:
    claims = DriverClaims(redis)
    driver, = await fleet.on_shift(1)
    delivery, = fleet.new_deliveries(1)
    assert await claims.offer(driver.upper(), "{" + delivery + "}")
    assert await claims.offer_of(driver) == delivery
    assert await claims.accept(uuid.UUID(driver), delivery.replace("-", ""))
    assert await claims.active_deliveries(driver) == {delivery}


@pytest.mark.parametrize("settings", [
    {"capacity": 0}, {"capacity": True}, {"capacity": 1.5}, {"capacity": 1000},
    {"offer_ttl_s": 0}, {"offer_ttl_s": -1}, {"offer_ttl_s": float("nan")}, {"offer_ttl_s": "20"},
])
def test_out_of_range_settings_are_refused(settings: dict) -> None:
    with pytest.raises(InvalidClaimSettings):
        DriverClaims(aioredis.Redis(host="127.0.0.1", port=1), **settings)
