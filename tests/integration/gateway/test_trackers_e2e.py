"""A delivery end to end with a driver whose positions come only from a tracker: Traccar
Client 9's JSON for one driver, OsmAnd query requests for another. The driver's app stays
connected for offers (Traccar Client cannot show one) but never sends a position: the worker
lands the tracker's fixes, matching finds the driver, the pickup and dropoff fences fire, and
the customer's tracking page follows the driver. The tenant requires a PIN and a photo: the
customer's page shows the PIN, and delivered is refused until the driver's app gives both."""

import asyncio
import contextlib
import io
import json
import time
import uuid
from datetime import UTC, datetime

import httpx
import pytest
import websockets
from PIL import Image

from dispatch.deliveries.proof import ProofRequirements
from dispatch.deliveries.proof_store import set_requirements
from dispatch.deliveries.store import create_delivery
from dispatch.identity.trackers import issue_tracker_key
from dispatch.tracking.links import issue_link
from geo import destination, distance_m
from schema.db import TenantDatabase
from schema.tenants import create_tenant
from streams.location_store import LocationStore
from tests.integration.streams.harness import eventually
from tests.integration.test_dispatch_e2e import (
    PROOF,
    VENDOR,
    SimulatedDriver,
    _driver,
    _world,
    engine,
)

pytestmark = pytest.mark.timeout(240)
SPEED = 15.0                                # m/s, a motorbike in town
NEAR_DOOR = destination(*VENDOR, 90.0, 600)  # a closer door than the websocket test's: a shorter drive
__all__ = ["engine"]   # the fixture, shared with the websocket end-to-end test


