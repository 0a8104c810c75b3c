"""A delivery end to end with a driver whose positions come only from a tracker: Traccar
Client 9's JSON for one driver, OsmAnd query requests for another. The driver's app stays
connected for offers (Traccar Client cannot show one) but never sends a position: the worker
lands the tracker's fixes, matching finds the driver, the pickup and dropoff fences fire, and
the customer's tracking entry follows the driver."""

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime

import httpx
import pytest

from dispatch.deliveries.store import create_delivery
from dispatch.identity.trackers import issue_tracker_key
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
            resp = await http.post(f"/v1/drivers/deliveries/{delivery}/events",
                                   json={"event": "deliver", "proof_of_delivery": PROOF},
                                   headers={"Authorization": f"Bearer {token}"})
            assert resp.status_code == 200 and resp.json()["status"] == "delivered", resp.text
        assert not [f for f in app.frames if f.get("type") == "ack"]   # the app sent no position
