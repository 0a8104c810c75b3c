"""The rules of a tenant move, without I/O: its steps, names, refusals and the plan it prints.

A move walks ``STEPS`` in order and records each one in ``tenant_migrations`` before it does
the work of that step; every step's work is idempotent, so a rerun after a crash (kill -9 at
any point) starts at the recorded step and ends in the same state as an uninterrupted run.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from schema.errors import MoveError

# The order a move goes through; the status column of tenant_migrations holds one of these.
STEPS = ("started", "preparing", "copying", "catching_up", "switching", "switched", "completed")
FINISHED = ("completed", "cleaned", "failed")
# Shards a tenant may be moved onto.
TARGET_STATUSES = ("active",)


def step_index(status: str) -> int:
    try:
        return STEPS.index(status)
    except ValueError:
        raise MoveError(f"a move in status {status!r} cannot be resumed") from None


def replication_name(move_id: uuid.UUID) -> str:
    """The publication, slot and subscription of one move share this name (slots are
    cluster-wide, so it is unique per move, and it tells an operator whose they are)."""
    return f"wakala_move_{move_id.hex[:20]}"


@dataclass(frozen=True)
class ShardInfo:
    shard_id: int
    name: str
    status: str
    host: str
    port: int
    database: str
    weight: float = 1.0


def refuse_move(tenant_shard: int, target: ShardInfo | None, target_id: int) -> None:
    """Why a tenant on ``tenant_shard`` cannot go to ``target`` (MoveError), or nothing."""
    if target is None:
        raise MoveError(f"there is no shard {target_id}; see `wakala shard list`")
    if target.shard_id == tenant_shard:
        raise MoveError(f"the tenant already lives on shard {target_id} ({target.name}); nothing to move")
    if target.status not in TARGET_STATUSES:
        raise MoveError(f"shard {target_id} ({target.name}) is {target.status}: tenants move onto active "
                        "shards only")


@dataclass(frozen=True)
class TableSize:
    table: str
    rows: int          # planner estimate (reltuples) for the plan; exact counts come at verification
    bytes: int


@dataclass(frozen=True)
class MovePlan:
    tenant_id: uuid.UUID
    schema_name: str
    source: ShardInfo
    target: ShardInfo
    method: str                     # 'logical' (online) or 'copy' (writes paused for the whole copy)
    tables: tuple[TableSize, ...]
    resume_status: str | None = None

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)

    @property
    def bytes(self) -> int:
        return sum(t.bytes for t in self.tables)

    def steps(self) -> list[str]:
        start = step_index(self.resume_status) if self.resume_status else 0
        what = {
            "started": "record the move in tenant_migrations",
            "preparing": f"build {self.schema_name} on {self.target.name} from the tenant migrations",
            "copying": ("publish the schema's tables on the source, subscribe on the target: "
                        "PostgreSQL copies every table, then streams changes"
                        if self.method == "logical" else
                        "pause the tenant's writes and COPY every table to the target"),
            "catching_up": "wait until the target is within a moment of the source",
            "switching": ("pause the tenant's writes, fence the source schema, wait for the last "
                          "change, copy sequences, compare row counts and checksums"),
            "switched": f"point tenant_shard_mapping at {self.target.name}; engines follow at once",
            "completed": "drop the subscription, slot and publication; keep the old schema fenced "
                         "until `wakala tenant move --cleanup` or the grace period",
        }
        return [f"{step}: {what[step]}" for step in STEPS[start:]]


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"