class Tracker:
    """A phone running Traccar Client (``json``) or an OsmAnd tracker (``query``)."""

    def __init__(self, http: httpx.AsyncClient, key: str, shape: str) -> None:
        self.http, self.key, self.shape = http, key, shape
        self.at = time.time() - 50   # its fixes' clock: the drive below ends within the engine's limits

    async def fix(self, lat: float, lng: float, speed_mps: float = SPEED, after_s: float = 1.0) -> None:
        self.at = max(self.at + after_s, time.time() - 50)
        if self.shape == "json":
            stamp = datetime.fromtimestamp(self.at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            resp = await self.http.post("/v1/trackers/osmand", json={"device_id": self.key, "location": {
                "timestamp": stamp, "is_moving": True, "event": "motionchange",
                "coords": {"latitude": lat, "longitude": lng, "accuracy": 5.0, "speed": speed_mps,
                           "heading": 90.0, "altitude": 1600.0},
                "battery": {"level": 0.8, "is_charging": False}}})
        else:
            resp = await self.http.post("/v1/trackers/osmand", params={
                "id": self.key, "lat": f"{lat:.6f}", "lon": f"{lng:.6f}", "timestamp": f"{self.at:.0f}",
                "speed": f"{speed_mps / 0.514444:.1f}", "bearing": "90", "accuracy": "6", "batt": "80"})
        assert resp.status_code == 200 and resp.json()["accepted"] == 1, resp.text

    async def drive(self, start, end, steps: int = 6) -> None:
        step_s = max(distance_m(*start, *end) / steps / SPEED, 0.5)
        for i in range(1, steps + 1):
            f = i / steps
            await self.fix(start[0] + (end[0] - start[0]) * f, start[1] + (end[1] - start[1]) * f, after_s=step_s)
            await asyncio.sleep(0.05)


async def test_tracker_only_drivers_are_matched_tracked_and_deliver(platform, engine):
    for shape in ("json", "query"):   # one engine and worker for both: they take longer to start than a trip
        await _trip(platform, engine, shape)


async def _trip(platform, engine, shape: str) -> None:
    addr, state, settings, redis = engine
    tenant = await create_tenant(platform, f"Tracker E2E {uuid.uuid4().hex[:6]}")
    store = LocationStore(redis, settings)
    async with TenantDatabase(platform) as db, httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http:
        world = await _world(db, tenant.id)
        await set_requirements(db, str(tenant.id), ProofRequirements(pin=True, photo=True), actor="test")
        async with db.tenant_transaction(tenant.id) as tx:
            await tx.execute("UPDATE orders SET delivery_location = ST_SetSRID(ST_MakePoint($2, $1), 4326)::geography "
                             "WHERE id = $3", *NEAR_DOOR, world["order"])
        driver, token = await _driver(db, tenant.id, 1)
        key = (await issue_tracker_key(db, tenant.id, driver)).token
        phone = Tracker(http, key, shape)
        start = destination(*VENDOR, 0.0, 400)
        async with SimulatedDriver(addr, driver, token) as app:   # offers only: it never pings
            await phone.fix(*start)

            async def available():
                found = await store.available_in_cells(str(tenant.id), store.cells_around(*VENDOR, k=8))
                return driver in [row[0] for row in found]

            await eventually(available, within=15)
            delivery = str(await create_delivery(db, tenant.id, world["order"], VENDOR, NEAR_DOOR))
            link = await issue_link(db, tenant.id, world["order"], grace_s=3600)
            page = await websockets.connect(f"ws://{addr}/v1/track/{link.token}")   # the customer's page
            frames: list[dict] = []
            reader = asyncio.create_task(_read(page, frames))
            offer = await asyncio.wait_for(app.offers.get(), 30)
            assert offer["delivery_id"] == delivery
            assert (await app.send({"type": "offer_reply", "delivery_id": delivery, "accept": True}))[
                "status"] == "assigned"

            async def status():
                async with db.tenant_transaction(tenant.id, readonly=True) as tx:
                    return await tx.fetchval("SELECT status FROM deliveries WHERE id = $1", uuid.UUID(delivery))

            await phone.drive(start, VENDOR)

            async def at_pickup():
                return await status() == "at_pickup"

            await eventually(at_pickup, within=20)
            assert (await app.send({"type": "delivery_update", "delivery_id": delivery, "event": "pick_up"}))[
                "status"] == "picked_up"
            await phone.drive(VENDOR, NEAR_DOOR, steps=8)

            async def tracked_near_the_door():   # what the customer's tracking page reads
                raw = await redis.get(f"delivery:tracking:{delivery}")
                if raw is None:
                    return False
                where = json.loads(raw)["driver"]
                return where["id"] == driver and distance_m(where["lat"], where["lng"], *NEAR_DOOR) < 200

            await eventually(tracked_near_the_door, within=20)

            async def page_shows_the_driver_near_the_door():
                return any(f["type"] == "position" and distance_m(f["lat"], f["lng"], *NEAR_DOOR) < 200
                           for f in frames)

            await eventually(page_shows_the_driver_near_the_door, within=20)
            snapshot = frames[0]
            assert snapshot["type"] == "snapshot" and snapshot["delivery_id"] == delivery
            pin = snapshot["delivery_pin"]   # what the customer reads out at the door

            driver_app = {"Authorization": f"Bearer {token}"}
            deliver = {"event": "deliver", "proof_of_delivery": PROOF}
            resp = await http.post(f"/v1/drivers/deliveries/{delivery}/events", json=deliver, headers=driver_app)
            assert resp.status_code == 409 and resp.json()["error"]["reason"] == "proof_required", resp.text
            resp = await http.post(f"/v1/drivers/deliveries/{delivery}/pin", json={"pin": pin}, headers=driver_app)
            assert resp.status_code == 200 and resp.json()["pin"] == "verified", resp.text
            resp = await http.put(f"/v1/drivers/deliveries/{delivery}/proof/photo", content=_door_photo(),
                                  headers={**driver_app, "Content-Type": "image/jpeg"})
            assert resp.status_code == 200, resp.text
            resp = await http.post(f"/v1/drivers/deliveries/{delivery}/events", json=deliver, headers=driver_app)
            assert resp.status_code == 200 and resp.json()["status"] == "delivered", resp.text

            async def page_shows_delivered():
                return any(f["type"] == "status" and f.get("status") == "delivered" for f in frames)

            await eventually(page_shows_delivered, within=20)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                await reader
            await page.close()
        assert not [f for f in app.frames if f.get("type") == "ack"]   # the app sent no position


async def _read(page, frames: list[dict]) -> None:
    async for raw in page:
        frames.append(json.loads(raw))


def _door_photo() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 140, 60)).save(out, "JPEG")
    return out.getvalue()
