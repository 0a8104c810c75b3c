"""The worker's real lag: its landed offsets per partition are in Redis as soon as a batch has
landed, so the end offset minus the landed offset is 0 once everything landed (committed
offsets only catch up at faust's next commit). The produced offsets stand in for the end
offsets (the topic is this test's own and nothing else writes to it)."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from streams.keys import ingest_offsets_key
from tests.integration.streams.harness import (
    JOBURG,
    eventually,
    forget_drivers,
    new_ids,
    ping,
    raw,
    running_worker,
)


async def test_landed_offsets_give_the_real_lag(stream_settings):
    settings = stream_settings
    redis = Redis.from_url(settings.redis_url)
    tenant = new_ids()[1]
    drivers = [new_ids()[0] for _ in range(40)]
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=2)
    await producer.start()
    key = ingest_offsets_key(settings.app_id, settings.locations_topic)
    try:
        async with running_worker(settings) as app:
            now = time.time()
            sent = [await producer.send(settings.locations_topic, key=driver.encode(),
                                        value=raw(ping(driver, tenant, *JOBURG, now - 60 + k)))
                    for k, driver in enumerate(drivers)]
            ends: dict[int, int] = {}
            for record in await asyncio.gather(*sent):
                ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
            await eventually(lambda: _accepted(app, len(drivers)), within=20)
            landed = {int(p): int(o) for p, o in (await redis.hgetall(key)).items()}
            assert landed == ends                                        # real lag: 0
            assert 0 < await redis.ttl(key) <= 120
    finally:
        await producer.stop()
        await forget_drivers(redis, drivers, [tenant])
        await redis.delete(key)
        await redis.aclose()


async def _accepted(app, n: int) -> bool:
    return app.ingest_stats["accepted"] >= n
