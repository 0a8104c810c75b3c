"""Outbound WhatsApp against real Postgres and the broker, and a fake Graph API that checks
every request's shape (``loadtest.fake_graph``) and fails, times out and throttles on demand.

The rig runs what an engine runs: both outbox relays, the notifier (its own consumer group)
and the sender. Orders are placed, accepted, made ready and delivered through the same
functions the REST routes call, so the messages come from real events on real topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from dataclasses import dataclass, replace
from decimal import Decimal

import pytest
from aiokafka import AIOKafkaProducer

from dispatch.commerce.orders.input import NewOrder, OrderLine
from dispatch.commerce.orders.payments import record_payment
from dispatch.commerce.orders.placing import place_order
from dispatch.commerce.orders.transitions import vendor_decision
from dispatch.deliveries.handoff import mark_ready
from dispatch.deliveries.outbox import OutboxRelay, ensure_topic, event_message
from dispatch.deliveries.state import ARRIVED_DROPOFF_EVENT, DeliveryState
from dispatch.deliveries.store import record_event, transition
from dispatch.identity.consent import WORDING, ConsentChange
from dispatch.identity.consent_store import record_consent
from dispatch.messaging.channel import OFF_MESSAGE
from dispatch.messaging.graph_client import GraphClient
from dispatch.messaging.notifier import Notifier
from dispatch.messaging.sender import Sender
from dispatch.tracking.links import resolve_link
from geo import destination
from loadtest.fake_graph import FakeGraph
from schema.db import TenantDatabase
from schema.tenants import create_tenant
from tests.integration.engine_helpers import running_app
from tests.integration.streams.harness import eventually

pytestmark = pytest.mark.timeout(180)

VENDOR_AT = (-26.2360, 27.9090)                 # Orlando, Soweto
HOME = destination(*VENDOR_AT, 90.0, 1500)
PHONE_ID, TOKEN = "106540352242922", "EAAG-test-token"
CUSTOMER_PHONE, VENDOR_PHONE = "+27821230001", "+27821230002"
PUBLIC = "http://engine.test:8080"
PROOF = {"photo": "s3://pod/1.jpg"}


@dataclass
class World:
    db: TenantDatabase
    tenant: str
    customer: str
    vendor: str
    vendor_user: str
    product: str
    driver: str


async def build_world(db: TenantDatabase, tenant: str) -> World:
    async with db.tenant_transaction(tenant) as tx:
        customer_user = await tx.fetchval("INSERT INTO users (phone_number, name, role) VALUES ($1, 'Thandi', "
                                          "'customer') RETURNING id", CUSTOMER_PHONE)
        customer = await tx.fetchval("INSERT INTO customers (user_id, first_name) VALUES ($1, 'Thandi') "
                                     "RETURNING id", customer_user)
        vendor_user = await tx.fetchval("INSERT INTO users (phone_number, name, role) VALUES ($1, 'Mama Thoko', "
                                        "'vendor') RETURNING id", VENDOR_PHONE)
        vendor = await tx.fetchval(
            "INSERT INTO vendors (user_id, business_name, address, location, delivery_radius, payment_methods) "
            "VALUES ($1, 'Mama Thoko Spaza', '{}', ST_SetSRID(ST_MakePoint($3, $2), 4326)::geography, 5000, "
            "'[\"cash\", \"card\"]') RETURNING id", vendor_user, *VENDOR_AT)
        product = await tx.fetchval("INSERT INTO products (vendor_id, sku, name, price, status) VALUES "
                                    "($1, 'MAIZE', 'Maize meal', 89.99, 'active') RETURNING id", vendor)
        await tx.execute("INSERT INTO inventory (product_id, quantity) VALUES ($1, 500)", product)
        driver = await tx.fetchval("INSERT INTO drivers (first_name, last_name, license_number, vehicle_type, "
                                   "vehicle_registration) VALUES ('Sipho', 'Dube', 'L-1', 'motorbike', 'GP-1') "
                                   "RETURNING id")
    return World(db, tenant, str(customer), str(vendor), str(vendor_user), str(product), str(driver))


async def place(w: World, method: str = "cash") -> dict:
    order = NewOrder(w.customer, w.vendor, (OrderLine(w.product, None, 1),), HOME[0], HOME[1],
                     {"street": "12 Mahalefele Rd"}, payment_method=method)
    return await place_order(w.db, w.tenant, order, actor=w.customer)


async def to_delivery(w: World, order_id: str, *, through: str) -> str:
    """Accept, mark ready, and take the delivery through ``through`` (a driver takes it first)."""
    await vendor_decision(w.db, w.tenant, w.vendor, order_id, accept=True, actor=w.vendor_user)
    delivery = (await mark_ready(w.db, w.tenant, w.vendor, order_id, actor=w.vendor_user))["delivery_id"]
    await transition(w.db, w.tenant, delivery, "offer", actor="system:matcher", driver_id=w.driver)
    await transition(w.db, w.tenant, delivery, "accept", actor=w.driver)
    if through == "accept":
        return delivery
    if through == "fail":
        await transition(w.db, w.tenant, delivery, "fail", actor=w.driver, reason="nobody home")
        return delivery
    await transition(w.db, w.tenant, delivery, "arrive_pickup", actor="system:geofence")
    await transition(w.db, w.tenant, delivery, "pick_up", actor=w.driver)
    assert await record_event(w.db, w.tenant, delivery, ARRIVED_DROPOFF_EVENT, {},
                              while_in=(DeliveryState.PICKED_UP,))
    if through == "deliver":
        await transition(w.db, w.tenant, delivery, "deliver", actor=w.driver, proof_of_delivery=PROOF)
    return delivery


@dataclass
class Rig:
    world: World
    fake: FakeGraph
    sender: Sender
    notifier: Notifier
    producer: AIOKafkaProducer
    settings: object


@contextlib.asynccontextmanager
async def rig(platform, stream_settings, **sender_kw):
    settings = replace(stream_settings, locations_partitions=1)
    tenant = await create_tenant(platform, "WhatsApp Spaza")
    for topic in (settings.order_events_topic, settings.delivery_events_topic):
        await ensure_topic(settings.kafka_bootstrap, topic, 1)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    tasks: list[asyncio.Task] = []
    try:
        async with TenantDatabase(platform) as db, FakeGraph(token=TOKEN, phone_number_id=PHONE_ID) as fake, \
                GraphClient(timeout_s=sender_kw.pop("timeout_s", 1.0)) as client:
            world = await build_world(db, str(tenant.id))
            sender = Sender(db, client, graph_url=fake.url, phone_number_id=PHONE_ID, token=TOKEN,
                            public_url=PUBLIC, link_grace_s=3600, timeout_s=client.timeout_s, sweep_s=0.5,
                            **{"send_per_s": 100, "max_attempts": 4, "retry_base_s": 0.05, **sender_kw})
            notifier = Notifier(db, settings.kafka_bootstrap, order_topic=settings.order_events_topic,
                                delivery_topic=settings.delivery_events_topic, group=f"{settings.app_id}-whatsapp",
                                session_timeout_s=2.0, on_planned=sender.wake)
            relays = [OutboxRelay(db, producer, settings.delivery_events_topic),
                      OutboxRelay(db, producer, settings.order_events_topic, table="order_events_outbox")]
            tasks = [asyncio.create_task(r.run(platform, sweep_s=0.5)) for r in relays]
            tasks += [asyncio.create_task(notifier.run()), asyncio.create_task(sender.run())]
            await asyncio.wait_for(notifier.assigned.wait(), 30)
            yield Rig(world, fake, sender, notifier, producer, settings)
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=15)
    finally:
        for task in tasks:
            task.cancel()
        await producer.stop()


async def notifications(w: World, order_id: str | None = None) -> list[dict]:
    async with w.db.tenant_transaction(w.tenant, readonly=True) as tx:
        rows = await tx.fetch("SELECT * FROM notifications WHERE $1::uuid IS NULL OR order_id = $1 "
                              "ORDER BY created_at, template", order_id and uuid.UUID(order_id))
    return [dict(r) for r in rows]


async def messages(w: World) -> list[dict]:
    async with w.db.tenant_transaction(w.tenant, readonly=True) as tx:
        return [dict(r) for r in await tx.fetch("SELECT * FROM whatsapp_messages ORDER BY created_at")]


async def settled(w: World, n: int, within: float = 20) -> list[dict]:
    """The tenant's notifications once ``n`` exist and none is pending or sending."""
    async def check():
        rows = await notifications(w)
        return rows if len(rows) >= n and all(r["status"] not in ("pending", "sending") for r in rows) else None
    return await eventually(check, within=within, every=0.1)


