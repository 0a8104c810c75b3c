"""The tracking hub: tracking links, the tracking and vendor sockets, fan-out.

The running engine against the real services: orders go through the REST API
(``tests.integration.api.test_api.Shop``), the dispatcher offers deliveries to a
``SimulatedDriver`` on the driver websocket, positions come from the tracker's code
(``dispatch.tracking.tracker.Tracker``, what the location worker runs) or are PUBLISHed
directly, and the two-engine test runs the real location worker as well. The pure parts
(frames and the frame queue, the token's shape and expiry, the snapshot's grid) are tested
in tests/unit/tracking.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import uuid
from dataclasses import replace
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import websockets
from websockets.exceptions import ConnectionClosed

from dispatch.api import sign
from dispatch.deliveries.state import DeliveryState
from dispatch.deliveries.store import record_event, transition
from dispatch.identity.auth import hash_token, issue_driver_token
from dispatch.identity.drivers import NewDriver, create_driver
from dispatch.tracking.links import CLOSE_EXPIRED, CLOSE_INVALID, revoke_links
from dispatch.tracking.tracker import Tracker
from geo import destination
from loadtest.driver_sim import SimulatedDriver
from schema.db import TenantDatabase
from streams.keys import tracking_key
from streams.location_store import LocationStore
from tests.integration.api.test_api import (
    SECRET,
    VENDOR,
    Shop,
    _pay,
    _tenant_with_admin,
    auth,
    phone,
)
from tests.integration.engine_helpers import running_app
from tests.integration.streams.harness import eventually, tracking_worker
from tests.integration.streams.test_streams import create_topics, driver_ping

pytestmark = pytest.mark.timeout(240)

SHOP_AT = (VENDOR["lat"], VENDOR["lng"])
PROOF = {"photo": "s3://pod/7.jpg", "received_by": "Thandi"}
TOKEN_SHAPE = re.compile(r"^wkt_[0-9a-f]{32}_[A-Za-z0-9_-]{43}$")


# -- helpers against the running engine --------------------------------------------------------


@pytest.fixture
def settings(stream_settings):
    """Stream settings whose topics (order events included) are this test's own and are
    deleted with the session's other test topics."""
    return stream_settings


class Socket:
    """A client of a hub websocket: every frame with its arrival time, and how it closed."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self.url, self.kwargs = url, kwargs
        self.frames: list[tuple[float, dict]] = []
        self.close: tuple[int | None, str | None] | None = None
        self._reader: asyncio.Task | None = None

    async def __aenter__(self) -> Socket:
        self.ws = await websockets.connect(self.url, **self.kwargs)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 10)

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self.frames.append((time.time(), json.loads(raw)))
        except ConnectionClosed:
            pass
        self.close = (self.ws.close_code, self.ws.close_reason)

    def of(self, kind: str) -> list[dict]:
        return [f for _t, f in self.frames if f["type"] == kind]

    async def wait(self, check, within: float = 15.0) -> Any:
        return await eventually(lambda: _value(check(self)), within=within)

    async def closed(self, within: float = 15.0) -> tuple[int | None, str | None]:
        await eventually(lambda: _value(self.close is not None), within=within)
        assert self.close is not None
        return self.close


async def _value(x: Any) -> Any:
    return x


async def refused(addr: str, token: str) -> tuple[int | None, str | None, list]:
    """Connect with a token the hub must refuse: its close code, reason, and what came before."""
    async with Socket(f"ws://{addr}/v1/track/{token}") as s:
        code, reason = await s.closed()
    return code, reason, s.frames


async def ready_order(http: httpx.AsyncClient, tenant, shop: Shop, quantity: int = 1) -> dict:
    """An order placed, paid, accepted and marked ready: it has a delivery."""
    resp = await http.post("/v1/orders", json=shop.order_body(quantity), headers=auth(shop.customer))
    assert resp.status_code == 201, resp.text
    order = resp.json()
    raw = _pay(tenant, order, f"pay-{uuid.uuid4().hex}")
    resp = await http.post("/v1/payments/callback", content=raw,
                           headers={"Content-Type": "application/json", "X-Wakala-Signature": sign(SECRET, raw)})
    assert resp.status_code == 200, resp.text
    resp = await http.post(f"/v1/vendor/orders/{order['id']}/accept", headers=auth(shop.vendor))
    assert resp.status_code == 200, resp.text
    resp = await http.post(f"/v1/vendor/orders/{order['id']}/ready", headers=auth(shop.vendor))
    assert resp.status_code == 200, resp.text
    return resp.json()


async def link(http: httpx.AsyncClient, order: dict, token: str, who: str = "customer") -> str:
    path = f"/v1/orders/{order['id']}/tracking-link" if who == "customer" else \
        f"/v1/vendor/orders/{order['id']}/tracking-link"
    resp = await http.post(path, headers=auth(token))
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["delivery_id"] == order["delivery_id"] and body["url"] == f"/t/{body['token']}"
    return body["token"]


async def new_driver(db: TenantDatabase, tenant, addr: str) -> SimulatedDriver:
    """A driver's app for the driver websocket; ``async with`` connects it and starts the shift."""
    driver = await create_driver(db, tenant.id, NewDriver(
        "Sipho", "Hub", phone(), f"LIC-HUB-{uuid.uuid4().hex[:8]}", "motorbike", "GP 100-HUB"))
    token = (await issue_driver_token(db, tenant.id, driver, ttl_s=3600)).token
    return SimulatedDriver(addr, str(driver), token)


