"""The rules of a tenant move without a database: steps, refusals, names, drain and rebalance plans."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest

from schema.errors import MoveError
from schema.moves.balance import drain_plan, fair_shares, rebalance_plan
from schema.moves.plan import (
    STEPS,
    MovePlan,
    ShardInfo,
    TableSize,
    refuse_move,
    replication_name,
    step_index,
)


def shard(sid: int, status: str = "active", weight: float = 1.0) -> ShardInfo:
    return ShardInfo(sid, f"shard_{sid}", status, "127.0.0.1", 5432, f"db_{sid}", weight)


def tenants(n: int) -> list[uuid.UUID]:
    return [uuid.UUID(int=i * 7919 + 1) for i in range(n)]


def test_a_move_to_an_active_other_shard_is_allowed() -> None:
    refuse_move(0, shard(1), 1)


@pytest.mark.parametrize(("target", "message"), [
    (None, "there is no shard 5"),
    (shard(0), "already lives on shard 0"),
    (shard(5, "retired"), "is retired"),
    (shard(5, "draining"), "is draining"),
    (shard(5, "readonly"), "is readonly"),
])
def test_refused_moves_say_why(target: ShardInfo | None, message: str) -> None:
    with pytest.raises(MoveError, match=message):
        refuse_move(0, target, 5 if target is None or target.shard_id != 0 else 0)


def test_steps_resume_from_the_recorded_one_and_unknown_statuses_are_refused() -> None:
    assert step_index("started") == 0 and step_index("completed") == len(STEPS) - 1
    with pytest.raises(MoveError, match="cannot be resumed"):
        step_index("cleaned")
    plan = MovePlan(uuid.uuid4(), "tenant_0123456789ab", shard(0), shard(1), "logical",
                    (TableSize("orders", 10, 8192),), resume_status="switching")
    assert [line.split(":")[0] for line in plan.steps()] == ["switching", "switched", "completed"]
    assert plan.rows == 10 and plan.bytes == 8192


def test_replication_objects_are_named_per_move_within_postgres_limits() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    assert replication_name(a) != replication_name(b)
    assert len(replication_name(a)) <= 63 and replication_name(a).isidentifier()


def test_a_drain_sends_every_tenant_to_another_active_shard_as_placement_would() -> None:
    ids = tenants(200)
    plan = drain_plan(ids, 0, {0: 1.0, 1: 1.0, 2: 1.0})
    assert [m.tenant_id for m in plan] == ids
    assert {m.target for m in plan} == {1, 2} and all(m.source == 0 for m in plan)
    assert 70 < Counter(m.target for m in plan)[1] < 130
    assert drain_plan(ids, 0, {0: 1.0, 1: 1.0, 2: 1.0}) == plan   # repeatable


def test_draining_the_only_active_shard_is_refused() -> None:
    with pytest.raises(MoveError, match="only active shard"):
        drain_plan(tenants(3), 0, {0: 1.0})


def test_a_rebalance_fills_a_new_shard_to_its_share_and_no_further() -> None:
    ids = tenants(12)
    plan = rebalance_plan({0: ids[:6], 1: ids[6:], 2: []}, {0: 1.0, 1: 1.0, 2: 1.0})
    assert len(plan) == 4
    assert Counter(m.target for m in plan) == {2: 4}
    assert Counter(m.source for m in plan) == {0: 2, 1: 2}


def test_a_rebalance_follows_weights_and_moves_the_smallest_tenants_first() -> None:
    ids = tenants(9)
    sizes = {t: 1000 - i for i, t in enumerate(ids)}   # the last ones are the smallest
    plan = rebalance_plan({0: ids, 1: []}, {0: 1.0, 1: 2.0}, sizes)
    assert len(plan) == 6 and all(m.target == 1 for m in plan)
    assert [m.tenant_id for m in plan] == list(reversed(ids))[:6]


@pytest.mark.parametrize("layout", [{0: 3, 1: 3}, {0: 2, 1: 1}, {0: 0, 1: 0}, {0: 1, 1: 0}])
def test_a_balanced_fleet_gets_an_empty_plan(layout: dict[int, int]) -> None:
    ids = iter(tenants(10))
    held = {sid: [next(ids) for _ in range(n)] for sid, n in layout.items()}
    assert rebalance_plan(held, {sid: 1.0 for sid in layout}) == []


def test_every_shard_ends_within_one_tenant_of_its_share() -> None:
    ids = tenants(50)
    weights = {0: 1.0, 1: 3.0, 2: 0.5, 3: 2.0}
    held = {0: ids[:40], 1: ids[40:], 2: [], 3: []}
    counts = {sid: len(v) for sid, v in held.items()}
    for move in rebalance_plan(held, weights):
        counts[move.source] -= 1
        counts[move.target] += 1
    share = fair_shares(50, weights)
    assert all(abs(counts[s] - share[s]) <= 1 for s in weights), (counts, share)


def test_rebalancing_without_an_active_shard_is_refused() -> None:
    with pytest.raises(MoveError, match="no active shard"):
        rebalance_plan({}, {})
