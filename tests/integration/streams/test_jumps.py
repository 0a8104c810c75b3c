"""Implausible jumps: one outlier is refused and reported back on the driver notices channel;
a wrong stored fix gives way to consistent fixes of the truth.

Store-level tests use the shared Redis with fresh driver ids; the notice test goes through the
real worker (broker, faust agent, script) with topics of this test only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from geo import distance_m
from streams.decode import decode_ping
from streams.keys import DRIVER_NOTICES_CHANNEL, available_key
from streams.location_store import JUMP_CONFIRM_FIXES, LocationStore
from streams.records import DriverPing
from streams.settings import StreamSettings
from tests.integration.streams.harness import (
    CAPE_TOWN,
    JOBURG,
    SOWETO,
    eventually,
    forget_drivers,
    new_ids,
    ping,
    raw,
    running_worker,
)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def ids(redis: Redis) -> AsyncIterator[tuple[str, str]]:
    driver, tenant = new_ids()
    yield driver, tenant
    await forget_drivers(redis, [driver], [tenant])


def fix(driver: str, tenant: str, lat: float, lng: float, ts: float) -> DriverPing:
    return decode_ping(raw(ping(driver, tenant, lat, lng, ts)))


def near(point: tuple[float, float], metres_east: float) -> tuple[float, float]:
    return point[0], point[1] + metres_east / 100_000


async def test_one_wild_outlier_is_refused_and_the_stored_fix_stays(redis, ids):
    driver, tenant = ids
    store = LocationStore(redis, _settings(redis))
    now = time.time() - 100
    assert (await store.write_batch([fix(driver, tenant, *JOBURG, now)])).outcomes == ["accepted"]
    outcome = await store.write_batch([
        fix(driver, tenant, *CAPE_TOWN, now + 4),            # 1,260 km in 4 s
        fix(driver, tenant, *near(JOBURG, 30), now + 8),      # the truth goes on
        fix(driver, tenant, *near(JOBURG, 60), now + 12),
    ])
    assert outcome.outcomes == ["implausible_jump", "accepted", "accepted"]
    got = await store.get(driver)
    assert (got["lat"], got["lng"], got["ts"]) == (*near(JOBURG, 60), now + 12)
    assert not any(k.startswith("cand_") for k in got)


async def test_outliers_that_disagree_with_each_other_never_move_the_driver(redis, ids):
    driver, tenant = ids
    store = LocationStore(redis, _settings(redis))
    now = time.time() - 100
    await store.write_batch([fix(driver, tenant, *JOBURG, now)])
    wild = [CAPE_TOWN, (-29.8587, 31.0218), (-25.7479, 28.2293 + 3), CAPE_TOWN, (-29.8587, 31.0218)]
    outcome = await store.write_batch([fix(driver, tenant, *p, now + 4 * (k + 1)) for k, p in enumerate(wild)])
    assert outcome.outcomes == ["implausible_jump"] * len(wild)
    got = await store.get(driver)
    assert (got["lat"], got["lng"]) == JOBURG


async def test_a_wrong_stored_fix_gives_way_to_consistent_fixes(redis, ids):
    driver, tenant = ids
    store = LocationStore(redis, _settings(redis))
    await redis.hset(f"driver:state:{driver}", mapping={"status": "available", "tenant": tenant})
    now = time.time() - 100
    # the first fix is in another city; the driver is really in Johannesburg
    await store.write_batch([fix(driver, tenant, *CAPE_TOWN, now)])
    truth = [fix(driver, tenant, *near(JOBURG, 40 * k), now + 4 * (k + 1)) for k in range(JUMP_CONFIRM_FIXES)]
    outcome = await store.write_batch(truth)
    assert outcome.outcomes == ["implausible_jump"] * (JUMP_CONFIRM_FIXES - 1) + ["relocated"]
    assert outcome.accepted_pings == truth[-1:] and outcome.relocated == 1
    got = await store.get(driver)
    assert (got["lat"], got["lng"], got["ts"]) == (truth[-1].lat, truth[-1].lng, truth[-1].ts)
    assert got["cell"] == store.cell_of(truth[-1].lat, truth[-1].lng)
    # the index follows: Cape Town's cell no longer holds the driver, Johannesburg's does
    assert await redis.zscore(available_key(tenant, store.cell_of(*CAPE_TOWN)), driver) is None
    assert await redis.zscore(available_key(tenant, got["cell"]), driver) is not None
    # and from now on the truth is the reference
    after = await store.write_batch([fix(driver, tenant, *near(JOBURG, 200), now + 20)])
    assert after.outcomes == ["accepted"]


async def test_an_outlier_between_true_fixes_resets_nothing_it_should_not(redis, ids):
    """A candidate built by outliers is dropped by the next accepted fix: two later outliers
    that agree with the old candidate do not add up to a relocation."""
    driver, tenant = ids
    store = LocationStore(redis, _settings(redis))
    now = time.time() - 100
    outcome = await store.write_batch([
        fix(driver, tenant, *JOBURG, now),
        fix(driver, tenant, *CAPE_TOWN, now + 4),
        fix(driver, tenant, *CAPE_TOWN, now + 8),
        fix(driver, tenant, *near(JOBURG, 10), now + 12),   # accepted: clears the candidate
        fix(driver, tenant, *CAPE_TOWN, now + 16),
        fix(driver, tenant, *CAPE_TOWN, now + 20),
    ])
    assert outcome.outcomes == ["accepted", "implausible_jump", "implausible_jump", "accepted",
                                "implausible_jump", "implausible_jump"]
    assert (await store.get(driver))["lat"] == JOBURG[0]


async def test_a_refused_jump_publishes_one_notice_and_an_accepted_ping_none(redis, ids):
    driver, tenant = ids
    store = LocationStore(redis, _settings(redis))
    now = time.time() - 2000
    async with _listening(redis) as notices:
        await store.write_batch([fix(driver, tenant, *JOBURG, now),
                                 fix(driver, tenant, *SOWETO, now + 1200)])   # 20 km in 20 min
        await store.write_batch([fix(driver, tenant, *CAPE_TOWN, now + 1220.25)])
        notice = await asyncio.wait_for(notices.get(), 5)
        await asyncio.sleep(0.2)
        assert notices.empty()
    km = distance_m(*SOWETO, *CAPE_TOWN) / 1000
    assert notice == {
        "tenant_id": tenant, "driver_id": driver, "reason": "implausible_jump",
        "message": f"position refused: {km:.0f} km from the last fix, 20 s earlier "
                   f"(faster than 250 km/h)",
        "recorded_at": now + 1220.25,
    }


async def test_the_worker_reports_a_jump_it_drops_on_the_notices_channel(stream_settings, redis, ids):
    """Through the real path: broker, agent, script."""
    driver, tenant = ids
    settings = stream_settings
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=2)
    await producer.start()
    try:
        async with running_worker(settings) as app, _listening(redis) as notices:
            now = time.time()
            await producer.send_and_wait(settings.locations_topic, key=driver.encode(),
                                         value=raw(ping(driver, tenant, *JOBURG, now - 20)))
            await eventually(lambda: redis.exists(f"driver:location:{driver}"), within=15)
            await producer.send_and_wait(settings.locations_topic, key=driver.encode(),
                                         value=raw(ping(driver, tenant, *CAPE_TOWN, now)))
            notice = await asyncio.wait_for(notices.get(), 15)
            assert app.ingest_stats["implausible_jump"] == 1
    finally:
        await producer.stop()
    assert (notice["driver_id"], notice["tenant_id"], notice["reason"]) == (driver, tenant, "implausible_jump")
    assert notice["recorded_at"] == now
    assert "km from the last fix, 20 s earlier" in notice["message"]


def _settings(redis: Redis) -> StreamSettings:
    return StreamSettings.from_env()


class _listening:
    """Subscribe to the notices channel; yields a queue of this test's decoded notices."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def __aenter__(self) -> asyncio.Queue[dict[str, Any]]:
        self.pubsub = self.redis.pubsub()
        await self.pubsub.subscribe(DRIVER_NOTICES_CHANNEL)
        await self.pubsub.get_message(timeout=1)   # the subscribe confirmation
        self.task = asyncio.create_task(self._pump())
        return self.queue

    async def _pump(self) -> None:
        async for message in self.pubsub.listen():
            if message["type"] == "message":
                self.queue.put_nowait(json.loads(message["data"]))

    async def __aexit__(self, *exc: Any) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.pubsub.unsubscribe()
        await self.pubsub.aclose()
