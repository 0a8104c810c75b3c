"""The worker's notices (pings it refused after the gateway's ack) reach the driver's socket."""

import asyncio
import json
import time
import uuid

import pytest
import redis.asyncio as aioredis
import websockets

from dispatch.gateway.notices import DriverNotices
from streams.keys import DRIVER_NOTICES_CHANNEL
from tests.integration.engine_helpers import running_app
from tests.integration.gateway.support import make_fleet
from tests.integration.private_services import private_redis

pytestmark = pytest.mark.timeout(180)


def notice(tenant_id, driver_id, /, **overrides) -> dict:
    body = {"tenant_id": str(tenant_id), "driver_id": str(driver_id), "reason": "implausible_jump",
            "message": "the fix is 412 km from the last one 20 s earlier; it was not stored",
            "recorded_at": 1_767_000_000.5}
    body.update(overrides)
    return body


async def test_a_notice_from_the_worker_reaches_the_drivers_socket_and_malformed_ones_do_not(
        platform, stream_settings, redis_url):
    fleet = await make_fleet(platform)
    driver, tenant = fleet.ids[0], fleet.tenant_id
    redis = aioredis.from_url(redis_url)
    async with running_app(platform, stream_settings) as (addr, state), \
            websockets.connect(f"ws://{addr}/v1/drivers/stream",
                               additional_headers={"Authorization": f"Bearer {fleet.tokens[0]}"}) as ws:
        try:
            assert json.loads(await ws.recv())["type"] == "ready"
            await asyncio.wait_for(state.driver_notices.subscribed.wait(), 10)
            hostile = [
                b"not json", b"\xff\xfe", b"[1, 2]", b"null", b"[" * 5000, b"x" * 10_000,
                json.dumps(notice(tenant, driver, driver_id="'; DROP TABLE drivers; --")),
                json.dumps(notice(tenant, driver, tenant_id=None)),
                json.dumps(notice(tenant, driver, reason="<script>")),
                json.dumps(notice(tenant, driver, reason="x" * 100)),
                json.dumps(notice(tenant, driver, message=["a"])),
                json.dumps(notice(tenant, driver, recorded_at="yesterday")),
                json.dumps(notice(tenant, driver, recorded_at=True)),
                json.dumps(notice(tenant, driver, message="x" * 5000)),   # over the notice's size bound
                json.dumps(notice(uuid.uuid4(), driver)),                # another tenant's driver id
                json.dumps(notice(tenant, fleet.ids[1])),                # another driver
            ]
            for data in hostile:
                await redis.publish(DRIVER_NOTICES_CHANNEL, data)
            good = notice(tenant, driver.upper(), message="jump \ud800 refused")   # ids in any case
            await redis.publish(DRIVER_NOTICES_CHANNEL, json.dumps(good))
            frame = json.loads(await asyncio.wait_for(ws.recv(), 10))   # the first frame is the good one
            assert frame == {"type": "error", "reason": "implausible_jump", "message": "jump \ud800 refused",
                             "recorded_at": good["recorded_at"]}
            assert state.driver_notices.ignored >= 13
            # The socket carries on as before.
            await ws.send(json.dumps({"type": "ping", "seq": 5, "driver_id": driver, "lat": -26.2, "lng": 27.9,
                                      "accuracy": 5, "speed": 1, "heading": 0, "timestamp": time.time()}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "ack"
        finally:
            await redis.aclose()


class Collecting:
    tenant_id = None

    def __init__(self, tenant_id: str) -> None:
        self.tenant_id = tenant_id
        self.frames: list[dict] = []
        self.arrived = asyncio.Event()

    def push(self, frame: dict) -> bool:
        self.frames.append(frame)
        self.arrived.set()
        return True


async def test_the_notice_listener_subscribes_again_after_redis_restarts():
    tenant, driver = str(uuid.uuid4()), str(uuid.uuid4())
    sink = Collecting(tenant)
    async with private_redis() as server:
        redis = aioredis.from_url(server.url)
        listener = DriverNotices(redis, {driver: {sink}})
        await listener.start()
        try:
            await asyncio.wait_for(listener.subscribed.wait(), 10)
            server.kill()
            await server.start()
            await asyncio.sleep(0)   # let the listener notice the lost connection
            deadline = time.monotonic() + 30
            while not sink.frames:   # resubscribed: a notice published now arrives
                assert time.monotonic() < deadline, "the listener never subscribed again"
                await redis.publish(DRIVER_NOTICES_CHANNEL, json.dumps(notice(tenant, driver)))
                try:
                    await asyncio.wait_for(sink.arrived.wait(), 0.5)
                except TimeoutError:
                    continue
            assert sink.frames[0]["reason"] == "implausible_jump"
        finally:
            await listener.stop()
            await redis.aclose()
