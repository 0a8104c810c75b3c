"""Shared pieces of the worker-level stream tests: pings, polling, a worker run in this process,
and private Redis and tansu servers a test may kill.

The private servers run on spare loopback ports (never the shared 6379 / 9092), are started by
the test and always killed by it; a restart on the same port starts empty, as a memory-only
broker or a Redis without persistence does after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import faust
import pytest
from redis.asyncio import Redis

from streams.app import ObserverFactory, create_app
from streams.keys import location_key, state_key
from streams.settings import StreamSettings

JOBURG = (-26.2041, 28.0473)
SOWETO = (-26.2485, 27.8540)      # ~20 km from JOBURG
CAPE_TOWN = (-33.9249, 18.4241)   # ~1260 km from JOBURG
SESSION_TIMEOUT_S = 2.0           # tansu holds a group join for half of it


def ping(driver: str, tenant: str, lat: float, lng: float, ts: float, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "v": 1, "driver_id": driver, "tenant_id": tenant, "lat": lat, "lng": lng,
        "accuracy_m": 5.0, "speed_mps": 8.0, "heading_deg": 90.0, "ts": ts,
        "received_at": time.time(), "vehicle_type": "motorbike",
    }
    body.update(extra)
    return body


def raw(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def new_ids() -> tuple[str, str]:
    return str(uuid.uuid4()), str(uuid.uuid4())


async def eventually(check: Callable[[], Awaitable[Any]], within: float = 5.0,
                     every: float = 0.02) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within} s (last: {result!r})")
        await asyncio.sleep(every)


async def forget_drivers(redis: Redis, drivers: list[str], tenants: list[str]) -> None:
    keys = [k for d in drivers for k in (location_key(d), state_key(d))]
    for tenant in tenants:
        keys += [k async for k in redis.scan_iter(match=f"drivers:available:{tenant}:*", count=1000)]
    if keys:
        await redis.delete(*keys)


@contextlib.asynccontextmanager
async def tracking_worker(settings: StreamSettings, pg: Any) -> AsyncIterator[Any]:
    """The engine's location worker (``dispatch.tracking.worker``: this worker with the
    tracker) in this process; yields once it owns a partition of the locations topic; always
    stopped. For tests that run the engine and follow deliveries on the tracking sockets."""
    from dispatch.tracking.worker import create_worker

    worker = create_worker(settings, pg, session_timeout_s=SESSION_TIMEOUT_S)
    await asyncio.wait_for(worker.start(), 30)
    try:
        async def assigned() -> bool:
            return any(tp.topic == settings.locations_topic for tp in worker.consumer.assignment())

        await eventually(assigned, within=20, every=0.05)
        yield worker
    finally:
        await asyncio.wait_for(worker.stop(), 30)


@contextlib.asynccontextmanager
async def running_worker(settings: StreamSettings, pg=None, *, observer: ObserverFactory | None = None,
                         prepare: Callable[[faust.App], None] | None = None, assigned_within: float = 30,
                         **options: Any) -> AsyncIterator[faust.App]:
    """A worker in this process; yields once it owns every partition (within
    ``assigned_within`` s); always stopped. ``observer``: what the worker hands landed batches
    to (the engine's tracker, in the tracking tests); ``prepare`` sees the app before it starts."""
    app = create_app(settings, pg, session_timeout_s=SESSION_TIMEOUT_S, observer=observer, **options)
    if prepare is not None:
        prepare(app)
    await asyncio.wait_for(app.start(), 30)
    try:
        async def assigned() -> bool:
            tps = app.consumer.assignment()
            return sum(tp.topic == settings.locations_topic for tp in tps) == settings.locations_partitions

        await eventually(assigned, within=assigned_within, every=0.05)
        yield app
    finally:
        await asyncio.wait_for(app.stop(), 30)