async def land(store: LocationStore, sim: SimulatedDriver, tenant, at: tuple[float, float]) -> None:
    """The driver's position straight into Redis (the location worker is not running)."""
    await store.write_batch([driver_ping(sim.driver_id, str(tenant.id), *at, time.time())])


def document(tenant, delivery_id: str, driver_id: str, at: tuple[float, float], ts: float,
             status: str = "assigned") -> str:
    """A tracking document as the location worker writes it."""
    return json.dumps({"delivery_id": delivery_id, "tenant_id": str(tenant.id), "status": status,
                       "driver": {"id": driver_id, "lat": at[0], "lng": at[1], "heading_deg": 45.0,
                                  "speed_mps": 6.0, "ts": ts},
                       "eta_pickup_s": 120, "eta_dropoff_s": 600, "updated_at": time.time(),
                       "received_at": time.time()})


async def accept_offer(sim: SimulatedDriver, delivery_id: str) -> None:
    offer = await asyncio.wait_for(sim.offers.get(), 30)
    assert offer["delivery_id"] == delivery_id
    reply = await sim.send({"type": "offer_reply", "delivery_id": delivery_id, "accept": True})
    assert reply["status"] == "assigned", reply


async def delivery_status(db: TenantDatabase, tenant, delivery_id: str) -> str:
    async with db.tenant_transaction(tenant.id, readonly=True) as tx:
        return await tx.fetchval("SELECT status FROM deliveries WHERE id = $1", uuid.UUID(delivery_id))


# -- tokens ------------------------------------------------------------------------------------