def sent_to(fake: FakeGraph, template: str) -> list[dict]:
    return [r["body"] for r in fake.accepted(template)]


def params(body: dict) -> list[str]:
    return [p["text"] for c in body["template"]["components"] for p in c["parameters"]]


# -- the messages of an order --------------------------------------------------------------------


async def test_an_order_s_life_sends_each_message_once_with_a_working_tracking_link(platform, stream_settings):
    async with rig(platform, stream_settings) as r:
        w, fake = r.world, r.fake
        order = await place(w)
        rows = await settled(w, 2)
        assert {(n["template"], n["recipient_type"], n["status"]) for n in rows} == {
            ("order_confirmed", "customer", "sent"), ("vendor_new_order", "vendor", "sent")}
        confirmed, = sent_to(fake, "order_confirmed")
        assert confirmed["to"] == "27821230001" and confirmed["biz_opaque_callback_data"] == w.tenant
        assert confirmed["template"]["language"] == {"code": "en"}
        assert params(confirmed) == ["Mama Thoko Spaza", order["order_number"], order["total_amount"]]
        new, = sent_to(fake, "vendor_new_order")
        assert new["to"] == "27821230002" and params(new) == [order["order_number"], order["total_amount"],
                                                              "cash on delivery"]
        assert all(q["authorization"] == f"Bearer {TOKEN}" and q["path"] == f"/v21.0/{PHONE_ID}/messages"
                   for q in fake.requests)

        delivery = await to_delivery(w, order["id"], through="deliver")
        rows = await settled(w, 6)
        assert {(n["template"], n["status"], n["last_error"]) for n in rows} == {
            ("order_confirmed", "sent", None), ("vendor_new_order", "sent", None),
            ("driver_assigned", "sent", None), ("driver_arriving", "sent", None),
            ("order_delivered", "sent", None), ("rate_and_return", "suppressed", "no_consent")}
        assert len(rows) == 6
        # the marketing message never reached Meta; every other one once
        assert sent_to(fake, "rate_and_return") == []
        assert sorted(q["template"] for q in fake.requests) == sorted(
            ["order_confirmed", "vendor_new_order", "driver_assigned", "driver_arriving", "order_delivered"])

        # the link in "driver assigned" opens this delivery's tracking, and is stored nowhere
        assigned, = sent_to(fake, "driver_assigned")
        number, shop, url = params(assigned)
        assert (number, shop) == (order["order_number"], "Mama Thoko Spaza") and url.startswith(f"{PUBLIC}/t/wkt_")
        link = await resolve_link(w.db, url.removeprefix(f"{PUBLIC}/t/"), grace_s=3600)
        assert link.delivery_id == delivery
        token = url.rsplit("/", 1)[1]
        stored = json.dumps([await notifications(w), await messages(w)], default=str)
        assert token not in stored and f"{PUBLIC}/t/[redacted]" in stored

        # each sent notification has its outbound message, keyed by Meta's id
        sent = {n["id"]: n for n in rows if n["status"] == "sent"}
        out = await messages(w)
        assert sorted(m["message_id"] for m in out) == sorted(q["wamid"] for q in fake.accepted())
        assert {m["notification_id"] for m in out} == set(sent)
        assert all(m["direction"] == "outbound" and m["type"] == "template" and m["to_number"] in
                   ("27821230001", "27821230002") and m["from_number"] == PHONE_ID for m in out)
        assert all(n["attempts"] == 1 and n["sent_at"] is not None for n in sent.values())


