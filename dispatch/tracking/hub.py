"""The tracking hub: live frames to customers' tracking pages and vendors' screens.

Every engine process runs one ``TrackingHub`` for the websockets it holds
(``dispatch.tracking.sockets``: ``/v1/track/{token}`` and ``/v1/vendors/stream``). Nothing is
fanned out through process memory alone: whatever makes a frame reaches every process through
a shared channel, and each hub forwards it to its own sockets.

Where frames come from
----------------------
* **Positions and ETAs**: Redis pub/sub. The location worker PUBLISHes the tracking document
  on ``delivery:tracking:{delivery_id}`` on every landed ping of an assigned driver
  (``dispatch.tracking.tracker``). A hub SUBSCRIBEs to that channel only while it holds a
  watcher of that delivery, so a process hears only the deliveries it serves. One pub/sub
  connection per hub, owned by one task that applies subscription changes between reads; a
  watcher's snapshot is read only once its channel's subscription is confirmed, so no position
  falls in the gap. The same connection hears ``tracking:revocations`` (revoked links).
* **Status changes**: Kafka ``delivery-events``; **orders**: Kafka ``order-events``. Each
  hub consumes every partition of both topics without a consumer group (``group_id=None``)
  from the latest offset at start-up, positioned before the engine takes connections. A
  delivery event whose key (the delivery id) has no local watcher is skipped without being
  decoded; an order event is decoded only if this process holds a screen of some vendor.
  Events are at-least-once: each feed remembers the last event ids it forwarded, and a
  watcher skips the events its snapshot already showed.

Per socket
----------
A ``Client`` has a ``FrameQueue`` and its own send task (the pump), so the loops that
broadcast never wait for a socket: they only put frames in queues (``Client`` and
``DeliveryFeed`` are in ``dispatch.tracking.clients``; the queue and the frames themselves are
built without I/O in ``dispatch.tracking.frames``; this module is the I/O around them).

* Positions are coalesced: one slot per client holds the latest position frame; a slow client
  gets the newest position, never a backlog.
* Other frames (status, arrived, order, heartbeat) queue in order, at most ``queue_limit``
  (``WAKALA_HUB_QUEUE_MAX``, default 32). One more and the client is closed with
  ``4408 too_slow``. A send blocked for ``stall_s`` (``WAKALA_HUB_STALL_S``) also closes it:
  a client that stopped reading stalls the socket's send long before it collects 32 frames.
  The close frame goes behind what the socket already buffered; uvicorn's keepalive pings
  (``WAKALA_WS_PING_INTERVAL_S``) end a peer that never reads again.
* Every ``heartbeat_s`` (15 s) each client gets ``{"type": "heartbeat", "ts"}``.
* Once a delivery is terminal its watchers get no more positions (a position queued before
  the final status is dropped), and at ``ended + WAKALA_TRACKING_LINK_GRACE_S`` they are
  closed with ``4410 expired_token``. A vendor screen whose token expires is closed
  ``4401 expired_token``; a revoked link or user token closes its sockets with ``4401``.

A janitor task (once a second) sends heartbeats and closes stalled and expired clients.

Metrics: ``HUB_*`` of ``dispatch.core.metrics`` (sockets, frames, coalesced positions, closes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer
from redis.asyncio import Redis

from dispatch.commerce.orders.records import VIEW_SQL, view_from_row
from dispatch.core.errors import REVOKED_TOKEN, TOO_SLOW
from dispatch.core.metrics import HUB_CLIENTS, HUB_CLOSED, HUB_COALESCED, HUB_FRAMES, HUB_SENT
from dispatch.deliveries.state import TERMINAL_STATES
from dispatch.matching.active import TRACKED_STATUSES
from dispatch.tracking.clients import Client, DeliveryFeed, Send
from dispatch.tracking.frames import (
    epoch_seconds,
    frame_text,
    heartbeat_frame,
    order_frame,
    published_position_frame,
    status_frame,
)
from dispatch.tracking.links import (
    CLOSE_EXPIRED,
    EXPIRED_TOKEN,
    LINK_REVOCATIONS_CHANNEL,
    TrackingLink,
)
from dispatch.tracking.snapshot import load_snapshot
from schema.db import TenantDatabase
from streams.keys import TRACKING_PREFIX, tracking_key
from streams.replies import as_text

__all__ = ["CLOSE_TOO_SLOW", "Client", "TrackingHub"]

log = logging.getLogger(__name__)

CLOSE_TOO_SLOW = 4408
CLOSE_UNAUTHORISED = 4401
TERMINAL = frozenset(s.value for s in TERMINAL_STATES)
SUBSCRIBE_WAIT_S = 5.0      # a watcher's snapshot waits this long for its channel at most
POLL_S = 0.05               # the pub/sub task applies subscription changes this often at least
FETCH_MAX_WAIT_MS = 50      # tansu holds every fetch for the full wait (see streams/consumer.py)



# -- the hub -----------------------------------------------------------------------------------


class TrackingHub:
    """This process's tracking and vendor sockets, and the readers that feed them."""

    def __init__(self, redis: Redis, db: TenantDatabase, *, kafka_bootstrap: str, delivery_topic: str,
                 order_topic: str, topic_partitions: int = 4, queue_limit: int = 32,
                 heartbeat_s: float = 15.0, stall_s: float = 30.0, grace_s: float = 3600.0) -> None:
        self.redis, self.db = redis, db
        self.kafka_bootstrap = kafka_bootstrap
        self.delivery_topic, self.order_topic = delivery_topic, order_topic
        self.topic_partitions = topic_partitions
        self.queue_limit, self.heartbeat_s, self.stall_s, self.grace_s = queue_limit, heartbeat_s, stall_s, grace_s
        self.feeds: dict[str, DeliveryFeed] = {}
        self.vendors: dict[tuple[str, str], set[Client]] = {}
        self.by_token: dict[str, set[Client]] = {}
        self.clients: set[Client] = set()
        self.stats: Counter[str] = Counter()
        self._subscriptions_dirty = True
        self._confirmed: set[str] = set()   # channels whose SUBSCRIBE Redis has confirmed
        self._tasks: list[asyncio.Task] = []
        self._closing: set[asyncio.Task] = set()   # close frames on their way (strong references)
        self._consumer: AIOKafkaConsumer | None = None
        self._pubsub_ready = asyncio.Event()

    @classmethod
    def from_settings(cls, redis: Redis, db: TenantDatabase, engine: Any, streams: Any) -> TrackingHub:
        """The hub of an engine process (``EngineSettings``, ``StreamSettings``)."""
        return cls(redis, db, kafka_bootstrap=streams.kafka_bootstrap, delivery_topic=streams.delivery_events_topic,
                   order_topic=streams.order_events_topic, topic_partitions=streams.locations_partitions,
                   queue_limit=engine.hub_queue_max, heartbeat_s=engine.hub_heartbeat_s, stall_s=engine.hub_stall_s,
                   grace_s=engine.tracking_link_grace_s)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe and position the event consumer before returning: a socket accepted
        after this misses nothing published after it."""
        self._consumer = await self._start_consumer()
        self._tasks = [
            asyncio.create_task(self._listen_positions(), name="hub-positions"),
            asyncio.create_task(self._consume_events(), name="hub-events"),
            asyncio.create_task(self._janitor(), name="hub-janitor"),
        ]
        await asyncio.wait_for(self._pubsub_ready.wait(), 10)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for client in list(self.clients):
            self.forget(client)
        if self._consumer is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._consumer.stop(), 2.0)

    async def _start_consumer(self) -> AIOKafkaConsumer:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.errors import TopicAlreadyExistsError

        topics = (self.delivery_topic, self.order_topic)
        admin = AIOKafkaAdminClient(bootstrap_servers=self.kafka_bootstrap)
        try:
            await admin.start()
            missing = set(topics) - set(await admin.list_topics())
            for topic in missing:
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics([NewTopic(topic, self.topic_partitions, 1)])
        finally:
            await admin.close()
        consumer = AIOKafkaConsumer(*topics, bootstrap_servers=self.kafka_bootstrap, group_id=None,
                                    auto_offset_reset="latest", enable_auto_commit=False,
                                    fetch_max_wait_ms=FETCH_MAX_WAIT_MS)
        await consumer.start()
        try:
            deadline = time.monotonic() + 10
            while {tp.topic for tp in consumer.assignment()} != set(topics):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no partitions of {', '.join(topics)} after 10 s")
                await asyncio.sleep(0.02)
            await consumer.seek_to_end()
            for tp in consumer.assignment():
                await consumer.position(tp)   # resolves "latest" now, not at the first fetch
        except BaseException:
            await consumer.stop()
            raise
        return consumer

    # -- sockets --------------------------------------------------------------------------------

    def watch(self, link: TrackingLink, send: Send) -> Client:
        """Register a tracking socket for ``link``'s delivery (frames queue until ``open``)."""
        client = Client("watcher", send, self.queue_limit, token_hash=link.token_hash,
                        expires_at=link.expires_at, expiry_code=CLOSE_EXPIRED)
        feed = self.feeds.get(link.delivery_id)
        if feed is None:
            feed = self.feeds[link.delivery_id] = DeliveryFeed(link.tenant_id, link.delivery_id)
            self._subscriptions_dirty = True
        elif feed.tenant_id != link.tenant_id:   # a UUID collision across tenants: never mix them
            raise ValueError(f"delivery {link.delivery_id} is watched for another tenant")
        feed.clients.add(client)
        client.feed = feed
        self._register(client)
        return client

    def watch_vendor(self, tenant_id: str, vendor_id: str, token_hash: str, expires_at: float | None,
                     send: Send) -> Client:
        client = Client("vendor", send, self.queue_limit, token_hash=token_hash, expires_at=expires_at,
                        expiry_code=CLOSE_UNAUTHORISED)
        client.vendor_key = (tenant_id, vendor_id)
        self.vendors.setdefault(client.vendor_key, set()).add(client)
        self._register(client)
        return client

    def _register(self, client: Client) -> None:
        self.clients.add(client)
        self.by_token.setdefault(client.token_hash, set()).add(client)
        HUB_CLIENTS.labels(client.kind).inc()

    async def open_watcher(self, client: Client) -> bool:
        """Send the snapshot, then start the client's pump. False if the delivery is gone."""
        feed = client.feed
        assert feed is not None
        try:
            await asyncio.wait_for(feed.subscribed.wait(), SUBSCRIBE_WAIT_S)
        except TimeoutError:
            log.warning("positions of delivery %s not subscribed after %.0f s; sending the snapshot anyway",
                        feed.delivery_id, SUBSCRIBE_WAIT_S)
        snapshot = await load_snapshot(self.db, self.redis, feed.tenant_id, feed.delivery_id)
        if snapshot is None or client.closed:
            return False
        if feed.status is None:
            feed.status = snapshot.status
        if feed.status not in TRACKED_STATUSES:
            client.queue.drop_position()
        client.skip = snapshot.event_ids
        client.queue.discard(snapshot.event_ids)
        client.sending_since = asyncio.get_running_loop().time()
        await client.send({"type": "websocket.send", "text": frame_text(snapshot.frame)})
        client.sending_since = 0.0
        HUB_SENT.labels(client.kind).inc()
        self.start_pump(client)
        return True

    def start_pump(self, client: Client) -> None:
        if not client.closed and client.pump is None:
            client.pump = asyncio.create_task(self._pump(client))

    def forget(self, client: Client) -> None:
        """The socket is gone (or being closed): no more frames for it. Idempotent."""
        if client not in self.clients:
            return
        self.clients.discard(client)
        HUB_CLIENTS.labels(client.kind).dec()
        same_token = self.by_token.get(client.token_hash)
        if same_token is not None:
            same_token.discard(client)
            if not same_token:
                del self.by_token[client.token_hash]
        feed = client.feed
        if feed is not None:
            feed.clients.discard(client)
            if not feed.clients and self.feeds.get(feed.delivery_id) is feed:
                del self.feeds[feed.delivery_id]
                self._subscriptions_dirty = True
        if client.vendor_key is not None:
            screens = self.vendors.get(client.vendor_key)
            if screens is not None:
                screens.discard(client)
                if not screens:
                    del self.vendors[client.vendor_key]
        if client.pump is not None and client.pump is not asyncio.current_task():
            client.pump.cancel()

    def close(self, client: Client, code: int, reason: str) -> None:
        """Close a socket from the hub's side (too slow, expired, revoked)."""
        if client.closed:
            return
        client.closed = True
        self.forget(client)
        self.stats[f"closed_{reason}"] += 1
        HUB_CLOSED.labels(reason).inc()

        async def send_close() -> None:
            # Waits behind whatever the socket has buffered; a peer that never reads again is
            # ended by uvicorn's keepalive, which makes this send fail.
            with contextlib.suppress(Exception):
                await client.send({"type": "websocket.close", "code": code, "reason": reason})

        task = asyncio.get_running_loop().create_task(send_close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def close_token(self, token_hash: str, reason: str = REVOKED_TOKEN) -> None:
        """A link or user token was revoked (by any process): close its sockets here."""
        for client in list(self.by_token.get(token_hash, ())):
            self.close(client, CLOSE_UNAUTHORISED, reason)

    def push(self, client: Client, frame: str, key: str | None = None) -> None:
        if client.closed or (key is not None and key in client.skip):
            return
        if client.queue.put(frame, key):
            client.wake.set()
        else:
            self.close(client, CLOSE_TOO_SLOW, TOO_SLOW)

    async def _pump(self, client: Client) -> None:
        queue, wake, send = client.queue, client.wake, client.send
        loop = asyncio.get_running_loop()
        sent = HUB_SENT.labels(client.kind)
        try:
            while True:
                frame = queue.pop()
                if frame is None:
                    wake.clear()
                    await wake.wait()
                    continue
                client.sending_since = loop.time()
                await send({"type": "websocket.send", "text": frame})
                client.sending_since = 0.0
                self.stats["frames_sent"] += 1
                sent.inc()
        except asyncio.CancelledError:
            raise
        except Exception:   # the peer left (uvicorn's ClientDisconnected): the handler sees it too
            self.forget(client)

    # -- positions and revocations (Redis pub/sub) ----------------------------------------------

    def _wanted_channels(self) -> set[str]:
        return {tracking_key(d) for d in self.feeds} | {LINK_REVOCATIONS_CHANNEL}

    async def _listen_positions(self) -> None:
        while True:
            pubsub = self.redis.pubsub()
            subscribed: set[str] = set()
            self._confirmed.clear()
            try:
                self._subscriptions_dirty = True
                while True:
                    if self._subscriptions_dirty:
                        self._subscriptions_dirty = False
                        wanted = self._wanted_channels()
                        if add := wanted - subscribed:
                            await pubsub.subscribe(*add)
                        if remove := subscribed - wanted:
                            await pubsub.unsubscribe(*remove)
                        subscribed = wanted
                        for feed in self.feeds.values():   # a feed made again while still subscribed
                            if tracking_key(feed.delivery_id) in self._confirmed:
                                feed.subscribed.set()
                    message = await pubsub.get_message(timeout=POLL_S)
                    while message is not None:
                        self._on_pubsub(message)
                        message = await pubsub.get_message(timeout=0)
            except asyncio.CancelledError:
                raise
            except Exception:   # Redis restarted: subscribe again to everything wanted
                log.exception("tracking hub subscription lost; resubscribing")
                for feed in self.feeds.values():
                    feed.subscribed.clear()
                await asyncio.sleep(1)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _on_pubsub(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        channel = as_text(message.get("channel"))
        if kind == "unsubscribe":
            self._confirmed.discard(channel)
            return
        if kind == "subscribe":
            self._confirmed.add(channel)
            if channel == LINK_REVOCATIONS_CHANNEL:
                self._pubsub_ready.set()
            elif (feed := self.feeds.get(channel[len(TRACKING_PREFIX):])) is not None:
                feed.subscribed.set()
            return
        if kind != "message":
            return
        if channel == LINK_REVOCATIONS_CHANNEL:
            self.close_token(as_text(message.get("data")))
            return
        feed = self.feeds.get(channel[len(TRACKING_PREFIX):])
        if feed is None or feed.status not in TRACKED_STATUSES:
            return
        frame = published_position_frame(message.get("data"), feed.tenant_id)
        if frame is None:
            return
        text = frame_text(frame)
        replaced = 0
        for client in feed.clients:
            if not client.closed:
                replaced += client.queue.position is not None
                client.queue.put_position(text)
                client.wake.set()
        HUB_FRAMES.labels("position").inc(len(feed.clients))
        if replaced:
            HUB_COALESCED.inc(replaced)

    # -- status changes and orders (Kafka) ------------------------------------------------------

    async def _consume_events(self) -> None:
        consumer = self._consumer
        while True:
            try:
                if consumer is None:
                    consumer = self._consumer = await self._start_consumer()
                while True:
                    batches = await consumer.getmany(timeout_ms=1000, max_records=1000)
                    orders: list[dict[str, Any]] = []
                    for tp, messages in batches.items():
                        if tp.topic == self.delivery_topic:
                            for message in messages:
                                self._on_delivery_message(message.key, message.value)
                        elif self.vendors:
                            for message in messages:
                                with contextlib.suppress(ValueError, TypeError):
                                    orders.append(json.loads(message.value))
                    if orders:
                        await self._on_order_events(orders)
            except asyncio.CancelledError:
                raise
            except Exception:   # broker away: start again from the latest offsets
                log.exception("tracking hub event consumer failed; restarting")
                if consumer is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(consumer.stop(), 2.0)
                consumer = self._consumer = None
                await asyncio.sleep(1)

    def _on_delivery_message(self, key: bytes | None, value: bytes) -> None:
        feed = self.feeds.get(as_text(key)) if key is not None else None
        if feed is None:
            return
        try:
            event = json.loads(value)
        except (ValueError, TypeError):
            return
        if isinstance(event, dict):
            self.on_delivery_event(event)

    def on_delivery_event(self, event: dict[str, Any]) -> None:
        """One ``delivery-events`` message (``dispatch.deliveries.outbox.event_message``) to its watchers."""
        feed = self.feeds.get(str(event.get("delivery_id")))
        if feed is None or event.get("tenant_id") != feed.tenant_id or not feed.first_time(event.get("id")):
            return
        frame = status_frame(event)
        if frame is None:
            return
        if frame["type"] == "status":
            feed.status = frame["status"]
            if feed.status in TERMINAL:   # no position after the final status; the links' clock runs
                expires_at = epoch_seconds(frame.get("at"), time.time()) + self.grace_s
                for client in feed.clients:
                    client.queue.drop_position()
                    client.expires_at = expires_at
        text = frame_text(frame)
        key = event.get("id") if isinstance(event.get("id"), str) else None
        for client in list(feed.clients):
            self.push(client, text, key)
        HUB_FRAMES.labels(frame["type"]).inc(len(feed.clients))

    async def _on_order_events(self, events: Iterable[dict[str, Any]]) -> None:
        """Order events of vendors with a screen here: each with the order as it now is."""
        by_tenant: dict[str, list[dict[str, Any]]] = {}
        for event in events:
            payload = event.get("payload") if isinstance(event, dict) else None
            if not isinstance(payload, dict):
                continue
            key = (str(event.get("tenant_id")), str(payload.get("vendor_id")))
            if key in self.vendors:
                by_tenant.setdefault(key[0], []).append(event)
        for tenant_id, tenant_events in by_tenant.items():
            try:
                ids = list(dict.fromkeys(uuid.UUID(str(e["payload"]["order_id"])) for e in tenant_events))
                async with self.db.tenant_transaction(tenant_id, readonly=True) as tx:
                    views = {str(r["id"]): view_from_row(r) for r in await tx.fetch(VIEW_SQL, ids)}
            except Exception:   # the screen can reload its list over REST; the next events come
                log.exception("order views of %d events of tenant %s failed", len(tenant_events), tenant_id)
                continue
            for event in tenant_events:
                payload = event["payload"]
                view = views.get(str(payload["order_id"]))
                if view is None or view["vendor_id"] != str(payload.get("vendor_id")):
                    continue
                text = frame_text(order_frame(event, view))
                screens = self.vendors.get((tenant_id, view["vendor_id"]), ())
                for client in list(screens):
                    self.push(client, text)
                HUB_FRAMES.labels("order").inc(len(screens))

    # -- heartbeats, stalls, expiry -------------------------------------------------------------

    async def _janitor(self) -> None:
        loop = asyncio.get_running_loop()
        next_heartbeat = loop.time() + self.heartbeat_s
        while True:
            await asyncio.sleep(1.0 if self.heartbeat_s >= 1 else self.heartbeat_s)
            try:
                self.sweep(loop.time(), time.time(), heartbeat=loop.time() >= next_heartbeat)
            except Exception:
                log.exception("tracking hub sweep failed")
            if loop.time() >= next_heartbeat:
                next_heartbeat = loop.time() + self.heartbeat_s

    def sweep(self, mono: float, now: float, *, heartbeat: bool) -> None:
        beat = frame_text(heartbeat_frame(now)) if heartbeat else None
        for client in list(self.clients):
            if client.sending_since and mono - client.sending_since > self.stall_s:
                self.close(client, CLOSE_TOO_SLOW, TOO_SLOW)
            elif client.expires_at is not None and now >= client.expires_at:
                self.close(client, client.expiry_code, EXPIRED_TOKEN)
            elif beat is not None and client.pump is not None:
                self.push(client, beat)