async def test_tracking_tokens_that_are_wrong_foreign_expired_or_revoked_are_refused_and_reveal_nothing(
        platform, settings):
    async with running_app(platform, settings, dispatcher=True, payment_webhook_secret=SECRET,
                           tracking_link_grace_s=3) as (addr, _state), \
            httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http, TenantDatabase(platform) as db:
        redis = aioredis.from_url(settings.redis_url)
        tenant_a, admin_a = await _tenant_with_admin(platform)
        tenant_b, admin_b = await _tenant_with_admin(platform)
        shop, other_shop = await Shop(http, tenant_a, admin_a).setup(), await Shop(http, tenant_a, admin_a).setup()
        shop_b = await Shop(http, tenant_b, admin_b).setup()

        # before ready there is no delivery to watch
        resp = await http.post("/v1/orders", json=shop.order_body(1), headers=auth(shop.customer))
        early = resp.json()
        resp = await http.post(f"/v1/orders/{early['id']}/tracking-link", headers=auth(shop.customer))
        assert resp.status_code == 409 and resp.json()["error"]["reason"] == "not_ready"

        order = await ready_order(http, tenant_a, shop)
        order_b = await ready_order(http, tenant_b, shop_b)
        token = await link(http, order, shop.customer)
        vendor_token = await link(http, order, shop.vendor, who="vendor")
        token_b = await link(http, order_b, shop_b.customer)
        assert TOKEN_SHAPE.match(token) and token != vendor_token and tenant_a.id.hex in token
        # only the order's own customer and vendor get a link; anyone else: 404, as for a missing order
        for path, who in ((f"/v1/orders/{order['id']}/tracking-link", other_shop.customer),
                          (f"/v1/vendor/orders/{order['id']}/tracking-link", other_shop.vendor),
                          (f"/v1/orders/{order['id']}/tracking-link", shop_b.customer),
                          (f"/v1/orders/{uuid.uuid4()}/tracking-link", shop.customer),
                          (f"/v1/orders/{order['id']}/tracking-link", shop.vendor)):   # wrong role: 403
            resp = await http.post(path, headers=auth(who))
            assert resp.status_code in (403, 404) and order["delivery_id"] not in resp.text, (path, resp.text)
        # stored hashed: the token itself is nowhere in the table
        async with db.tenant_transaction(tenant_a.id, readonly=True) as tx:
            rows = [dict(r) for r in await tx.fetch("SELECT * FROM tracking_links")]
        assert {r["token_hash"] for r in rows} == {hash_token(token), hash_token(vendor_token)}
        assert token not in repr(rows) and token.rsplit("_", 1)[1] not in repr(rows)

        secret = token.rsplit("_", 1)[1]
        wrong = [
            "nonsense", "wkt_", token[:-1], token + "A", token.replace("wkt_", "wkd_"),
            f"wkt_{tenant_a.id.hex}_{'A' * 43}",                      # wrong secret
            f"wkt_{uuid.uuid4().hex}_{secret}",                       # unknown tenant
            f"wkt_{tenant_a.id.hex}_{token_b.rsplit('_', 1)[1]}",     # another tenant's secret
            f"wkt_{tenant_b.id.hex}_{secret}",                        # this secret, another tenant
        ]
        for bad in wrong:
            assert await refused(addr, bad) == (CLOSE_INVALID, "invalid_token", []), bad

        # a valid link shows its own delivery, another tenant's its own
        async with Socket(f"ws://{addr}/v1/track/{token_b}") as watcher_b:
            snapshot = (await watcher_b.wait(lambda s: s.of("snapshot")))[0]
            assert snapshot["delivery_id"] == order_b["delivery_id"]
            assert snapshot["order_number"] == order_b["order_number"]
        async with Socket(f"ws://{addr}/v1/track/{token}") as watcher:
            snapshot = (await watcher.wait(lambda s: s.of("snapshot")))[0]
            assert snapshot["delivery_id"] == order["delivery_id"] and snapshot["driver"] is None

            # revoked: the open socket is closed, the token refused from then on
            assert await revoke_links(db, redis, tenant_a.id, order["delivery_id"]) == 2
            assert await watcher.closed() == (CLOSE_INVALID, "revoked_token")
        for revoked in (token, vendor_token):
            assert await refused(addr, revoked) == (CLOSE_INVALID, "invalid_token", [])

        # expired: a link of an ended delivery works for the grace (3 s here), then never again
        await transition(db, tenant_a.id, order["delivery_id"], "cancel", reason="customer changed their mind")
        late = await link(http, order, shop.customer)
        async with Socket(f"ws://{addr}/v1/track/{late}") as watcher:
            snapshot = (await watcher.wait(lambda s: s.of("snapshot")))[0]
            assert snapshot["status"] == "cancelled" and snapshot["driver"] is None
            assert snapshot["timeline"][-1]["status"] == "cancelled"
            assert await watcher.closed(within=10) == (CLOSE_EXPIRED, "expired_token")
        assert await refused(addr, late) == (CLOSE_EXPIRED, "expired_token", [])
        resp = await http.post(f"/v1/orders/{order['id']}/tracking-link", headers=auth(shop.customer))
        assert resp.status_code == 409 and resp.json()["error"]["reason"] == "tracking_ended"
        await redis.aclose()


# -- a watcher through a whole delivery --------------------------------------------------------