async def test_an_event_delivered_again_sends_nothing_more(platform, stream_settings):
    async with rig(platform, stream_settings) as r:
        w, fake = r.world, r.fake
        first = await place(w)
        await settled(w, 2)
        async with w.db.tenant_transaction(w.tenant, readonly=True) as tx:
            row = await tx.fetchrow("SELECT * FROM order_events_outbox WHERE order_id = $1", uuid.UUID(first["id"]))
        key, value = event_message(w.tenant, row, "order_id")
        for _ in range(2):   # the relay published it again, twice
            await r.producer.send_and_wait(r.settings.order_events_topic, value=value, key=key)
        second = await place(w)   # read after the copies (one partition): once it is sent, they were read
        rows = await settled(w, 4)
        assert len(rows) == 4 and len(fake.requests) == 4
        assert sorted(params(b)[1] for b in sent_to(fake, "order_confirmed")) == sorted(
            [first["order_number"], second["order_number"]])


async def test_marketing_goes_only_with_consent_and_a_failed_delivery_is_told(platform, stream_settings):
    async with rig(platform, stream_settings) as r:
        w, fake = r.world, r.fake
        await record_consent(w.db, w.tenant, "customer", w.customer, ConsentChange(
            "marketing", True, "whatsapp", "2026-12", WORDING[("marketing", "2026-12")]))
        order = await place(w)
        await to_delivery(w, order["id"], through="deliver")
        await settled(w, 6)
        promo, = sent_to(fake, "rate_and_return")
        assert params(promo) == ["Mama Thoko Spaza"] and promo["to"] == "27821230001"

        # withdrawn before the next message goes: suppressed again
        await record_consent(w.db, w.tenant, "customer", w.customer, ConsentChange("marketing", False, "whatsapp"))
        failed = await place(w)
        await to_delivery(w, failed["id"], through="fail")
        rows = await settled(w, 10)
        told, = sent_to(fake, "delivery_failed")
        assert params(told) == [failed["order_number"], "Mama Thoko Spaza"]
        assert sorted((n["template"], n["status"]) for n in rows if n["order_id"] == uuid.UUID(failed["id"])) == [
            ("delivery_failed", "sent"), ("driver_assigned", "sent"), ("order_confirmed", "sent"),
            ("vendor_new_order", "sent")]
        assert len(sent_to(fake, "rate_and_return")) == 1


