"""dispatch.tracking.tracker against real Redis and Postgres: geofence arrivals happen once, ETAs are
the model's, nothing crosses tenants, garbage is ignored; and through the running worker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from dispatch.deliveries.state import DeliveryEvent
from dispatch.deliveries.store import transition
from dispatch.deliveries.transitions import PostgresTransitions
from dispatch.matching import active
from dispatch.matching.active import ActiveDelivery
from dispatch.matching.calibration import CalibrationStore
from dispatch.matching.keys import active_key, deliveries_key
from dispatch.tracking.tracker import (
    GEOFENCE_ACTOR,
    TRACKING_TTL_S,
    Tracker,
    TrackingOutcome,
    remaining_etas,
)
from dispatch.tracking.worker import tracker_factory
from geo import bearing_deg, destination, distance_m, eta_seconds
from geo.eta_model import HANDOVER_PRIOR_S, EtaModel, prior_travel_s, travel_increments
from streams.keys import location_key, state_key, tracking_key
from tests.integration.deliveries.test_store import DROPOFF, PICKUP, _tables, world  # noqa: F401 - the fixture
from tests.integration.shared_platform import shared_platform  # noqa: F401 - one platform for the module
from tests.integration.streams.harness import eventually, ping, raw
from tests.integration.streams.test_streams import (  # noqa: F401 - the fixture gives back the topics it created
    _delete_created_topics,
    _value,
    create_topics,
    driver_ping,
    running_worker,
)

pytestmark = pytest.mark.timeout(120)


NOW = time.time()
SHOP = HANDOVER_PRIOR_S["shop"]   # the learned model's handover at the counter, before any data
AT = datetime.fromtimestamp(NOW, UTC)
TOWARDS_DROPOFF = bearing_deg(*DROPOFF, *PICKUP)   # from the dropoff, facing the pickup


def clock() -> float:
    return NOW


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def tracked(world, redis):  # noqa: F811
    """The world's delivery offered to and accepted by its driver, as the dispatcher leaves it."""
    db, w = world
    tenant, delivery = str(w.tenant.id), str(w.delivery_id)
    await transition(db, tenant, delivery, "offer", actor="system:matcher", driver_id=w.driver_id)
    await transition(db, tenant, delivery, "accept", actor=w.driver_id)
    await active.write(redis, ActiveDelivery(delivery, tenant, w.driver_id, "motorbike", "assigned",
                                             PICKUP, DROPOFF, assigned_ms=int(NOW * 1000)))
    await redis.sadd(deliveries_key(w.driver_id), delivery)
    tracker = Tracker(redis, PostgresTransitions(db), db=db, clock=clock)
    yield db, w, tracker
    await redis.delete(active_key(delivery), deliveries_key(w.driver_id), tracking_key(delivery),
                       location_key(w.driver_id), state_key(w.driver_id))


def pings_at(w, *points: tuple[float, float], tenant: str | None = None, **extra: Any) -> list:
    """One ping of the world's driver per point, a second apart, the last one newest."""
    start = NOW - len(points)
    return [driver_ping(w.driver_id, tenant or str(w.tenant.id), lat, lng, start + i, **extra)
            for i, (lat, lng) in enumerate(points)]


def near(center: tuple[float, float], n: int, within_m: float = 40.0) -> list[tuple[float, float]]:
    return [destination(*center, 36.0 * i, within_m * (i + 1) / n) for i in range(n)]


async def state(db, w) -> tuple[str, list[str]]:
    """The delivery's status in Postgres and its outbox event types, in order."""
    t = await _tables(db, w)
    return t["delivery"]["status"], [r["event_type"] for r in t["outbox"]]


async def document(redis: Redis, w) -> dict | None:
    body = await redis.get(tracking_key(str(w.delivery_id)))
    return None if body is None else json.loads(body)


# -- ETAs: pure -------------------------------------------------------------------------------

