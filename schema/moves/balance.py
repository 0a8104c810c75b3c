"""Which tenants to move for a drain or a rebalance: pure rules over shard weights and counts.

A drained shard's tenants go where placement would put a new tenant (weighted rendezvous
hashing over the remaining active shards, ``schema.placement``), so a drain and later
provisioning agree. A rebalance counts tenants, not bytes: a shard's fair share is the active
tenants times its weight over the sum of weights, and the planner moves one tenant at a time
from the shard furthest above its share to the one furthest below, smallest tenant first
(least to copy), until no move would bring the two closer. It never plans more moves than
needed, and a balanced fleet gets an empty plan.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from schema.errors import MoveError
from schema.placement import ShardCandidate, place_tenant


@dataclass(frozen=True)
class PlannedMove:
    tenant_id: uuid.UUID
    source: int
    target: int


def drain_plan(tenants: list[uuid.UUID], shard_id: int, active: dict[int, float]) -> list[PlannedMove]:
    """Every tenant of ``shard_id`` to its placement among the other active shards."""
    candidates = [ShardCandidate(sid, weight) for sid, weight in sorted(active.items()) if sid != shard_id]
    if not candidates:
        raise MoveError(f"shard {shard_id} is the only active shard: add one (`wakala shard add`) before draining it")
    return [PlannedMove(t, shard_id, place_tenant(t, candidates)) for t in tenants]


def fair_shares(total: int, weights: dict[int, float]) -> dict[int, float]:
    weight_sum = sum(weights.values())
    return {sid: total * w / weight_sum for sid, w in weights.items()}


def rebalance_plan(tenants: dict[int, list[uuid.UUID]], weights: dict[int, float],
                   sizes: dict[uuid.UUID, int] | None = None) -> list[PlannedMove]:
    """Moves that bring every active shard within one tenant of its weighted share.

    ``tenants`` maps each active shard to its tenants; ``sizes`` (bytes) picks the cheapest
    tenant to move first, ties broken by id so a plan is repeatable."""
    if not weights:
        raise MoveError("there is no active shard to balance")
    held = {sid: sorted(tenants.get(sid, []), key=lambda t: ((sizes or {}).get(t, 0), str(t))) for sid in weights}
    share = fair_shares(sum(len(v) for v in held.values()), weights)
    plan: list[PlannedMove] = []
    while True:
        over = max(held, key=lambda s: (len(held[s]) - share[s], -s))
        under = min(held, key=lambda s: (len(held[s]) - share[s], s))
        excess, room = len(held[over]) - share[over], share[under] - len(held[under])
        # Moving one tenant helps only if it shrinks the larger of the two gaps.
        if not held[over] or max(excess, room) <= 0 or max(abs(excess - 1), abs(room - 1)) >= max(excess, room):
            return plan
        tenant = held[over].pop(0)
        held[under].append(tenant)
        plan.append(PlannedMove(tenant, over, under))