# -- the Graph API failing -----------------------------------------------------------------------


async def attempts(w: World) -> list[tuple[str, str, int]]:
    return sorted((n["template"], n["status"], n["attempts"]) for n in await notifications(w))


async def test_a_server_error_is_retried_then_sent(platform, stream_settings):
    async with rig(platform, stream_settings) as r:
        r.fake.set_mode(fail_next=1, status=500)
        await place(r.world)
        rows = await settled(r.world, 2)
        assert {n["status"] for n in rows} == {"sent"} and sorted(n["attempts"] for n in rows) == [1, 2]
        assert len(r.fake.requests) == 3 and len(r.fake.accepted()) == 2
        assert r.fake.counters()["by_status"] == {"http_500": 1, "accepted": 2}


async def test_a_429_waits_for_its_retry_after(platform, stream_settings):
    async with rig(platform, stream_settings, send_per_s=1000) as r:
        r.fake.set_mode(fail_next=1, status=429, retry_after=1.5)
        await place(r.world)
        rows = await settled(r.world, 2)
        assert {n["status"] for n in rows} == {"sent"} and sorted(n["attempts"] for n in rows) == [1, 2]
        throttled = next(q for q in r.fake.requests if q["status"] == 429)
        again = next(q for q in r.fake.accepted(throttled["template"]))
        assert again["at"] - throttled["at"] >= 1.4   # not the 50 ms backoff: Retry-After