def test_remaining_time_is_the_sum_of_the_legs_left_each_with_its_overhead():
    d = ActiveDelivery("d", "t", "r", "car", "assigned", PICKUP, DROPOFF)
    driver = destination(*PICKUP, 200.0, 3_000.0)
    to_pickup = eta_seconds(distance_m(*driver, *PICKUP), "car", AT)
    between = eta_seconds(distance_m(*PICKUP, *DROPOFF), "car", AT)
    # to the door while assigned: the drive, the expected handover at the counter, the drive
    assert remaining_etas("assigned", driver, d, AT) == pytest.approx((to_pickup, to_pickup + SHOP + between))
    assert remaining_etas("at_pickup", driver, d, AT) == (None, pytest.approx(SHOP + between))
    assert remaining_etas("at_pickup", driver, d, AT, waited_at_shop_s=30.0) == (
        None, pytest.approx(SHOP - 30.0 + between))
    assert remaining_etas("picked_up", driver, d, AT) == (
        None, pytest.approx(eta_seconds(distance_m(*driver, *DROPOFF), "car", AT)))
    with pytest.raises(ValueError, match="not tracked"):
        remaining_etas("delivered", driver, d, AT)


def test_the_learned_model_gives_the_legs_it_learned_longer_etas():
    d = ActiveDelivery("d", "t", "r", "car", "assigned", PICKUP, DROPOFF)
    driver = destination(*PICKUP, 200.0, 3_000.0)
    slow = EtaModel()
    for _ in range(99):   # the drive into the dropoff's area takes three times the prior
        slow.add(travel_increments(PICKUP, DROPOFF, "car", AT, 3 * prior_travel_s(
            distance_m(*PICKUP, *DROPOFF), "car", AT)))
    plain = remaining_etas("assigned", driver, d, AT)
    learned = remaining_etas("assigned", driver, d, AT, slow)
    assert learned[1] - learned[0] > 2 * (plain[1] - plain[0])
    assert learned[1] - learned[0] == pytest.approx(
        slow.pickup_done_s(0.0) + slow.leg_s(PICKUP, DROPOFF, "car", AT))


async def test_the_shared_calibration_store_scales_the_etas(tracked, redis):
    db, w, _ = tracked
    store = CalibrationStore(redis, key=f"eta:model:test:{uuid.uuid4()}")
    x = prior_travel_s(distance_m(*PICKUP, *DROPOFF), "motorbike", AT)
    try:
        for _ in range(99):
            await store.observe_travel(PICKUP, DROPOFF, "motorbike", NOW, 3 * x)
        tracker = Tracker(redis, PostgresTransitions(db), db=db, calibration=store, clock=clock)
        driver = destination(*PICKUP, 0.0, 2_000.0)
        await tracker.on_pings(pings_at(w, driver))
    finally:
        await redis.delete(store.key)
    doc = await document(redis, w)
    to_pickup = eta_seconds(distance_m(*driver, *PICKUP), "motorbike", AT)
    between = eta_seconds(distance_m(*PICKUP, *DROPOFF), "motorbike", AT)
    model = EtaModel()
    for _ in range(99):
        model.add(travel_increments(PICKUP, DROPOFF, "motorbike", AT, 3 * x))
    assert doc["eta_pickup_s"] == round(model.leg_s(driver, PICKUP, "motorbike", AT))
    assert doc["eta_dropoff_s"] > round(to_pickup + 2 * between)   # the learned drive is slower
    assert doc["eta_dropoff_s"] == pytest.approx(
        model.pickup_done_s(model.leg_s(driver, PICKUP, "motorbike", AT)) + model.leg_s(PICKUP, DROPOFF, "motorbike", AT),
        abs=1)


def test_radii_must_be_positive_and_finite():
    for bad in (0, -5.0, float("nan"), float("inf"), True, "75"):
        with pytest.raises(ValueError, match="radius_m"):
            Tracker(None, None, db=None, pickup_radius_m=bad)  # type: ignore[arg-type]


# -- against Redis and Postgres ---------------------------------------------------------------