async def test_a_watcher_sees_the_snapshot_then_positions_only_while_active_and_every_status(platform, settings):
    async with running_app(platform, settings, dispatcher=True, payment_webhook_secret=SECRET,
                           tracking_link_grace_s=3, offer_timeout_s=30) as (addr, _state), \
            httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http, TenantDatabase(platform) as db:
        redis = aioredis.from_url(settings.redis_url)
        store = LocationStore(redis, settings)
        tracker = Tracker(redis, None, db=None)   # what the location worker runs on each batch
        tenant, admin = await _tenant_with_admin(platform)
        shop = await Shop(http, tenant, admin).setup()
        sim = await new_driver(db, tenant, addr)
        async with sim:
            await land(store, sim, tenant, destination(*SHOP_AT, 0.0, 400))
            order = await ready_order(http, tenant, shop)
            delivery = order["delivery_id"]
            async with Socket(f"ws://{addr}/v1/track/{await link(http, order, shop.customer)}") as watcher:
                snapshot = (await watcher.wait(lambda s: s.of("snapshot")))[0]
                assert snapshot["delivery_id"] == delivery and snapshot["order_number"] == order["order_number"]
                assert snapshot["status"] in ("pending", "offered") and snapshot["driver"] is None
                assert snapshot["eta_pickup_s"] is None and snapshot["timeline"][0]["status"] == "pending"
                assert snapshot["vendor"] == {"name": VENDOR["business_name"], "lat": pytest.approx(SHOP_AT[0]),
                                              "lng": pytest.approx(SHOP_AT[1])}
                assert snapshot["dropoff"] == {"lat": pytest.approx(-26.240), "lng": pytest.approx(27.915)}
                assert 2 <= len(snapshot["cells"]) <= 400

                # not assigned yet: no position reaches the watcher, even one published by mistake
                await redis.publish(tracking_key(delivery), document(tenant, delivery, sim.driver_id, SHOP_AT, time.time()))
                await asyncio.sleep(0.7)
                assert watcher.of("position") == []

                await accept_offer(sim, delivery)
                await watcher.wait(lambda s: "assigned" in [f["status"] for f in s.of("status")])
                # another delivery of the same shop, watched through its own link from now on
                other = await ready_order(http, tenant, shop)
                bystander = await Socket(f"ws://{addr}/v1/track/{await link(http, other, shop.customer)}").__aenter__()
                assert (await bystander.wait(lambda s: s.of("snapshot")))[0]["delivery_id"] == other["delivery_id"]
                far = destination(*SHOP_AT, 0.0, 1200)
                await tracker.on_pings([driver_ping(sim.driver_id, str(tenant.id), *far, time.time())])
                position = (await watcher.wait(lambda s: s.of("position")))[0]
                assert position["lat"] == pytest.approx(far[0]) and position["eta_pickup_s"] > 0
                assert position["eta_dropoff_s"] > position["eta_pickup_s"] and position["received_at"] > 0

                reply = await sim.send({"type": "delivery_update", "delivery_id": delivery, "event": "pick_up"})
                assert reply["status"] == "picked_up"
                await watcher.wait(lambda s: "picked_up" in [f["status"] for f in s.of("status")])
                near_dropoff = destination(-26.240, 27.915, 270.0, 500)
                await tracker.on_pings([driver_ping(sim.driver_id, str(tenant.id), *near_dropoff, time.time())])
                await watcher.wait(lambda s: s.of("position") and s.of("position")[-1]["eta_pickup_s"] is None)
                await record_event(db, tenant.id, delivery, "arrived_dropoff", {"lat": -26.240, "lng": 27.915},
                                   while_in=(DeliveryState.PICKED_UP,))
                assert (await watcher.wait(lambda s: s.of("arrived")))[0] == {"type": "arrived", "at": "dropoff"}
                reply = await sim.send({"type": "delivery_update", "delivery_id": delivery, "event": "deliver",
                                        "proof_of_delivery": PROOF})
                assert reply["status"] == "delivered"
                await watcher.wait(lambda s: "delivered" in [f["status"] for f in s.of("status")])

                # after the final status: no positions, whatever is published
                positions = len(watcher.of("position"))
                await redis.publish(tracking_key(delivery), document(tenant, delivery, sim.driver_id, far, time.time()))
                await tracker.on_pings([driver_ping(sim.driver_id, str(tenant.id), *far, time.time() + 1)])
                await asyncio.sleep(1.0)
                assert len(watcher.of("position")) == positions
                kinds = [f["type"] for _t, f in watcher.frames]
                assert kinds[0] == "snapshot" and kinds.index("position") > kinds.index("status")
                assert kinds[-1] == "status" and watcher.of("status")[-1]["status"] == "delivered"
                # each status once, in order: the snapshot's timeline plus the frames is the history
                seen = [t["status"] for t in snapshot["timeline"]] + [f["status"] for f in watcher.of("status")]
                async with db.tenant_transaction(tenant.id, readonly=True) as tx:
                    history = [r["s"] for r in await tx.fetch(
                        "SELECT payload->>'to_state' AS s FROM delivery_events_outbox WHERE delivery_id = $1 "
                        "AND payload->>'to_state' IS NOT NULL ORDER BY seq", uuid.UUID(delivery))]
                assert seen == history and history[-4:] == ["assigned", "at_pickup", "picked_up", "delivered"]

                # the other delivery's watcher saw none of it
                assert bystander.of("position") == [] and bystander.of("arrived") == []
                assert not {"assigned", "at_pickup", "picked_up", "delivered"} & {
                    f["status"] for f in bystander.of("status")}
                await bystander.__aexit__()

                # a late watcher gets the ended delivery, with no driver; the link expires 3 s after
                async with Socket(f"ws://{addr}/v1/track/{await link(http, order, shop.customer)}") as late:
                    final = (await late.wait(lambda s: s.of("snapshot")))[0]
                    assert final["status"] == "delivered" and final["driver"] is None
                    assert final["eta_dropoff_s"] is None and [t["status"] for t in final["timeline"]] == history
                assert await watcher.closed(within=10) == (CLOSE_EXPIRED, "expired_token")
        await redis.aclose()


