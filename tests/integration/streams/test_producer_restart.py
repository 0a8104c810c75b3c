"""The gateway's producer across a broker that restarts empty: after a failed produce it
creates the topic again (with our partition count, not the broker's default) and produces."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from types import SimpleNamespace

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from streams.producer import BrokerUnavailable, PingProducer, encode_pings
from tests.integration.private_services import private_tansu
from tests.integration.streams.harness import JOBURG, new_ids

PARTITIONS = 3     # the tansu default is 4: a topic with 3 was created by us


def _upload(driver: str, tenant: str) -> bytes:
    fix = SimpleNamespace(driver_id=driver, lat=JOBURG[0], lng=JOBURG[1], accuracy=5.0, speed=8.0,
                          heading=90.0, timestamp=time.time(), battery=None)
    return encode_pings([fix], tenant_id=tenant, vehicle_type="motorbike", received_at=time.time())


async def _partitions(bootstrap: str, topic: str) -> int | None:
    """Partitions of ``topic`` if the broker lists it (listing never auto-creates it)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            return None
        (described,) = await admin.describe_topics([topic])
        return len(described["partitions"])
    finally:
        await admin.close()


async def test_the_producer_recreates_its_topic_after_the_broker_lost_it(stream_settings):
    driver, tenant = new_ids()
    async with private_tansu() as broker:
        settings = replace(stream_settings, kafka_bootstrap=f"127.0.0.1:{broker.port}",
                           locations_partitions=PARTITIONS)
        producer = PingProducer(settings, request_timeout_ms=2000)
        await producer.start()
        try:
            topic = settings.locations_topic
            await producer.send_upload(topic, driver.encode(), _upload(driver, tenant))
            assert await _partitions(settings.kafka_bootstrap, topic) == PARTITIONS

            broker.kill()
            with pytest.raises(BrokerUnavailable):
                await asyncio.wait_for(producer.send_upload(topic, driver.encode(), _upload(driver, tenant)), 30)
            await broker.start()                          # back, empty
            assert await _partitions(settings.kafka_bootstrap, topic) is None

            deadline = time.monotonic() + 30
            while True:
                try:
                    await producer.send_upload(topic, driver.encode(), _upload(driver, tenant))
                    break
                except BrokerUnavailable:
                    assert time.monotonic() < deadline, "the producer never recovered"
                    await asyncio.sleep(0.2)
            assert await _partitions(settings.kafka_bootstrap, topic) == PARTITIONS
        finally:
            await producer.stop()
