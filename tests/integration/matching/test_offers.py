"""Driver offers against real Redis and Postgres; the websocket path against the real engine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal

import pytest
import redis.asyncio as aioredis
import websockets

from dispatch.deliveries.store import create_delivery
from dispatch.deliveries.transitions import PostgresTransitions
from dispatch.identity.auth import issue_driver_token
from dispatch.identity.drivers import NewDriver, create_driver
from dispatch.matching.claims import DriverClaims
from dispatch.matching.keys import (
    deadlines_key,
    deliveries_key,
    delivery_driver_key,
    delivery_offer_key,
    offer_key,
    round_key,
    tried_key,
    unassigned_key,
)
from dispatch.matching.offers import OfferEngine, OfferNotHeld
from dispatch.matching.ranking import Job
from dispatch.matching.terms import InvalidOfferReply, Offer, OfferCandidate, parse_offer_reply
from schema.db import TenantDatabase
from schema.tenants import create_tenant
from streams.keys import location_key, state_key
from streams.location_store import LocationStore
from tests.integration.engine_helpers import running_app
from tests.integration.shared_platform import shared_platform  # noqa: F401 - one platform for the module

pytestmark = pytest.mark.timeout(120)


PICKUP = (-26.2041, 28.0473)
DROPOFF = (-26.1952, 28.0341)
PAY = Decimal("45.50")


@dataclass
class World:
    db: TenantDatabase
    redis: aioredis.Redis
    tenant_id: str
    drivers: list[str]
    tokens: list[str]
    deliveries: list[str]

    def job(self) -> Job:
        return Job(self.tenant_id, *PICKUP, *DROPOFF, vehicle_types=None, needs_cold_storage=False,
                   max_pickup_m=5000.0)

    async def delivery_row(self, delivery_id: str) -> dict:
        async with self.db.tenant_transaction(self.tenant_id, readonly=True) as tx:
            row = await tx.fetchrow("SELECT status, driver_id::text AS driver_id, offer_attempts, failure_reason "
                                    "FROM deliveries WHERE id = $1", uuid.UUID(delivery_id))
        return dict(row)


@pytest.fixture
async def world(platform, stream_settings) -> AsyncIterator[World]:
    """A tenant with six drivers on shift (with tokens) and three pending deliveries."""
    tenant = await create_tenant(platform, f"Offer Spaza {uuid.uuid4().hex[:6]}")
    redis = aioredis.from_url(stream_settings.redis_url)
    store = LocationStore(redis, stream_settings)
    async with TenantDatabase(platform) as db:
        drivers, tokens = [], []
        for i in range(6):
            did = str(await create_driver(db, tenant.id, NewDriver(
                "Sipho", f"Driver{i}", f"+2772000001{i}", f"LIC-{i}-{uuid.uuid4().hex[:6]}", "motorbike",
                f"GP {i}23-456")))
            drivers.append(did)
            tokens.append((await issue_driver_token(db, tenant.id, did, ttl_s=3600)).token)
            await store.start_shift(str(tenant.id), did, "motorbike")
        async with db.tenant_transaction(tenant.id) as tx:
            vendor_id = await tx.fetchval(
                "INSERT INTO vendors (business_name, address) VALUES ('Spaza One', '{}') RETURNING id")
            customer_id = await tx.fetchval("INSERT INTO customers (first_name) VALUES ('Thandi') RETURNING id")
            orders = [await tx.fetchval(
                "INSERT INTO orders (order_number, customer_id, vendor_id, status, subtotal, total_amount, "
                "delivery_address) VALUES ($1, $2, $3, 'ready', 100, 110, '{}') RETURNING id",
                f"ORD-{i}", customer_id, vendor_id) for i in range(3)]
        deliveries = [str(await create_delivery(db, tenant.id, o, PICKUP, DROPOFF)) for o in orders]
        w = World(db, redis, str(tenant.id), drivers, tokens, deliveries)
        try:
            yield w
        finally:
            keys = [unassigned_key(w.tenant_id)]
            for d in drivers:
                keys += [offer_key(d), deliveries_key(d), state_key(d), location_key(d)]
            for x in deliveries:
                keys += [round_key(x), tried_key(x), delivery_offer_key(x), delivery_driver_key(x)]
            await redis.delete(*keys)
            await redis.aclose()


class RecordingNotifier:
    """Test double of the notifier port only: records offers; ``absent`` drivers are not connected."""

    def __init__(self, absent: frozenset[str] = frozenset()) -> None:
        self.sent: list[tuple[str, Offer]] = []
        self.absent = absent

    async def send_offer(self, driver_id: str, offer: Offer) -> bool:
        if driver_id in self.absent:
            return False
        self.sent.append((driver_id, offer))
        return True


@contextlib.asynccontextmanager
async def standalone(w: World, *, app_id: str | None = None, notifier: RecordingNotifier | None = None,
                     **options) -> AsyncIterator[OfferEngine]:
    """An OfferEngine with its own deadlines queue (no running engine sweeps it)."""
    app_id = app_id or f"test-{uuid.uuid4().hex[:10]}"
    options.setdefault("offer_timeout_s", 0.3)
    engine = OfferEngine(DriverClaims(w.redis), notifier or RecordingNotifier(), w.redis,
                         transitions=PostgresTransitions(w.db), app_id=app_id, **options)
    try:
        yield engine
    finally:
        await w.redis.delete(deadlines_key(app_id))


@contextlib.asynccontextmanager
async def engine_and_state(pg, streams) -> AsyncIterator[tuple[str, object]]:
    """The real engine and its app.state; forgets this test's offer deadlines afterwards."""
    try:
        async with running_app(pg, streams) as running:
            yield running
    finally:
        redis = aioredis.from_url(streams.redis_url)
        await redis.delete(deadlines_key(streams.app_id))
        await redis.aclose()