# -- a stalled client --------------------------------------------------------------------------


def _tiny_receive_buffer(addr: str) -> socket.socket:
    """A connected TCP socket whose receive window is a few KB, so a reader that stops reading
    stalls the server's send soon."""
    host, port = addr.split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.setblocking(False)
    return sock


async def test_a_stalled_watcher_is_closed_too_slow_and_never_delays_a_healthy_one(platform, settings):
    async with running_app(platform, settings, dispatcher=True, payment_webhook_secret=SECRET,
                           hub_queue_max=4, hub_heartbeat_s=1, hub_stall_s=3, ws_ping_interval_s=120,
                           offer_timeout_s=30) as (addr, state), \
            httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http, TenantDatabase(platform) as db:
        redis = aioredis.from_url(settings.redis_url)
        store = LocationStore(redis, settings)
        tenant, admin = await _tenant_with_admin(platform)
        shop = await Shop(http, tenant, admin).setup()
        sim = await new_driver(db, tenant, addr)
        async with sim:
            await land(store, sim, tenant, destination(*SHOP_AT, 0.0, 400))
            order = await ready_order(http, tenant, shop)
            delivery = order["delivery_id"]
            await accept_offer(sim, delivery)
            token = await link(http, order, shop.customer)
            stalled = await websockets.connect(f"ws://{addr}/v1/track/{token}", sock=_tiny_receive_buffer(addr),
                                               max_queue=1, ping_interval=None)
            assert json.loads(await stalled.recv())["type"] == "snapshot"   # then it never reads again
            async with Socket(f"ws://{addr}/v1/track/{token}") as healthy:
                await healthy.wait(lambda s: s.of("snapshot"))
                await eventually(lambda: _value(len(state.hub.clients) == 2))

                # positions flood both sockets, one at a time (a burst would be coalesced into
                # one frame); only the stalled one's send blocks
                flood_ts = time.time()
                where = destination(*SHOP_AT, 0.0, 900)

                async def flood() -> None:
                    n = 0
                    while True:
                        n += 1
                        await redis.publish(tracking_key(delivery),
                                            document(tenant, delivery, sim.driver_id, where, flood_ts + n))
                flooding = asyncio.create_task(flood())
                try:
                    await eventually(lambda: _value(any(c.sending_since for c in state.hub.clients)), within=20)
                    # status changes reach the healthy watcher at once while the other is stuck
                    latencies = []
                    for step in ("pick_up", "arrived_dropoff", "deliver"):
                        if step == "deliver":   # by now the stalled socket has been closed
                            await eventually(lambda: _value(state.hub.stats["closed_too_slow"] == 1), within=15)
                        before = len(healthy.of("status")) + len(healthy.of("arrived"))
                        started = time.time()
                        if step == "pick_up":
                            await sim.send({"type": "delivery_update", "delivery_id": delivery, "event": "pick_up"})
                        elif step == "arrived_dropoff":
                            await record_event(db, tenant.id, delivery, "arrived_dropoff", {},
                                               while_in=(DeliveryState.PICKED_UP,))
                        else:
                            await sim.send({"type": "delivery_update", "delivery_id": delivery, "event": "deliver",
                                            "proof_of_delivery": PROOF})
                        await healthy.wait(lambda s, n=before: len(s.of("status")) + len(s.of("arrived")) > n)
                        arrived = [t for t, f in healthy.frames if f["type"] in ("status", "arrived")][before]
                        latencies.append(arrived - started)
                finally:
                    flooding.cancel()
                assert [f["status"] for f in healthy.of("status")] == ["at_pickup", "picked_up", "delivered"]
                assert healthy.of("position")[-1]["ts"] > flood_ts + 100   # it kept up with the flood
                print(f"\nstatus frames to the healthy watcher while the other stalled: "
                      f"{', '.join(f'{x * 1000:.0f} ms' for x in latencies)} (action to frame)")
                assert max(latencies) < 1.5
                assert state.hub.stats["closed_too_slow"] == 1 and len(state.hub.clients) == 1

            # the stalled client reads again: what was buffered, then the close frame
            received = 0
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(stalled.recv(), 10)
                    received += 1
            assert (stalled.close_code, stalled.close_reason) == (4408, "too_slow")
        await redis.aclose()


