"""The shared ETA model through the real Redis (dispatch.matching.calibration): legs completed
through the tracker and the store change the next estimate, every engine reads the same model,
a replay learns simulated seconds, each leg counts once, and garbage or hostile values in the
hash or the calls poison nothing."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis

from dispatch.matching import active
from dispatch.matching.active import ActiveDelivery
from dispatch.matching.calibration import CalibrationStore
from dispatch.matching.keys import active_key, deliveries_key, eta_leg_key
from dispatch.tracking.tracker import Tracker
from geo import destination, distance_m
from geo.eta_model import EtaModel, prior_travel_s, travel_increments
from streams.keys import tracking_key
from streams.records import DriverPing

PICKUP = (-26.2041, 28.0473)
DROPOFF = destination(*PICKUP, 60.0, 3_000)
T0 = 1_790_000_000.0                       # epoch seconds of the legs' first fixes
AT = datetime.fromtimestamp(T0, UTC)


@pytest.fixture
async def store(redis_url) -> AsyncIterator[CalibrationStore]:
    redis = aioredis.from_url(redis_url)
    key = f"eta:model:test:{uuid.uuid4().hex}"
    made: list[str] = []
    s = CalibrationStore(redis, key=key)
    s.made = made   # type: ignore[attr-defined] - keys a test made, deleted after it
    try:
        yield s
    finally:
        await redis.delete(key, *made)
        await redis.aclose()


def delivery_id(store: CalibrationStore) -> str:
    d = str(uuid.uuid4())
    store.made += [eta_leg_key(d), active_key(d), tracking_key(d)]   # type: ignore[attr-defined]
    return d


async def drive(store: CalibrationStore, d: str, leg: str, start, end, wall_s: float) -> bool:
    """One leg as the tracker reports it: the first fix, then the fix inside the fence."""
    async with store.redis.pipeline(transaction=False) as pipe:
        CalibrationStore.queue_start(pipe, d, leg, *start, T0)
        await pipe.execute()
    return await store.arrived(d, leg, "car", *end, T0 + wall_s)


async def test_completed_legs_change_the_next_estimate_and_every_engine_reads_the_same(store):
    prior = (await store.current()).leg_s(PICKUP, DROPOFF, "car", AT)
    expected = EtaModel()
    for i in range(30):   # the world is twice as slow as the prior, no parking overhead
        start = destination(*PICKUP, 12.0 * i, 100.0)
        end = destination(*DROPOFF, 12.0 * i, 60.0)
        wall = 2 * prior_travel_s(distance_m(*start, *end), "car", AT)
        assert await drive(store, delivery_id(store), "dropoff", start, end, wall)
        expected.add(travel_increments(start, end, "car", AT, wall))
    learned = (await store.current()).leg_s(PICKUP, DROPOFF, "car", AT)   # observing re-reads
    assert learned > prior * 1.3
    assert learned == pytest.approx(expected.leg_s(PICKUP, DROPOFF, "car", AT), rel=1e-9)
    other = await CalibrationStore(store.redis, key=store.key).load()
    assert other.leg_s(PICKUP, DROPOFF, "car", AT) == pytest.approx(learned, rel=1e-9)
    assert other.legs() == 30 and store.counts["travel"] == 30


async def test_a_replay_faster_than_real_time_learns_simulated_seconds(store):
    replay = CalibrationStore(store.redis, key=store.key, time_scale=10.0)
    x = prior_travel_s(distance_m(*PICKUP, *DROPOFF), "car", AT)
    # At 10x a leg of 1.2·x simulated seconds takes 0.12·x of wall clock.
    assert await drive(replay, delivery_id(store), "pickup", PICKUP, DROPOFF, 0.12 * x)
    sums = (await store.load()).stats()
    assert sums["g:y"] == pytest.approx(1.2 * x)
    # the same wall time without the scale is a tenth of the prior: rejected, nothing added
    assert not await drive(store, delivery_id(store), "pickup", PICKUP, DROPOFF, 0.12 * x)
    assert (await store.load()).legs() == 1


async def test_each_leg_counts_once_however_many_workers_see_the_arrival(store):
    d = delivery_id(store)
    x = prior_travel_s(distance_m(*PICKUP, *DROPOFF), "car", AT)
    assert await drive(store, d, "pickup", PICKUP, DROPOFF, x)
    assert not await store.arrived(d, "pickup", "car", *DROPOFF, T0 + x + 5)
    assert not await drive(store, d, "pickup", PICKUP, DROPOFF, x)      # a second start is ignored too
    assert (await store.load()).legs() == 1
    # an arrival without a known start learns nothing
    assert not await store.arrived(delivery_id(store), "dropoff", "car", *DROPOFF, T0)


async def test_handovers_are_learned_from_the_arrivals_and_the_door_ends_the_legs(store):
    d = delivery_id(store)
    x = prior_travel_s(distance_m(*PICKUP, *DROPOFF), "car", AT)
    await drive(store, d, "pickup", PICKUP, PICKUP, x)            # too short to learn: still arrives
    assert await store.handed_over(d, "shop", T0 + x + 40)
    await drive(store, d, "dropoff", PICKUP, DROPOFF, x)
    assert await store.handed_over(d, "door", T0 + x + 25)
    model = await store.load()
    assert model.stats()["h:shop:s"] == pytest.approx(40) and model.stats()["h:door:s"] == pytest.approx(25)
    assert not await store.redis.exists(eta_leg_key(d))
    assert not await store.handed_over(d, "door", T0 + x + 30)     # once
    assert not await store.handed_over(delivery_id(store), "shop", T0)   # never arrived
    with pytest.raises(ValueError, match="kind"):
        await store.handed_over(d, "kitchen", T0)


@pytest.mark.parametrize(("lat", "ts", "vehicle"), [
    (math.nan, T0 + 60, "car"), (95.0, T0 + 60, "car"), (DROPOFF[0], math.nan, "car"),
    (DROPOFF[0], T0 - 60, "car"), (DROPOFF[0], T0 + 10 * 3600, "car"), (DROPOFF[0], T0 + 60, "hovercraft")])
async def test_hostile_arrivals_write_nothing_to_the_model(store, lat, ts, vehicle):
    d = delivery_id(store)
    async with store.redis.pipeline(transaction=False) as pipe:
        CalibrationStore.queue_start(pipe, d, "dropoff", *PICKUP, T0)
        await pipe.execute()
    assert not await store.arrived(d, "dropoff", vehicle, lat, DROPOFF[1], ts)
    assert await store.redis.hlen(store.key) == 0


async def test_a_malformed_start_and_garbage_in_the_hash_are_ignored(store):
    d = delivery_id(store)
    await store.redis.hset(eta_leg_key(d), "dropoff:start", "not,a,fix")
    assert not await store.arrived(d, "dropoff", "car", *DROPOFF, T0)
    good = travel_increments(PICKUP, DROPOFF, "car", AT, 400.0)
    await store.redis.hset(store.key, mapping={**{k: repr(v) for k, v in good.items()},
                                               "g:n": "1", "v:car:y": "nan", "v:car:x": "-3",
                                               "zzz": "1", "c:zzz:12:n": "4", "h:shop:s": "inf"})
    model = await store.load()
    assert set(model.rejected) == {"v:car:y", "v:car:x", "zzz", "c:zzz:12:n", "h:shop:s"}
    assert math.isfinite(model.leg_s(PICKUP, DROPOFF, "car", AT))


async def test_the_dropoff_leg_starts_at_the_pick_up_not_at_a_stale_fix(store):
    """A location worker behind the stream hands the tracker a fix taken while the driver still
    waited at the counter, after the status had changed: the leg is timed from the pick-up."""
    d = delivery_id(store)
    x = prior_travel_s(distance_m(*PICKUP, *DROPOFF), "car", AT)
    async with store.redis.pipeline(transaction=False) as pipe:
        CalibrationStore.queue_start(pipe, d, "dropoff", *PICKUP, T0)   # the stale fix
        await pipe.execute()
    await store.handed_over(d, "shop", T0 + 120)                       # picked up 2 minutes later
    assert await store.arrived(d, "dropoff", "car", *DROPOFF, T0 + 120 + x)
    assert (await store.load()).stats()["g:y"] == pytest.approx(x)


def ping(driver: str, tenant: str, at: tuple[float, float], ts: float) -> DriverPing:
    return DriverPing(1, driver, tenant, at[0], at[1], 5.0, 8.0, 0.0, ts, ts, "car")


async def test_the_tracker_learns_a_leg_from_its_fixes_and_the_next_eta_changes(store):
    """A picked-up delivery: the tracker queues the first fix as the leg's start, the fix
    inside the dropoff fence learns the leg, and the next ETA it writes uses what it learned."""
    d, driver, tenant = delivery_id(store), str(uuid.uuid4()), str(uuid.uuid4())
    store.made.append(deliveries_key(driver))   # type: ignore[attr-defined]
    store.cache_s = 0.0
    await active.write(store.redis, ActiveDelivery(d, tenant, driver, "car", "picked_up", PICKUP, DROPOFF))
    await store.redis.sadd(deliveries_key(driver), d)
    tracker = Tracker(store.redis, None, db=None, calibration=store, clock=lambda: T0)
    start = destination(*PICKUP, 0.0, 50)
    first = await tracker.on_pings([ping(driver, tenant, start, T0)])
    assert first.etas_written == 1
    before = (await store.current()).leg_s(start, DROPOFF, "car", AT)
    slow = 3 * prior_travel_s(distance_m(*start, *DROPOFF), "car", AT)
    arrived = await tracker.on_pings([ping(driver, tenant, destination(*DROPOFF, 0.0, 20), T0 + slow)])
    assert arrived.arrived_dropoff == 1
    model = await store.current()
    assert model.legs() == 1 and model.leg_s(start, DROPOFF, "car", AT) > before
