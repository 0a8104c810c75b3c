"""The driver websocket on a real engine: strange text, oversized frames, token expiry, and a
driver who stops reading while offers flow to others."""

import asyncio
import json
import time

import pytest
import websockets

from schema.db import TenantDatabase
from tests.integration.engine_helpers import running_app, running_engine
from tests.integration.gateway.support import make_fleet, ping, silent_driver

pytestmark = pytest.mark.timeout(180)


def stream_url(addr: str) -> str:
    return f"ws://{addr}/v1/drivers/stream"


async def ready(ws) -> dict:
    frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert frame["type"] == "ready", frame
    return frame


# Frames as sent on the wire: JSON escapes for a lone surrogate and a NUL, in keys and values.
STRANGE_FRAMES = [
    '{"\\ud800": 1}',
    '{"type": "ping", "\\udfff\\u0000": 1}',
    '{"type": "ping", "driver_id": "\\ud800", "seq": 4}',
    '{"type": "delivery_update", "delivery_id": "\\u0000", "event": "pick_up"}',
    '{"type": "offer_reply", "delivery_id": "\\udbff", "accept": true}',
    '{"type": "pings", "pings": [{"\\ud83d": "\\ude00"}]}',
    '["\\ud800"]',
    '"\\u0000"',
]


async def test_strange_text_in_a_frame_gets_an_error_frame_and_the_socket_stays_open(platform, stream_settings):
    fleet = await make_fleet(platform)
    async with running_engine(platform, stream_settings) as addr:
        async with websockets.connect(stream_url(addr),
                                      additional_headers={"Authorization": f"Bearer {fleet.tokens[0]}"}) as ws:
            await ready(ws)
            for frame in STRANGE_FRAMES:
                await ws.send(frame)
                reply = await asyncio.wait_for(ws.recv(), 10)
                assert reply.isascii()
                error = json.loads(reply)
                assert error["type"] == "error" and error["reason"] == "invalid_text", (frame, error)
                assert "field" in error
            await ws.send(b'{"type": "ping", "lat": "\xff\xfe"}')   # not UTF-8 at all
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["reason"] == "bad_json"
            await ws.send(json.dumps({"type": "ping", "seq": 7, **ping(fleet.ids[0])}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"type": "ack", "seq": 7, "accepted": 1}


async def test_a_strange_token_in_the_auth_frame_is_refused_cleanly(platform, stream_settings):
    async with running_engine(platform, stream_settings) as addr:
        for token in ('"wkd_\\ud800"', '{"\\u0000": 1}', '"' + "\\ud800" * 2000 + '"'):
            async with websockets.connect(stream_url(addr)) as ws:
                await ws.send('{"type": "auth", "token": ' + token + "}")
                error = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert error["type"] == "error" and error["reason"] == "unknown_token"
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 10)
                assert closed.value.rcvd.code == 4401


async def test_a_socket_is_closed_when_its_token_expires(platform, stream_settings):
    fleet = await make_fleet(platform)
    async with TenantDatabase(platform) as db, db.tenant_transaction(fleet.tenant_id) as tx:
        await tx.execute("UPDATE auth_tokens SET expires_at = now() + interval '3 seconds' WHERE id = $1",
                         fleet.token_ids[0])
    async with running_engine(platform, stream_settings) as addr:
        async with websockets.connect(stream_url(addr),
                                      additional_headers={"Authorization": f"Bearer {fleet.tokens[0]}"}) as ws:
            await ready(ws)
            connected = time.time()
            error = json.loads(await asyncio.wait_for(ws.recv(), 20))   # nothing sent: the engine speaks first
            assert error == {"type": "error", "reason": "expired_token", "message": error["message"]}
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd.code == 4401 and closed.value.rcvd.reason == "expired_token"
            assert time.time() - connected < 15


async def test_frames_over_the_message_limit_are_refused_and_the_socket_kept(platform, stream_settings):
    fleet = await make_fleet(platform)
    async with running_engine(platform, stream_settings, max_message_bytes=768 * 1024) as addr:
        async with websockets.connect(stream_url(addr), max_size=None,
                                      additional_headers={"Authorization": f"Bearer {fleet.tokens[0]}"}) as ws:
            await ready(ws)
            for size in (800 * 1024, 1_200_000):   # over the message limit, and over the old 1 MiB transport
                await ws.send(json.dumps({"type": "ping", "pad": "x" * size}))
                error = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert error["type"] == "error" and error["reason"] == "too_large"
            await ws.send(json.dumps({"type": "ping", "seq": 1, **ping(fleet.ids[0])}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"type": "ack", "seq": 1, "accepted": 1}
            # Beyond the transport limit (here 1.5 MiB) the transport closes: 1009, as documented.
            await ws.send("x" * (2 << 20))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd.code == 1009


async def _until(condition, within_s: float = 20.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_a_driver_who_stops_reading_never_holds_up_offers_to_others(platform, stream_settings):
    fleet = await make_fleet(platform)
    silent_id, reader_id = fleet.ids
    async with running_app(platform, stream_settings, offer_send_timeout_s=2, driver_send_queue_max=8) as (addr, state):
        sock = await asyncio.to_thread(silent_driver, addr, fleet.tokens[0])
        try:
            async with websockets.connect(stream_url(addr),
                                          additional_headers={"Authorization": f"Bearer {fleet.tokens[1]}"}) as ws:
                await ready(ws)
                await _until(lambda: silent_id in state.driver_ids)
                notifier = state.notifier.local   # this process's sockets (WebsocketNotifier)
                big = {"type": "offer", "delivery_id": "d", "note": "x" * 64 * 1024}
                outcomes = []
                started = time.monotonic()
                for _ in range(200):   # ~13 MB at a driver whose buffers hold a few hundred KB
                    outcomes.append(await asyncio.wait_for(notifier.send_frame(silent_id, big), 5))
                assert time.monotonic() - started < 60   # never waited on the silent driver (a blocked send never returns)
                assert False in outcomes   # its queue filled up: not delivered
                offer = {"type": "offer", "delivery_id": "for-the-reader", "pay": "31.50"}
                assert await asyncio.wait_for(notifier.send_frame(reader_id, offer), 5)
                assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == offer
                # The stalled socket is closed (4408 too_slow) and leaves the engine's maps.
                await _until(lambda: silent_id not in state.driver_ids)
                assert not await notifier.send_frame(silent_id, offer)
        finally:
            sock.close()
