"""Placement is stable: adding a shard never moves a tenant between two existing shards."""

import uuid
from collections import Counter

import pytest

from schema.errors import ShardError
from schema.placement import ShardCandidate, place_tenant

IDS = [uuid.UUID(int=(i * 0x9E3779B97F4A7C15) % 2**128) for i in range(1, 6001)]


def test_placement_is_deterministic():
    shards = [ShardCandidate(0), ShardCandidate(1)]
    assert [place_tenant(t, shards) for t in IDS[:200]] == [place_tenant(t, shards) for t in IDS[:200]]


def test_placement_spreads_tenants_evenly():
    counts = Counter(place_tenant(t, [ShardCandidate(0), ShardCandidate(1)]) for t in IDS)
    assert set(counts) == {0, 1}
    assert abs(counts[0] - counts[1]) < 0.08 * len(IDS)


def test_adding_a_shard_moves_about_a_third_and_only_to_the_new_shard():
    two = [ShardCandidate(0), ShardCandidate(1)]
    three = [*two, ShardCandidate(2)]
    moved = [(place_tenant(t, two), place_tenant(t, three)) for t in IDS]
    changed = [(before, after) for before, after in moved if before != after]
    assert all(after == 2 for _, after in changed)
    assert 0.28 < len(changed) / len(IDS) < 0.39


def test_modulo_placement_would_have_moved_most_tenants():
    # The seed's hashtext % count, for contrast: going from 2 to 3 shards moves ~2/3.
    moved = sum(1 for t in IDS if t.int % 2 != t.int % 3)
    assert moved / len(IDS) > 0.6


def test_weights_bias_placement():
    counts = Counter(place_tenant(t, [ShardCandidate(0, 3.0), ShardCandidate(1, 1.0)]) for t in IDS)
    assert 0.70 < counts[0] / len(IDS) < 0.80


def test_no_active_shard_is_a_clear_error():
    with pytest.raises(ShardError, match="no active shard"):
        place_tenant(IDS[0], [])
