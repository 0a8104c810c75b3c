"""Which shard a new tenant goes to.

The seed placed tenants with ``abs(hashtext(id)) % active_shard_count``: adding a shard
changes the modulus and moves almost every tenant. We use weighted rendezvous (highest
random weight) hashing instead: each (tenant, shard) pair gets a stable pseudo-random score
and the tenant goes to the best-scoring shard. Adding a shard only takes the tenants for
which the new shard now scores best (about 1/N of them, and only to the new shard); no
tenant ever moves between two old shards. And placement is computed once, at provisioning:
``tenant_shard_mapping`` records it and stays the source of truth.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from schema.errors import ShardError

_TWO_64 = float(2**64)


@dataclass(frozen=True)
class ShardCandidate:
    shard_id: int
    weight: float = 1.0


def _score(tenant_id: UUID, candidate: ShardCandidate) -> float:
    digest = hashlib.sha256(tenant_id.bytes + candidate.shard_id.to_bytes(8, "big")).digest()
    # Uniform in (0, 1), never 0 or 1, so the logarithm is finite and negative.
    unit = (int.from_bytes(digest[:8], "big") + 0.5) / _TWO_64
    return candidate.weight / -math.log(unit)


def place_tenant(tenant_id: UUID, shards: Sequence[ShardCandidate]) -> int:
    """Return the shard id a new tenant belongs on, among the active shards given."""
    if not shards:
        raise ShardError("no active shard to place the tenant on; run `wakala migrate` first")
    return max(shards, key=lambda c: (_score(tenant_id, c), -c.shard_id)).shard_id
