"""dispatch.core.cache against the real Redis: cache-aside, tags, stale-write guard, tenant keys."""

import uuid
from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from dispatch.core.cache import INVALIDATION_FAILURES, Cache
from dispatch.core.cache_keys import (
    inventory_key,
    order_key,
    product_key,
    product_list_key,
    search_key,
)
from tests.integration.private_services import private_redis, spare_port


@pytest.fixture
async def cache(redis_url):
    redis = aioredis.from_url(redis_url)
    yield Cache(redis), str(uuid.uuid4())
    await redis.aclose()


async def test_cache_aside_reads_once_and_keeps_money_exact(cache):
    c, tenant = cache
    calls = []

    async def load():
        calls.append(1)
        return {"id": "p1", "price": Decimal("12.50")}

    key = product_key(tenant, "p1")
    first = await c.get_or_set(tenant, key, load, 60, tags=["product:p1"])
    second = await c.get_or_set(tenant, key, load, 60, tags=["product:p1"])
    assert first == second == {"id": "p1", "price": "12.50"} and len(calls) == 1
    assert 0 < await c.redis.ttl(key) <= 60
    assert (c.hits, c.misses) == (1, 1)


async def test_invalidating_a_tag_deletes_exactly_its_entries(cache):
    c, tenant = cache

    async def value():
        return {"v": 1}

    a, b = product_key(tenant, "a"), product_key(tenant, "b")
    listing = product_list_key(tenant, None, None, 1, 20)
    await c.get_or_set(tenant, a, value, 60, tags=["product:a"])
    await c.get_or_set(tenant, b, value, 60, tags=["product:b"])
    await c.get_or_set(tenant, listing, value, 60, tags=["catalogue", "product:a"])
    assert await c.invalidate(tenant, ["product:a"]) == 2
    assert await c.redis.exists(a, listing) == 0 and await c.redis.exists(b) == 1
    assert await c.invalidate(tenant, []) == 0


async def test_a_value_read_before_a_concurrent_write_is_not_stored(cache):
    c, tenant = cache
    key = inventory_key(tenant, "p")

    async def slow_read():
        await c.invalidate(tenant, ["inventory:p"])   # a write lands while we compute
        return {"available": 5}

    assert await c.get_or_set(tenant, key, slow_read, 60, tags=["inventory:p"]) == {"available": 5}
    assert await c.redis.exists(key) == 0   # the possibly stale value was not cached


async def test_keys_carry_the_tenant_and_none_is_not_cached(cache):
    c, tenant = cache
    other = str(uuid.uuid4())
    assert product_key(tenant, "p") != product_key(other, "p")
    assert order_key(tenant, "o") != order_key(other, "o")
    assert search_key(tenant, "Maize  MEAL") == search_key(tenant, "maize meal") != search_key(other, "maize meal")

    async def nothing():
        return None

    assert await c.get_or_set(tenant, order_key(tenant, "o"), nothing, 60) is None
    assert await c.redis.exists(order_key(tenant, "o")) == 0


async def test_a_corrupt_entry_is_recomputed(cache):
    c, tenant = cache
    key = product_key(tenant, "x")
    await c.redis.set(key, b"\xff not json", ex=60)

    async def load():
        return {"ok": True}

    assert await c.get_or_set(tenant, key, load, 60) == {"ok": True}
    assert await c.get(key) == {"ok": True}


@pytest.fixture
async def own_redis():
    """A redis-server of this test's own (it may be paused or killed), gone afterwards."""
    async with private_redis() as server:
        redis = aioredis.from_url(server.url)
        try:
            yield redis, server.port
        finally:
            await redis.aclose()


async def test_invalidation_after_a_commit_never_raises_when_redis_is_down():
    redis = aioredis.from_url(f"redis://127.0.0.1:{spare_port()}/0")   # nothing listens there
    c, tenant = Cache(redis, timeout_s=1), str(uuid.uuid4())
    before = INVALIDATION_FAILURES._value.get()
    try:
        assert await c.invalidate(tenant, ["order:o1", "inventory:p1"]) == 0
        assert c.invalidation_failures == 1 and INVALIDATION_FAILURES._value.get() == before + 1

        async def load():
            return {"from": "database"}

        # a read falls back to the database and stores nothing
        assert await c.get_or_set(tenant, order_key(tenant, "o1"), load, 60, tags=["order:o1"]) == {"from": "database"}
    finally:
        await redis.aclose()


async def test_a_failed_invalidation_is_made_good_by_the_next_one(own_redis):
    redis, port = own_redis
    client = aioredis.from_url(f"redis://127.0.0.1:{port}/0")
    c, tenant = Cache(client, timeout_s=0.3), str(uuid.uuid4())
    try:
        async def value():
            return {"v": 1}

        key = order_key(tenant, "o1")
        await c.get_or_set(tenant, key, value, 60, tags=["order:o1"])
        await redis.execute_command("CLIENT", "PAUSE", "5000", "WRITE")   # Redis stalls every write
        try:
            assert await c.invalidate(tenant, ["order:o1"]) == 0   # timed out: logged, not raised
        finally:
            await redis.execute_command("CLIENT", "UNPAUSE")
        assert c.invalidation_failures == 1 and await redis.exists(key) == 1   # stale for now
        await c.invalidate(tenant, ["inventory:other"])   # the next invalidation pays the debt
        assert await redis.exists(key) == 0
    finally:
        await client.aclose()
