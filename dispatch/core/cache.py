"""The Redis read cache of the data design document: cache-aside reads, tag-based invalidation.

Key patterns and TTLs are the design's (its Redis key patterns), with two departures; the
builders are in ``dispatch.core.cache_keys``:

* every key carries the tenant, so one tenant can never be served another's entry (the
  design's ``inventory:{product_id}`` and ``order:{order_id}`` do not);
* invalidation never uses ``KEYS`` (the design's ``invalidate(pattern)`` blocks Redis for the
  whole keyspace scan). Each cached value is filed under one or more *tags* (a Redis SET
  ``cache:tag:{tenant}:{tag}`` listing the keys that depend on it); a write invalidates the
  tags it affects, deleting exactly those keys.

==================  ========================================================  =======
what                key                                                       TTL (s)
==================  ========================================================  =======
product             ``product:{tenant}:{product_id}``                         1800
product list        ``products:{tenant}:{category|all}:{vendor|all}:page:{n}:{size}``  300
inventory           ``inventory:{tenant}:{product_id}``                       60
order               ``order:{tenant}:{order_id}``                             300
search              ``search:{tenant}:{sha256 of the normalised query}``      600
==================  ========================================================  =======

Tags used by the writers: ``product:{id}`` (its page, lists and searches that show it),
``inventory:{product_id}``, ``catalogue`` (every list and search of the tenant), ``order:{id}``.

A value is written only if no invalidation of its tags happened while it was being computed
(a generation counter per tag, checked in the same script that stores the value), so a slow
read cannot put back a value a concurrent write has just made stale.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any

from redis.asyncio import Redis

from dispatch.core.cache_keys import gen_key, tag_key
from streams.replies import as_text

__all__ = ["TTL", "Cache"]

TTL = {"product": 1800, "product_list": 300, "inventory": 60, "order": 300, "search": 600}
TAG_TTL_S = 3600   # a tag set outlives the entries it lists (max TTL above is 1800)


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)   # money stays exact: a string, never a float
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


# KEYS: key, gen keys..., tag keys... ARGV: value, ttl, n tags, expected generations...
# Stores the value only if no tag's generation moved since the read began; files the key
# under every tag.
_STORE = """
local n = tonumber(ARGV[3])
for i = 1, n do
  if (redis.call('GET', KEYS[1 + i]) or '0') ~= ARGV[3 + i] then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
for i = 1, n do
  redis.call('SADD', KEYS[1 + n + i], KEYS[1])
  redis.call('EXPIRE', KEYS[1 + n + i], TAG_TTL)
end
return 1
""".replace("TAG_TTL", str(TAG_TTL_S))

# KEYS: gen keys..., tag keys... Bumps every generation and deletes every listed key.
_INVALIDATE = """
local n = #KEYS / 2
local deleted = 0
for i = 1, n do
  redis.call('INCR', KEYS[i])
  redis.call('EXPIRE', KEYS[i], TAG_TTL)
  local keys = redis.call('SMEMBERS', KEYS[n + i])
  for j = 1, #keys, 500 do
    deleted = deleted + redis.call('DEL', unpack(keys, j, math.min(j + 499, #keys)))
  end
  redis.call('DEL', KEYS[n + i])
end
return deleted
""".replace("TAG_TTL", str(TAG_TTL_S))


class Cache:
    """Cache-aside over one Redis. Values are JSON (Decimals as strings)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._store = redis.register_script(_STORE)
        self._invalidate = redis.register_script(_INVALIDATE)
        self.hits = 0
        self.misses = 0

    async def get(self, key: str) -> Any | None:
        raw = await self.redis.get(key)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            await self.redis.delete(key)   # not ours, or corrupt: recompute
            return None

    async def get_or_set(self, tenant: str, key: str, factory: Callable[[], Awaitable[Any]], ttl_s: int,
                         tags: Sequence[str] = ()) -> Any:
        """The cached value, or ``factory()`` stored for ``ttl_s`` under ``tags``.

        ``None`` from the factory is returned and not cached (a miss must not hide a later row).
        """
        cached = await self.get(key)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        gens = [gen_key(tenant, t) for t in tags]
        before = ["0" if g is None else as_text(g) for g in (await self.redis.mget(gens) if gens else [])]
        value = await factory()
        if value is None:
            return None
        encoded = json.dumps(value, default=_default, separators=(",", ":"))
        await self._store(keys=[key, *gens, *(tag_key(tenant, t) for t in tags)],
                          args=[encoded, int(ttl_s), len(tags), *before])
        return json.loads(encoded)   # what a hit would return: same types either way

    async def invalidate(self, tenant: str, tags: Iterable[str]) -> int:
        """Delete every entry filed under any of ``tags``; returns how many keys went."""
        tags = list(dict.fromkeys(tags))
        if not tags:
            return 0
        return int(await self._invalidate(keys=[*(gen_key(tenant, t) for t in tags),
                                                *(tag_key(tenant, t) for t in tags)]))