@contextlib.asynccontextmanager
async def driver_socket(addr: str, token: str) -> AsyncIterator[websockets.ClientConnection]:
    async with websockets.connect(f"ws://{addr}/v1/drivers/stream",
                                  additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        assert json.loads(await ws.recv())["type"] == "ready"
        yield ws


async def recv(ws) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


def candidates(*drivers: str) -> list[OfferCandidate]:
    return [OfferCandidate(d, 120 + 60 * i) for i, d in enumerate(drivers)]


# -- over the websocket, against the real engine ---------------------------------------------------


async def test_connected_driver_gets_the_offer_and_accepting_over_the_websocket_assigns(
        platform, stream_settings, world):
    w, delivery, driver = world, world.deliveries[0], world.drivers[0]
    async with engine_and_state(platform, stream_settings) as (addr, state), \
            driver_socket(addr, w.tokens[0]) as ws:
        outcome = await state.offers.start_round(w.job(), delivery, candidates(driver), pay=PAY,
                                                 dropoff_eta_s=900)
        assert (outcome.status, outcome.driver_id) == ("offered", driver)
        frame = await recv(ws)
        assert frame["type"] == "offer" and frame["delivery_id"] == delivery
        assert frame["pay"] == "45.50" and isinstance(frame["pay"], str)
        assert frame["pickup_eta_s"] == 120 and frame["dropoff_eta_s"] == 900
        assert frame["pickup"] == {"lat": PICKUP[0], "lng": PICKUP[1]}
        assert frame["dropoff"] == {"lat": DROPOFF[0], "lng": DROPOFF[1]}
        assert time.time() < frame["expires_at"] <= time.time() + 20
        assert (delivery, driver) in {(d, x) for d, x, _ in await state.offers.pending_deadlines()}

        await ws.send(json.dumps({"type": "offer_reply", "delivery_id": delivery, "accept": True, "seq": 7}))
        assert await recv(ws) == {"type": "offer_reply", "seq": 7, "delivery_id": delivery,
                                  "status": "assigned"}
        assert await state.offers.claims.active_deliveries(driver) == {delivery}
        assert await state.offers.pending_deadlines() == []
    row = await w.delivery_row(delivery)
    assert (row["status"], row["driver_id"], row["offer_attempts"]) == ("assigned", driver, 1)


async def test_declining_over_the_websocket_offers_the_delivery_to_the_next_candidate(
        platform, stream_settings, world):
    w, delivery = world, world.deliveries[0]
    first, second = w.drivers[0], w.drivers[1]
    async with engine_and_state(platform, stream_settings) as (addr, state), \
            driver_socket(addr, w.tokens[0]) as ws0, driver_socket(addr, w.tokens[1]) as ws1:
        await state.offers.start_round(w.job(), delivery, candidates(first, second), pay=PAY, dropoff_eta_s=900)
        assert (await recv(ws0))["type"] == "offer"
        await ws0.send(json.dumps({"type": "offer_reply", "delivery_id": delivery, "accept": False}))
        assert (await recv(ws0))["status"] == "declined"
        frame = await recv(ws1)
        assert frame["type"] == "offer" and frame["delivery_id"] == delivery and frame["pickup_eta_s"] == 180
        assert await state.offers.claims.offer_of(first) is None
        assert await state.offers.claims.offer_of(second) == delivery
        assert [(d, x) for d, x, _ in await state.offers.pending_deadlines()] == [(delivery, second)]
    row = await w.delivery_row(delivery)
    assert (row["status"], row["driver_id"], row["offer_attempts"]) == ("offered", second, 2)


async def test_hostile_offer_replies_get_error_frames_and_change_nothing(platform, stream_settings, world):
    w, delivery, holder = world, world.deliveries[0], world.drivers[0]
    async with engine_and_state(platform, stream_settings) as (addr, state), \
            driver_socket(addr, w.tokens[0]) as ws0, driver_socket(addr, w.tokens[1]) as ws1:
        await state.offers.start_round(w.job(), delivery, candidates(holder, w.drivers[1]), pay=PAY,
                                       dropoff_eta_s=900)
        assert (await recv(ws0))["type"] == "offer"
        before = await state.offers.pending_deadlines()
        hostile = [
            (ws1, {"delivery_id": delivery, "accept": True}, "offer_not_held", "delivery_id"),
            (ws1, {"delivery_id": delivery, "accept": False}, "offer_not_held", "delivery_id"),
            (ws0, {"delivery_id": w.deliveries[1], "accept": True}, "offer_not_held", "delivery_id"),
            (ws0, {"delivery_id": "'; DROP TABLE deliveries; --", "accept": True}, "wrong_type", "delivery_id"),
            (ws0, {"delivery_id": 12345, "accept": True}, "wrong_type", "delivery_id"),
            (ws0, {"delivery_id": delivery, "accept": "yes"}, "wrong_type", "accept"),
            (ws0, {"delivery_id": delivery, "accept": 1}, "wrong_type", "accept"),
            (ws0, {"delivery_id": delivery}, "missing_field", "accept"),
            (ws0, {"accept": True}, "missing_field", "delivery_id"),
        ]
        for ws, body, reason, field in hostile:
            await ws.send(json.dumps({"type": "offer_reply", "seq": 3, **body}))
            reply = await recv(ws)
            assert reply["type"] == "error" and reply["reason"] == reason and reply["field"] == field, (body, reply)
            assert reply["seq"] == 3
        assert await state.offers.claims.offer_of(holder) == delivery
        assert await state.offers.claims.offer_of(w.drivers[1]) is None
        assert await state.offers.pending_deadlines() == before
        # the socket still works for pings after the refusals
        await ws0.send(json.dumps({"type": "ping", "seq": 4, "driver_id": holder, "lat": PICKUP[0],
                                   "lng": PICKUP[1], "accuracy": 5.0, "speed": 0.0, "heading": 0.0,
                                   "timestamp": time.time()}))
        assert await recv(ws0) == {"type": "ack", "seq": 4, "accepted": 1}
    row = await w.delivery_row(delivery)
    assert (row["status"], row["driver_id"], row["offer_attempts"]) == ("offered", holder, 1)


# -- timeouts, attempts, concurrency and restarts ----------------------------------------------------


async def test_a_timed_out_offer_moves_on_to_the_next_candidate(world):
    w, delivery = world, world.deliveries[0]
    async with standalone(w) as engine:
        await engine.start_round(w.job(), delivery, candidates(w.drivers[0], w.drivers[1]), pay=PAY,
                                 dropoff_eta_s=900)
        assert await engine.sweep(time.time()) == []            # not due yet
        await asyncio.sleep(0.35)
        outcomes = await engine.sweep()
        assert [(o.status, o.driver_id) for o in outcomes] == [("offered", w.drivers[1])]
        assert await engine.claims.offer_of(w.drivers[0]) is None
        assert [x for _, x, _ in await engine.pending_deadlines()] == [w.drivers[1]]
        with pytest.raises(OfferNotHeld):   # too late to accept
            await engine.reply(w.drivers[0], delivery, True)
        assert [d for d, _ in engine.notifier.sent] == [w.drivers[0], w.drivers[1]]
    row = await w.delivery_row(delivery)
    assert (row["status"], row["driver_id"], row["offer_attempts"]) == ("offered", w.drivers[1], 2)


async def test_after_max_attempts_the_delivery_is_unassigned_with_a_reason_and_can_be_retried(world):
    w, delivery = world, world.deliveries[0]
    d0, d1, d2 = w.drivers[:3]
    async with standalone(w, max_attempts=2) as engine:
        await engine.start_round(w.job(), delivery, candidates(d0, d1, d2), pay=PAY, dropoff_eta_s=900)
        await engine.reply(d0, delivery, False)
        outcomes = await engine.sweep(time.time() + 1)
        assert [(o.status, o.reason) for o in outcomes] == [("unassigned", "no driver accepted after 2 offers")]
        assert await engine.unassigned(w.tenant_id) == {delivery}
        assert await engine.pending_deadlines() == []
        assert [d for d, _ in engine.notifier.sent] == [d0, d1]   # d2 was never offered
        row = await w.delivery_row(delivery)
        assert (row["status"], row["driver_id"], row["failure_reason"]) == (
            "unassigned", None, "no driver accepted after 2 offers")

        async def free_drivers(job: Job) -> list[OfferCandidate]:
            assert job == w.job()
            return candidates(d2)

        retried = await engine.retry_unassigned(w.tenant_id, free_drivers)
        assert [(o.status, o.driver_id) for o in retried] == [("offered", d2)]
        assert await engine.unassigned(w.tenant_id) == set()
    row = await w.delivery_row(delivery)
    assert (row["status"], row["driver_id"]) == ("offered", d2)


async def test_a_retry_that_fails_part_way_keeps_every_delivery_it_had_not_retried_unassigned(world):
    """The database away while the retry ranks drivers: the deliveries taken off the
    unassigned list go back on it, and the next retry offers them."""
    w = world
    d0, d1 = w.drivers[:2]
    async with standalone(w, max_attempts=1) as engine:
        for delivery in w.deliveries[:2]:
            await engine.start_round(w.job(), delivery, candidates(d0), pay=PAY, dropoff_eta_s=900)
            await engine.reply(d0, delivery, False)
        assert await engine.unassigned(w.tenant_id) == set(w.deliveries[:2])
        calls = 0

        async def database_away(job: Job) -> list[OfferCandidate]:
            nonlocal calls
            calls += 1
            raise ConnectionError("the database is away")

        with pytest.raises(ConnectionError):
            await engine.retry_unassigned(w.tenant_id, database_away)
        assert calls == 1
        assert await engine.unassigned(w.tenant_id) == set(w.deliveries[:2])
        for delivery in w.deliveries[:2]:
            assert (await w.delivery_row(delivery))["status"] == "unassigned"

        async def back_again(job: Job) -> list[OfferCandidate]:
            return candidates(d1)

        retried = await engine.retry_unassigned(w.tenant_id, back_again)
        assert sorted(o.status for o in retried) == ["offered", "unassigned"]   # d1 holds one offer at a time
        assert len(await engine.unassigned(w.tenant_id)) == 1


async def test_running_out_of_candidates_unassigns_and_an_unreachable_driver_is_skipped(world):
    w, delivery = world, world.deliveries[0]
    d0, d1 = w.drivers[:2]
    async with standalone(w, notifier=RecordingNotifier(absent=frozenset({d0}))) as engine:
        outcome = await engine.start_round(w.job(), delivery, candidates(d0, d1), pay=PAY, dropoff_eta_s=900)
        assert (outcome.status, outcome.driver_id) == ("offered", d1)   # d0 is not connected
        assert await engine.claims.offer_of(d0) is None
        await engine.reply(d1, delivery, False)
        assert await engine.unassigned(w.tenant_id) == {delivery}
    row = await w.delivery_row(delivery)
    assert row["status"] == "unassigned" and row["failure_reason"].startswith("no available candidate left")


async def test_two_engines_sweeping_at_once_handle_each_expired_offer_once(world):
    w = world
    app_id = f"test-{uuid.uuid4().hex[:10]}"
    async with standalone(w, app_id=app_id) as a, standalone(w, app_id=app_id) as b:
        for i, delivery in enumerate(w.deliveries):
            await a.start_round(w.job(), delivery, candidates(w.drivers[i], w.drivers[3 + i]), pay=PAY,
                                dropoff_eta_s=900)
        later = time.time() + 1
        results = await asyncio.gather(*(engine.sweep(later) for _ in range(5) for engine in (a, b)))
        handled = [o.delivery_id for outcomes in results for o in outcomes]
        assert sorted(handled) == sorted(w.deliveries)
        assert sorted(x for _, x, _ in await a.pending_deadlines()) == sorted(w.drivers[3:])
    for i, delivery in enumerate(w.deliveries):
        row = await w.delivery_row(delivery)
        assert (row["status"], row["driver_id"], row["offer_attempts"]) == ("offered", w.drivers[3 + i], 2)


async def test_a_restarted_engine_finds_and_sweeps_the_pending_deadline(world, platform, stream_settings):
    w, delivery = world, world.deliveries[0]
    app_id = f"test-{uuid.uuid4().hex[:10]}"
    async with standalone(w, app_id=app_id) as before:
        await before.start_round(w.job(), delivery, candidates(w.drivers[0], w.drivers[1]), pay=PAY,
                                 dropoff_eta_s=900)
        del before   # the engine "stops": nothing of it is used again
        redis = aioredis.from_url(stream_settings.redis_url)
        try:
            async with TenantDatabase(platform) as db:
                after = OfferEngine(DriverClaims(redis), RecordingNotifier(), redis,
                                    transitions=PostgresTransitions(db), offer_timeout_s=0.3, app_id=app_id)
                assert [(d, x) for d, x, _ in await after.pending_deadlines()] == [(delivery, w.drivers[0])]
                outcomes = await after.sweep(time.time() + 1)
                assert [(o.status, o.driver_id) for o in outcomes] == [("offered", w.drivers[1])]
                assert [d for d, _ in after.notifier.sent] == [w.drivers[1]]
        finally:
            await redis.aclose()
    row = await w.delivery_row(delivery)
    assert (row["status"], row["driver_id"], row["offer_attempts"]) == ("offered", w.drivers[1], 2)


# -- pure rules ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("payload, reason, field", [
    ({"accept": True}, "missing_field", "delivery_id"),
    ({"delivery_id": str(uuid.uuid4())}, "missing_field", "accept"),
    ({"delivery_id": "x" * 5000, "accept": True}, "wrong_type", "delivery_id"),
    ({"delivery_id": None, "accept": True}, "wrong_type", "delivery_id"),
    ({"delivery_id": str(uuid.uuid4()), "accept": None}, "wrong_type", "accept"),
    ({"delivery_id": str(uuid.uuid4()), "accept": 0}, "wrong_type", "accept"),
])
def test_malformed_offer_replies_are_refused_by_reason_and_field(payload, reason, field):
    with pytest.raises(InvalidOfferReply) as refused:
        parse_offer_reply(payload)
    assert (refused.value.reason, refused.value.field) == (reason, field)


