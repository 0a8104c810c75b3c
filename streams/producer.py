"""Producing validated pings to `driver-locations`, batched, keyed by driver id.

One aiokafka producer per gateway process. ``send_pings`` hands every ping of a request to
the producer at once (no per-ping round trip; the producer's linger batches requests from
many connections together) and returns when the broker has acknowledged them, so a client's
ack means the ping is durable in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from schema.errors import WakalaError
from streams.records import SCHEMA_VERSION
from streams.settings import StreamSettings


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
    def __init__(self, settings: StreamSettings, *, linger_ms: int = 5) -> None:
        self.settings = settings
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            linger_ms=linger_ms,
            max_batch_size=512 * 1024,
            acks=1,
            enable_idempotence=False,  # tansu refuses InitProducerId; at-least-once + idempotent consumers
            request_timeout_ms=15000,
        )
        self._started = False

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
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.errors import TopicAlreadyExistsError

        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap)
        try:
            await admin.start()
            topic = topic or self.settings.locations_topic
            partitions = partitions or self.settings.locations_partitions
            if topic not in set(await admin.list_topics()):
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics([NewTopic(topic, partitions, 1)])
        finally:
            await admin.close()

    async def start(self) -> None:
        try:
            await self.ensure_topic()
            await self._producer.start()
        except KafkaError as exc:
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
        try:
            futures = [await self._producer.send(topic, value=v, key=k) for k, v in values]
            await asyncio.gather(*futures)
        except KafkaError as exc:
            raise BrokerUnavailable(f"producing to {topic} failed: {exc}") from exc