async def test_a_far_ping_writes_and_publishes_an_eta_and_changes_no_state(tracked, redis):
    db, w, tracker = tracked
    before = await state(db, w)
    assert before == ("assigned", ["created", "offer", "accept"])
    driver = destination(*PICKUP, 200.0, 3_000.0)
    async with redis.pubsub() as sub:
        await sub.subscribe(tracking_key(str(w.delivery_id)))
        await sub.get_message(timeout=1.0)   # the subscription's confirmation
        sent = pings_at(w, driver, heading_deg=20.0, speed_mps=9.5)
        outcome = await tracker.on_pings(sent)
        published = await sub.get_message(timeout=2.0, ignore_subscribe_messages=True)

    assert outcome == TrackingOutcome(tracked=1, etas_written=1)
    doc = await document(redis, w)
    to_pickup = eta_seconds(distance_m(*driver, *PICKUP), "motorbike", AT)
    to_dropoff = to_pickup + SHOP + eta_seconds(distance_m(*PICKUP, *DROPOFF), "motorbike", AT)
    assert doc == {
        "delivery_id": str(w.delivery_id), "tenant_id": str(w.tenant.id), "status": "assigned",
        "driver": {"id": w.driver_id, "lat": driver[0], "lng": driver[1], "heading_deg": 20.0,
                   "speed_mps": 9.5, "ts": NOW - 1},
        "eta_pickup_s": round(to_pickup), "eta_dropoff_s": round(to_dropoff),
        "updated_at": round(NOW, 3), "received_at": sent[-1].received_at,
    }
    assert 0 < await redis.ttl(tracking_key(str(w.delivery_id))) <= TRACKING_TTL_S
    assert json.loads(published["data"]) == doc
    assert await state(db, w) == before
    assert (await active.read(redis, str(w.delivery_id))).status == "assigned"


async def test_a_driver_without_an_active_delivery_costs_one_round_trip_and_writes_nothing(
        redis, monkeypatch):
    round_trips = []

    def counting(original: Any) -> Any:
        async def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            # Only this client's calls: a task another test left behind may publish meanwhile
            # (CI once counted a stray PUBLISH here).
            if self.connection_pool is redis.connection_pool:
                round_trips.append(args[:1])
            return await original(self, *args, **kwargs)
        return call

    tracker = Tracker(redis, None, db=None)
    await tracker.on_pings([driver_ping(str(uuid.uuid4()), str(uuid.uuid4()), *PICKUP, NOW)])
    # (that loaded the script.) A pipeline buffers its commands in its own execute_command
    # and sends them in execute.
    monkeypatch.setattr(Redis, "execute_command", counting(Redis.execute_command))
    monkeypatch.setattr(Pipeline, "execute", counting(Pipeline.execute))
    drivers = [str(uuid.uuid4()) for _ in range(20)]
    outcome = await tracker.on_pings([driver_ping(d, str(uuid.uuid4()), *PICKUP, NOW) for d in drivers])
    assert outcome == TrackingOutcome() and round_trips == [("EVALSHA",)]
    assert await tracker.on_pings([]) == TrackingOutcome() and len(round_trips) == 1


async def test_arriving_at_the_pickup_moves_the_delivery_once_for_many_pings_and_batches(tracked, redis):
    db, w, tracker = tracked
    outcome = await tracker.on_pings(pings_at(w, *near(PICKUP, 10)))
    assert outcome == TrackingOutcome(tracked=1, arrived_pickup=1, etas_written=1)
    status, events = await state(db, w)
    assert (status, events) == ("at_pickup", ["created", "offer", "accept", "arrive_pickup"])
    t = await _tables(db, w)
    assert json.loads(t["outbox"][-1]["payload"])["actor"] == GEOFENCE_ACTOR
    hot = await active.read(redis, str(w.delivery_id))
    assert hot.status == "at_pickup" and hot.arrived_pickup_ms == int(NOW * 1000)
    doc = await document(redis, w)
    assert doc["status"] == "at_pickup" and doc["eta_pickup_s"] is None
    assert doc["eta_dropoff_s"] == round(SHOP + eta_seconds(distance_m(*PICKUP, *DROPOFF), "motorbike", AT))

    again = await tracker.on_pings(pings_at(w, *near(PICKUP, 10)))
    assert again == TrackingOutcome(tracked=1, etas_written=1)
    assert await state(db, w) == (status, events)


async def test_concurrent_workers_seeing_the_arrival_apply_it_once(tracked, redis):
    db, w, tracker = tracked
    other = Tracker(redis, PostgresTransitions(db), db=db, clock=clock)
    batch = pings_at(w, *near(PICKUP, 3))
    outcomes = await asyncio.gather(tracker.on_pings(batch), other.on_pings(batch))
    assert sum(o.arrived_pickup for o in outcomes) == 1
    assert (await state(db, w))[1].count("arrive_pickup") == 1


