"""The delivery-events reader's pure parts: bounded backoff and checked settings."""

from __future__ import annotations

import pytest

from dispatch.matching.consumer import BACKOFF_MAX_S, BACKOFF_MIN_S, EventConsumer


class _Redis:
    def register_script(self, _source: str):
        return None


class _Handler:
    redis = _Redis()
    mode, window_s = "greedy", 0.2

    async def handle(self, events):
        return []


def _consumer(**options) -> EventConsumer:
    return EventConsumer(_Handler(), "127.0.0.1:1", "delivery-events", "g", **options)


def test_the_backoff_doubles_from_its_floor_and_never_passes_its_ceiling():
    c = _consumer()
    delays = [c.backoff(n) for n in range(0, 40)]
    assert delays[0] == delays[1] == BACKOFF_MIN_S
    assert delays[2] == 2 * BACKOFF_MIN_S
    assert max(delays) == BACKOFF_MAX_S and delays == sorted(delays)


@pytest.mark.parametrize("bad", [0, -1, 101, 2.5, True, "3", None])
def test_max_attempts_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match="max_attempts"):
        _consumer(max_attempts=bad)
