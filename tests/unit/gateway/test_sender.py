"""A driver socket's outgoing side, over a stand-in socket: bounded, never blocking the
pusher, closing a stalled or expired socket, and every frame pure ASCII."""

import asyncio
import json
import time

from dispatch.gateway.sender import CLOSE_TOO_SLOW, DriverSender, FrameNotSent, encode_frame


class FakeSocket:
    """Records what is sent; ``stall`` makes every send hang (a peer that stopped reading)."""

    def __init__(self, stall: bool = False) -> None:
        self.stall = stall
        self.sent: list[str] = []
        self.closed: tuple[int, str] | None = None
        self.changed = asyncio.Event()

    async def send_text(self, text: str) -> None:
        if self.stall:
            await asyncio.Event().wait()
        text.encode()   # what the server does: fails on a lone surrogate
        self.sent.append(text)
        self.changed.set()

    async def close(self, code: int, reason: str) -> None:
        if self.stall:
            await asyncio.Event().wait()
        self.closed = (code, reason)
        self.changed.set()


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = asyncio.Event()

    def abort(self) -> None:
        self.aborted.set()


class FakeProtocol:
    def __init__(self) -> None:
        self.transport = FakeTransport()

    async def receive(self) -> dict:
        return {}


async def _until(ws: FakeSocket, condition) -> None:
    async with asyncio.timeout(10):
        while not condition():
            ws.changed.clear()
            await ws.changed.wait()


def test_frames_are_ascii_whatever_text_they_echo():
    text = encode_frame({"type": "error", "field": "\ud800\x00", "message": "unknown field '\udfff'"})
    assert text.isascii()
    assert json.loads(text)["field"] == "\ud800\x00"


async def test_replies_that_echo_a_lone_surrogate_are_sent():
    ws = FakeSocket()
    sender = DriverSender(ws, queue_max=4, send_timeout_s=5)
    assert await sender.reply({"type": "error", "field": "\ud800"})
    assert json.loads(ws.sent[0])["field"] == "\ud800"
    await sender.stop()


async def test_pushes_are_sent_in_order_by_the_sockets_own_task():
    ws = FakeSocket()
    sender = DriverSender(ws, queue_max=4, send_timeout_s=5)
    for i in range(3):
        await sender.send_json({"n": i})
    await _until(ws, lambda: len(ws.sent) == 3)
    assert [json.loads(t)["n"] for t in ws.sent] == [0, 1, 2]
    await sender.stop()
    assert not sender.push({"n": 9})


async def test_a_stalled_socket_never_blocks_the_pusher_and_is_closed_too_slow():
    ws, protocol = FakeSocket(stall=True), FakeProtocol()
    sender = DriverSender(ws, queue_max=2, send_timeout_s=0.2, receive=protocol.receive)
    started = time.monotonic()
    outcomes = [sender.push({"n": i}) for i in range(5)]
    assert time.monotonic() - started < 0.1
    assert outcomes.count(False) >= 2   # the queue holds two frames (one may be in flight)
    try:
        await sender.send_json({"n": 99})
    except FrameNotSent:
        pass
    await asyncio.wait_for(protocol.transport.aborted.wait(), 10)   # the close frame could not go either
    assert sender.closed and sender.close_code == CLOSE_TOO_SLOW
    await sender.stop()


async def test_the_socket_is_closed_when_its_token_expires():
    ws = FakeSocket()
    sender = DriverSender(ws, queue_max=4, send_timeout_s=5)
    sender.close_at(time.time() + 0.2, 4401, "expired_token", {"type": "error", "reason": "expired_token"})
    await _until(ws, lambda: ws.closed is not None)
    assert json.loads(ws.sent[-1])["reason"] == "expired_token" and ws.closed == (4401, "expired_token")
    await sender.stop()


async def test_stopping_cancels_the_expiry_timer():
    ws = FakeSocket()
    sender = DriverSender(ws, queue_max=4, send_timeout_s=5)
    sender.close_at(time.time() + 0.1, 4401, "expired_token")
    await sender.stop()
    await asyncio.sleep(0.3)
    assert ws.closed is None