# -- vendor screens ----------------------------------------------------------------------------


async def test_a_vendor_screen_gets_its_own_orders_and_nothing_of_other_vendors_or_tenants(platform, settings):
    async with running_app(platform, settings, dispatcher=True, payment_webhook_secret=SECRET,
                           auth_timeout_s=2) as (addr, _state), \
            httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http:
        tenant_a, admin_a = await _tenant_with_admin(platform)
        tenant_b, admin_b = await _tenant_with_admin(platform)
        shop1, shop2 = await Shop(http, tenant_a, admin_a).setup(), await Shop(http, tenant_a, admin_a).setup()
        shop_b = await Shop(http, tenant_b, admin_b).setup()
        url = f"ws://{addr}/v1/vendors/stream"

        for kwargs, expected in (
                ({"additional_headers": auth(shop1.customer)}, (4403, "forbidden")),
                ({"additional_headers": auth(f"wku_{tenant_a.id.hex}_{'x' * 43}")}, (4401, "unknown_token")),
                ({"additional_headers": auth("garbage")}, (4401, "unknown_token")),
                ({}, (4408, "auth_timeout"))):
            async with Socket(url, **kwargs) as screen:
                assert await screen.closed() == expected and screen.frames == []

        async with Socket(url, additional_headers=auth(shop1.vendor)) as one, \
                Socket(url, subprotocols=[f"bearer.{shop2.vendor}"]) as two, Socket(url) as b:
            await b.ws.send(json.dumps({"type": "auth", "token": shop_b.vendor}))
            for screen, shop in ((one, shop1), (two, shop2), (b, shop_b)):
                assert (await screen.wait(lambda s: s.of("ready")))[0]["vendor_id"] == shop.vendor_id
            assert two.ws.subprotocol == f"bearer.{shop2.vendor}"

            order1 = await ready_order(http, tenant_a, shop1, quantity=2)
            resp = await http.post("/v1/orders", json=shop2.order_body(1), headers=auth(shop2.customer))
            order2 = resp.json()
            resp = await http.post("/v1/orders", json=shop_b.order_body(1), headers=auth(shop_b.customer))
            order_b = resp.json()

            events = await one.wait(lambda s: len(s.of("order")) >= 4 and s.of("order"))
            assert [(f["event"], f["order"]["status"]) for f in events[:4]] == [
                ("place", "pending"), ("pay", "paid"), ("accept", "accepted"), ("mark_ready", "ready")]
            first = events[0]["order"]
            assert first["id"] == order1["id"] and first["order_number"] == order1["order_number"]
            assert first["total_amount"] == order1["total_amount"] and first["lines"][0]["quantity"] == 2
            assert first["created_at"]
            assert (await two.wait(lambda s: s.of("order")))[0]["order"]["id"] == order2["id"]
            assert (await b.wait(lambda s: s.of("order")))[0]["order"]["id"] == order_b["id"]
            await asyncio.sleep(1.0)   # anything misrouted would have arrived by now
            assert {f["order"]["id"] for f in one.of("order")} == {order1["id"]}
            assert {f["order"]["id"] for f in two.of("order")} == {order2["id"]}
            assert {f["order"]["id"] for f in b.of("order")} == {order_b["id"]}
            assert {f["order"]["vendor_id"] for f in one.of("order")} == {shop1.vendor_id}


