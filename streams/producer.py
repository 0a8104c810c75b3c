"""Producing validated pings to `driver-locations`, batched, keyed by driver id.

One aiokafka producer per gateway process. ``send_pings`` hands every ping of a request to
the producer at once (no per-ping round trip; the producer's linger batches requests from
many connections together) and returns when the broker has acknowledged them, so a client's
ack means the ping is durable in the log.

A broker that restarted empty (the bundled tansu keeps topics in memory) has lost the topics:
after a failed produce the next ``send`` to that topic first creates it again, with the
partition count it was ensured with (``ensure_topic``; the locations topic is always known),
bounded by TOPIC_CHECK_TIMEOUT_S. A failure there is the same ``BrokerUnavailable`` as a failed
produce, so callers keep one error path.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from schema.errors import WakalaError
from streams.records import SCHEMA_VERSION
from streams.settings import StreamSettings
from streams.topics import ensure_topics

TOPIC_CHECK_TIMEOUT_S = 5.0


class BrokerUnavailable(WakalaError):
    """The Kafka broker does not answer or refused a produce."""


def encode_pings(pings, *, tenant_id: str, vehicle_type: str, received_at: float) -> bytes:
    """One driver's upload as one message: a JSON array of DriverPing objects (streams.decode)."""
    return json.dumps([_ping_object(p, tenant_id, vehicle_type, received_at) for p in pings],
                      separators=(",", ":")).encode()


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
    def __init__(self, settings: StreamSettings, *, linger_ms: int = 5,
                 request_timeout_ms: int = 15000) -> None:
        self.settings = settings
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
        if self._started:
            await self._producer.stop()
            self._started = False

    async def send(self, topic: str, values: Sequence[tuple[bytes, bytes]]) -> None:
        """Produce (key, value) pairs and wait until the broker has all of them."""
        if topic in self._suspect:
            await self._recreate(topic)
        try:
            futures = [await self._producer.send(topic, value=v, key=k) for k, v in values]
            await asyncio.gather(*futures)
        except KafkaError as exc:
            if topic in self._partitions:
                self._suspect.add(topic)
            raise BrokerUnavailable(f"producing to {topic} failed: {exc}") from exc

    async def _recreate(self, topic: str) -> None:
        """After a failed produce: create the topic again if the broker lost it."""
        try:
            async with asyncio.timeout(TOPIC_CHECK_TIMEOUT_S):
                await ensure_topics(self.settings.kafka_bootstrap, {topic: self._partitions[topic]})
        except (KafkaError, OSError, TimeoutError) as exc:
            raise BrokerUnavailable(f"the broker does not answer for topic {topic}: {exc}") from exc
        self._suspect.discard(topic)
