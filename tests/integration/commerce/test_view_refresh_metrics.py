"""The view refresher's age on /metrics: back to zero after a round that refreshed every tenant,
growing on through rounds that failed, failures counted."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from dispatch.commerce.catalogue.views import run_view_refresher
from dispatch.core.cache import Cache
from schema.db import TenantDatabase
from schema.tenants import create_tenant

pytestmark = pytest.mark.timeout(60)
AGE = "wakala_view_refresh_age_seconds"
FAILURES = "wakala_view_refresh_failures_total"


async def _age() -> float | None:
    return REGISTRY.get_sample_value(AGE)


async def _run_for(seconds: float, *args, **kwargs) -> None:
    task = asyncio.create_task(run_view_refresher(*args, **kwargs))
    try:
        await asyncio.sleep(seconds)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_complete_round_resets_the_age_and_a_failed_one_lets_it_grow(platform, redis_url):
    tenant = await create_tenant(platform, "Views Spaza")
    redis = aioredis.Redis.from_url(redis_url)
    async with TenantDatabase(platform) as db:
        cache = Cache(redis)

        async def good():
            return [tenant.id]

        async def unknown_tenant():
            return ["8c1a0f7e-0000-4000-8000-000000000000"]

        await _run_for(1.0, db, cache, good, interval_s=60)
        assert 0 <= await _age() < 1.5
        failures = REGISTRY.get_sample_value(FAILURES) or 0

        await _run_for(0.5, db, cache, unknown_tenant, interval_s=0.1)
        first = await _age()
        assert first >= 0.5
        assert REGISTRY.get_sample_value(FAILURES) >= failures + 1

        async def broken():
            raise ConnectionError("control plane away")

        await _run_for(0.3, db, cache, broken, interval_s=0.1)
        assert await _age() >= first + 0.3              # a round without a tenant list is no refresh
    await redis.aclose()
