"""The ingest step runner's CPU arithmetic over /proc snapshots."""

from __future__ import annotations

import pytest

from loadtest.ingest_load import RAMP_GRACE_S, _cpu_delta, _still_connecting


def test_cpu_between_snapshots_counts_survivors_and_newcomers_never_negative_for_exits():
    before = {1: 10.0, 2: 5.0, 3: 7.0}            # 3 exits in between (a short Postgres backend)
    after = {1: 12.5, 2: 5.0, 4: 0.75}            # 4 is born in between
    assert _cpu_delta(before, after) == pytest.approx(3.25)
    assert _cpu_delta({}, {}) == 0


def test_a_ramp_past_its_limit_waits_only_when_its_pace_would_finish_within_the_grace():
    slow = [(t, 150 * t) for t in range(0, 61)]             # 9,000 of 10,000 at 60 s, 150/s
    assert _still_connecting(slow, 10_000, elapsed_s=60, limit_s=60)          # ~7 s to go
    assert not _still_connecting(slow, 20_000, elapsed_s=60, limit_s=60)      # ~73 s to go: beyond the grace
    stuck = [(t, min(9_000, 150 * t)) for t in range(0, 80)]
    assert not _still_connecting(stuck, 10_000, elapsed_s=79, limit_s=60)
    assert not _still_connecting(slow, 10_000, elapsed_s=60 + RAMP_GRACE_S, limit_s=60)   # the grace has an end
    assert not _still_connecting([(0, 0), (5, 900)], 10_000, elapsed_s=5, limit_s=0)   # no 10 s of history yet
