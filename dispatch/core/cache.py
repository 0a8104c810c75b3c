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

Redis is a cache, never the authority, so its failures never fail the caller:

* ``invalidate`` runs *after* a write committed. If Redis is down or slow (more than
  ``timeout_s``) it logs, counts (``invalidation_failures``, the metric
  ``wakala_cache_invalidation_failures_total``) and returns; the committed write is answered
  as a success. The tags are remembered (at most ``MAX_PENDING_TAGS`` per process) and
  invalidated again before the next invalidation this process makes.
* ``get_or_set`` whose Redis fails answers from its factory (the database) and stores nothing.

How stale a read can get: an entry whose invalidation failed is served until its TTL runs out
(the table: 60 s for stock, 300 s for an order, up to 1800 s for a product page) or until
this process's next successful invalidation, whichever comes first. While Redis is down
nothing is served from it, so reads are fresh (from the database) and slower.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any

from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from dispatch.core.cache_keys import gen_key, tag_key
from streams.replies import as_text

__all__ = ["MAX_PENDING_TAGS", "TTL", "Cache"]

log = logging.getLogger(__name__)

MAX_PENDING_TAGS = 10_000   # failed invalidations remembered per process (beyond: the TTL bounds staleness)
INVALIDATION_FAILURES = Counter(
    "wakala_cache_invalidation_failures_total",
    "Cache invalidations after a commit that Redis did not take (entries stale until their TTL or the retry)")
# What a Redis outage raises: the client's own errors, a refused or reset socket, our timeout.
_DOWN = (RedisError, OSError, asyncio.TimeoutError)

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

    def __init__(self, redis: Redis, *, timeout_s: float = 2.0) -> None:
        self.redis = redis
        self.timeout_s = timeout_s
        self._store = redis.register_script(_STORE)
        self._invalidate = redis.register_script(_INVALIDATE)
        self.hits = 0
        self.misses = 0
        self.invalidation_failures = 0
        self._pending: dict[str, dict[str, None]] = {}   # tenant -> tags whose invalidation failed

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
        gens = [gen_key(tenant, t) for t in tags]
        try:
            cached = await self.get(key)
            if cached is not None:
                self.hits += 1
                return cached
            before = ["0" if g is None else as_text(g) for g in (await self.redis.mget(gens) if gens else [])]
        except _DOWN as exc:
            log.warning("cache read of %s failed (%s); reading the database", key, type(exc).__name__)
            before = None
        self.misses += 1
        value = await factory()
        if value is None:
            return None
        encoded = json.dumps(value, default=_default, separators=(",", ":"))
        if before is not None:
            try:
                await self._store(keys=[key, *gens, *(tag_key(tenant, t) for t in tags)],
                                  args=[encoded, int(ttl_s), len(tags), *before])
            except _DOWN as exc:
                log.warning("cache store of %s failed (%s)", key, type(exc).__name__)
        return json.loads(encoded)   # what a hit would return: same types either way

    async def invalidate(self, tenant: str, tags: Iterable[str]) -> int:
        """Delete every entry filed under any of ``tags``; returns how many keys went.

        Never raises for Redis being down or slow (see the module docstring): the failure is
        logged and counted, the tags are kept for the next call, and 0 is returned."""
        tags = list(dict.fromkeys(tags))
        deleted = 0
        try:
            for owed_tenant in list(self._pending):   # earlier failures first: the oldest staleness
                owed = list(self._pending.get(owed_tenant, ()))
                deleted += await self._run_invalidate(owed_tenant, owed)
                left = self._pending.get(owed_tenant, {})
                for tag in owed:
                    left.pop(tag, None)
                if not left:
                    self._pending.pop(owed_tenant, None)
            if tags:
                deleted += await self._run_invalidate(tenant, tags)
        except _DOWN as exc:
            if tags:
                self.invalidation_failures += 1
                INVALIDATION_FAILURES.inc()
                self._remember(tenant, tags)
                log.warning("cache invalidation of %d tags of tenant %s failed (%s); entries stay stale "
                            "until their TTL or the next invalidation", len(tags), tenant, type(exc).__name__)
        return deleted

    async def _run_invalidate(self, tenant: str, tags: Sequence[str]) -> int:
        keys = [*(gen_key(tenant, t) for t in tags), *(tag_key(tenant, t) for t in tags)]
        return int(await asyncio.wait_for(self._invalidate(keys=keys), self.timeout_s))

    def _remember(self, tenant: str, tags: Sequence[str]) -> None:
        owed = self._pending.setdefault(tenant, {})
        owed.update(dict.fromkeys(tags))
        total = sum(len(t) for t in self._pending.values())
        if total > MAX_PENDING_TAGS:   # forget the oldest: their TTL still bounds how stale they get
            for owed_tenant in list(self._pending):
                while total > MAX_PENDING_TAGS and self._pending[owed_tenant]:
                    self._pending[owed_tenant].pop(next(iter(self._pending[owed_tenant])))
                    total -= 1
                if not self._pending[owed_tenant]:
                    del self._pending[owed_tenant]
