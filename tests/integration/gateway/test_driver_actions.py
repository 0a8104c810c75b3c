"""Driver actions (shift changes, delivery events, offer replies): token before body, bounded
bodies with field-named refusals, and a per-driver rate limit on every channel."""

import asyncio
import json
import uuid

import httpx
import pytest
import websockets

from tests.integration.engine_helpers import running_engine
from tests.integration.gateway.support import make_fleet, ping

pytestmark = pytest.mark.timeout(180)


async def test_the_shift_route_checks_the_token_before_it_reads_the_body(platform, stream_settings):
    async with running_engine(platform, stream_settings) as addr, \
            httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http:
        for body in (b"not json", b'{"action": "nap"}', b"[" * 100_000):
            resp = await http.post("/v1/drivers/shift", content=body, headers={"Content-Type": "application/json"})
            assert resp.status_code == 401, resp.text
            assert resp.json()["error"]["reason"] == "unknown_token"



SHIFT_BODIES = [
    (b"not json", 400, "bad_json", None),
    (b"[]", 422, "wrong_type", "body"),
    (b"{}", 422, "missing_field", "action"),
    (b'{"action": 5}', 422, "wrong_type", "action"),
    (b'{"action": null}', 422, "wrong_type", "action"),
    (b'{"action": "pause"}', 422, "invalid_value", "action"),
    (b'{"action": "start\\u0000"}', 422, "invalid_text", "action"),
    (b'{"\\ud800": "start"}', 422, "invalid_text", None),
]


@pytest.mark.parametrize("body, status, reason, field", SHIFT_BODIES, ids=[r for _, _, r, _ in SHIFT_BODIES])
async def test_hostile_shift_bodies_are_refused_naming_the_field(platform, stream_settings, body, status, reason,
                                                                 field):
    fleet = await make_fleet(platform)
    auth = {"Authorization": f"Bearer {fleet.tokens[0]}", "Content-Type": "application/json"}
    async with running_engine(platform, stream_settings, max_body_bytes=4096) as addr, \
            httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http:
        resp = await http.post("/v1/drivers/shift", content=body, headers=auth)
        assert resp.status_code == status, resp.text
        error = resp.json()["error"]
        assert error["reason"] == reason
        if field is not None:
            assert error["field"] == field
        resp = await http.post("/v1/drivers/shift", content=b'{"action": "' + b"x" * 8192 + b'"}', headers=auth)
        assert resp.status_code == 413 and resp.json()["error"]["reason"] == "too_large"
        # Nothing of the above changed the driver's state: a valid body still works.
        resp = await http.post("/v1/drivers/shift", json={"action": "end"}, headers=auth)
        assert resp.status_code == 200 and resp.json() == {"status": "offline"}


async def test_driver_actions_share_a_rate_limit_across_routes_and_the_socket(platform, stream_settings):
    fleet = await make_fleet(platform)
    (driver, other), (token, other_token) = fleet.ids, fleet.tokens
    auth = {"Authorization": f"Bearer {token}"}
    async with running_engine(platform, stream_settings, driver_action_limit=4, driver_action_window_s=60) as addr, \
            httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http, \
            websockets.connect(f"ws://{addr}/v1/drivers/stream", additional_headers=auth) as ws:
        assert json.loads(await ws.recv())["type"] == "ready"
        assert (await http.post("/v1/drivers/shift", json={"action": "start"}, headers=auth)).status_code == 200
        assert (await http.post("/v1/drivers/shift", json={"action": "end"}, headers=auth)).status_code == 200
        delivery = str(uuid.uuid4())
        resp = await http.post(f"/v1/drivers/deliveries/{delivery}/events", json={"event": "pick_up"}, headers=auth)
        assert resp.status_code != 429   # this engine does not dispatch: refused, but counted
        await ws.send(json.dumps({"type": "offer_reply", "seq": 1, "delivery_id": delivery, "accept": True}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["reason"] != "rate_limited"
        # The limit (4 per 60 s) is reached: every kind of action is refused, on every channel.
        resp = await http.post("/v1/drivers/shift", json={"action": "start"}, headers=auth)
        assert resp.status_code == 429 and resp.json()["error"]["reason"] == "rate_limited"
        assert resp.headers["Retry-After"] == "60"
        resp = await http.post(f"/v1/drivers/deliveries/{delivery}/events", json={"event": "pick_up"}, headers=auth)
        assert resp.status_code == 429
        for frame in ({"type": "offer_reply", "seq": 2, "delivery_id": delivery, "accept": False},
                      {"type": "delivery_update", "seq": 3, "delivery_id": delivery, "event": "pick_up"}):
            await ws.send(json.dumps(frame))
            error = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert error["type"] == "error" and error["reason"] == "rate_limited" and error["seq"] == frame["seq"]
        # Pings have their own limit, and another driver has their own actions.
        await ws.send(json.dumps({"type": "ping", "seq": 4, **ping(driver)}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"type": "ack", "seq": 4, "accepted": 1}
        resp = await http.post("/v1/drivers/shift", json={"action": "start"},
                               headers={"Authorization": f"Bearer {other_token}"})
        assert resp.status_code == 200, resp.text
        assert other
