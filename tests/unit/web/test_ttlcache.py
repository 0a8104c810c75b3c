"""The bounded expiring cache: size bound with LRU order, TTL, and expired entries really leaving."""

import pytest

from dispatch.web.ttlcache import TTLCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_never_holds_more_than_its_bound_and_evicts_the_least_recently_used():
    clock = Clock()
    cache: TTLCache[str, int] = TTLCache(3, 60, clock=clock)
    for key, value in (("a", 1), ("b", 2), ("c", 3)):
        cache.set(key, value)
    assert cache.get("a") == 1          # "a" is now the most recently used
    cache.set("d", 4)
    assert len(cache) == 3
    assert cache.get("b") is None       # the least recently used left
    assert (cache.get("a"), cache.get("c"), cache.get("d")) == (1, 3, 4)
    for i in range(10_000):
        cache.set(f"flood{i}", i)
        assert len(cache) <= 3


def test_an_entry_is_not_returned_after_its_ttl_and_leaves_on_read():
    clock = Clock()
    cache: TTLCache[str, str] = TTLCache(10, 5, clock=clock)
    cache.set("short", "x", ttl_s=1)
    cache.set("long", "y")
    clock.now += 1
    assert cache.get("short") is None
    assert len(cache) == 1
    clock.now += 3.9
    assert cache.get("long") == "y"
    clock.now += 0.2
    assert cache.get("long") is None and len(cache) == 0


def test_expired_entries_nobody_asks_for_again_leave_within_one_sweep_interval():
    clock = Clock()
    cache: TTLCache[int, int] = TTLCache(100_000, 2, sweep_interval_s=2, clock=clock)
    for i in range(5000):
        cache.set(i, i)
    clock.now += 2.5
    cache.set(-1, -1)                   # any write past the interval sweeps
    assert len(cache) == 1


def test_read_entries_moved_to_the_back_are_swept_too():
    clock = Clock()
    cache: TTLCache[str, int] = TTLCache(10, 2, sweep_interval_s=100, clock=clock)
    cache.set("old", 1)
    cache.set("young", 2, ttl_s=50)
    assert cache.get("old") == 1        # "old" now sits behind "young"
    clock.now += 3
    assert cache.sweep() == 1
    assert len(cache) == 1 and cache.get("young") == 2


def test_zero_ttl_stores_nothing_and_pop_and_clear_forget():
    cache: TTLCache[str, int] = TTLCache(5, 0)
    cache.set("a", 1)
    assert len(cache) == 0
    cache = TTLCache(5, 10)
    cache.set("a", 1)
    cache.set("b", 2)
    assert cache.pop("a") == 1 and cache.pop("a") is None
    cache.clear()
    assert len(cache) == 0


@pytest.mark.parametrize("size, ttl", [(0, 1), (-1, 1), (1, -1)])
def test_nonsense_bounds_are_refused(size, ttl):
    with pytest.raises(ValueError):
        TTLCache(size, ttl)
