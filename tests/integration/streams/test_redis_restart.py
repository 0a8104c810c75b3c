"""The worker and a Redis that restarts empty: positions land again from the next pings, the
write script is loaded again (no NOSCRIPT failure), and no driver becomes available without a
``driver:state`` (rebuilding state is the engine's business, not the worker's).

Redis here is a private ``redis-server`` on a spare port that the test kills with SIGKILL and
starts again without persistence; the broker is the shared one, with this test's own topics.
"""

from __future__ import annotations

import time
from dataclasses import replace

from aiokafka import AIOKafkaProducer
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from streams.keys import available_key, location_key
from streams.location_store import LocationStore
from tests.integration.private_services import private_redis
from tests.integration.streams.harness import (
    JOBURG,
    eventually,
    new_ids,
    ping,
    raw,
    running_worker,
)


async def test_positions_land_again_after_redis_restarts_empty(stream_settings):
    driver, tenant = new_ids()
    async with private_redis() as server:
        settings = replace(stream_settings, redis_url=f"redis://127.0.0.1:{server.port}/0")
        redis = Redis.from_url(settings.redis_url)
        store = LocationStore(redis, settings)
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=2)
        await producer.start()

        async def send(ts: float, east: float = 0.0) -> None:
            body = ping(driver, tenant, JOBURG[0], JOBURG[1] + east, ts)
            await producer.send_and_wait(settings.locations_topic, raw(body), key=driver.encode())

        async def stored_ts() -> float | None:
            try:
                got = await store.get(driver)
            except (OSError, redis_errors.ConnectionError):   # our own client, mid-restart
                return None
            return got and got["ts"]

        try:
            async with running_worker(settings) as app:
                await store.start_shift(tenant, driver, "motorbike")
                now = time.time()
                await send(now - 10)
                await eventually(lambda: _equals(stored_ts(), now - 10), within=15)
                cell = store.cell_of(*JOBURG)
                assert await redis.zscore(available_key(tenant, cell), driver) is not None

                await server.restart()             # kill -9; back empty: no script, no state
                await send(now - 8, 1e-4)
                await eventually(lambda: _equals(stored_ts(), now - 8), within=30)
                assert app.ingest_stats["redis_retries"] >= 0

                server.kill()                     # down while pings arrive: the worker waits
                await send(now - 6, 2e-4)
                await eventually(lambda: _positive(app.ingest_stats, "redis_retries"), within=30)
                await server.start()
                await send(now - 4, 3e-4)
                await eventually(lambda: _equals(stored_ts(), now - 4), within=30)
                assert not app._crashed.is_set()

                got = await store.get(driver)
                assert got["status"] == "offline"          # no state: never marked available
                assert await redis.zscore(available_key(tenant, got["cell"]), driver) is None
                assert await redis.exists(location_key(driver))
        finally:
            await producer.stop()
            await redis.aclose()


async def _equals(value, expected) -> bool:
    return (await value) == expected


async def _positive(stats, name: str) -> bool:
    return stats[name] > 0
