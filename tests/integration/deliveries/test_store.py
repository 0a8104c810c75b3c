"""The delivery state machine against real Postgres: one transition, one transaction."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

import schema.migrate as migrate_module
from dispatch.deliveries.state import DeliveryState, IllegalTransition, InvalidFact
from dispatch.deliveries.store import (
    InvalidDeliveryInput,
    UnknownDelivery,
    UnknownDriver,
    create_delivery,
    record_event,
    transition,
)
from schema.connect import connection
from schema.db import TenantDatabase
from schema.migrate import load_migrations, migrate
from schema.tenants import Tenant, create_tenant
from tests.integration.shared_platform import shared_platform  # noqa: F401 - one platform for the module

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
PICKUP = (-26.2041, 28.0473)
DROPOFF = (-26.1952, 28.0341)
PROOF = {"photo_url": "https://example.invalid/pod.jpg", "received_by": "front desk"}


@dataclass
class World:
    tenant: Tenant
    user_id: uuid.UUID
    vendor_id: uuid.UUID
    order_id: uuid.UUID
    driver_id: str
    delivery_id: uuid.UUID


async def _populate(db: TenantDatabase, tenant: Tenant) -> World:
    async with db.tenant_transaction(tenant.id) as tx:
        user_id = await tx.fetchval(
            "INSERT INTO users (phone_number, name, role) VALUES ('+27710000100', 'Dispatcher', "
            "'admin') RETURNING id")
        vendor_id = await tx.fetchval(
            "INSERT INTO vendors (business_name, address) VALUES ('Spaza One', '{}') RETURNING id")
        customer_id = await tx.fetchval(
            "INSERT INTO customers (first_name) VALUES ('Thandi') RETURNING id")
        order_id = await tx.fetchval(
            "INSERT INTO orders (order_number, customer_id, vendor_id, status, subtotal, "
            "total_amount, delivery_fee, delivery_address) "
            "VALUES ('ORD-1', $1, $2, 'ready', 100, 110, 17.50, '{}') "
            "RETURNING id", customer_id, vendor_id)
        driver_id = await tx.fetchval(
            "INSERT INTO drivers (first_name, last_name, license_number, vehicle_type, "
            "vehicle_registration) VALUES ('Sipho', 'Dube', 'L-1', 'motorbike', 'GP-1') RETURNING id")
    delivery_id = await create_delivery(db, tenant.id, order_id, PICKUP, DROPOFF)
    return World(tenant, user_id, vendor_id, order_id, str(driver_id), delivery_id)


@pytest.fixture
async def world(platform):
    tenant = await create_tenant(platform, f"Dispatch Spaza {uuid.uuid4().hex[:6]}")
    async with TenantDatabase(platform) as db:
        yield db, await _populate(db, tenant)


async def _tables(db: TenantDatabase, w: World) -> dict:
    """Every row a transition may touch, as plain data."""
    async with db.tenant_transaction(w.tenant.id, readonly=True) as tx:
        return {
            "delivery": dict(await tx.fetchrow(
                "SELECT d.*, ST_AsText(pickup_location) AS pickup_wkt FROM deliveries d "
                "WHERE id = $1", w.delivery_id)),
            "order": dict(await tx.fetchrow("SELECT * FROM orders WHERE id = $1", w.order_id)),
            "history": [dict(r) for r in await tx.fetch(
                "SELECT * FROM order_status_history WHERE order_id = $1 ORDER BY created_at, id",
                w.order_id)],
            "outbox": [dict(r) for r in await tx.fetch(
                "SELECT * FROM delivery_events_outbox ORDER BY seq")],
            "driver_deliveries": await tx.fetchval(
                "SELECT total_deliveries FROM drivers WHERE id = $1", uuid.UUID(w.driver_id)),
            "vendor_orders": await tx.fetchval(
                "SELECT total_orders FROM vendors WHERE id = $1", w.vendor_id),
            "driver_earnings": await tx.fetchval(
                "SELECT total_earnings FROM drivers WHERE id = $1", uuid.UUID(w.driver_id)),
        }


def _history(tables: dict) -> list[tuple]:
    return [(h["from_status"], h["to_status"]) for h in tables["history"]]


def _events(tables: dict) -> list[tuple]:
    out = []
    for row in tables["outbox"]:
        payload = json.loads(row["payload"])
        out.append((row["event_type"], payload["from_state"], payload["to_state"]))
    return out


async def test_a_delivery_walks_from_pending_to_delivered_recording_every_step(world):
    db, w = world
    tid, did = w.tenant.id, w.delivery_id
    start = await _tables(db, w)
    assert start["delivery"]["status"] == "pending" and start["delivery"]["offer_attempts"] == 0
    assert start["delivery"]["pickup_wkt"] == "POINT(28.0473 -26.2041)"
    assert (start["driver_deliveries"], start["vendor_orders"]) == (0, 0)

    snap = await transition(db, tid, did, "offer", actor="system:matcher", at=T0,
                            driver_id=w.driver_id, estimated_duration_s=890, distance_m=4200)
    assert snap.state is DeliveryState.OFFERED
    t = await _tables(db, w)
    d = t["delivery"]
    assert (d["status"], str(d["driver_id"]), d["offer_attempts"]) == ("offered", w.driver_id, 1)
    assert (d["estimated_duration_s"], d["estimated_duration_minutes"], d["distance_meters"]) == (
        890, 15, 4200)
    assert t["order"]["status"] == "ready" and t["history"] == []
    assert _events(t) == [("created", None, "pending"), ("offer", "pending", "offered")]
    created = json.loads(t["outbox"][0]["payload"])
    assert (created["delivery_id"], created["order_id"]) == (str(did), str(w.order_id))
    payload = json.loads(t["outbox"][1]["payload"])
    assert payload == {
        "delivery_id": str(did), "order_id": str(w.order_id), "event": "offer",
        "from_state": "pending", "to_state": "offered", "driver_id": w.driver_id,
        "at": T0.isoformat(), "actor": "system:matcher", "reason": None,
    }
    assert t["outbox"][1]["published_at"] is None
    assert t["outbox"][1]["tenant_id"] == tid

    await transition(db, tid, did, "accept", actor=w.driver_id, at=T0 + timedelta(seconds=20))
    t = await _tables(db, w)
    assert (t["delivery"]["status"], t["delivery"]["assigned_at"]) == (
        "assigned", T0 + timedelta(seconds=20))
    assert t["order"]["status"] == "dispatched"
    assert _history(t) == [("ready", "dispatched")]
    # a driver id is not a user: kept in metadata, changed_by left NULL
    assert t["history"][0]["changed_by"] is None
    meta = json.loads(t["history"][0]["metadata"])
    assert meta == {"actor": w.driver_id, "delivery_id": str(did), "event": "accept"}

    await transition(db, tid, did, "arrive_pickup", at=T0 + timedelta(minutes=8))
    t = await _tables(db, w)
    assert t["delivery"]["status"] == "at_pickup"
    assert t["order"]["status"] == "dispatched" and len(t["history"]) == 1

    picked = T0 + timedelta(minutes=10)
    await transition(db, tid, did, "pick_up", actor=str(w.user_id), at=picked)
    t = await _tables(db, w)
    assert (t["delivery"]["status"], t["delivery"]["picked_up_at"]) == ("picked_up", picked)
    assert _history(t) == [("ready", "dispatched"), ("dispatched", "picked_up")]
    assert t["history"][1]["changed_by"] == w.user_id
    assert "actor" not in json.loads(t["history"][1]["metadata"])

    delivered = picked + timedelta(seconds=1234)
    snap = await transition(db, tid, did, "deliver", at=delivered, proof_of_delivery=PROOF)
    t = await _tables(db, w)
    d = t["delivery"]
    assert d["status"] == "delivered" and d["delivered_at"] == delivered
    assert (d["actual_duration_s"], d["actual_duration_minutes"]) == (1234, 21)
    assert json.loads(d["proof_of_delivery"]) == PROOF == snap.proof_of_delivery
    assert (t["order"]["status"], t["order"]["actual_delivery_time"]) == ("delivered", delivered)
    assert _history(t) == [
        ("ready", "dispatched"), ("dispatched", "picked_up"), ("picked_up", "delivered")]
    assert _events(t) == [
        ("created", None, "pending"),
        ("offer", "pending", "offered"),
        ("accept", "offered", "assigned"),
        ("arrive_pickup", "assigned", "at_pickup"),
        ("pick_up", "at_pickup", "picked_up"),
        ("deliver", "picked_up", "delivered"),
    ]
    assert (t["driver_deliveries"], t["vendor_orders"]) == (1, 1)
    assert t["driver_earnings"] == Decimal("17.50")   # the order's delivery fee, once

    # delivered is terminal: a repeat changes nothing and counts nothing twice
    with pytest.raises(IllegalTransition):
        await transition(db, tid, did, "deliver", at=delivered, proof_of_delivery=PROOF)
    assert await _tables(db, w) == t


async def test_rejected_events_write_nothing(world):
    db, w = world
    tid, did = w.tenant.id, w.delivery_id
    await transition(db, tid, did, "offer", at=T0, driver_id=w.driver_id)
    await transition(db, tid, did, "accept", at=T0)
    before = await _tables(db, w)

    with pytest.raises(IllegalTransition, match="cannot 'deliver' a delivery that is 'assigned'"):
        await transition(db, tid, did, "deliver", at=T0, proof_of_delivery=PROOF)
    assert await _tables(db, w) == before

    await transition(db, tid, did, "arrive_pickup", at=T0)
    await transition(db, tid, did, "pick_up", at=T0)
    before = await _tables(db, w)
    with pytest.raises(InvalidFact, match="proof_of_delivery"):
        await transition(db, tid, did, "deliver", at=T0)
    with pytest.raises(InvalidFact, match="timezone-aware"):
        await transition(db, tid, did, "deliver", at=datetime(2025, 1, 1), proof_of_delivery=PROOF)
    with pytest.raises(InvalidFact, match="reason"):
        await transition(db, tid, did, "cancel", at=T0)
    assert await _tables(db, w) == before


async def test_unknown_and_malformed_ids_are_refused_before_any_write(world):
    db, w = world
    tid = w.tenant.id
    before = await _tables(db, w)
    with pytest.raises(UnknownDelivery, match="no delivery"):
        await transition(db, tid, uuid.uuid4(), "offer", at=T0, driver_id=w.driver_id)
    with pytest.raises(InvalidDeliveryInput, match="delivery_id must be a UUID"):
        await transition(db, tid, "not-a-uuid", "offer", at=T0, driver_id=w.driver_id)
    with pytest.raises(InvalidFact, match="driver_id must be a UUID"):
        await transition(db, tid, w.delivery_id, "offer", at=T0, driver_id="driver-7")
    with pytest.raises(UnknownDriver, match="no driver"):
        await transition(db, tid, w.delivery_id, "offer", at=T0, driver_id=str(uuid.uuid4()))
    assert await _tables(db, w) == before


async def test_cancel_from_offered_records_reason_and_cancels_the_order(world):
    db, w = world
    tid, did = w.tenant.id, w.delivery_id
    await transition(db, tid, did, "offer", at=T0, driver_id=w.driver_id)
    cancelled = T0 + timedelta(minutes=1)
    snap = await transition(db, tid, did, "cancel", at=cancelled, actor=str(w.user_id),
                            reason="customer changed their mind")
    assert snap.driver_id is None  # an open offer is withdrawn
    t = await _tables(db, w)
    d = t["delivery"]
    assert (d["status"], d["failure_reason"], d["cancelled_at"], d["failed_at"], d["driver_id"]) == (
        "cancelled", "customer changed their mind", cancelled, None, None)
    assert t["order"]["status"] == "cancelled"
    assert _history(t) == [("ready", "cancelled")]
    assert t["history"][0]["reason"] == "customer changed their mind"
    assert t["history"][0]["changed_by"] == w.user_id
    assert _events(t) == [("created", None, "pending"), ("offer", "pending", "offered"),
                          ("cancel", "offered", "cancelled")]
    assert json.loads(t["outbox"][2]["payload"])["reason"] == "customer changed their mind"
    assert (t["driver_deliveries"], t["vendor_orders"]) == (0, 0)


async def test_another_tenant_cannot_see_or_transition_the_delivery(world, platform):
    db, w = world
    other = await create_tenant(platform, f"Other Spaza {uuid.uuid4().hex[:6]}")
    await transition(db, w.tenant.id, w.delivery_id, "offer", at=T0, driver_id=w.driver_id)
    before = await _tables(db, w)
    with pytest.raises(UnknownDelivery):
        await transition(db, other.id, w.delivery_id, "accept", at=T0)
    assert await _tables(db, w) == before

    # the outbox is row-level secured like every tenant table: the application role,
    # claiming the other tenant, sees none of this tenant's events
    dsn = platform.control.with_database(platform.shard_databases[w.tenant.shard_id])
    conn = await asyncpg.connect(dsn.with_user(platform.app_role, platform.app_password).url())
    try:
        outbox = f'"{w.tenant.schema_name}".delivery_events_outbox'
        for tenant, expected in ((other, 0), (w.tenant, 2)):   # created + offer
            async with conn.transaction():
                await conn.execute("SELECT set_config('app.current_tenant_id', $1, true)",
                                   str(tenant.id))
                assert await conn.fetchval(f"SELECT count(*) FROM {outbox}") == expected  # noqa: S608
    finally:
        await conn.close()


async def test_concurrent_accepts_exactly_one_wins(world):
    db, w = world
    tid, did = w.tenant.id, w.delivery_id
    await transition(db, tid, did, "offer", at=T0, driver_id=w.driver_id)
    results = await asyncio.gather(
        transition(db, tid, did, "accept", at=T0 + timedelta(seconds=1)),
        transition(db, tid, did, "accept", at=T0 + timedelta(seconds=2)),
        return_exceptions=True,
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, BaseException)]
    assert len(won) == 1 and won[0].state is DeliveryState.ASSIGNED
    assert len(lost) == 1 and isinstance(lost[0], IllegalTransition)
    assert lost[0].state is DeliveryState.ASSIGNED
    t = await _tables(db, w)
    assert t["delivery"]["assigned_at"] == won[0].assigned_at
    assert _history(t) == [("ready", "dispatched")]
    assert [e[0] for e in _events(t)] == ["created", "offer", "accept"]


async def test_a_note_is_recorded_only_while_the_delivery_is_in_the_given_states(world):
    db, w = world
    tid, did = w.tenant.id, w.delivery_id
    fact = {"lat": DROPOFF[0], "lng": DROPOFF[1], "at": T0.isoformat()}
    picked_up = (DeliveryState.PICKED_UP,)
    assert not await record_event(db, tid, did, "arrived_dropoff", fact, while_in=picked_up)
    await transition(db, tid, did, "offer", at=T0, driver_id=w.driver_id)
    for event in ("accept", "arrive_pickup", "pick_up"):
        await transition(db, tid, did, event, at=T0)
    before = await _tables(db, w)
    assert await record_event(db, tid, did, "arrived_dropoff", fact, while_in=picked_up)
    t = await _tables(db, w)
    assert t["delivery"] == before["delivery"] and t["order"] == before["order"]
    note = t["outbox"][-1]
    assert note["event_type"] == "arrived_dropoff"
    assert json.loads(note["payload"]) == {
        "delivery_id": str(did), "order_id": str(w.order_id), "event": "arrived_dropoff",
        "state": "picked_up", "driver_id": w.driver_id, **fact}


async def test_migrate_brings_a_tenant_created_before_0010_up_to_date(platform, monkeypatch):
    every = load_migrations("tenant")
    assert every[-1].version >= "0010"
    older = [m for m in every if m.version < "0010"]
    monkeypatch.setattr(migrate_module, "load_migrations", lambda kind, root=None: older)
    tenant = await create_tenant(platform, f"Early Spaza {uuid.uuid4().hex[:6]}")
    async with TenantDatabase(platform) as db:
        w = await _populate_pre_0010(db, tenant)
    monkeypatch.undo()

    report = await migrate(platform)
    assert [v for v in report.tenant_applied[tenant.schema_name] if v >= "0010"] == [
        m.version for m in every if m.version >= "0010"]
    dsn = platform.control.with_database(platform.shard_databases[tenant.shard_id])
    async with connection(dsn) as conn:
        applied = await conn.fetchval(
            "SELECT max(version) FROM schema_migrations WHERE scope = $1", tenant.schema_name)
        assert applied == every[-1].version
        constraint = await conn.fetchval(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conname = 'valid_delivery_status' AND connamespace = to_regnamespace($1)",
            tenant.schema_name)
    assert all(f"'{state.value}'" in constraint for state in DeliveryState)

    async with TenantDatabase(platform) as db:
        async with db.tenant_transaction(tenant.id, readonly=True) as tx:
            row = await tx.fetchrow(
                "SELECT offer_attempts, estimated_duration_s, actual_duration_s, cancelled_at, "
                "failed_at, failure_reason FROM deliveries WHERE id = $1", w)
        # existing rows get the defaults, and seconds backfilled from the seed's minutes
        assert dict(row) == {"offer_attempts": 0, "estimated_duration_s": 900,
                             "actual_duration_s": None, "cancelled_at": None,
                             "failed_at": None, "failure_reason": None}
        snap = await transition(db, tenant.id, w, "offer", at=T0,
                                driver_id=await _a_driver(db, tenant))
        assert snap.estimated_duration_s == 900 and snap.offer_attempts == 1
        with pytest.raises(asyncpg.CheckViolationError):
            async with db.tenant_transaction(tenant.id) as tx:
                await tx.execute("UPDATE deliveries SET status = 'teleported'")


async def _populate_pre_0010(db: TenantDatabase, tenant: Tenant) -> uuid.UUID:
    async with db.tenant_transaction(tenant.id) as tx:
        vendor_id = await tx.fetchval(
            "INSERT INTO vendors (business_name, address) VALUES ('Early', '{}') RETURNING id")
        customer_id = await tx.fetchval("INSERT INTO customers DEFAULT VALUES RETURNING id")
        order_id = await tx.fetchval(
            "INSERT INTO orders (order_number, customer_id, vendor_id, subtotal, total_amount, "
            "delivery_address) VALUES ('ORD-0', $1, $2, 1, 1, '{}') RETURNING id",
            customer_id, vendor_id)
        return await tx.fetchval(
            "INSERT INTO deliveries (order_id, estimated_duration_minutes) VALUES ($1, 15) "
            "RETURNING id", order_id)


async def _a_driver(db: TenantDatabase, tenant: Tenant) -> str:
    async with db.tenant_transaction(tenant.id) as tx:
        return str(await tx.fetchval(
            "INSERT INTO drivers (first_name, last_name, license_number, vehicle_type, "
            "vehicle_registration) VALUES ('A', 'B', 'L-0', 'car', 'GP-0') RETURNING id"))


async def test_a_driver_can_only_move_their_own_delivery(world):
    db, w = world
    tid, did = w.tenant.id, w.delivery_id
    await transition(db, tid, did, "offer", at=T0, driver_id=w.driver_id)
    await transition(db, tid, did, "accept", at=T0)
    await transition(db, tid, did, "arrive_pickup", at=T0)
    before = await _tables(db, w)
    with pytest.raises(UnknownDelivery):
        await transition(db, tid, did, "pick_up", at=T0, driver_must_be=str(uuid.uuid4()))
    assert await _tables(db, w) == before
    snap = await transition(db, tid, did, "pick_up", at=T0, driver_must_be=w.driver_id)
    assert snap.state is DeliveryState.PICKED_UP
