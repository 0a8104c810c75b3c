"""The sliding-window limiter against a real Redis: one round trip per check, and a Redis that
lost the script (restarted, flushed) still answers right."""

import asyncio

from redis.asyncio import Redis

from dispatch.web.ratelimit import SLIDING_WINDOW_LUA, SlidingWindowLimiter
from tests.integration.private_services import private_redis


async def _calls(redis: Redis) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {name: stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "script|exists", "script|load")}


async def test_a_lone_check_is_one_evalsha_and_no_script_exists():
    async with private_redis() as server:
        redis = Redis.from_url(f"redis://127.0.0.1:{server.port}/0")
        try:
            limiter = SlidingWindowLimiter(redis, limit=3, window_s=10)
            await redis.script_load(SLIDING_WINDOW_LUA)
            await redis.config_resetstat()
            assert [await limiter.allow("driver:a") for _ in range(4)] == [True, True, True, False]
            calls = await _calls(redis)
            assert calls["evalsha"] == 4 and calls["script|exists"] == 0
        finally:
            await redis.aclose()


async def test_a_flushed_script_is_loaded_again_and_nothing_is_counted_twice():
    async with private_redis() as server:
        redis = Redis.from_url(f"redis://127.0.0.1:{server.port}/0")
        try:
            limiter = SlidingWindowLimiter(redis, limit=5, window_s=10)
            assert await limiter.allow("driver:b")
            await redis.script_flush()
            await redis.config_resetstat()
            # a batch of concurrent checks meets NOSCRIPT: loaded once, sent again, counted once
            answers = await asyncio.gather(*(limiter.allow("driver:b") for _ in range(6)))
            assert sorted(answers) == [False, False, True, True, True, True]
            assert await redis.zcard("rate:driver:b:10000ms") == 5
            assert (await _calls(redis))["script|load"] == 1
        finally:
            await redis.aclose()