def test_an_offer_frame_carries_pay_as_a_string():
    offer = Offer("d", "t", PICKUP, DROPOFF, Decimal("12.30"), 60, 600, 1.5)
    assert offer.frame()["pay"] == "12.30"
    assert json.loads(json.dumps(offer.frame()))["pay"] == "12.30"


# -- the database failing under an offer --------------------------------------------------------


def failing(engine: OfferEngine, failing_event: str, times: int = 1):
    """Make the engine's transitions raise a lost-session error for ``failing_event``."""
    from schema.errors import DatabaseUnavailable

    real, left = engine.transitions, [times]

    async def transitions(tenant, delivery_id, event, **kwargs):
        if event.value == failing_event and left[0] > 0:
            left[0] -= 1
            raise DatabaseUnavailable("the shard's session was terminated")
        return await real(tenant, delivery_id, event, **kwargs)

    engine.transitions = transitions


async def test_an_offer_the_database_did_not_record_is_taken_back_and_the_retry_offers_it(world):
    from schema.errors import DatabaseUnavailable

    w, delivery = world, world.deliveries[0]
    async with standalone(w, offer_timeout_s=15) as engine:
        failing(engine, "offer")
        with pytest.raises(DatabaseUnavailable):
            await engine.start_round(w.job(), delivery, candidates(w.drivers[0], w.drivers[1]), pay=PAY,
                                     dropoff_eta_s=900)
        # nothing held for an offer nobody was sent: no deadline, no claim, no attempt
        assert await engine.pending_deadlines() == []
        assert await engine.claims.offer_of(w.drivers[0]) is None
        assert (await w.delivery_row(delivery))["status"] == "pending"
        outcome = await engine.start_round(w.job(), delivery, candidates(w.drivers[0], w.drivers[1]), pay=PAY,
                                           dropoff_eta_s=900)
        assert (outcome.status, outcome.driver_id) == ("offered", w.drivers[0])
    row = await w.delivery_row(delivery)
    assert (row["status"], row["driver_id"], row["offer_attempts"]) == ("offered", w.drivers[0], 1)


