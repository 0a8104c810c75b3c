"""Producing validated pings to `driver-locations`: uploads bundled per partition.

One aiokafka producer per gateway process. ``send_upload`` queues one driver's upload (the
encoded array of its pings) and returns when the broker has acknowledged the message holding
it, so a client's ack means the ping is durable in the log. The uploads queued during one
event-loop iteration for the same partition travel as one bundle (``streams.bundles``): one
aiokafka ``send`` and one worker event for all of them instead of one each. Bundling adds no
wait of its own (the flush runs as soon as the loop has served the sockets that were ready);
aiokafka's ``linger_ms`` still batches bundles of several partitions into one request.

A broker that restarted empty (the bundled tansu keeps topics in memory) has lost the topics:
after a failed produce the next ``send`` to that topic first creates it again, with the
partition count it was ensured with (``ensure_topic``; the locations topic is always known),
bounded by TOPIC_CHECK_TIMEOUT_S. A failure there is the same ``BrokerUnavailable`` as a failed
produce, so callers keep one error path.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from schema.errors import WakalaError
from streams import bundles, codec
from streams.records import SCHEMA_VERSION
from streams.settings import StreamSettings
from streams.topics import ensure_topics

TOPIC_CHECK_TIMEOUT_S = 5.0
PARTITION_CACHE_MAX = 200_000
BUSY_UPLOADS_PER_S = 250.0
RATE_WINDOW_S = 0.2   # above this rate a process bundles for bundle_wait_ms


class BrokerUnavailable(WakalaError):
    """The Kafka broker does not answer or refused a produce."""


def encode_pings(pings, *, tenant_id: str, vehicle_type: str, received_at: float) -> bytes:
    """One driver's upload as one message: a JSON array of DriverPing objects (streams.decode)."""
    return codec.dumps([_ping_object(p, tenant_id, vehicle_type, received_at) for p in pings])


def _ping_object(ping, tenant_id: str, vehicle_type: str, received_at: float) -> dict:
    return {
        "v": SCHEMA_VERSION,
        "driver_id": ping.driver_id,
        "tenant_id": tenant_id,
        "lat": ping.lat,
        "lng": ping.lng,
        "accuracy_m": ping.accuracy,
        "speed_mps": ping.speed,
        "heading_deg": ping.heading,
        "ts": ping.timestamp,
        "received_at": received_at,
        "vehicle_type": vehicle_type,
        "battery": ping.battery,
    }


