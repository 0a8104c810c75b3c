"""The worker and the gateway's producer across a broker that restarts empty (memory storage:
topics, groups and committed offsets gone).

The broker is a private tansu on a spare port that the test kills with SIGKILL and starts
again on the same port; Redis is the shared one, with fresh driver ids.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from types import SimpleNamespace

from aiokafka import AIOKafkaConsumer, TopicPartition
from redis.asyncio import Redis

from streams.consumer import WATCH_INTERVAL_S, BrokerStuck, BrokerWatch
from streams.location_store import LocationStore
from streams.producer import PingProducer, encode_pings
from tests.integration.private_services import private_tansu
from tests.integration.streams.harness import (
    JOBURG,
    eventually,
    forget_drivers,
    new_ids,
    running_worker,
)

log = logging.getLogger(__name__)


def _fix(driver: str, ts: float, east: float) -> SimpleNamespace:
    return SimpleNamespace(driver_id=driver, lat=JOBURG[0], lng=JOBURG[1] + east, accuracy=5.0,
                           speed=8.0, heading=90.0, timestamp=ts, battery=None)


async def test_worker_and_producer_recover_when_the_broker_restarts_empty(stream_settings):
    driver, tenant = new_ids()
    redis = Redis.from_url(stream_settings.redis_url)
    store = LocationStore(redis, stream_settings)
    try:
        async with private_tansu() as broker:
            settings = replace(stream_settings, kafka_bootstrap=f"127.0.0.1:{broker.port}")
            producer = PingProducer(settings)
            await producer.start()

            async def send(ts: float, east: float) -> None:
                value = encode_pings([_fix(driver, ts, east)], tenant_id=tenant,
                                     vehicle_type="motorbike", received_at=time.time())
                await producer.send_upload(settings.locations_topic, driver.encode(), value)

            async def stored_ts() -> float | None:
                got = await store.get(driver)
                return got and got["ts"]

            async def landed(ts: float) -> bool:
                return await stored_ts() == ts

            try:
                async with running_worker(settings) as app:
                    now = time.time()
                    for k in range(3):   # some offsets to commit before the crash
                        await send(now - 30 + k, k * 1e-5)
                    await eventually(lambda: landed(now - 28), within=20)

                    await broker.restart()            # kill -9, back empty on the same port
                    started = time.monotonic()
                    sent_at = None
                    deadline = time.monotonic() + 60
                    while sent_at is None:
                        try:
                            await send(now - 10, 1e-4)
                            sent_at = time.monotonic()
                        except Exception as exc:  # noqa: BLE001 - until the producer recovers
                            log.info("produce after the restart: %s", exc)
                            assert time.monotonic() < deadline, f"the producer never recovered: {exc}"
                            await asyncio.sleep(0.5)
                    await eventually(lambda: landed(now - 10), within=60, every=0.1)
                    log.info("landed %.1f s after the restart", time.monotonic() - started)
                    # and it commits again on the new broker (before: one commit retried
                    # every 100 ms for ever, while the process looked alive)
                    for k in range(5):
                        await send(now - 5 + k, (2 + k) * 1e-4)
                    await eventually(lambda: landed(now - 1), within=30, every=0.1)
                    await eventually(lambda: _committed_any(settings), within=60, every=0.5)
                    assert not app._crashed.is_set()
            finally:
                await producer.stop()
    finally:
        await forget_drivers(redis, [driver], [tenant])
        await redis.aclose()


async def _committed_any(settings) -> bool:
    """Whether the worker's group has a committed offset on the (new) locations topic."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=settings.app_id,
                                enable_auto_commit=False)
    try:
        await asyncio.wait_for(consumer.start(), 10)
        for p in range(settings.locations_partitions):
            if await consumer.committed(TopicPartition(settings.locations_topic, p)):
                return True
        return False
    except Exception:  # noqa: BLE001 - the broker still coming back
        return False
    finally:
        await consumer.stop()


async def test_a_worker_that_cannot_commit_gives_up_instead_of_spinning(stream_settings):
    """The bound is shortened here; the watch's timer crashes the app (``run_worker`` then
    exits with status 1 for the supervisor to restart it). The crash itself is recorded, not
    performed: a crashed app in this process would leave its consumer thread behind."""
    async with private_tansu() as broker:
        settings = replace(stream_settings, kafka_bootstrap=f"127.0.0.1:{broker.port}")
        async with running_worker(settings) as app:
            crashes: list[BaseException] = []

            async def crash(reason: BaseException) -> None:
                crashes.append(reason)

            app.crash = crash
            app.broker_watch = BrokerWatch(give_up_after_s=0.5, give_up_min_failures=2)
            app.broker_watch.note_commit(False)
            await asyncio.sleep(0.6)
            app.broker_watch.note_commit(False)
            await eventually(lambda: _value(bool(crashes)), within=WATCH_INTERVAL_S * 3, every=0.1)
            assert isinstance(crashes[0], BrokerStuck)


async def _value(x):
    return x
