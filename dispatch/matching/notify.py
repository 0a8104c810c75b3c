"""Offers to drivers connected to any engine process of a deployment.

A driver's websocket lives in one process (``wakala engine --workers N`` runs several behind
one port, and a deployment runs several hosts), but the round that offers it may run in any
of them. Each process registers the drivers connected to it and listens on its own Redis
channel; ``send_offer`` sends on a local socket when there is one, and otherwise publishes the
frame to the process that holds the driver.

Keys
----

``driver:socket:{driver_id}`` STRING, TTL one day: the id of the process holding the driver's
    websocket (the newest connection wins). Removed by that process on disconnect; a crashed
    process leaves it behind, which the next offer finds out (nobody hears the channel: the
    key is removed and the offer counts as not delivered).
``offers:{app_id}:{process_id}`` pub/sub channel of one process: ``{"driver_id", "frame"}``.

A frame published to a live process whose driver has just disconnected is lost; the offer
then times out like any unanswered offer (``offer_timeout_s``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

from redis.asyncio import Redis

from dispatch.matching.keys import socket_key
from dispatch.matching.offers import WebsocketNotifier
from dispatch.matching.terms import BundleOffer, Offer
from streams.replies import as_text

__all__ = ["RoutedNotifier", "socket_key"]

log = logging.getLogger(__name__)

SOCKET_TTL_S = 86_400

# KEYS: the socket key. ARGV: process id. Deletes only this process's registration.
_FORGET = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RoutedNotifier:
    """A ``Notifier`` over this process's sockets and, through Redis, every other process's."""

    def __init__(self, redis: Redis, local: WebsocketNotifier, *, app_id: str,
                 process_id: str | None = None) -> None:
        self.redis = redis
        self.local = local
        self.app_id = app_id
        self.process_id = process_id or uuid.uuid4().hex
        self._forget = redis.register_script(_FORGET)
        self._listener: asyncio.Task | None = None
        self._subscribed = asyncio.Event()
        self.forwarded = 0   # frames received from other processes and sent here

    def channel(self, process_id: str) -> str:
        return f"offers:{self.app_id}:{process_id}"

    async def register(self, driver_id: str) -> None:
        await self.redis.set(socket_key(driver_id), self.process_id, ex=SOCKET_TTL_S)

    async def unregister(self, driver_id: str) -> None:
        await self._forget(keys=[socket_key(driver_id)], args=[self.process_id])

    async def send_offer(self, driver_id: str, offer: Offer | BundleOffer) -> bool:
        frame = offer.frame()
        if await self.local.send_frame(driver_id, frame):
            return True
        holder = await self.redis.get(socket_key(driver_id))
        if holder is None or as_text(holder) == self.process_id:
            return False
        holder = as_text(holder)
        message = json.dumps({"driver_id": driver_id, "frame": frame}, separators=(",", ":"))
        if await self.redis.publish(self.channel(holder), message):
            return True
        await self._forget(keys=[socket_key(driver_id)], args=[holder])   # that process is gone
        return False

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="offer-relay")
        await asyncio.wait_for(self._subscribed.wait(), 10)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None

    async def _listen(self) -> None:
        while True:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel(self.process_id))
                    self._subscribed.set()
                    async for message in pubsub.listen():
                        await self._deliver(message.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis restarted: subscribe again
                log.exception("offer relay subscription lost; resubscribing")
                await asyncio.sleep(1)

    async def _deliver(self, data: Any) -> None:
        try:
            message = json.loads(as_text(data))
            driver_id, frame = message["driver_id"], message["frame"]
            if not isinstance(driver_id, str) or not isinstance(frame, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed relayed offer: %.200r", data)
            return
        if await self.local.send_frame(driver_id, frame):
            self.forwarded += 1