# -- several engine processes --------------------------------------------------------------------


async def test_a_watcher_on_engine_b_sees_positions_and_statuses_caused_through_engine_a(platform, settings):
    settings = replace(settings, locations_partitions=1, location_ttl_s=120)
    await create_topics(settings)
    redis = aioredis.from_url(settings.redis_url)
    try:
        async with tracking_worker(settings, platform), \
                running_app(platform, settings, dispatcher=True, payment_webhook_secret=SECRET,
                            offer_timeout_s=30) as (addr_a, _a), \
                running_app(platform, settings, dispatcher=False) as (addr_b, state_b), \
                httpx.AsyncClient(base_url=f"http://{addr_a}", timeout=30) as http_a, \
                httpx.AsyncClient(base_url=f"http://{addr_b}", timeout=30) as http_b, \
                TenantDatabase(platform) as db:
            store = LocationStore(redis, settings)
            tenant, admin = await _tenant_with_admin(platform)
            shop = await Shop(http_a, tenant, admin).setup()
            start = destination(*SHOP_AT, 0.0, 400)
            sim = await new_driver(db, tenant, addr_a)
            async with sim:
                await sim.ping(*start)   # through engine A's gateway, Kafka and the worker

                async def available() -> bool:
                    cells = store.cells_around(*SHOP_AT, k=8)
                    return bool(await store.available_in_cells(str(tenant.id), cells))

                await eventually(available, within=15)
                order = await ready_order(http_a, tenant, shop)
                delivery = order["delivery_id"]
                token = await link(http_b, order, shop.vendor, who="vendor")   # issued by engine B
                async with Socket(f"ws://{addr_b}/v1/track/{token}") as watcher:
                    await watcher.wait(lambda s: s.of("snapshot"))
                    await accept_offer(sim, delivery)
                    await watcher.wait(lambda s: "assigned" in [f["status"] for f in s.of("status")])
                    await sim.drive(start, destination(*SHOP_AT, 0.0, 200), steps=3)   # pings to engine A
                    position = (await watcher.wait(lambda s: s.of("position")))[-1]
                    assert position["eta_pickup_s"] is not None and position["received_at"] > 0
                    reply = await sim.send({"type": "delivery_update", "delivery_id": delivery, "event": "pick_up"})
                    assert reply["status"] == "picked_up"
                    statuses = await watcher.wait(
                        lambda s: "picked_up" in [f["status"] for f in s.of("status")] and s.of("status"))
                    assert [f["status"] for f in statuses][-3:] == ["assigned", "at_pickup", "picked_up"]
                    assert await delivery_status(db, tenant, delivery) == "picked_up"
                assert len(state_b.hub.clients) == 0   # the watcher left engine B's hub
    finally:
        await redis.aclose()


async def test_a_process_subscribes_to_a_delivery_only_while_it_has_watchers(platform, settings):
    """One Redis subscription per process and delivery watched (PUBSUB NUMSUB), none after."""
    async with running_app(platform, settings, dispatcher=True, payment_webhook_secret=SECRET) as (addr, state), \
            httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http:
        redis = aioredis.from_url(settings.redis_url)
        tenant, admin = await _tenant_with_admin(platform)
        shop = await Shop(http, tenant, admin).setup()
        order = await ready_order(http, tenant, shop)
        channel = tracking_key(order["delivery_id"])

        async def subscribers() -> int:
            return dict(await redis.pubsub_numsub(channel))[channel.encode()]

        assert await subscribers() == 0
        token = await link(http, order, shop.customer)
        async with Socket(f"ws://{addr}/v1/track/{token}") as w1, Socket(f"ws://{addr}/v1/track/{token}") as w2:
            await w1.wait(lambda s: s.of("snapshot"))
            await w2.wait(lambda s: s.of("snapshot"))
            assert await subscribers() == 1   # one subscription for the process, not per watcher
        await eventually(lambda: _value(not state.hub.feeds), within=5)

        async def unsubscribed() -> bool:
            return await subscribers() == 0

        await eventually(unsubscribed, within=5)
        await redis.aclose()
