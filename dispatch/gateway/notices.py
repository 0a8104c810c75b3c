"""Pings the location worker refused after the gateway acknowledged them, told to the driver.

The gateway acks a ping once it is durable in the log; the worker decides later whether the
fix is plausible (an ``implausible_jump`` from the last stored position is dropped). The
worker publishes one JSON notice per refused ping on ``streams.keys.DRIVER_NOTICES_CHANNEL``:
``{"tenant_id", "driver_id", "reason", "message", "recorded_at"}``. Every gateway process
subscribes once and forwards a notice to the driver's open sockets here, as an error frame
``{"type": "error", "reason", "message", "recorded_at"}`` (``recorded_at`` is the refused
fix's own timestamp, so the app knows which position was not stored). Frames go through each
socket's send queue (``dispatch.gateway.sender``): a slow driver never holds up the listener.

A notice for a driver this process does not hold is dropped: the channel is pub/sub, so a
driver who is not connected anywhere misses it, and one who reconnects sees the next. A
malformed notice (not JSON, ids that are not UUIDs, a reason outside ``[a-z_]``, a message or
payload over its bound) is ignored and counted, never forwarded.

The subscription is retried after any Redis error with a backoff from 0.5 s doubling to 30 s,
reset once a subscription succeeds: a Redis restart costs the notices published meanwhile and
nothing else.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from redis.asyncio import Redis

from dispatch.core.ids import InvalidId, canonical_uuid
from streams.keys import DRIVER_NOTICES_CHANNEL

__all__ = ["MAX_NOTICE_BYTES", "DriverNotices", "notice_frame"]

log = logging.getLogger(__name__)

MAX_NOTICE_BYTES = 4096
MAX_MESSAGE_CHARS = 300
REASON_RE = re.compile(r"[a-z_]{1,40}")
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0


class Pushable(Protocol):
    tenant_id: str | None

    def push(self, frame: dict[str, Any]) -> bool: ...


def notice_frame(data: Any) -> tuple[str, str, dict[str, Any]] | None:
    """``(tenant_id, driver_id, error frame)`` of a published notice, or None if malformed."""
    if isinstance(data, bytes | bytearray):
        if len(data) > MAX_NOTICE_BYTES:
            return None
        try:
            data = bytes(data).decode()
        except UnicodeDecodeError:
            return None
    if not isinstance(data, str) or len(data) > MAX_NOTICE_BYTES:
        return None
    try:
        notice = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(notice, dict):
        return None
    tenant_id, driver_id = notice.get("tenant_id"), notice.get("driver_id")
    reason, message, recorded_at = notice.get("reason"), notice.get("message"), notice.get("recorded_at")
    if not isinstance(tenant_id, str) or not isinstance(driver_id, str):
        return None
    try:
        tenant_id, driver_id = canonical_uuid(tenant_id, "tenant_id"), canonical_uuid(driver_id, "driver_id")
    except InvalidId:
        return None
    if not isinstance(reason, str) or not REASON_RE.fullmatch(reason):
        return None
    if not isinstance(message, str):
        return None
    if isinstance(recorded_at, bool) or not isinstance(recorded_at, int | float):
        return None
    try:
        if not math.isfinite(recorded_at):
            return None
    except OverflowError:   # an integer too large for a float
        return None
    frame = {"type": "error", "reason": reason, "message": message[:MAX_MESSAGE_CHARS], "recorded_at": recorded_at}
    return tenant_id, driver_id, frame


class DriverNotices:
    """This process's one subscriber to the worker's notices; ``sockets`` is the gateway's
    ``driver_id -> {DriverSender}`` map (``app.state.driver_ids``)."""

    def __init__(self, redis: Redis, sockets: Mapping[str, Iterable[Pushable]]) -> None:
        self.redis = redis
        self.sockets = sockets
        self.subscribed = asyncio.Event()   # set while a subscription is live (tests wait on it)
        self.forwarded = 0                  # frames queued on a driver socket
        self.ignored = 0                    # malformed notices
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        """Start listening; does not wait for Redis (the listener retries on its own)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._listen(), name="driver-notices")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self.subscribed.clear()

    def deliver(self, data: Any) -> int:
        """Forward one published notice to the driver's sockets here; how many took it."""
        parsed = notice_frame(data)
        if parsed is None:
            self.ignored += 1
            log.warning("ignored a malformed driver notice: %.200r", data)
            return 0
        tenant_id, driver_id, frame = parsed
        queued = 0
        for sender in list(self.sockets.get(driver_id, ())):
            if sender.tenant_id == tenant_id and sender.push(frame):
                queued += 1
        self.forwarded += queued
        return queued

    async def _listen(self) -> None:
        backoff = BACKOFF_START_S
        while True:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(DRIVER_NOTICES_CHANNEL)
                    self.subscribed.set()
                    backoff = BACKOFF_START_S
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self.deliver(message.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:   # Redis restarting: subscribe again after a pause
                log.warning("driver notices subscription lost (%s); retrying in %.1f s",
                            exc.__class__.__name__, backoff)
            self.subscribed.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)
