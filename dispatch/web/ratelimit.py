"""Sliding-window rate limits in Redis (the data design document's cache implementation),
atomic and batched.

That document's pipeline (ZREMRANGEBYSCORE, ZADD, ZCARD, EXPIRE) adds the request before it
knows the answer, so a client hammering past its limit keeps itself locked out forever and
two concurrent requests can both pass. One Lua script does the trim, the count and the add
atomically, and adds nothing when it refuses.

Per-ping Redis round trips would cap the gateway, so concurrent checks (many websocket
connections at once) are coalesced: each ``allow`` call queues, and one pipeline of EVALSHAs
answers everything queued since the last flush. The EVALSHAs are sent as they are, not
through redis-py's ``Script`` in a pipeline, which asks ``SCRIPT EXISTS`` before every
pipeline (a second round trip per check when checks come one at a time, as REST calls do):
a Redis that lost the script (a restart, ``SCRIPT FLUSH``) answers NOSCRIPT to the whole
batch, which counted nothing, so it is loaded and the batch sent once more.
"""

from __future__ import annotations

import asyncio
import itertools
import time

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

SLIDING_WINDOW_LUA = """
local key, now, window, limit, n = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local count = redis.call('ZCARD', key)
if count + n > limit then
  return {0, count}
end
for i = 1, n do
  redis.call('ZADD', key, now, ARGV[5] .. ':' .. i)
end
redis.call('PEXPIRE', key, window)
return {1, count + n}
"""


def rate_key(identifier: str, window_s: float) -> str:
    """``rate:{identifier}:{window}`` as in the data design document's key patterns."""
    return f"rate:{identifier}:{int(window_s * 1000)}ms"


class SlidingWindowLimiter:
    def __init__(self, redis: Redis, limit: int, window_s: float) -> None:
        self.redis = redis
        self.limit = limit
        self.window_ms = int(window_s * 1000)
        self.window_s = window_s
        self._script = redis.register_script(SLIDING_WINDOW_LUA)
        self._queue: list[tuple[str, int, asyncio.Future[bool]]] = []
        self._flushing: asyncio.Task | None = None
        self._ids = itertools.count()
        self._instance = f"{time.time_ns():x}"

    async def allow(self, identifier: str, n: int = 1) -> bool:
        """Count ``n`` events for ``identifier``; False (and nothing counted) if over the limit."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((rate_key(identifier, self.window_s), n, future))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        return await future

    async def _send(self, batch: list[tuple[str, int, asyncio.Future[bool]]], now: int) -> list:
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, n, _ in batch:
                member = f"{self._instance}:{next(self._ids)}"
                pipe.evalsha(self._script.sha, 1, key, now, self.window_ms, self.limit, n, member)
            return await pipe.execute()

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let the other connections of this loop iteration queue up
        while self._queue:
            batch, self._queue = self._queue, []
            now = int(time.time() * 1000)
            try:
                try:
                    results = await self._send(batch, now)
                except NoScriptError:
                    await self.redis.script_load(SLIDING_WINDOW_LUA)
                    results = await self._send(batch, now)
            except Exception as exc:  # the callers decide; a Redis outage is not "allowed"
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, _, future), (ok, _count) in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(bool(ok))
