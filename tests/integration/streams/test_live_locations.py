"""End to end: driver app websocket -> gateway -> Kafka -> faust agent -> Redis (and back out of it)."""

import asyncio
import json
import time
from dataclasses import replace

import httpx
import pytest
import redis.asyncio as aioredis
import websockets

from dispatch.identity.auth import issue_driver_token
from dispatch.identity.drivers import NewDriver, create_driver
from schema.db import TenantDatabase
from schema.tenants import create_tenant
from streams.app import create_app
from streams.keys import location_key
from streams.location_store import LocationStore
from tests.integration.engine_helpers import running_engine
from tests.integration.streams.harness import SESSION_TIMEOUT_S, eventually
from tests.integration.streams.test_streams import create_topics

pytestmark = pytest.mark.timeout(180)
ORLANDO = (-26.2360, 27.9090)


@pytest.fixture
async def live(platform, stream_settings):
    """Engine + worker on this test's topics, a short location TTL, and one driver with a token."""
    settings = replace(stream_settings, location_ttl_s=1.5, locations_partitions=2)
    await create_topics(settings)
    tenant = await create_tenant(platform, "Live Spaza")
    async with TenantDatabase(platform) as db:
        driver = await create_driver(db, tenant.id, NewDriver("Nomsa", "Dube", "+27825550001", "LIC-LIVE-1",
                                                              "motorbike", "GP 555-001"))
        token = (await issue_driver_token(db, tenant.id, driver, ttl_s=3600)).token
    app = create_app(settings, None, session_timeout_s=SESSION_TIMEOUT_S)
    await asyncio.wait_for(app.start(), 30)
    redis = aioredis.from_url(settings.redis_url)
    try:
        async def assigned() -> bool:
            return len([tp for tp in app.consumer.assignment() if tp.topic == settings.locations_topic]) == 2

        await eventually(assigned, within=20, every=0.05)
        async with running_engine(platform, settings) as addr:
            yield addr, str(tenant.id), str(driver), token, LocationStore(redis, settings)
    finally:
        await redis.delete(location_key(str(driver)), f"driver:state:{driver}")
        await redis.aclose()
        await asyncio.wait_for(app.stop(), 30)


def fix(driver_id, ts, lat=ORLANDO[0], lng=ORLANDO[1]):
    return {"type": "ping", "driver_id": driver_id, "lat": lat, "lng": lng, "accuracy": 5.0, "speed": 3.0,
            "heading": 45.0, "timestamp": ts}


async def test_a_websocket_ping_is_live_within_a_second_then_forgotten_after_the_ttl(live):
    addr, tenant, driver, token, store = live
    async with httpx.AsyncClient(base_url=f"http://{addr}") as http:
        resp = await http.post("/v1/drivers/shift", json={"action": "start"},
                               headers={"Authorization": f"Bearer {token}"})
        assert resp.json() == {"status": "available"}
    async with websockets.connect(f"ws://{addr}/v1/drivers/stream",
                                  additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        assert json.loads(await ws.recv())["type"] == "ready"
        sent = time.monotonic()
        await ws.send(json.dumps(fix(driver, time.time())))
        assert json.loads(await ws.recv())["type"] == "ack"

        async def landed():
            return await store.get(driver)

        location = await eventually(landed, within=1.0, every=0.01)
        assert time.monotonic() - sent < 1.0
        assert (location["lat"], location["lng"]) == ORLANDO
        assert location["tenant"] == tenant and location["vehicle"] == "motorbike"
        assert location["status"] == "available"
        cell = store.cell_of(*ORLANDO)
        assert [d[0] for d in await store.available_in_cells(tenant, [cell])] == [driver]

        # Silence: the key expires after the (shortened) TTL and the index stops returning the driver.
        async def forgotten():
            return await store.get(driver) is None and not await store.available_in_cells(tenant, [cell])

        await eventually(forgotten, within=4.0, every=0.1)


async def test_an_out_of_order_ping_does_not_move_the_driver(live):
    addr, _, driver, token, store = live
    now = time.time()
    async with websockets.connect(f"ws://{addr}/v1/drivers/stream",
                                  additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        await ws.recv()
        await ws.send(json.dumps(fix(driver, now)))
        await ws.recv()

        async def landed():
            return await store.get(driver)

        await eventually(landed, within=2.0, every=0.01)
        await ws.send(json.dumps(fix(driver, now - 1.0, lat=ORLANDO[0] + 0.001)))   # older fix, elsewhere
        assert json.loads(await ws.recv())["type"] == "ack"
        await ws.send(json.dumps(fix(driver, now + 0.5, lat=ORLANDO[0] + 0.0001)))  # newer fix, 11 m on
        await ws.recv()

        async def moved_on():
            loc = await store.get(driver)
            return loc if loc and abs(loc["ts"] - (now + 0.5)) < 1e-3 else None

        location = await eventually(moved_on, within=2.0, every=0.01)
        assert location["lat"] == pytest.approx(ORLANDO[0] + 0.0001)


async def test_hostile_pings_over_the_websocket_write_nothing(live):
    addr, _, driver, token, store = live
    async with websockets.connect(f"ws://{addr}/v1/drivers/stream",
                                  additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        await ws.recv()
        for hostile in (fix(driver, time.time(), lat=float("nan")), fix(driver, time.time(), lat=0, lng=0),
                        fix(driver, time.time() + 3600), {"type": "ping", "driver_id": driver}):
            await ws.send(json.dumps(hostile))
            assert json.loads(await ws.recv())["type"] == "error"
    await asyncio.sleep(0.5)
    assert await store.get(driver) is None