async def test_a_failed_arrival_is_retried_by_a_later_ping(tracked, redis):
    db, w, _ = tracked

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise ConnectionResetError("Postgres went away")

    outcome = await Tracker(redis, broken, db=db, clock=clock).on_pings(pings_at(w, PICKUP))
    assert outcome == TrackingOutcome(tracked=1, failed=1)
    assert (await active.read(redis, str(w.delivery_id))).arrived_pickup_ms is None
    assert (await state(db, w))[0] == "assigned"
    retried = await Tracker(redis, PostgresTransitions(db), db=db, clock=clock).on_pings(
        pings_at(w, PICKUP))
    assert retried.arrived_pickup == 1 and (await state(db, w))[0] == "at_pickup"


async def test_a_delivery_that_moved_on_is_left_alone(tracked, redis):
    db, w, tracker = tracked
    await transition(db, str(w.tenant.id), str(w.delivery_id), DeliveryEvent.CANCEL,
                     reason="customer cancelled")   # the dispatcher has not updated Redis yet
    outcome = await tracker.on_pings(pings_at(w, PICKUP))
    assert outcome == TrackingOutcome(tracked=1)
    assert await state(db, w) == ("cancelled", ["created", "offer", "accept", "cancel"])
    assert await document(redis, w) is None


async def test_after_pickup_the_eta_is_to_the_dropoff_and_arrival_there_is_recorded_once(tracked, redis):
    db, w, tracker = tracked
    tenant, delivery = str(w.tenant.id), str(w.delivery_id)
    await transition(db, tenant, delivery, "arrive_pickup", actor=w.driver_id)
    await transition(db, tenant, delivery, "pick_up", actor=w.driver_id)
    await active.set_status(redis, delivery, "picked_up")

    driver = destination(*DROPOFF, TOWARDS_DROPOFF, 1_500.0)
    assert await tracker.on_pings(pings_at(w, driver)) == TrackingOutcome(tracked=1, etas_written=1)
    doc = await document(redis, w)
    assert (doc["status"], doc["eta_pickup_s"]) == ("picked_up", None)
    assert doc["eta_dropoff_s"] == round(eta_seconds(distance_m(*driver, *DROPOFF), "motorbike", AT))

    arrivals = near(DROPOFF, 5)
    outcome = await tracker.on_pings(pings_at(w, *arrivals))
    assert outcome == TrackingOutcome(tracked=1, arrived_dropoff=1, etas_written=1)
    assert (await tracker.on_pings(pings_at(w, *arrivals))).arrived_dropoff == 0
    t = await _tables(db, w)
    assert t["delivery"]["status"] == "picked_up" and t["delivery"]["delivered_at"] is None
    notes = [json.loads(r["payload"]) for r in t["outbox"] if r["event_type"] == "arrived_dropoff"]
    assert len(notes) == 1
    assert notes[0]["state"] == "picked_up" and notes[0]["driver_id"] == w.driver_id
    newest = arrivals[-1]
    assert (notes[0]["lat"], notes[0]["lng"]) == newest
    assert notes[0]["at"] == datetime.fromtimestamp(NOW - 1, UTC).isoformat()
    assert (await document(redis, w))["status"] == "picked_up"


async def test_the_eta_shrinks_as_the_driver_approaches(tracked, redis):
    db, w, tracker = tracked
    etas = []
    for metres in (6_000.0, 4_000.0, 2_000.0, 800.0, 150.0):
        await tracker.on_pings(pings_at(w, destination(*PICKUP, 300.0, metres)))
        doc = await document(redis, w)
        etas.append((doc["eta_pickup_s"], doc["eta_dropoff_s"]))
    assert etas == sorted(etas, reverse=True) and len(set(etas)) == len(etas)
    assert (await state(db, w))[0] == "assigned"


async def test_the_same_driver_id_in_another_tenant_changes_nothing(tracked, redis):
    db, w, tracker = tracked
    before = await state(db, w)
    outcome = await tracker.on_pings(pings_at(w, PICKUP, tenant=str(uuid.uuid4())))
    assert outcome == TrackingOutcome()
    assert await state(db, w) == before
    assert await document(redis, w) is None
    assert (await active.read(redis, str(w.delivery_id))).arrived_pickup_ms is None


