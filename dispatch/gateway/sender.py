"""One driver socket's outgoing side: frames pushed by others go through a bounded queue that
the socket's own task drains, so nobody who pushes ever waits for the driver.

Why a queue per socket: offers (from the dispatcher, the offer sweeper, or another process
through the offer relay) and worker notices used to be sent inline with ``await
ws.send_json``. A driver whose app stopped reading fills its TCP buffers, the send then
blocks, and with it the dispatcher and the sweeper of every tenant. Now ``push`` appends to a
queue of at most ``queue_max`` frames and returns at once: False (not delivered to this
socket) when the queue is full or the socket is closing. The caller treats "not delivered"
as it always has (an unanswered offer times out).

A send that does not complete within ``send_timeout_s`` means the driver stopped reading:
the socket is closed ``4408 too_slow`` and every frame still queued is dropped. The close
frame itself waits behind the bytes already buffered for that peer, so when it cannot be
sent within the same timeout the connection is aborted (best effort: uvicorn's protocol
object, reached through ASGI ``receive``, holds the transport; under another server the
keepalive ping ends such a connection instead).

The socket's replies to its own frames (acks, error frames) are sent by the handler that read
the frame, with the same timeout (``reply``): a driver who does not read its acks stalls
only its own handler, never a shared task.

Every frame is JSON with ``ensure_ascii``: whatever text a client sent and a message or a
field name echoes (a lone surrogate, a NUL), the frame is plain ASCII and always encodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from typing import Any

from starlette.websockets import WebSocket

from dispatch.core.errors import TOO_SLOW

__all__ = ["CLOSE_TOO_SLOW", "DriverSender", "FrameNotSent", "encode_frame"]

log = logging.getLogger(__name__)

CLOSE_TOO_SLOW = 4408   # a send did not complete in time: the driver stopped reading


class FrameNotSent(Exception):
    """The frame was not queued: the socket's queue is full or the socket is closing."""


def encode_frame(frame: dict[str, Any]) -> str:
    """A frame as compact, pure-ASCII JSON text (lone surrogates and NULs escaped)."""
    return json.dumps(frame, ensure_ascii=True, separators=(",", ":"))


def _transport_of(receive: Any) -> Any:
    """uvicorn's transport behind an ASGI ``receive`` (its protocol's bound method), or None."""
    return getattr(getattr(receive, "__self__", None), "transport", None)


class DriverSender:
    """The outgoing side of one driver websocket; ``send_json`` is what ``WebsocketNotifier``
    calls for offers (it raises ``FrameNotSent`` instead of blocking)."""

    def __init__(self, ws: WebSocket, *, queue_max: int, send_timeout_s: float, receive: Any = None,
                 tenant_id: str | None = None, driver_id: str | None = None) -> None:
        self.ws = ws
        self.tenant_id, self.driver_id = tenant_id, driver_id
        self.queue_max = queue_max
        self.send_timeout_s = send_timeout_s
        self.closed = False
        self.close_code: int | None = None
        self._receive = receive
        self._queue: deque[str] = deque()
        self._wake = asyncio.Event()
        self._close: tuple[int, str, str | None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._pump = asyncio.get_running_loop().create_task(self._run(), name="driver-sender")

    # -- pushing (never blocks) -------------------------------------------------------------

    def push(self, frame: dict[str, Any]) -> bool:
        """Queue a frame for this socket; False when it was not queued (full or closing)."""
        if self.closed or len(self._queue) >= self.queue_max:
            return False
        self._queue.append(encode_frame(frame))
        self._wake.set()
        return True

    async def send_json(self, frame: dict[str, Any]) -> None:
        if not self.push(frame):
            raise FrameNotSent("the driver's socket is not keeping up or is closing")

    def close(self, code: int, reason: str, frame: dict[str, Any] | None = None) -> None:
        """Close from the engine's side (revoked, expired, too slow) without waiting: queued
        frames are dropped, ``frame`` (an error frame) is sent first if given."""
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        self._queue.clear()
        self._close = (code, reason, encode_frame(frame) if frame is not None else None)
        self._cancel_timer()
        self._wake.set()

    def close_at(self, wall_time: float, code: int, reason: str, frame: dict[str, Any] | None = None) -> None:
        """Close the socket when the wall clock reaches ``wall_time`` (a token's expiry): one
        timer per socket, cancelled when the socket ends, no work per frame."""
        self._cancel_timer()
        delay = max(0.0, wall_time - time.time())
        self._timer = asyncio.get_running_loop().call_later(delay, self.close, code, reason, frame)

    # -- replies of the socket's own handler ------------------------------------------------

    async def reply(self, frame: dict[str, Any]) -> bool:
        """Send a reply inline (an ack, an error frame); False if the socket is gone or the
        send stalled (then the socket is closed ``too_slow``)."""
        return await self.reply_text(encode_frame(frame))

    async def reply_text(self, text: str) -> bool:
        """``reply`` of a frame already encoded (the ping acks build theirs directly)."""
        if self.closed:
            return False
        try:
            async with asyncio.timeout(self.send_timeout_s):
                await self.ws.send_text(text)
        except TimeoutError:
            self._stalled()
            return False
        except Exception:   # the peer left or the socket is closing: the handler's receive sees it
            return False
        return True

    # -- the socket's own task ----------------------------------------------------------------

    async def stop(self) -> None:
        """The handler ends (the peer left): stop the task, forget the timer."""
        self.closed = True
        self._cancel_timer()
        self._pump.cancel()
        await asyncio.gather(self._pump, return_exceptions=True)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _stalled(self) -> None:
        log.info("driver socket closed: a send stalled for %s s", self.send_timeout_s)
        self.close(CLOSE_TOO_SLOW, TOO_SLOW)

    async def _run(self) -> None:
        queue, wake = self._queue, self._wake
        while True:
            if not queue:
                if self._close is not None:
                    break
                wake.clear()
                await wake.wait()
                continue
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                # cancellation that arrives as the send completes, and stop() would hang.
                async with asyncio.timeout(self.send_timeout_s):
                    await self.ws.send_text(queue.popleft())
            except TimeoutError:
                self._stalled()
            except Exception:   # the peer left: the handler's receive ends the socket
                self.closed = True
                return
        code, reason, last = self._close
        try:
            async with asyncio.timeout(self.send_timeout_s):
                if last is not None:
                    await self.ws.send_text(last)
                await self.ws.close(code, reason)
        except TimeoutError:
            transport = _transport_of(self._receive)
            if transport is not None:
                with contextlib.suppress(Exception):
                    transport.abort()
        except Exception:   # already gone
            return
