"""A bounded cache whose entries expire: least recently used out first, expired entries gone.

Anything a client can make us remember (a token it made up, a tenant id it guessed) must be
held in a structure whose size we choose, not the client. Two bounds apply together:

* size: past ``max_size`` the least recently used entry leaves (an ``OrderedDict`` in access
  order, so a hit and an eviction are O(1));
* time: an entry is never returned after its deadline, and a full sweep runs at most once per
  ``sweep_interval_s`` (when something is stored), so an expired entry that nobody asks for
  again leaves within one interval instead of waiting for the size bound to push it out.
  The sweep is O(n) but rare; a front-only purge would be cheaper but miss entries that were
  read (moved to the back) before they expired.

The clock is injectable so the rules can be tested without waiting. Not thread-safe: one
event loop owns an instance.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    def __init__(self, max_size: int, ttl_s: float, *, sweep_interval_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, got {max_size}")
        if ttl_s < 0:
            raise ValueError(f"ttl_s must not be negative, got {ttl_s}")
        self.max_size = max_size
        self.ttl_s = ttl_s
        self.sweep_interval_s = max(ttl_s, 1.0) if sweep_interval_s is None else sweep_interval_s
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._next_sweep = clock() + self.sweep_interval_s

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        """The live value for ``key`` (now the most recently used), or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def set(self, key: K, value: V, ttl_s: float | None = None) -> None:
        """Store ``value`` for ``ttl_s`` (the cache's default if None); a ttl of 0 or less
        stores nothing and drops what was there."""
        now = self._clock()
        ttl = self.ttl_s if ttl_s is None else ttl_s
        if ttl <= 0:
            self._entries.pop(key, None)
            return
        if now >= self._next_sweep:
            self.sweep(now)
        self._entries[key] = (now + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)

    def pop(self, key: K) -> V | None:
        entry = self._entries.pop(key, None)
        return None if entry is None or entry[0] <= self._clock() else entry[1]

    def items(self) -> list[tuple[K, V]]:
        """The live entries, least recently used first (a copy: safe to change the cache meanwhile)."""
        now = self._clock()
        return [(key, value) for key, (deadline, value) in self._entries.items() if deadline > now]

    def clear(self) -> None:
        self._entries.clear()

    def sweep(self, now: float | None = None) -> int:
        """Drop every expired entry; how many left."""
        now = self._clock() if now is None else now
        expired = [key for key, (deadline, _) in self._entries.items() if deadline <= now]
        for key in expired:
            del self._entries[key]
        self._next_sweep = now + self.sweep_interval_s
        return len(expired)
