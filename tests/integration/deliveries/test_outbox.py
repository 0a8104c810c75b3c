"""Outbox relay: delivery events reach Kafka after commit, in order, once marked; none lost on failure."""

import json
import time
from datetime import timedelta

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError

from dispatch.deliveries.outbox import OutboxRelay
from dispatch.deliveries.store import transition
from tests.integration.deliveries.test_store import T0, world  # noqa: F401 - the fixture

pytestmark = pytest.mark.timeout(120)


async def _events(bootstrap, topic, expect, wait_s=5.0):
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    out = []
    try:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and len(out) < expect:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                out.extend((r.key.decode(), json.loads(r.value)) for r in records)
    finally:
        await consumer.stop()
    return out


async def _unpublished(db, tenant_id):
    async with db.tenant_transaction(tenant_id, readonly=True) as tx:
        return await tx.fetchval("SELECT count(*) FROM delivery_events_outbox WHERE published_at IS NULL")


async def test_events_are_published_in_order_once_and_marked(world, stream_settings):  # noqa: F811
    db, w = world
    await transition(db, w.tenant.id, w.delivery_id, "offer", at=T0, driver_id=w.driver_id)
    await transition(db, w.tenant.id, w.delivery_id, "accept", at=T0 + timedelta(seconds=5))
    await transition(db, w.tenant.id, w.delivery_id, "arrive_pickup", at=T0 + timedelta(seconds=300))
    producer = AIOKafkaProducer(bootstrap_servers=stream_settings.kafka_bootstrap, linger_ms=2)
    await producer.start()
    try:
        relay = OutboxRelay(db, producer, stream_settings.delivery_events_topic)
        assert await relay.publish_all([w.tenant.id]) == 4
        assert await relay.publish_all([w.tenant.id]) == 0   # nothing twice
    finally:
        await producer.stop()
    events = await _events(stream_settings.kafka_bootstrap, stream_settings.delivery_events_topic, 4)
    assert [k for k, _ in events] == [str(w.delivery_id)] * 4
    assert [e["type"] for _, e in events] == ["created", "offer", "accept", "arrive_pickup"]
    assert [e["payload"]["to_state"] for _, e in events] == ["pending", "offered", "assigned", "at_pickup"]
    assert len({e["id"] for _, e in events}) == 4 and all(e["tenant_id"] == str(w.tenant.id) for _, e in events)
    assert await _unpublished(db, w.tenant.id) == 0


class UnreachableBroker:
    """Stands in for a producer whose broker is down (a stopped aiokafka producer hangs instead)."""

    async def send(self, topic, value=None, key=None):
        raise KafkaConnectionError("broker unreachable")


async def test_a_broker_failure_loses_nothing(world, stream_settings):  # noqa: F811
    db, w = world
    await transition(db, w.tenant.id, w.delivery_id, "offer", at=T0, driver_id=w.driver_id)
    relay = OutboxRelay(db, UnreachableBroker(), stream_settings.delivery_events_topic)
    with pytest.raises(KafkaError):
        await relay.publish_tenant(w.tenant.id)
    assert await _unpublished(db, w.tenant.id) == 2   # created + offer, rolled back: still waiting
    assert await relay.publish_all([w.tenant.id]) == 0   # logged, retried next pass
    producer = AIOKafkaProducer(bootstrap_servers=stream_settings.kafka_bootstrap)
    await producer.start()
    try:
        assert await OutboxRelay(db, producer, stream_settings.delivery_events_topic).publish_all([w.tenant.id]) == 2
    finally:
        await producer.stop()
    events = await _events(stream_settings.kafka_bootstrap, stream_settings.delivery_events_topic, 2)
    assert [e["type"] for _, e in events] == ["created", "offer"]
