"""The gateway's producer bundles concurrent uploads per partition; every upload arrives once,
on its driver's partition, in the order it was sent."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import replace

from aiokafka import AIOKafkaConsumer

from streams.bundles import partition_of
from streams.decode import decode_message
from streams.producer import PingProducer

PARTITIONS = 3


def _upload(driver: str, tenant: str, seq: int) -> bytes:
    now = time.time()
    return json.dumps([{"v": 1, "driver_id": driver, "tenant_id": tenant, "lat": -26.2 + seq * 1e-5,
                        "lng": 28.04, "accuracy_m": 5.0, "speed_mps": 3.0, "heading_deg": 0.0,
                        "ts": now - 100 + seq, "received_at": now, "vehicle_type": "motorbike"}]).encode()


async def _read(settings, expect: int) -> list[tuple[int, str, float]]:
    consumer = AIOKafkaConsumer(settings.locations_topic, bootstrap_servers=settings.kafka_bootstrap,
                                auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    seen: list[tuple[int, str, float]] = []
    try:
        deadline = time.monotonic() + 20
        while len(seen) < expect and time.monotonic() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                for record in records:
                    pings, rejected = decode_message(record.value)
                    assert rejected == []
                    seen += [(tp.partition, p.driver_id, p.ts) for p in pings]
    finally:
        await consumer.stop()
    return seen


async def test_concurrent_uploads_share_bundles_and_keep_each_drivers_order(stream_settings):
    settings = replace(stream_settings, locations_partitions=PARTITIONS)
    tenant = str(uuid.uuid4())
    drivers = [str(uuid.uuid4()) for _ in range(40)]
    producer = PingProducer(settings, bundle_wait_ms=20)
    await producer.start()
    try:
        for seq in range(5):   # five rounds; in each, every driver uploads at once
            await asyncio.gather(*(producer.send_upload(settings.locations_topic, d.encode(), _upload(d, tenant, seq))
                                   for d in drivers))
        assert producer.uploads_sent == 200
        assert producer.bundles_sent <= 5 * PARTITIONS   # one bundle per partition per round
    finally:
        await producer.stop()
    seen = await _read(settings, 200)
    assert len(seen) == 200
    for driver in drivers:
        mine = [(partition, ts) for partition, d, ts in seen if d == driver]
        assert {partition for partition, _ in mine} == {partition_of(driver.encode(), PARTITIONS)}
        assert [ts for _, ts in mine] == sorted(ts for _, ts in mine) and len(mine) == 5