async def test_garbage_active_entries_are_ignored_and_the_real_one_still_tracked(tracked, redis):
    db, w, tracker = tracked
    half_written, wrong_type, bad_vehicle = (str(uuid.uuid4()) for _ in range(3))
    await redis.hset(active_key(half_written), mapping={"status": "assigned", "pickup_lat": "x"})
    await redis.set(active_key(wrong_type), "not a hash")
    await active.write(redis, ActiveDelivery(bad_vehicle, str(w.tenant.id), w.driver_id, "spaceship",
                                             "assigned", PICKUP, DROPOFF))
    await redis.sadd(deliveries_key(w.driver_id), half_written, wrong_type, bad_vehicle,
                     "not-even-a-uuid")
    try:
        outcome = await tracker.on_pings(pings_at(w, destination(*PICKUP, 10.0, 2_000.0)))
    finally:
        await redis.delete(*(active_key(d) for d in (half_written, wrong_type, bad_vehicle)))
    assert outcome == TrackingOutcome(tracked=2, etas_written=1, failed=1)
    assert (await document(redis, w))["status"] == "assigned"
    assert await redis.get(tracking_key(bad_vehicle)) is None


async def test_a_batch_of_more_drivers_than_one_script_call_takes_finds_every_delivery(tracked, redis):
    db, w, tracker = tracked
    tenant = str(w.tenant.id)
    crowd = [driver_ping(str(uuid.uuid4()), tenant, *DROPOFF, NOW) for _ in range(2_400)]
    mine = pings_at(w, destination(*PICKUP, 0.0, 1_000.0))
    outcome = await tracker.on_pings([*crowd[:1_500], *mine, *crowd[1_500:]])
    assert outcome == TrackingOutcome(tracked=1, etas_written=1)


async def test_an_ended_delivery_is_not_resurrected_by_an_arrival(redis):
    gone = str(uuid.uuid4())
    assert not await active.mark_once(redis, gone, "arrived_pickup_ms", 1)
    assert not await redis.exists(active_key(gone))


# -- through the location worker --------------------------------------------------------------

@contextlib.asynccontextmanager
async def worker_with_pings(platform, stream_settings, w, *bodies: dict) -> AsyncIterator[Any]:
    """A worker with Postgres on this test's topics, once it has been sent ``bodies``."""
    settings = replace(stream_settings, locations_partitions=2)
    await create_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=2)
    await producer.start()
    try:
        async with running_worker(settings, platform, observer=tracker_factory(settings)) as app:
            for body in bodies:
                await producer.send_and_wait(settings.locations_topic, raw(body),
                                             key=w.driver_id.encode())
            yield app
    finally:
        await producer.stop()


async def test_pings_through_the_worker_bring_the_delivery_to_at_pickup(
        tracked, platform, stream_settings, redis):
    db, w, _ = tracked
    tenant = str(w.tenant.id)
    far = destination(*PICKUP, 90.0, 1_000.0)
    bodies = [ping(w.driver_id, tenant, *far, time.time() - 120),
              ping(w.driver_id, tenant, *PICKUP, time.time())]
    async with worker_with_pings(platform, stream_settings, w, *bodies) as app:
        async def at_pickup() -> bool:
            return (await state(db, w))[0] == "at_pickup"

        await eventually(at_pickup, within=15, every=0.1)
        assert app.ingest_stats["arrived_pickup"] == 1
        assert app.ingest_stats["tracking_errors"] == 0
        assert (await document(redis, w))["status"] == "at_pickup"
        assert (await active.read(redis, str(w.delivery_id))).status == "at_pickup"


async def test_a_tracking_failure_does_not_hold_back_the_landed_pings(
        tracked, platform, stream_settings, redis, monkeypatch):
    db, w, _ = tracked

    async def failing(self, pings):
        raise RuntimeError("tracker bug")

    monkeypatch.setattr(Tracker, "on_pings", failing)
    body = ping(w.driver_id, str(w.tenant.id), *PICKUP, time.time())
    async with worker_with_pings(platform, stream_settings, w, body) as app:
        async def landed() -> bool:
            return bool(await redis.exists(location_key(w.driver_id)))

        await eventually(landed, within=15)
        await eventually(lambda: _value(app.ingest_stats["tracking_errors"] >= 1))
        assert (await state(db, w))[0] == "assigned"
