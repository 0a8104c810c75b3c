"""The dispatcher's edges against real Redis, Postgres and the broker.

Hostile driver updates (pure parsing, then over HTTP through a running engine, with the
delivery row checked unchanged after each refusal); the batch matcher picking the optimal
pairing where greedy would not; giving up and retrying; offers routed between engine
processes through Redis; and the outbox relay woken by NOTIFY rather than its sweep (the
shared ETA model: ``test_calibration.py``). The only test double is the notifier
(``RecordingNotifier``) where a driver's phone is not the point.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import types
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal

import httpx
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from dispatch.deliveries.outbox import OutboxRelay
from dispatch.deliveries.reports import (
    MAX_PROOF_BYTES,
    MAX_REASON_CHARS,
    DriverUpdate,
    DriverUpdateRefused,
    parse_driver_update,
)
from dispatch.deliveries.state import DeliveryEvent
from dispatch.deliveries.store import create_delivery, transition
from dispatch.deliveries.transitions import PostgresTransitions
from dispatch.matching import active
from dispatch.matching.calibration import CalibrationStore
from dispatch.matching.claims import DriverClaims
from dispatch.matching.dispatcher import Dispatcher
from dispatch.matching.keys import (
    UNASSIGNED_TENANTS_KEY,
    deadlines_key,
    deliveries_key,
    delivery_driver_key,
    delivery_offer_key,
    offer_key,
    round_key,
    socket_key,
    tried_key,
    unassigned_key,
)
from dispatch.matching.notify import RoutedNotifier
from dispatch.matching.offers import OfferEngine, WebsocketNotifier
from dispatch.matching.terms import Offer, RoundOutcome
from geo import destination, distance_m
from loadtest.driver_sim import SimulatedDriver
from schema.db import TenantDatabase
from schema.tenants import create_tenant
from streams.keys import location_key, state_key, tracking_key
from streams.location_store import LocationStore
from tests.integration.engine_helpers import running_app
from tests.integration.matching.test_nearest import put_live
from tests.integration.matching.test_offers import RecordingNotifier
from tests.integration.streams.harness import eventually
from tests.integration.test_dispatch_e2e import DROPOFF, PROOF, VENDOR, _driver, _world

pytestmark = pytest.mark.timeout(60)

ID = "3f1c2a9e-8d7b-4c6a-9e5f-1a2b3c4d5e6f"
OTHER_ID = "7e6d5c4b-3a29-4817-a6b5-c4d3e2f1a0b9"


def _name(what: str) -> str:
    return f"{what} {uuid.uuid4().hex[:8]}"


async def _forget(redis: aioredis.Redis, *, drivers=(), deliveries=(), tenants=(), app_ids=(),
                  keys=()) -> None:
    """Delete the Redis keys a test made for these drivers, deliveries, tenants and app ids."""
    doomed = list(keys)
    for d in drivers:
        doomed += [location_key(d), state_key(d), offer_key(d), deliveries_key(d), socket_key(d)]
    for x in deliveries:
        doomed += [round_key(x), tried_key(x), delivery_offer_key(x), delivery_driver_key(x),
                   active.active_key(x), tracking_key(x)]
    for t in tenants:
        doomed.append(unassigned_key(t))
        doomed += [k async for k in redis.scan_iter(match=f"drivers:available:{t}:*", count=1000)]
        await redis.srem(UNASSIGNED_TENANTS_KEY, t)
    doomed += [deadlines_key(a) for a in app_ids]
    if doomed:
        await redis.delete(*doomed)


# -- 1. parse_driver_update: hostile input, pure ----------------------------------------------------

DELIVER = {"event": "deliver", "proof_of_delivery": PROOF}
FAIL = {"event": "fail", "reason": "customer not home"}
# json.dumps({"p": "x" * n}) is n + 9 characters long
PROOF_AT_LIMIT = {"p": "x" * (MAX_PROOF_BYTES - 9)}
PROOF_OVER_LIMIT = {"p": "x" * (MAX_PROOF_BYTES - 8)}

HOSTILE = [
    # (body, delivery id from the URL, status, reason, field)
    ([], None, 422, "wrong_type", None),
    ("pick_up", ID, 422, "wrong_type", None),
    (None, ID, 422, "wrong_type", None),
    (42, ID, 422, "wrong_type", None),
    ({"event": "pick_up"}, None, 422, "missing_field", "delivery_id"),
    ({"delivery_id": None, "event": "pick_up"}, None, 422, "missing_field", "delivery_id"),
    ({"delivery_id": 12345, "event": "pick_up"}, None, 422, "wrong_type", "delivery_id"),
    ({"delivery_id": [ID], "event": "pick_up"}, None, 422, "wrong_type", "delivery_id"),
    ({"delivery_id": {"id": ID}, "event": "pick_up"}, None, 422, "wrong_type", "delivery_id"),
    ({"delivery_id": ID + " " * 10, "event": "pick_up"}, None, 422, "wrong_type", "delivery_id"),
    ({"delivery_id": "0" * 10_000, "event": "pick_up"}, None, 422, "wrong_type", "delivery_id"),
    ({"delivery_id": "not-a-uuid", "event": "pick_up"}, None, 422, "wrong_type", "delivery_id"),
    ({"delivery_id": "", "event": "pick_up"}, None, 422, "wrong_type", "delivery_id"),
    # the URL's id is the one checked, even when the body's is fine
    ({"delivery_id": ID, "event": "pick_up"}, "nope", 422, "wrong_type", "delivery_id"),
    ({}, ID, 422, "invalid_value", "event"),
    ({"event": "teleport"}, ID, 422, "invalid_value", "event"),
    ({"event": "PICK_UP"}, ID, 422, "invalid_value", "event"),
    ({"event": "cancel"}, ID, 422, "invalid_value", "event"),     # a system event, not a driver's
    ({"event": "offer"}, ID, 422, "invalid_value", "event"),
    ({"event": ["pick_up"]}, ID, 422, "invalid_value", "event"),
    ({"event": {"pick_up": True}}, ID, 422, "invalid_value", "event"),
    ({"event": 1}, ID, 422, "invalid_value", "event"),
    ({"event": None}, ID, 422, "invalid_value", "event"),
    ({"event": True}, ID, 422, "invalid_value", "event"),
    ({"event": "deliver"}, ID, 422, "missing_field", "proof_of_delivery"),
    ({"event": "deliver", "proof_of_delivery": None}, ID, 422, "missing_field", "proof_of_delivery"),
    ({"event": "deliver", "proof_of_delivery": "s3://pod/1.jpg"}, ID, 422, "missing_field", "proof_of_delivery"),
    ({"event": "deliver", "proof_of_delivery": ["s3://pod/1.jpg"]}, ID, 422, "missing_field", "proof_of_delivery"),
    ({"event": "deliver", "proof_of_delivery": 1}, ID, 422, "missing_field", "proof_of_delivery"),
    ({"event": "deliver", "proof_of_delivery": {}}, ID, 422, "missing_field", "proof_of_delivery"),
    ({"event": "deliver", "proof_of_delivery": PROOF_OVER_LIMIT}, ID, 413, "too_large", "proof_of_delivery"),
    ({"event": "pick_up", "proof_of_delivery": PROOF}, ID, 422, "unexpected_field", "proof_of_delivery"),
    ({"event": "pick_up", "proof_of_delivery": {}}, ID, 422, "unexpected_field", "proof_of_delivery"),
    ({**FAIL, "proof_of_delivery": PROOF}, ID, 422, "unexpected_field", "proof_of_delivery"),
    ({"event": "fail"}, ID, 422, "missing_field", "reason"),
    ({"event": "fail", "reason": None}, ID, 422, "missing_field", "reason"),
    ({"event": "fail", "reason": ""}, ID, 422, "invalid_value", "reason"),
    ({"event": "fail", "reason": " \t\n "}, ID, 422, "invalid_value", "reason"),
    ({"event": "fail", "reason": 7}, ID, 422, "invalid_value", "reason"),
    ({"event": "fail", "reason": ["flat tyre"]}, ID, 422, "invalid_value", "reason"),
    ({"event": "fail", "reason": "x" * (MAX_REASON_CHARS + 1)}, ID, 422, "invalid_value", "reason"),
    ({**DELIVER, "reason": "left at the gate"}, ID, 422, "unexpected_field", "reason"),
    ({"event": "pick_up", "reason": "late"}, ID, 422, "unexpected_field", "reason"),
]


@pytest.mark.parametrize(("body", "url_id", "status", "reason", "field"), HOSTILE,
                         ids=[f"{i}-{h[3]}-{h[4]}" for i, h in enumerate(HOSTILE)])
def test_hostile_driver_updates_are_refused_with_status_reason_and_field(body, url_id, status, reason, field):
    with pytest.raises(DriverUpdateRefused) as refused:
        parse_driver_update(body, url_id)
    err = refused.value
    assert (err.status, err.reason, err.field) == (status, reason, field)
    assert err.message and str(err) == err.message


def test_valid_driver_updates_parse_and_the_url_delivery_id_wins():
    assert parse_driver_update({"event": "pick_up"}, ID) == DriverUpdate(ID, DeliveryEvent.PICK_UP, None, None)
    assert parse_driver_update({"delivery_id": ID, "event": "pick_up", "proof_of_delivery": None,
                                "reason": None}) == DriverUpdate(ID, DeliveryEvent.PICK_UP, None, None)
    assert parse_driver_update(DELIVER, ID) == DriverUpdate(ID, DeliveryEvent.DELIVER, PROOF, None)
    assert parse_driver_update(FAIL, ID) == DriverUpdate(ID, DeliveryEvent.FAIL, None, "customer not home")
    longest = "x" * MAX_REASON_CHARS
    assert parse_driver_update({"event": "fail", "reason": longest}, ID).reason == longest
    assert parse_driver_update({"event": "deliver", "proof_of_delivery": PROOF_AT_LIMIT},
                               ID).proof_of_delivery == PROOF_AT_LIMIT
    # the URL's id wins over the body's, valid or not; other spellings come out canonical
    assert parse_driver_update({"delivery_id": OTHER_ID, "event": "pick_up"}, ID).delivery_id == ID
    assert parse_driver_update({"delivery_id": "garbage", "event": "pick_up"}, ID).delivery_id == ID
    assert parse_driver_update({"event": "pick_up"}, ID.upper()).delivery_id == ID
    assert parse_driver_update({"event": "pick_up"}, "{" + ID + "}").delivery_id == ID
    assert parse_driver_update({"event": "pick_up"}, f"urn:uuid:{ID}").delivery_id == ID
    assert parse_driver_update({"event": "pick_up"}, ID.replace("-", "")).delivery_id == ID


# -- 2. the HTTP endpoint, through a running engine ------------------------------------------------

async def _row(db: TenantDatabase, tenant_id, delivery: str) -> dict:
    """Everything Postgres holds about the delivery: its row, its order, its events."""
    async with db.tenant_transaction(tenant_id, readonly=True) as tx:
        row = dict(await tx.fetchrow("SELECT * FROM deliveries WHERE id = $1", uuid.UUID(delivery)))
        row["order"] = dict(await tx.fetchrow("SELECT * FROM orders WHERE id = $1", row["order_id"]))
        row["events"] = await tx.fetchval("SELECT count(*) FROM delivery_events_outbox WHERE delivery_id = $1",
                                          uuid.UUID(delivery))
    return row


async def test_hostile_http_delivery_events_are_refused_and_change_nothing(platform, stream_settings):
    tenant = await create_tenant(platform, _name("Hostile Spaza"))
    redis = aioredis.from_url(stream_settings.redis_url)
    store = LocationStore(redis, stream_settings)
    mine = other = delivery = None
    try:
        async with TenantDatabase(platform) as db, \
                running_app(platform, stream_settings, dispatcher=True) as (addr, _state):
            world = await _world(db, tenant.id)
            (mine, token), (other, other_token) = await _driver(db, tenant.id, 1), await _driver(db, tenant.id, 2)
            # the real flow: on shift, seen 300 m from the vendor, offered the new delivery, accepts
            async with SimulatedDriver(addr, mine, token) as phone:
                await put_live(store, str(tenant.id), [(mine, *destination(*VENDOR, 0.0, 300), "motorbike")])
                delivery = str(await create_delivery(db, tenant.id, world["order"], VENDOR, DROPOFF))
                offer = await asyncio.wait_for(phone.offers.get(), 20)
                assert offer["delivery_id"] == delivery
                reply = await phone.send({"type": "offer_reply", "delivery_id": delivery, "accept": True})
                assert reply["status"] == "assigned"
                before = await _row(db, tenant.id, delivery)
                assert before["status"] == "assigned" and str(before["driver_id"]) == mine
                # on the websocket, the same hostile input gets an error frame; the socket stays up
                await phone.ws.send("[" * 15_000)    # under the 16 KiB message limit, too deep to parse
                assert (await asyncio.wait_for(phone.replies.get(), 5))["reason"] == "bad_json"
                for frame, reason in (({"event": ["pick_up"]}, "invalid_value"),
                                      ({"event": "deliver", "proof_of_delivery": PROOF}, "illegal_transition"),
                                      ({"event": "pick_up", "delivery_id": str(uuid.uuid4())}, "unknown_delivery")):
                    refused = await phone.send({"type": "delivery_update", "delivery_id": delivery, **frame})
                    assert (refused["type"], refused["reason"]) == ("error", reason), refused
                assert await _row(db, tenant.id, delivery) == before

            path = f"/v1/drivers/deliveries/{delivery}/events"
            pick_up = json.dumps({"event": "pick_up"}).encode()
            oversize = json.dumps({"event": "deliver", "proof_of_delivery": {"p": "x" * (300 << 10)}}).encode()
            mine_h = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            other_h = {"Authorization": f"Bearer {other_token}", "Content-Type": "application/json"}
            cases = [
                # (what, path, headers, body, status, reason)
                ("bad json", path, mine_h, b'{"event": "pick_up"', 400, "bad_json"),
                ("not utf-8", path, mine_h, b'{"event": "\xff\xfe"}', 400, "bad_json"),
                ("empty body", path, mine_h, b"", 400, "bad_json"),
                ("deeply nested", path, mine_h, b"[" * 100_000, 400, "bad_json"),
                ("oversize body", path, mine_h, oversize, 413, "too_large"),
                ("no token", path, {}, pick_up, 401, None),
                ("wrong token", path, {"Authorization": "Bearer not-a-real-token"}, pick_up, 401, None),
                ("not bearer", path, {"Authorization": f"Basic {token}"}, pick_up, 401, None),
                ("list as event", path, mine_h, b'{"event": ["pick_up"]}', 422, "invalid_value"),
                ("bad url id", "/v1/drivers/deliveries/nope/events", mine_h, pick_up, 422, "wrong_type"),
                ("another driver's delivery", path, other_h, pick_up, 404, "unknown_delivery"),
                ("illegal for the state", path, mine_h, json.dumps(DELIVER).encode(), 409, "illegal_transition"),
            ]
            async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=10) as http:
                for what, url, headers, body, status, reason in cases:
                    resp = await http.post(url, content=body, headers=headers)
                    assert resp.status_code == status, (what, resp.text)
                    error = resp.json()["error"]
                    assert reason is None or error["reason"] == reason, (what, error)
                    assert await _row(db, tenant.id, delivery) == before, what

                # Another driver's delivery is answered exactly like one that does not exist.
                theirs = await http.post(path, content=pick_up, headers=other_h)
                nobody = str(uuid.uuid4())
                absent = await http.post(f"/v1/drivers/deliveries/{nobody}/events", content=pick_up,
                                         headers=other_h)
                assert theirs.status_code == absent.status_code == 404
                assert theirs.json() == json.loads(absent.text.replace(nobody, delivery))
                assert mine not in theirs.text and "assigned" not in theirs.text

                # the control: the same body with the right token does move the delivery
                resp = await http.post(path, content=pick_up, headers=mine_h)
                assert resp.status_code == 200 and resp.json()["status"] == "picked_up", resp.text
            after = await _row(db, tenant.id, delivery)
            assert after["status"] == "picked_up" and after["events"] > before["events"]
    finally:
        await _forget(redis, drivers=[d for d in (mine, other) if d], deliveries=[delivery] if delivery else [],
                      tenants=[str(tenant.id)], app_ids=[stream_settings.app_id])
        await redis.aclose()


# -- 3, 4. the matcher, built the way the engine builds it -----------------------------------------

@dataclass
class Matcher:
    db: TenantDatabase
    redis: aioredis.Redis
    store: LocationStore
    offers: OfferEngine
    dispatcher: Dispatcher
    notifier: RecordingNotifier
    tenant_id: str
    world: dict

    async def delivery(self, pickup: tuple[float, float]) -> str:
        """A pending delivery of a fresh order (a copy of the world's) from ``pickup``."""
        async with self.db.tenant_transaction(self.tenant_id) as tx:
            order = await tx.fetchval(
                "INSERT INTO orders (order_number, customer_id, vendor_id, status, subtotal, total_amount, "
                "delivery_fee, delivery_address, delivery_location) "
                "SELECT $2, customer_id, vendor_id, status, subtotal, total_amount, delivery_fee, "
                "delivery_address, delivery_location FROM orders WHERE id = $1 RETURNING id",
                self.world["order"], f"ORD-{uuid.uuid4().hex[:10]}")
        return str(await create_delivery(self.db, self.tenant_id, order, pickup, DROPOFF))

    async def status(self, delivery: str) -> tuple[str, str | None]:
        row = await _row(self.db, self.tenant_id, delivery)
        return row["status"], None if row["driver_id"] is None else str(row["driver_id"])


@contextlib.asynccontextmanager
async def matcher(platform, stream_settings, **offer_options) -> AsyncIterator[Matcher]:
    """A Dispatcher over real Redis and Postgres, wired as dispatch/app.py wires it, with a
    recording notifier and a calibration hash of its own (so every ETA factor is 1.0)."""
    tenant = await create_tenant(platform, _name("Matcher Spaza"))
    tenant_id = str(tenant.id)
    redis = aioredis.from_url(stream_settings.redis_url)
    store = LocationStore(redis, stream_settings)
    notifier = RecordingNotifier()
    calibration_key = f"eta:calibration:test:{uuid.uuid4().hex}"
    async with TenantDatabase(platform) as db:
        offers = OfferEngine(DriverClaims(redis, offer_ttl_s=20), notifier, redis,
                             transitions=PostgresTransitions(db), app_id=stream_settings.app_id,
                             offer_timeout_s=20, **offer_options)
        dispatcher = Dispatcher(db, redis, store, offers,
                                calibration=CalibrationStore(redis, key=calibration_key))
        m = Matcher(db, redis, store, offers, dispatcher, notifier, tenant_id, await _world(db, tenant_id))
        try:
            yield m
        finally:
            async with db.tenant_transaction(tenant_id, readonly=True) as tx:
                drivers = [r["id"] for r in await tx.fetch("SELECT id::text AS id FROM drivers")]
                deliveries = [r["id"] for r in await tx.fetch("SELECT id::text AS id FROM deliveries")]
            await _forget(redis, drivers=drivers, deliveries=deliveries, tenants=[tenant_id],
                          app_ids=[stream_settings.app_id], keys=[calibration_key])
            await redis.aclose()


async def test_batch_offers_each_delivery_to_the_driver_of_the_optimal_pairing(platform, stream_settings):
    """Along one street, west to east: driver 2, pickup A, driver 1, pickup B.

    Greedy gives A its nearest, driver 1 (150 m), leaving B driver 2 (1300 m): 1450 m in all.
    The optimal pairing gives A driver 2 (1000 m) and B driver 1 (150 m): 1150 m.
    """
    def east(m: float) -> tuple[float, float]:
        return destination(*VENDOR, 90.0, m)

    async with matcher(platform, stream_settings) as m:
        (d1, _), (d2, _) = await _driver(m.db, m.tenant_id, 1), await _driver(m.db, m.tenant_id, 2)
        at = {d2: east(0), d1: east(1150)}
        pickup_a, pickup_b = east(1000), east(1300)
        # the setup is the crossing case: A's nearest is driver 1, and greedy loses to the swap
        assert distance_m(*pickup_a, *at[d1]) < distance_m(*pickup_a, *at[d2])
        assert (distance_m(*pickup_a, *at[d1]) + distance_m(*pickup_b, *at[d2])
                > distance_m(*pickup_a, *at[d2]) + distance_m(*pickup_b, *at[d1]) + 250)
        await put_live(m.store, m.tenant_id, [(d, *pos, "motorbike") for d, pos in at.items()])
        a, b = await m.delivery(pickup_a), await m.delivery(pickup_b)

        outcomes = await m.dispatcher.dispatch_batch(m.tenant_id, [a, b, a])   # a repeat is solved once

        assert outcomes == [RoundOutcome(a, "offered", d2), RoundOutcome(b, "offered", d1)]
        assert [(driver, offer.delivery_id) for driver, offer in m.notifier.sent] == [(d2, a), (d1, b)]
        assert all(offer.pay == Decimal("25.00") and offer.pickup_eta_s > 0 for _, offer in m.notifier.sent)
        assert await m.status(a) == ("offered", d2)
        assert await m.status(b) == ("offered", d1)
        # a replay of the window changes nothing: both rounds are under way
        assert await m.dispatcher.dispatch_batch(m.tenant_id, [a, b]) == []
        assert len(m.notifier.sent) == 2


async def test_a_delivery_nobody_can_take_is_unassigned_then_retried_when_a_driver_starts(
        platform, stream_settings):
    async with matcher(platform, stream_settings, max_attempts=1) as m:
        driver, _ = await _driver(m.db, m.tenant_id, 1)    # exists, but is not on shift
        delivery = await m.delivery(VENDOR)

        outcome = await m.dispatcher.dispatch(m.tenant_id, delivery)

        assert outcome is not None and (outcome.delivery_id, outcome.status) == (delivery, "unassigned")
        assert outcome.reason
        assert await m.status(delivery) == ("unassigned", None)
        assert await m.offers.unassigned(m.tenant_id) == {delivery}
        assert m.tenant_id in await m.offers.unassigned_tenants()
        assert m.notifier.sent == []
        # replayed: not pending any more, nothing happens
        assert await m.dispatcher.dispatch(m.tenant_id, delivery) is None

        # still nobody: the retry writes nothing and keeps it waiting
        unassigned = await _row(m.db, m.tenant_id, delivery)
        assert await m.dispatcher.retry(m.tenant_id) == []
        assert await _row(m.db, m.tenant_id, delivery) == unassigned
        assert await m.offers.unassigned(m.tenant_id) == {delivery}
        assert m.tenant_id in await m.offers.unassigned_tenants()

        # a driver starts a shift near the vendor: the retry offers it to them
        await put_live(m.store, m.tenant_id, [(driver, *destination(*VENDOR, 45.0, 500), "motorbike")])
        assert await m.dispatcher.retry(m.tenant_id) == [RoundOutcome(delivery, "offered", driver)]
        assert await m.status(delivery) == ("offered", driver)
        assert [(d, o.delivery_id) for d, o in m.notifier.sent] == [(driver, delivery)]
        assert (await _row(m.db, m.tenant_id, delivery))["events"] == unassigned["events"] + 2   # retry, offer
        assert await m.offers.unassigned(m.tenant_id) == set()
        assert m.tenant_id not in await m.offers.unassigned_tenants()


async def test_a_delivery_ended_by_anyone_frees_its_driver_offer_and_tracking(platform, stream_settings):
    """A cancel (a vendor, a customer, an operator) reaches the dispatcher as an event: the
    assigned driver's slot, an open offer, the round and the tracked copy all go."""
    async with matcher(platform, stream_settings) as m:
        (assigned, _), (offered, _) = await _driver(m.db, m.tenant_id, 1), await _driver(m.db, m.tenant_id, 2)
        await put_live(m.store, m.tenant_id, [(assigned, *destination(*VENDOR, 0.0, 200), "motorbike")])
        first = await m.delivery(VENDOR)
        assert await m.dispatcher.dispatch(m.tenant_id, first) == RoundOutcome(first, "offered", assigned)
        assert (await m.offers.reply(assigned, first, True)).status == "assigned"
        assert await m.store.status(assigned) == "busy" and await m.redis.exists(active.active_key(first))
        await put_live(m.store, m.tenant_id, [(offered, *destination(*VENDOR, 180.0, 300), "motorbike")])
        second = await m.delivery(VENDOR)
        assert await m.dispatcher.dispatch(m.tenant_id, second) == RoundOutcome(second, "offered", offered)

        for delivery in (first, second):
            await transition(m.db, m.tenant_id, delivery, "cancel", actor="system:test", reason="shop closed")
        await m.dispatcher.handle([
            {"id": str(uuid.uuid4()), "tenant_id": m.tenant_id, "delivery_id": d, "type": "cancel"}
            for d in (first, second)])

        assert await m.store.status(assigned) == "available"
        assert await m.dispatcher.claims.active_deliveries(assigned) == set()
        assert await m.dispatcher.claims.offer_of(offered) is None
        assert not await m.redis.exists(active.active_key(first), round_key(second))
        await m.dispatcher.handle([{"id": "x", "tenant_id": m.tenant_id, "delivery_id": first, "type": "cancel"}])


# -- 5. offers across engine processes ----------------------------------------------------------------

class FakeSocket:
    """A driver's websocket as WebsocketNotifier sees it: frames sent to it are recorded."""

    def __init__(self) -> None:
        self.frames: list[dict] = []

    async def send_json(self, frame: dict) -> None:
        self.frames.append(frame)


def _offer(delivery: str) -> Offer:
    return Offer(delivery, str(uuid.uuid4()), VENDOR, DROPOFF, Decimal("25.00"), 120, 600, time.time() + 20)


async def test_an_offer_reaches_a_driver_connected_to_another_engine_process(stream_settings):
    redis = aioredis.from_url(stream_settings.redis_url)
    driver = str(uuid.uuid4())
    socket = FakeSocket()
    app_id = stream_settings.app_id
    a = RoutedNotifier(redis, WebsocketNotifier(types.SimpleNamespace(driver_ids={driver: {socket}})),
                       app_id=app_id, process_id=f"proc-a-{uuid.uuid4().hex[:6]}")
    b = RoutedNotifier(redis, WebsocketNotifier(types.SimpleNamespace(driver_ids={})),
                       app_id=app_id, process_id=f"proc-b-{uuid.uuid4().hex[:6]}")
    await a.start()
    await b.start()
    try:
        await a.register(driver)
        first = _offer(str(uuid.uuid4()))
        assert await b.send_offer(driver, first)

        async def frames(n: int):
            return len(socket.frames) >= n

        await eventually(lambda: frames(1), within=5)
        assert socket.frames == [first.frame()] and a.forwarded == 1
        assert not await b.send_offer(str(uuid.uuid4()), first)   # a driver nobody holds

        # garbage on A's channel is ignored, and A keeps relaying
        for junk in (b"not json", b"\xff\xfe\x00", b"null", b"[1, 2]", b'"text"', b"{}",
                     json.dumps({"driver_id": driver}), json.dumps({"frame": first.frame()}),
                     json.dumps({"driver_id": 7, "frame": first.frame()}),
                     json.dumps({"driver_id": driver, "frame": "offer"}),
                     json.dumps({"driver_id": driver, "frame": [1]})):
            assert await redis.publish(a.channel(a.process_id), junk) == 1
        second = _offer(str(uuid.uuid4()))
        assert await b.send_offer(driver, second)
        await eventually(lambda: frames(2), within=5)
        await asyncio.sleep(0.1)
        assert socket.frames == [first.frame(), second.frame()] and a.forwarded == 2

        # A stops (crashes) leaving its registration behind: B finds out and removes it
        await a.stop()
        assert await redis.get(socket_key(driver)) == a.process_id.encode()
        assert not await b.send_offer(driver, _offer(str(uuid.uuid4())))
        assert await redis.exists(socket_key(driver)) == 0
        assert len(socket.frames) == 2
    finally:
        await a.stop()
        await b.stop()
        await redis.delete(socket_key(driver))
        await redis.aclose()


# -- 6. the outbox relay wakes on NOTIFY ------------------------------------------------------------------

async def _published(db: TenantDatabase, tenant_id, delivery) -> bool:
    async with db.tenant_transaction(tenant_id, readonly=True) as tx:
        return await tx.fetchval("SELECT bool_and(published_at IS NOT NULL) FROM delivery_events_outbox "
                                 "WHERE delivery_id = $1", delivery)


async def test_the_relay_publishes_a_new_delivery_on_notify_not_at_the_next_sweep(platform, stream_settings):
    tenant = await create_tenant(platform, _name("Relay Spaza"))
    topic = stream_settings.delivery_events_topic
    producer = AIOKafkaProducer(bootstrap_servers=stream_settings.kafka_bootstrap, linger_ms=2)
    await producer.start()
    relay_task = consumer = None
    try:
        async with TenantDatabase(platform) as db:
            world = await _world(db, tenant.id)
            early = await create_delivery(db, tenant.id, world["order"], VENDOR, DROPOFF)
            relay_task = asyncio.create_task(OutboxRelay(db, producer, topic).run(platform, sweep_s=60))
            # the first sweep publishes what was waiting; the next one is a minute away
            await eventually(lambda: _published(db, tenant.id, early), within=10, every=0.05)

            consumer = AIOKafkaConsumer(topic, bootstrap_servers=stream_settings.kafka_bootstrap,
                                        auto_offset_reset="earliest", enable_auto_commit=False, group_id=None)
            await consumer.start()
            started = time.monotonic()
            late = str(await create_delivery(db, tenant.id, world["order"], VENDOR, DROPOFF))
            seen: list[dict] = []
            while time.monotonic() - started < 2.0 and not any(e["delivery_id"] == late for e in seen):
                for records in (await consumer.getmany(timeout_ms=100)).values():
                    seen += [json.loads(r.value) for r in records]
            elapsed = time.monotonic() - started
            assert [e["type"] for e in seen if e["delivery_id"] == late] == ["created"], (elapsed, seen)
            assert [e["type"] for e in seen if e["delivery_id"] == str(early)] == ["created"]
            assert elapsed < 2.0
            assert not relay_task.done()
    finally:
        if relay_task is not None:
            relay_task.cancel()
            await asyncio.gather(relay_task, return_exceptions=True)
        if consumer is not None:
            await consumer.stop()
        await producer.stop()


# -- 7. the shared ETA model: tests/integration/matching/test_calibration.py
