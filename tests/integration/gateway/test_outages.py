"""Pings while Redis or the broker is down: ``unavailable`` (retry later), the socket kept."""

import asyncio
import json
from dataclasses import replace

import httpx
import pytest
import websockets

from streams.producer import PingProducer
from tests.integration.engine_helpers import running_app
from tests.integration.gateway.support import make_fleet, ping
from tests.integration.private_services import private_redis

pytestmark = pytest.mark.timeout(180)


async def _send(ws, frame: dict) -> dict:
    await ws.send(json.dumps(frame))
    return json.loads(await asyncio.wait_for(ws.recv(), 30))


async def test_while_redis_is_down_socket_pings_still_land_in_the_log_and_http_gets_unavailable(
        platform, stream_settings):
    """The websocket's ping limit is counted in the gateway process (dispatch.web.windows), so
    a socket's pings need only the broker: acked (durable in the log; the worker lands them
    once Redis is back). The HTTP batch route's limit and shift changes need Redis: 503."""
    fleet = await make_fleet(platform)
    driver, token = fleet.ids[0], fleet.tokens[0]
    async with private_redis() as server:
        streams = replace(stream_settings, redis_url=server.url)
        async with running_app(platform, streams) as (addr, _state), \
                httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http, \
                websockets.connect(f"ws://{addr}/v1/drivers/stream",
                                   additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            assert await _send(ws, {"type": "ping", "seq": 1, **ping(driver)}) == {
                "type": "ack", "seq": 1, "accepted": 1}
            auth = {"Authorization": f"Bearer {token}"}
            assert (await http.post("/v1/drivers/locations", json={"pings": [ping(driver)]},
                                    headers=auth)).status_code == 202
            server.kill()
            for seq in (2, 3):
                assert await _send(ws, {"type": "ping", "seq": seq, **ping(driver)}) == {
                    "type": "ack", "seq": seq, "accepted": 1}
            resp = await http.post("/v1/drivers/locations", json={"pings": [ping(driver)]}, headers=auth)
            assert resp.status_code == 503 and resp.json()["error"]["reason"] == "unavailable"
            assert int(resp.headers["Retry-After"]) > 0
            resp = await http.post("/v1/drivers/shift", json={"action": "start"}, headers=auth)
            assert resp.status_code == 503 and "Retry-After" in resp.headers
            assert "redis" not in resp.text.lower() and str(server.port) not in resp.text
            await server.start()   # back, empty: the HTTP route is accepted again
            for _ in range(30):
                resp = await http.post("/v1/drivers/locations", json={"pings": [ping(driver)]}, headers=auth)
                if resp.status_code == 202:
                    break
                assert resp.json()["error"]["reason"] == "unavailable"
                await asyncio.sleep(0.5)   # the client's retry interval
            assert resp.status_code == 202
            assert await _send(ws, {"type": "ping", "seq": 50, **ping(driver)}) == {
                "type": "ack", "seq": 50, "accepted": 1}


async def test_pings_while_the_broker_is_unreachable_get_unavailable(platform, stream_settings):
    fleet = await make_fleet(platform)
    driver, token = fleet.ids[0], fleet.tokens[0]
    async with running_app(platform, stream_settings) as (addr, state), \
            httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http, \
            websockets.connect(f"ws://{addr}/v1/drivers/stream",
                               additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        assert json.loads(await ws.recv())["type"] == "ready"
        engine_producer = state.ingest.producer
        stopped = PingProducer(stream_settings)   # a producer that can no longer reach any broker
        await stopped.start()
        await stopped.stop()
        state.ingest.producer = stopped
        try:
            error = await _send(ws, {"type": "ping", "seq": 1, **ping(driver)})
            assert error["type"] == "error" and error["reason"] == "unavailable"
            resp = await http.post("/v1/drivers/locations", json={"pings": [ping(driver)]},
                                   headers={"Authorization": f"Bearer {token}"})
            assert resp.status_code == 503 and resp.json()["error"]["reason"] == "unavailable"
            assert int(resp.headers["Retry-After"]) > 0
        finally:
            state.ingest.producer = engine_producer
        assert await _send(ws, {"type": "ping", "seq": 2, **ping(driver)}) == {"type": "ack", "seq": 2, "accepted": 1}
