"""Bundle offers against real Redis and Postgres, and one bundle end to end through the engine.

The offer engine's bundle rounds: one offer of several deliveries, accepted whole in one Lua
script and one transaction (capacity counting each delivery), declined or timed out onto the
next driver, refused to a driver without room. Then the whole path: two ready orders of one
vendor, batch dispatch, one offer on the driver's websocket, accept, pick-up, the two doors in
order, and each customer's tracking socket showing its place in the sequence; and a ready
order held for a partner about to be ready, then offered with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import redis.asyncio as aioredis
import websockets

from dispatch.deliveries.store import insert_delivery
from dispatch.deliveries.transitions import PostgresTransitions
from dispatch.matching.bundle_offers import BundleLeg
from dispatch.matching.claims import DriverClaims
from dispatch.matching.keys import (
    active_key,
    bundle_round_key,
    bundle_tried_key,
    deadlines_key,
    deliveries_key,
    delivery_driver_key,
    delivery_offer_key,
    held_key,
    offer_key,
)
from dispatch.matching.offers import OfferEngine
from dispatch.matching.terms import BundleOffer, OfferNotHeld, RoundInProgress
from dispatch.tracking.links import issue_link
from geo import destination
from schema.db import TenantDatabase
from schema.tenants import create_tenant
from streams.location_store import LocationStore
from tests.integration.engine_helpers import running_app
from tests.integration.matching.test_offers import (
    PAY,
    RecordingNotifier,
    World,
    candidates,
    driver_socket,
    recv,
    world,
)
from tests.integration.streams.harness import eventually, tracking_worker
from tests.integration.streams.test_streams import create_topics
from tests.integration.test_dispatch_e2e import PROOF, VENDOR, SimulatedDriver, _driver

pytestmark = pytest.mark.timeout(240)
__all__ = ["world"]   # the fixture, shared with the single-offer tests


@contextlib.asynccontextmanager
async def bundle_engine(w: World, *, capacity: int = 2, db_capacity: int | None = None,
                        notifier: RecordingNotifier | None = None) -> AsyncIterator[OfferEngine]:
    """An OfferEngine whose drivers carry ``capacity`` deliveries (the database's guard may
    differ, to test it), with its own deadlines queue."""
    app_id = f"test-{uuid.uuid4().hex[:10]}"
    engine = OfferEngine(DriverClaims(w.redis, capacity=capacity), notifier or RecordingNotifier(), w.redis,
                         transitions=PostgresTransitions(w.db, capacity=db_capacity or capacity),
                         app_id=app_id, offer_timeout_s=0.3)
    engine.dissolved = []

    async def dissolved(tenant: str, ids: tuple[str, ...]) -> None:
        engine.dissolved.append(ids)

    engine.on_dissolved = dissolved
    bundles: list[str] = []
    engine.bundles = bundles
    try:
        yield engine
    finally:
        keys = [deadlines_key(app_id)] + [k for b in bundles for k in (bundle_round_key(b), bundle_tried_key(b))]
        await w.redis.delete(*keys)


async def start(engine: OfferEngine, w: World, ids: list[str], *drivers: str):
    bundle = str(uuid.uuid4())
    engine.bundles.append(bundle)
    legs = [BundleLeg(d, w.job(), PAY, 300 + 200 * k) for k, d in enumerate(ids)]
    return bundle, await engine.start_bundle(bundle, legs, candidates(*drivers))


async def rows(w: World, ids: list[str]) -> list[tuple]:
    async with w.db.tenant_transaction(w.tenant_id, readonly=True) as tx:
        found = await tx.fetch("SELECT id::text, status, driver_id::text, bundle_id::text, bundle_seq, bundle_size, "
                               "offer_attempts FROM deliveries WHERE id = ANY($1::uuid[])", ids)
    by_id = {r["id"]: tuple(r)[1:] for r in found}
    return [by_id[d] for d in ids]


# -- offers, accepts, declines ------------------------------------------------------------------------


async def test_a_bundle_is_offered_as_one_and_accepted_whole_in_drop_off_order(world):
    w, (d1, d2, _) = world, world.deliveries
    notifier = RecordingNotifier()
    async with bundle_engine(w, notifier=notifier) as engine:
        bundle, outcome = await start(engine, w, [d2, d1], w.drivers[0], w.drivers[1])
        assert (outcome.status, outcome.driver_id, outcome.delivery_ids) == ("offered", w.drivers[0], (d2, d1))
        ((to, offer),) = notifier.sent
        assert to == w.drivers[0] and isinstance(offer, BundleOffer)
        frame = offer.frame()
        assert [s["delivery_id"] for s in frame["deliveries"]] == [d2, d1] and frame["delivery_id"] == d2
        assert frame["pay"] == str(PAY * 2)
        assert [r[:2] for r in await rows(w, [d1, d2])] == [("offered", w.drivers[0])] * 2
        # answered by naming any delivery of the bundle: the whole bundle is taken
        outcome = await engine.reply(w.drivers[0], d1, True)
        assert (outcome.status, outcome.bundle_id, outcome.delivery_ids) == ("assigned", bundle, (d2, d1))
        assert await rows(w, [d2, d1]) == [("assigned", w.drivers[0], bundle, 1, 2, 1),
                                           ("assigned", w.drivers[0], bundle, 2, 2, 1)]
        assert await engine.claims.active_deliveries(w.drivers[0]) == {d1, d2}
        assert await w.redis.exists(bundle_round_key(bundle), offer_key(w.drivers[0])) == 0
        assert await engine.pending_deadlines() == []


async def test_a_driver_with_one_free_slot_is_never_offered_a_bundle_of_two(world):
    w, (d1, d2, _) = world, world.deliveries
    notifier = RecordingNotifier()
    async with bundle_engine(w, capacity=1, notifier=notifier) as engine:
        bundle, outcome = await start(engine, w, [d1, d2], w.drivers[0], w.drivers[1])
        # nobody has room: the bundle is dissolved and its deliveries go back to single offers
        assert outcome.status == "unassigned" and notifier.sent == []
        assert engine.dissolved == [(d1, d2)]
        assert [r[0] for r in await rows(w, [d1, d2])] == ["pending", "pending"]
        assert await w.redis.exists(delivery_offer_key(d1), delivery_offer_key(d2), offer_key(w.drivers[0]),
                                    bundle_round_key(bundle)) == 0


async def test_an_accept_without_room_for_every_delivery_claims_none_and_moves_on(world):
    w, (d1, d2, d3) = world, world.deliveries
    async with bundle_engine(w) as engine:
        await start(engine, w, [d1, d2], w.drivers[0], w.drivers[1])
        # meanwhile the driver took another delivery (as Redis rebuilt from the database says)
        await engine.claims.restore(w.drivers[0], [d3])
        with pytest.raises(OfferNotHeld, match="no longer open"):
            await engine.reply(w.drivers[0], d1, True)
        assert await engine.claims.active_deliveries(w.drivers[0]) == {d3}
        assert await engine.claims.driver_of(d1) is None and await engine.claims.driver_of(d2) is None
        # the bundle went to the next driver, whole
        assert [r[:2] for r in await rows(w, [d1, d2])] == [("offered", w.drivers[1])] * 2
        assert (await engine.reply(w.drivers[1], d2, True)).status == "assigned"
        assert await engine.claims.active_deliveries(w.drivers[1]) == {d1, d2}


async def test_the_database_refusing_one_delivery_of_the_accept_assigns_none(world):
    w, (d1, d2, _) = world, world.deliveries
    # Redis thinks there is room for two; the database's guard allows one: its transaction
    # accepts the first delivery, refuses the second and rolls back both.
    async with bundle_engine(w, capacity=2, db_capacity=1) as engine:
        bundle, _ = await start(engine, w, [d1, d2], w.drivers[0], w.drivers[1])
        with pytest.raises(OfferNotHeld, match="another driver"):
            await engine.reply(w.drivers[0], None, True, bundle_id=bundle)
        got = await rows(w, [d1, d2])
        assert all(r[0] == "offered" and r[1] == w.drivers[1] and r[2] is None for r in got), got
        assert await engine.claims.active_deliveries(w.drivers[0]) == set()
        assert await engine.claims.driver_of(d1) is None and await engine.claims.driver_of(d2) is None


async def test_a_decline_and_a_timeout_move_the_bundle_on_and_the_last_gives_it_up(world):
    w, (d1, d2, _) = world, world.deliveries
    notifier = RecordingNotifier()
    async with bundle_engine(w, notifier=notifier) as engine:
        bundle, _ = await start(engine, w, [d1, d2], *w.drivers[:3])
        outcome = await engine.reply(w.drivers[0], None, False, bundle_id=bundle)
        assert (outcome.status, outcome.driver_id) == ("offered", w.drivers[1])
        assert await engine.claims.offer_of(w.drivers[0]) is None
        await asyncio.sleep(0.35)
        (timed_out,) = await engine.sweep()
        assert (timed_out.status, timed_out.driver_id) == ("offered", w.drivers[2])
        assert [r[:2] + r[-1:] for r in await rows(w, [d1, d2])] == [("offered", w.drivers[2], 3)] * 2
        assert [d for d, _ in notifier.sent] == w.drivers[:3]
        outcome = await engine.reply(w.drivers[2], d2, False)
        assert outcome.status == "unassigned" and engine.dissolved == [(d1, d2)]
        assert [r[0] for r in await rows(w, [d1, d2])] == ["pending", "pending"]


async def test_a_delivery_already_in_a_round_is_not_bundled(world):
    w, (d1, d2, _) = world, world.deliveries
    async with bundle_engine(w) as engine:
        await engine.start_round(w.job(), d2, candidates(w.drivers[5]), pay=PAY, dropoff_eta_s=600)
        with pytest.raises(RoundInProgress):
            await start(engine, w, [d1, d2], w.drivers[0])
        assert await engine.claims.offer_of(w.drivers[0]) is None


async def test_claims_race_a_bundle_and_a_single_offer_never_split_the_bundle(world):
    w = world
    claims = DriverClaims(w.redis, capacity=3)
    keys: list[str] = []
    try:
        for _ in range(25):
            x, y, bundle = (str(uuid.uuid4()) for _ in range(3))
            a, b = w.drivers[3], w.drivers[4]
            keys += [delivery_offer_key(x), delivery_offer_key(y), delivery_driver_key(x), delivery_driver_key(y)]
            won = await asyncio.gather(claims.offer_bundle(a, bundle, [x, y]), claims.offer(b, y))
            assert sorted(won) == [False, True]
            holders = [await w.redis.get(delivery_offer_key(d)) for d in (x, y)]
            if won[0]:
                assert holders == [a.encode(), a.encode()]
                assert await claims.accept_bundle(a, bundle, [x, y])
                assert await claims.active_deliveries(a) >= {x, y}
                for d in (x, y):
                    await claims.release(a, d)
            else:
                assert holders == [None, b.encode()]
                assert await claims.decline(b, y)
    finally:
        await w.redis.delete(*keys)


async def test_hostile_bundle_replies_over_the_websocket_change_nothing(world, platform, stream_settings):
    w, (d1, d2, d3) = world, world.deliveries
    bundle = str(uuid.uuid4())
    async with running_app(platform, stream_settings, driver_capacity=2) as (addr, state):
        try:
            async with driver_socket(addr, w.tokens[0]) as ws0, driver_socket(addr, w.tokens[1]) as ws1:
                await state.offers.start_bundle(bundle, [BundleLeg(d, w.job(), PAY, 400) for d in (d1, d2)],
                                                candidates(w.drivers[0]))
                offer = await recv(ws0)
                assert offer["type"] == "offer" and offer["bundle_id"] == bundle
                assert [s["delivery_id"] for s in offer["deliveries"]] == [d1, d2]
                before = await state.offers.pending_deadlines()
                hostile = [
                    (ws1, {"bundle_id": bundle, "accept": True}, "offer_not_held", "bundle_id"),
                    (ws1, {"delivery_id": d1, "accept": True}, "offer_not_held", "delivery_id"),
                    (ws0, {"bundle_id": str(uuid.uuid4()), "accept": True}, "offer_not_held", "bundle_id"),
                    (ws0, {"delivery_id": d3, "accept": True}, "offer_not_held", "delivery_id"),
                    (ws0, {"delivery_id": d1, "bundle_id": str(uuid.uuid4()), "accept": False},
                     "offer_not_held", "delivery_id"),
                    (ws0, {"bundle_id": "'; DROP TABLE deliveries; --", "accept": True}, "wrong_type", "bundle_id"),
                    (ws0, {"bundle_id": {"$ne": 1}, "accept": True}, "wrong_type", "bundle_id"),
                    (ws0, {"bundle_id": bundle, "accept": "yes"}, "wrong_type", "accept"),
                    (ws0, {"bundle_id": bundle}, "missing_field", "accept"),
                ]
                for ws, body, reason, field in hostile:
                    await ws.send(json.dumps({"type": "offer_reply", "seq": 9, **body}))
                    reply = await recv(ws)
                    assert (reply["type"], reply["reason"], reply["field"]) == ("error", reason, field), (body, reply)
                assert await state.offers.pending_deadlines() == before
                assert [r[:2] for r in await rows(w, [d1, d2])] == [("offered", w.drivers[0])] * 2
                await ws0.send(json.dumps({"type": "offer_reply", "seq": 10, "bundle_id": bundle, "accept": True}))
                assert await recv(ws0) == {"type": "offer_reply", "seq": 10, "delivery_id": d1, "status": "assigned",
                                           "bundle_id": bundle, "delivery_ids": [d1, d2]}
        finally:
            await w.redis.delete(deadlines_key(stream_settings.app_id), bundle_round_key(bundle),
                                 bundle_tried_key(bundle), active_key(d1), active_key(d2))


# -- end to end: two ready orders, one driver, one offer, two doors -----------------------------------

NEAR_DOOR = destination(*VENDOR, 90.0, 1500)
FAR_DOOR = destination(*VENDOR, 80.0, 2300)


@pytest.fixture
async def bundling_engine(platform, stream_settings):
    """The engine in batch mode with drivers that carry two deliveries, and a location worker."""
    settings = replace(stream_settings, locations_partitions=1, location_ttl_s=120)
    await create_topics(settings)
    redis = aioredis.from_url(settings.redis_url)
    try:
        async with tracking_worker(settings, platform), \
                running_app(platform, settings, dispatcher=True, offer_timeout_s=15, matching_mode="batch",
                            batch_window_ms=500, driver_capacity=2) as (addr, state):
            yield addr, state, settings, redis
    finally:
        await redis.delete(deadlines_key(settings.app_id))
        await redis.aclose()


async def _vendor(tx, name: str) -> uuid.UUID:
    return await tx.fetchval(
        "INSERT INTO vendors (business_name, address, location, delivery_radius) "
        "VALUES ($1, '{}', ST_SetSRID(ST_MakePoint($3, $2), 4326)::geography, 8000) RETURNING id", name, *VENDOR)


async def _two_orders(db: TenantDatabase, tenant_id) -> list:
    async with db.tenant_transaction(tenant_id) as tx:
        vendor = await _vendor(tx, "Mama Thoko Spaza")
        orders = []
        for n, door in ((1, FAR_DOOR), (2, NEAR_DOOR)):
            customer = await tx.fetchval("INSERT INTO customers (first_name) VALUES ($1) RETURNING id", f"C{n}")
            orders.append(await tx.fetchval(
                "INSERT INTO orders (order_number, customer_id, vendor_id, status, subtotal, total_amount, "
                "delivery_fee, delivery_address, delivery_location) VALUES ($1, $2, $3, 'ready', 100, 125, 25.00, "
                "'{}', ST_SetSRID(ST_MakePoint($5, $4), 4326)::geography) RETURNING id",
                f"ORD-B-{n}", customer, vendor, *door))
    return orders


async def _page(addr: str, token: str, frames: list[dict]) -> asyncio.Task:
    page = await websockets.connect(f"ws://{addr}/v1/track/{token}")

    async def read() -> None:
        try:
            async for raw in page:
                frames.append(json.loads(raw))
        finally:
            await page.close()
    return asyncio.create_task(read())


async def test_two_ready_orders_of_one_vendor_go_to_one_driver_as_one_offer_and_are_delivered_in_order(
        platform, bundling_engine):
    addr, state, settings, redis = bundling_engine
    tenant = await create_tenant(platform, f"Bundle E2E {uuid.uuid4().hex[:6]}")
    store = LocationStore(redis, settings)
    async with TenantDatabase(platform) as db:
        far_order, near_order = await _two_orders(db, tenant.id)
        driver, token = await _driver(db, tenant.id, 7)
        start = destination(*VENDOR, 0.0, 300)
        async with SimulatedDriver(addr, driver, token) as app:
            await app.ping(*start)

            async def available():
                return driver in [r[0] for r in await store.available_in_cells(str(tenant.id),
                                                                               store.cells_around(*VENDOR, k=8))]

            await eventually(available, within=15)
            async with db.tenant_transaction(tenant.id) as tx:   # both ready at once: one batch window
                far = str(await insert_delivery(tx, tenant.id, far_order, VENDOR, FAR_DOOR))
                near = str(await insert_delivery(tx, tenant.id, near_order, VENDOR, NEAR_DOOR))

            offer = await asyncio.wait_for(app.offers.get(), 30)
            assert [s["delivery_id"] for s in offer["deliveries"]] == [near, far]   # nearer door first
            assert [s["stop"] for s in offer["deliveries"]] == [1, 2] and offer["pay"] == "50.00"
            etas = [s["dropoff_eta_s"] for s in offer["deliveries"]]
            assert 0 < etas[0] < etas[1] == offer["dropoff_eta_s"]
            assert app.offers.empty()   # one offer, not two
            reply = await app.send({"type": "offer_reply", "delivery_id": near, "accept": True})
            assert (reply["status"], reply["delivery_ids"]) == ("assigned", [near, far])
            assert await store.status(driver) == "busy"   # two of two slots taken

            frames = {near: [], far: []}
            pages = [await _page(addr, (await issue_link(db, tenant.id, o, grace_s=3600)).token, frames[d])
                     for o, d in ((near_order, near), (far_order, far))]
            try:
                async def both_snapshots():
                    return all(f and f[0]["type"] == "snapshot" for f in frames.values())

                await eventually(both_snapshots, within=15)
                assert (frames[near][0]["stop"], frames[near][0]["stops"]) == (1, 2)
                assert (frames[far][0]["stop"], frames[far][0]["stops"]) == (2, 2)

                await app.drive(start, VENDOR)

                async def positions_of_one_ping():   # the same fix on both pages
                    ts = {d: {f["ts"]: f for f in fs if f["type"] == "position"} for d, fs in frames.items()}
                    common = sorted(set(ts[near]) & set(ts[far]))
                    return common and (ts[near][common[-1]], ts[far][common[-1]])

                await eventually(positions_of_one_ping, within=20)
                first, second = await positions_of_one_ping()
                assert (first["stop"], first["stops"], second["stop"], second["stops"]) == (1, 2, 2, 2)
                assert second["eta_dropoff_s"] > first["eta_dropoff_s"] > 0

                async def statuses():
                    async with db.tenant_transaction(tenant.id, readonly=True) as tx:
                        return [await tx.fetchval("SELECT status FROM deliveries WHERE id = $1", uuid.UUID(d))
                                for d in (near, far)]

                async def both_at_pickup():
                    return await statuses() == ["at_pickup", "at_pickup"]

                await eventually(both_at_pickup, within=20)
                for d in (near, far):
                    reply = await app.send({"type": "delivery_update", "delivery_id": d, "event": "pick_up"})
                    assert reply["status"] == "picked_up", reply
                await app.drive(VENDOR, NEAR_DOOR, steps=8)
                reply = await app.send({"type": "delivery_update", "delivery_id": near, "event": "deliver",
                                        "proof_of_delivery": PROOF})
                assert reply["status"] == "delivered", reply
                await app.drive(NEAR_DOOR, FAR_DOOR, steps=6)
                reply = await app.send({"type": "delivery_update", "delivery_id": far, "event": "deliver",
                                        "proof_of_delivery": PROOF})
                assert reply["status"] == "delivered", reply

                async def both_pages_delivered():
                    return all(any(f["type"] == "status" and f["status"] == "delivered" for f in fs)
                               for fs in frames.values())

                await eventually(both_pages_delivered, within=20)
            finally:
                for task in pages:
                    task.cancel()
                await asyncio.gather(*pages, return_exceptions=True)

        async with db.tenant_transaction(tenant.id, readonly=True) as tx:
            got = await tx.fetch("SELECT id::text, status, driver_id::text, bundle_id, bundle_seq, bundle_size, "
                                 "delivered_at FROM deliveries WHERE id = ANY($1::uuid[]) ORDER BY bundle_seq",
                                 [near, far])
    assert [(r["id"], r["status"], r["driver_id"], r["bundle_seq"], r["bundle_size"]) for r in got] == [
        (near, "delivered", driver, 1, 2), (far, "delivered", driver, 2, 2)]
    assert got[0]["bundle_id"] == got[1]["bundle_id"] is not None
    assert got[0]["delivered_at"] < got[1]["delivered_at"]
    assert await store.status(driver) == "available"
    assert await redis.scard(deliveries_key(driver)) == 0


NEXT_DOOR = destination(*VENDOR, 80.0, 2150)   # on the way to FAR_DOOR: a second trip there would be waste


async def _vendor_with_prep_history(db: TenantDatabase, tenant_id, prep_s: int) -> tuple:
    """A vendor whose last three orders took ``prep_s`` from accepted to ready (what the engine
    learns its expected ready times from), one order ready now and one accepted just now."""
    async with db.tenant_transaction(tenant_id) as tx:
        vendor = await _vendor(tx, "Gogo Bunny Chow")
        customer = await tx.fetchval("INSERT INTO customers (first_name) VALUES ('Lerato') RETURNING id")

        async def order(n: int, status: str, door: tuple[float, float]) -> uuid.UUID:
            return await tx.fetchval(
                "INSERT INTO orders (order_number, customer_id, vendor_id, status, subtotal, total_amount, "
                "delivery_fee, delivery_address, delivery_location) VALUES ($1, $2, $3, $4, 100, 125, 25.00, "
                "'{}', ST_SetSRID(ST_MakePoint($6, $5), 4326)::geography) RETURNING id",
                f"ORD-H-{n}", customer, vendor, status, *door)

        for n in range(3):   # yesterday's orders: accepted, then ready prep_s later
            past = await order(n, "delivered", NEAR_DOOR)
            await tx.execute(
                "INSERT INTO order_status_history (order_id, from_status, to_status, created_at) VALUES "
                "($1, 'pending', 'accepted', now() - interval '1 day'), "
                "($1, 'accepted', 'ready', now() - interval '1 day' + make_interval(secs => $2))", past, prep_s)
        ready = await order(10, "ready", FAR_DOOR)
        cooking = await order(11, "accepted", NEXT_DOOR)
        await tx.execute("INSERT INTO order_status_history (order_id, from_status, to_status) "
                         "VALUES ($1, 'pending', 'accepted')", cooking)
    return ready, cooking


async def test_a_ready_delivery_waits_for_a_partner_about_to_be_ready_then_both_go_as_one_offer(
        platform, bundling_engine):
    """The rolling horizon through the engine: the shop's next order is expected ready within
    the hold (its own preparation history says so) and goes the same way, so the ready one is
    held, not offered; when the partner is marked ready the two go to one driver as one offer."""
    addr, state, settings, redis = bundling_engine
    tenant = await create_tenant(platform, f"Bundle hold {uuid.uuid4().hex[:6]}")
    store = LocationStore(redis, settings)
    async with TenantDatabase(platform) as db:
        ready_order, cooking_order = await _vendor_with_prep_history(db, tenant.id, prep_s=40)
        driver, token = await _driver(db, tenant.id, 8)
        async with SimulatedDriver(addr, driver, token) as app:
            await app.ping(*destination(*VENDOR, 0.0, 300))

            async def available():
                return driver in [r[0] for r in await store.available_in_cells(str(tenant.id),
                                                                               store.cells_around(*VENDOR, k=8))]

            await eventually(available, within=15)
            async with db.tenant_transaction(tenant.id) as tx:
                first = str(await insert_delivery(tx, tenant.id, ready_order, VENDOR, FAR_DOOR))

            async def held():
                return await redis.exists(held_key(first))

            await eventually(held, within=15)
            assert app.offers.empty()   # held for its partner, not offered alone
            async with db.tenant_transaction(tenant.id, readonly=True) as tx:
                assert await tx.fetchval("SELECT status FROM deliveries WHERE id = $1", uuid.UUID(first)) == "pending"

            async with db.tenant_transaction(tenant.id) as tx:   # the shop marks the partner ready
                await tx.execute("UPDATE orders SET status = 'ready' WHERE id = $1", cooking_order)
                second = str(await insert_delivery(tx, tenant.id, cooking_order, VENDOR, NEXT_DOOR))

            offer = await asyncio.wait_for(app.offers.get(), 30)
            assert [s["delivery_id"] for s in offer["deliveries"]] == [second, first]   # nearer door first
            reply = await app.send({"type": "offer_reply", "bundle_id": offer["bundle_id"], "accept": True})
            assert (reply["status"], reply["delivery_ids"]) == ("assigned", [second, first])
            assert app.offers.empty()
