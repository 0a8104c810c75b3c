"""The outbox relay's metrics: what a sweep finds unpublished per shard and how old it is, events
published, and failed passes, as /metrics reports them."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY

from dispatch.deliveries.outbox import OutboxRelay
from dispatch.deliveries.store import transition
from tests.integration.deliveries.test_outbox import UnreachableBroker
from tests.integration.deliveries.test_store import T0, world  # noqa: F401 - the fixture

pytestmark = pytest.mark.timeout(120)
TABLE = "delivery_events_outbox"


def _value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_a_stuck_broker_shows_as_an_ageing_backlog_and_a_published_one_as_none(world, stream_settings):  # noqa: F811
    db, w = world
    await transition(db, w.tenant.id, w.delivery_id, "offer", at=T0, driver_id=w.driver_id)
    shard = str((await db.placement(w.tenant.id)).shard_id)
    failed_before = _value("wakala_outbox_failures_total", outbox=TABLE) or 0
    stuck = OutboxRelay(db, UnreachableBroker(), stream_settings.delivery_events_topic)

    assert await stuck.publish_all([w.tenant.id], measure=True) == 0
    rows, oldest, _ = stuck.backlog[int(shard)]
    assert rows == 2 and oldest is not None and oldest >= 0           # created + offer, unpublished
    assert _value("wakala_outbox_failures_total", outbox=TABLE) == failed_before + 1
    assert _value("wakala_outbox_unpublished", outbox=TABLE, shard=shard) >= 2
    first = _value("wakala_outbox_oldest_unpublished_seconds", outbox=TABLE, shard=shard)
    await asyncio.sleep(0.2)
    assert _value("wakala_outbox_oldest_unpublished_seconds", outbox=TABLE, shard=shard) >= first + 0.15
    del stuck   # its figures leave /metrics with it

    published_before = _value("wakala_outbox_published_total", outbox=TABLE) or 0
    producer = AIOKafkaProducer(bootstrap_servers=stream_settings.kafka_bootstrap, linger_ms=2)
    await producer.start()
    try:
        relay = OutboxRelay(db, producer, stream_settings.delivery_events_topic)
        assert await relay.publish_all([w.tenant.id], measure=True) == 2
        assert relay.backlog[int(shard)][0] == 2                      # found before publishing them
        assert _value("wakala_outbox_published_total", outbox=TABLE) == published_before + 2
        await transition(db, w.tenant.id, w.delivery_id, "accept", at=T0 + timedelta(seconds=5))
        assert await relay.publish_all([w.tenant.id]) == 1            # a notified pass measures nothing
        assert relay.backlog[int(shard)][0] == 2
        assert await relay.publish_all([w.tenant.id], measure=True) == 0
        assert relay.backlog[int(shard)][:2] == (0, None)             # the next sweep: nothing waiting
    finally:
        await producer.stop()


async def test_a_tenant_that_cannot_be_measured_leaves_the_others_measured(world, stream_settings):  # noqa: F811
    db, w = world
    relay = OutboxRelay(db, UnreachableBroker(), stream_settings.delivery_events_topic)
    await relay.publish_all(["not-a-tenant", w.tenant.id], measure=True)
    shard = (await db.placement(w.tenant.id)).shard_id
    assert relay.backlog[shard][0] == 1                               # the delivery's "created"