class PingProducer:
    def __init__(self, settings: StreamSettings, *, linger_ms: float | None = None,
                 bundle_wait_ms: float | None = None, request_timeout_ms: int = 15000) -> None:
        """``linger_ms`` and ``bundle_wait_ms`` default to the settings' (see StreamSettings)."""
        self.settings = settings
        linger_ms = settings.producer_linger_ms if linger_ms is None else linger_ms
        bundle_wait_ms = settings.bundle_wait_ms if bundle_wait_ms is None else bundle_wait_ms
        self.bundle_wait_s = bundle_wait_ms / 1000
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            linger_ms=linger_ms,
            max_batch_size=512 * 1024,
            acks=1,
            enable_idempotence=False,  # tansu refuses InitProducerId; at-least-once + idempotent consumers
            request_timeout_ms=request_timeout_ms,
        )
        self._started = False
        # topic -> partitions, for recreating a topic after the broker lost it
        self._partitions: dict[str, int] = {settings.locations_topic: settings.locations_partitions}
        self._suspect: set[str] = set()   # topics whose last produce failed
        self._partition_counts: dict[str, int] = {}
        self._partition_of: dict[tuple[bytes, int], int] = {}
        # (topic, partition) -> uploads waiting for the next flush, with their callers' futures
        self._queued: dict[tuple[str, int], list[tuple[bytes, asyncio.Future[None]]]] = {}
        self._flusher: asyncio.Task | None = None
        self._last_flush = float("-inf")
        self._upload_rate = 0.0        # uploads per second over the last RATE_WINDOW_S or more
        self._window_start = 0.0
        self._window_uploads = 0
        self.bundles_sent = 0
        self.uploads_sent = 0

    @property
    def kafka(self) -> AIOKafkaProducer:
        """The underlying producer, for other topics of the engine (the outbox relay)."""
        return self._producer

    async def ensure_topic(self, topic: str | None = None, partitions: int | None = None) -> None:
        """Create a topic (default: the locations topic, with the configured partitions) if it
        does not exist yet.

        Whichever starts first, gateway or worker, must not let the broker auto-create the
        topic with its own default partition count.
        """
        topic = topic or self.settings.locations_topic
        partitions = partitions or self._partitions.get(topic) or self.settings.locations_partitions
        self._partitions[topic] = partitions
        await ensure_topics(self.settings.kafka_bootstrap, {topic: partitions})

    async def start(self) -> None:
        try:
            await self.ensure_topic()
            await self._producer.start()
        except (KafkaError, OSError, TimeoutError) as exc:
            await self._producer.stop()
            raise BrokerUnavailable(
                f"no Kafka broker answers at {self.settings.kafka_bootstrap} ({exc}); run `wakala services up`"
            ) from None
        self._started = True

    async def stop(self) -> None:
        queued, self._queued = self._queued, {}
        for items in queued.values():
            self._failed_quietly([future for _, future in items])
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
        if self._started:
            await self._producer.stop()
            self._started = False

    async def send_upload(self, topic: str, key: bytes, value: bytes) -> None:
        """Produce one driver's upload (``encode_pings``) keyed ``key``, bundled with the other
        uploads of this loop iteration for the same partition; returns when the broker has it.
        Raises ``BrokerUnavailable`` when it was not produced."""
        if topic in self._suspect:
            await self._recreate(topic)
        count = self._partition_counts.get(topic)
        if count is None:
            try:
                count = len(await self._producer.partitions_for(topic))
            except (KafkaError, TimeoutError) as exc:
                if topic in self._partitions:
                    self._suspect.add(topic)
                raise BrokerUnavailable(f"no partitions known for {topic}: {exc}") from exc
            self._partition_counts[topic] = count
        partition = self._partition_of.get((key, count))
        if partition is None:   # murmur2 in Python costs a few µs; drivers repeat every upload
            if len(self._partition_of) >= PARTITION_CACHE_MAX:
                self._partition_of.clear()
            partition = self._partition_of[key, count] = bundles.partition_of(key, count)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.setdefault((topic, partition), []).append((value, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="bundle-flush")
        await future

    async def _flush(self) -> None:
        # Busy (more than BUSY_UPLOADS_PER_S lately): at most one flush per ``bundle_wait_s``,
        # so the uploads of a whole interval share a bundle (fewer, larger messages: the broker's
        # cost follows the message count). Quiet: flush at once, with whatever this loop
        # iteration adds, so a lone driver's ping pays no wait.
        loop = asyncio.get_running_loop()
        unsent: list[tuple[str, int, list[tuple[bytes, asyncio.Future[None]]]]] = []
        try:
            delay = 0.0
            if self._upload_rate >= BUSY_UPLOADS_PER_S:
                delay = max(0.0, self._last_flush + self.bundle_wait_s - loop.time())
            await asyncio.sleep(delay)
            now = loop.time()
            # The rate over windows of at least RATE_WINDOW_S (a burst of two uploads in the
            # same millisecond is not a busy process).
            self._window_uploads += sum(len(items) for items in self._queued.values())
            span = now - self._window_start
            if span >= RATE_WINDOW_S:
                self._upload_rate = self._window_uploads / span
                self._window_start, self._window_uploads = now, 0
            self._last_flush = now
            while self._queued:
                queued, self._queued = self._queued, {}
                unsent = [(topic, partition, items[start:end]) for (topic, partition), items in queued.items()
                          for start, end in bundles.split([len(value) for value, _ in items])]
                unsent.reverse()
                while unsent:
                    topic, partition, chunk = unsent.pop()
                    await self._send_bundle(topic, partition, chunk)
        finally:   # whatever stopped the flush, no caller waits for an upload nobody will send
            for topic, _, chunk in unsent:
                self._failed(topic, [future for _, future in chunk], RuntimeError("the flush stopped"))
            if self._queued and (self._flusher is None or self._flusher is asyncio.current_task()):
                self._flusher = loop.create_task(self._flush(), name="bundle-flush")

    async def _send_bundle(self, topic: str, partition: int,
                           items: list[tuple[bytes, asyncio.Future[None]]]) -> None:
        waiting = [future for _, future in items]
        try:
            sent = await self._producer.send(topic, value=bundles.frame([value for value, _ in items]),
                                             partition=partition)
        except BaseException as exc:  # every waiting caller gets the failure, a cancellation too
            self._failed(topic, waiting, exc)
            if not isinstance(exc, Exception):
                raise
            return
        self.bundles_sent += 1
        self.uploads_sent += len(items)
        sent.add_done_callback(lambda done: self._settle(topic, waiting, done))

    def _settle(self, topic: str, waiting: list[asyncio.Future[None]], done: asyncio.Future) -> None:
        if done.cancelled():
            self._failed(topic, waiting, asyncio.CancelledError())
        elif done.exception() is not None:
            self._failed(topic, waiting, done.exception())
        else:
            for future in waiting:
                if not future.done():
                    future.set_result(None)

    def _failed(self, topic: str, waiting: list[asyncio.Future[None]], exc: BaseException) -> None:
        if topic in self._partitions:
            self._suspect.add(topic)
        self._partition_counts.pop(topic, None)
        error = BrokerUnavailable(f"producing to {topic} failed: {exc}")
        for future in waiting:
            if not future.done():
                future.set_exception(error)

    @staticmethod
    def _failed_quietly(waiting: list[asyncio.Future[None]]) -> None:
        for future in waiting:
            if not future.done():
                future.set_exception(BrokerUnavailable("the producer stopped"))

    async def _recreate(self, topic: str) -> None:
        """After a failed produce: create the topic again if the broker lost it."""
        try:
            async with asyncio.timeout(TOPIC_CHECK_TIMEOUT_S):
                await ensure_topics(self.settings.kafka_bootstrap, {topic: self._partitions[topic]})
        except (KafkaError, OSError, TimeoutError) as exc:
            raise BrokerUnavailable(f"the broker does not answer for topic {topic}: {exc}") from exc
        self._suspect.discard(topic)