async def test_an_accept_the_database_did_not_record_can_be_sent_again(world):
    from schema.errors import DatabaseUnavailable

    w, delivery = world, world.deliveries[0]
    async with standalone(w, offer_timeout_s=15) as engine:
        await engine.start_round(w.job(), delivery, candidates(w.drivers[0]), pay=PAY, dropoff_eta_s=900)
        failing(engine, "accept")
        with pytest.raises(DatabaseUnavailable):
            await engine.reply(w.drivers[0], delivery, True)
        assert await engine.claims.driver_of(delivery) is None    # Redis does not hold it as assigned
        assert await engine.claims.offer_of(w.drivers[0]) == delivery
        assert (await w.delivery_row(delivery))["status"] == "offered"
        outcome = await engine.reply(w.drivers[0], delivery, True)
        assert (outcome.status, outcome.driver_id) == ("assigned", w.drivers[0])
    row = await w.delivery_row(delivery)
    assert (row["status"], row["driver_id"]) == ("assigned", w.drivers[0])


async def test_a_decline_the_database_did_not_record_is_released_once_the_offer_is_over(world):
    from schema.errors import DatabaseUnavailable

    w, delivery = world, world.deliveries[0]
    async with standalone(w, offer_timeout_s=15) as engine:
        await engine.start_round(w.job(), delivery, candidates(w.drivers[0], w.drivers[1]), pay=PAY,
                                 dropoff_eta_s=900)
        failing(engine, "decline")
        with pytest.raises(DatabaseUnavailable):
            await engine.reply(w.drivers[0], delivery, False)
        # the offer is over in Redis, the database still says offered: nothing would move it on
        assert await engine.pending_deadlines() == []
        assert (await w.delivery_row(delivery))["status"] == "offered"
        await w.redis.set(delivery_offer_key(delivery), "x")          # an offer still open is left alone
        assert await engine.release_lost_offer(w.tenant_id, delivery) is False
        await w.redis.delete(delivery_offer_key(delivery))
        assert await engine.release_lost_offer(w.tenant_id, delivery) is True
        assert await w.redis.exists(round_key(delivery)) == 0
        assert await engine.release_lost_offer(w.tenant_id, delivery) is False   # pending now: not again
    row = await w.delivery_row(delivery)
    assert (row["status"], row["driver_id"]) == ("pending", None)
