"""A running location worker serves its metrics on its own port: batch sizes, the Redis write's
time, pings by outcome and the lag per partition, after real pings through the real broker
and Redis."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import replace

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from loadtest.processes import free_port
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

pytestmark = pytest.mark.timeout(120)


def _sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if series.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            return float(value)
    return None


async def test_the_worker_serves_its_batch_redis_outcome_and_lag_metrics(stream_settings):
    port = free_port()
    settings = replace(stream_settings, metrics_port=port)
    redis = Redis.from_url(settings.redis_url)
    tenant = new_ids()[1]
    drivers = [new_ids()[0] for _ in range(30)]
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=2)
    await producer.start()
    try:
        async with running_worker(settings) as app, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            before = (await http.get("/metrics")).text
            now = time.time()
            sent = [await producer.send(settings.locations_topic, key=d.encode(),
                                        value=raw(ping(d, tenant, *JOBURG, now - 60 + k)))
                    for k, d in enumerate(drivers)]
            sent.append(await producer.send(settings.locations_topic, key=b"x", value=b"{not json"))
            await asyncio.gather(*sent)
            await eventually(lambda: _landed(app, len(drivers)), within=20)

            async def lag_sampled() -> str | None:   # every partition sampled, nothing left to land
                text = (await http.get("/metrics")).text
                lags = [_sample(text, "wakala_worker_lag_messages", partition=str(p))
                        for p in range(settings.locations_partitions)]
                return text if all(v == 0 for v in lags) else None

            after = await eventually(lag_sampled, within=20, every=0.5)
    finally:
        await producer.stop()
        await forget_drivers(redis, drivers, [tenant])
        await redis.delete(ingest_offsets_key(settings.app_id, settings.locations_topic))
        await redis.aclose()

    def grew(name: str, **labels: str) -> float:
        return (_sample(after, name, **labels) or 0) - (_sample(before, name, **labels) or 0)

    assert grew("wakala_worker_pings_total", outcome="accepted") == len(drivers)
    assert grew("wakala_worker_pings_total", outcome="dead_letter") == 1
    assert grew("wakala_worker_batch_pings_sum") == len(drivers)      # the bad message decoded to none
    batches = grew("wakala_worker_batch_pings_count")
    assert batches >= 1
    assert 1 <= grew("wakala_worker_redis_write_seconds_count") <= batches
    assert 0 < grew("wakala_worker_redis_write_seconds_sum") < 5
    assert re.search(r'^wakala_worker_lag_messages\{partition="0"\} 0\.0$', after, re.M)


async def test_a_worker_without_a_metrics_port_serves_none(stream_settings):
    port = free_port()
    async with running_worker(stream_settings):
        async with httpx.AsyncClient() as http:
            with pytest.raises(httpx.TransportError):
                await http.get(f"http://127.0.0.1:{port}/metrics", timeout=1)


async def _landed(app, n: int) -> bool:
    return app.ingest_stats["accepted"] >= n and app.ingest_stats["dead_letter"] >= 1
