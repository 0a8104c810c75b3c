"""The dispatcher's consumer and the outbox relay when the broker restarts empty (topics gone).

The broker is a private memory-only tansu on a spare port (``tests.integration.streams.harness.
private_tansu``) that the test kills with SIGKILL and starts again; Redis and Postgres are the
shared servers with this test's own keys and databases.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from dispatch.deliveries.outbox import OutboxRelay, ensure_topic
from dispatch.deliveries.store import transition
from dispatch.matching.consumer import EventConsumer
from dispatch.matching.keys import dispatcher_event_key, dispatcher_offsets_key
from tests.integration.deliveries.test_outbox import _unpublished
from tests.integration.deliveries.test_store import world  # noqa: F401 - the fixture
from tests.integration.private_services import private_tansu
from tests.integration.streams.harness import eventually

pytestmark = pytest.mark.timeout(180)


class Recorder:
    mode, window_s = "greedy", 0.2

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.seen: list[str] = []

    async def handle(self, events: list[dict]) -> list[dict]:
        self.seen += [e["id"] for e in events]
        return []


def _event(n: int) -> dict:
    return {"id": f"ev-{n}-{uuid.uuid4()}", "tenant_id": str(uuid.uuid4()), "delivery_id": str(uuid.uuid4()),
            "type": "cancel"}


async def _send(bootstrap: str, topic: str, events: list[dict]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for e in events:
            await producer.send_and_wait(topic, json.dumps(e).encode(), key=e["delivery_id"].encode())
    finally:
        await producer.stop()


async def _partitions(bootstrap: str, topic: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            return 0
        return len((await admin.describe_topics([topic]))[0]["partitions"])
    finally:
        await admin.close()


async def test_the_dispatcher_consumer_recreates_its_topic_and_resumes(stream_settings):
    topic, group = "delivery-events", f"{stream_settings.app_id}-restart"
    redis = aioredis.from_url(stream_settings.redis_url)
    handler = Recorder(redis)
    before, after = [_event(n) for n in range(3)], [_event(10 + n) for n in range(2)]
    async with private_tansu() as broker:
        bootstrap = f"127.0.0.1:{broker.port}"
        consumer = EventConsumer(handler, bootstrap, topic, group, partitions=2, watch_s=0.3,
                                 backoff_min_s=0.1, backoff_max_s=1.0)
        task = asyncio.create_task(consumer.run())
        try:
            await eventually(lambda: _partitions(bootstrap, topic), within=30, every=0.2)   # it made the topic
            await _send(bootstrap, topic, before)
            await eventually(lambda: _all_seen(handler, before), within=30, every=0.1)

            await broker.restart()          # empty: no topic, no records
            assert await _partitions(bootstrap, topic) == 0
            await eventually(lambda: _partitions(bootstrap, topic), within=60, every=0.2)   # recreated
            assert await _partitions(bootstrap, topic) == 2
            await _send(bootstrap, topic, after)
            await eventually(lambda: _all_seen(handler, after), within=60, every=0.1)
            assert sorted(handler.seen) == sorted(e["id"] for e in before + after)   # each once
            positions = await redis.hgetall(dispatcher_offsets_key(group, topic))
            assert sum(int(v) for v in positions.values()) == len(after)   # reset to the new topic
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await redis.delete(dispatcher_offsets_key(group, topic),
                               *(dispatcher_event_key(group, e["id"]) for e in before + after))
            await redis.aclose()


async def test_a_batch_of_events_is_not_taken_for_a_recreated_topic(stream_settings, caplog):
    # tansu reports a partition's end as its last batch's base offset + 1: after one produce
    # request carrying several events the end it lists is short of what the consumer has read
    topic, group = "delivery-events", f"{stream_settings.app_id}-batch"
    redis = aioredis.from_url(stream_settings.redis_url)
    handler = Recorder(redis)
    events = [_event(20 + n) for n in range(5)]
    async with private_tansu() as broker:
        bootstrap = f"127.0.0.1:{broker.port}"
        await ensure_topic(bootstrap, topic, 1)
        consumer = EventConsumer(handler, bootstrap, topic, group, partitions=1, watch_s=0.2,
                                 backoff_min_s=0.1, backoff_max_s=1.0)
        task = asyncio.create_task(consumer.run())
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50)
        await producer.start()
        try:
            sent = [await producer.send(topic, json.dumps(e).encode(), partition=0) for e in events]
            await asyncio.gather(*sent)   # one request, one batch of five
            await eventually(lambda: _all_seen(handler, events), within=30, every=0.1)
            await asyncio.sleep(1.5)      # several idle checks of the topic
            assert not [r for r in caplog.records if "recreated" in r.getMessage()]
            positions = await redis.hgetall(dispatcher_offsets_key(group, topic))
            assert {k: int(v) for k, v in positions.items()} == {b"0": 5}
        finally:
            await producer.stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await redis.delete(dispatcher_offsets_key(group, topic),
                               *(dispatcher_event_key(group, e["id"]) for e in events))
            await redis.aclose()


async def _all_seen(handler: Recorder, events: list[dict]) -> bool:
    return all(e["id"] in handler.seen for e in events)


async def test_the_outbox_relay_recreates_its_topic_and_relays_again(world, stream_settings):  # noqa: F811
    db, w = world
    topic = "delivery-events"
    async with private_tansu() as broker:
        bootstrap = f"127.0.0.1:{broker.port}"
        await ensure_topic(bootstrap, topic, 3)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
        await producer.start()
        relay = OutboxRelay(db, producer, topic, bootstrap=bootstrap, partitions=3)
        task = asyncio.create_task(relay.run(db.settings, sweep_s=0.3))
        try:
            await eventually(lambda: _none_unpublished(db, w.tenant.id), within=30, every=0.1)
            await broker.restart()
            await transition(db, w.tenant.id, w.delivery_id, "offer", driver_id=w.driver_id)
            await eventually(lambda: _partitions(bootstrap, topic), within=60, every=0.2)
            await eventually(lambda: _none_unpublished(db, w.tenant.id), within=60, every=0.1)
            assert await _partitions(bootstrap, topic) == 3
            consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                        group_id=None, enable_auto_commit=False)
            await consumer.start()
            try:
                seen: list[dict] = []

                async def offered() -> bool:
                    for records in (await consumer.getmany(timeout_ms=200)).values():
                        seen.extend(json.loads(r.value) for r in records)
                    return any(e["type"] == "offer" for e in seen)

                await eventually(offered, within=30, every=0.05)
            finally:
                await consumer.stop()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await producer.stop()


async def _none_unpublished(db, tenant_id) -> bool:
    return await _unpublished(db, tenant_id) == 0