async def test_a_timeout_is_retried(platform, stream_settings):
    async with rig(platform, stream_settings, timeout_s=0.5) as r:
        r.fake.set_mode(timeout_next=1, hang_s=10)
        await place(r.world)
        rows = await settled(r.world, 2)
        assert {n["status"] for n in rows} == {"sent"} and sorted(n["attempts"] for n in rows) == [1, 2]
        assert r.fake.counters()["by_status"] == {"timeout": 1, "accepted": 2}


async def test_retries_stop_at_max_attempts_and_the_failure_is_recorded(platform, stream_settings):
    async with rig(platform, stream_settings, max_attempts=3) as r:
        r.fake.set_mode(fail_next=100, status=503)
        await place(r.world)
        rows = await settled(r.world, 2)
        assert await attempts(r.world) == [("order_confirmed", "failed", 3), ("vendor_new_order", "failed", 3)]
        assert all(n["last_error"].startswith("gave up after 3 attempts: HTTP 503") for n in rows)
        assert len(r.fake.requests) == 6 and await messages(r.world) == []


async def test_a_refused_request_fails_at_once(platform, stream_settings):
    async with rig(platform, stream_settings) as r:
        r.fake.set_mode(fail_next=2, status=400, code=132001)
        await place(r.world)
        rows = await settled(r.world, 2)
        assert await attempts(r.world) == [("order_confirmed", "failed", 1), ("vendor_new_order", "failed", 1)]
        assert all("code 132001" in n["last_error"] for n in rows)


# -- the engine -------------------------------------------------------------------------------------


async def test_without_credentials_the_channel_is_off_and_says_so(platform, stream_settings, caplog):
    caplog.set_level(logging.WARNING, logger="dispatch.app")
    async with running_app(platform, stream_settings) as (_addr, _state):
        pass
    assert [r.getMessage() for r in caplog.records if r.name == "dispatch.app"].count(OFF_MESSAGE) == 1


async def test_an_engine_with_credentials_sends_an_order_s_messages(platform, stream_settings, monkeypatch):
    monkeypatch.setenv("WAKALA_KAFKA_SESSION_TIMEOUT_S", "2")
    settings = replace(stream_settings, locations_partitions=1)
    tenant = await create_tenant(platform, "Engine WhatsApp")
    async with FakeGraph(token=TOKEN, phone_number_id=PHONE_ID) as fake, TenantDatabase(platform) as db:
        w = await build_world(db, str(tenant.id))
        async with running_app(platform, settings, dispatcher=True, whatsapp_graph_url=fake.url,
                               whatsapp_phone_number_id=PHONE_ID, whatsapp_token=TOKEN,
                               whatsapp_retry_base_s=0.05) as (_addr, state):
            assert {"whatsapp-notifier", "whatsapp-sender"} <= {t.get_name() for t in asyncio.all_tasks()}
            order = await place(w, "card")
            assert (await pay(db, w, order)) == "paid"
            await settled(w, 2, within=40)
            assert sorted(q["template"] for q in fake.accepted()) == ["order_confirmed", "vendor_new_order"]
            assert params(sent_to(fake, "vendor_new_order")[0])[2] == "paid"
            assert state.engine.whatsapp_enabled


async def pay(db: TenantDatabase, w: World, order: dict) -> str:
    result = await record_payment(db, w.tenant, order["id"], idempotency_key=f"pay-{order['id']}",
                          amount=Decimal(order["total_amount"]), status="succeeded", gateway="ozow",
                          gateway_reference="ref-1")
    return result["order_status"]
