"""Who the tracking hub sends to: one socket's outgoing side, and one delivery's watchers.

The hub keeps these as plain objects indexed three ways (by delivery, by vendor, by token),
so a status event, an order event and a revocation each find their sockets without a scan.
A ``Client`` owns its ``FrameQueue`` and its send task (the pump): the loops that read Redis
and Kafka only put frames in queues and never wait for a socket. A ``DeliveryFeed`` exists
while this process holds at least one watcher of the delivery; it is also what the hub
subscribes for, so an unwatched delivery costs this process nothing.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from dispatch.tracking.frames import FrameQueue

__all__ = ["SEEN_EVENTS", "Client", "DeliveryFeed", "Send"]

SEEN_EVENTS = 64            # event ids a feed remembers (at-least-once duplicates)

#: The socket's ASGI ``send``: the hub hands it ``websocket.send`` and ``websocket.close``.
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Client:
    """One socket's outgoing side: its queue, its pump task, and what it watches."""

    __slots__ = ("closed", "expires_at", "expiry_code", "feed", "kind", "pump", "queue", "send",
                 "sending_since", "skip", "token_hash", "vendor_key", "wake")

    def __init__(self, kind: str, send: Send, queue_limit: int, *, token_hash: str,
                 expires_at: float | None, expiry_code: int) -> None:
        self.kind = kind
        self.send = send
        self.queue = FrameQueue(queue_limit)
        self.wake = asyncio.Event()
        self.pump: asyncio.Task | None = None
        self.closed = False
        self.sending_since = 0.0          # loop time a send started; 0 when idle
        self.skip: frozenset[str] = frozenset()
        self.token_hash = token_hash
        self.expires_at = expires_at
        self.expiry_code = expiry_code
        self.feed: DeliveryFeed | None = None
        self.vendor_key: tuple[str, str] | None = None


class DeliveryFeed:
    """This process's watchers of one delivery."""

    __slots__ = ("clients", "delivery_id", "seen", "status", "subscribed", "tenant_id")

    def __init__(self, tenant_id: str, delivery_id: str) -> None:
        self.tenant_id, self.delivery_id = tenant_id, delivery_id
        self.clients: set[Client] = set()
        # Known from the first watcher's snapshot, then from each status event. Positions are
        # forwarded only while it is assigned, at_pickup or picked_up.
        self.status: str | None = None
        self.seen: OrderedDict[str, None] = OrderedDict()
        self.subscribed = asyncio.Event()

    def first_time(self, event_id: object) -> bool:
        """False for an event id this feed forwarded already (Kafka delivers at least once);
        an event without a text id always passes."""
        if not isinstance(event_id, str):
            return True
        if event_id in self.seen:
            return False
        self.seen[event_id] = None
        if len(self.seen) > SEEN_EVENTS:
            self.seen.popitem(last=False)
        return True
