"""Moves of many tenants: draining a shard and rebalancing the fleet by weight.

Both are a plan (``schema.moves.balance``) followed by ordinary moves, one at a time: a move
is the unit that is resumable and verified, and one at a time keeps the extra load on the
source and target shards to one copy. A rerun of a drain or a rebalance after a crash
resumes the unfinished move first (the plan skips nothing: tenants already moved are simply
no longer on the shard), then goes on.
"""

from __future__ import annotations

from collections.abc import Callable

from schema.connect import connection
from schema.errors import MoveError
from schema.moves.balance import PlannedMove, drain_plan, rebalance_plan
from schema.moves.runner import MoveOptions, MoveResult, move_tenant
from schema.settings import PostgresSettings

SHARD_SQL = "SELECT shard_id, shard_name, status FROM shard_map WHERE shard_id = $1"
ACTIVE_SQL = "SELECT shard_id, weight FROM shard_map WHERE status = 'active' ORDER BY shard_id"
TENANTS_ON_SQL = """
SELECT m.tenant_id, m.shard_id FROM tenant_shard_mapping m JOIN tenants t ON t.id = m.tenant_id
WHERE t.status IN ('active', 'suspended') ORDER BY m.tenant_id
"""
OPEN_MOVES_SQL = """
SELECT tenant_id, target_shard FROM tenant_migrations WHERE status NOT IN ('completed', 'cleaned', 'failed')
"""
SET_STATUS_SQL = "UPDATE shard_map SET status = $2 WHERE shard_id = $1"
LEFT_SQL = "SELECT count(*) FROM tenant_shard_mapping WHERE shard_id = $1"
OnMove = Callable[[PlannedMove, int, int], None]


async def _run(settings: PostgresSettings, planned: list[PlannedMove], options: MoveOptions,
               on_move: OnMove | None) -> list[MoveResult]:
    results = []
    for n, move in enumerate(planned, 1):
        if on_move is not None:
            on_move(move, n, len(planned))
        result = await move_tenant(settings, move.tenant_id, move.target, options)
        assert isinstance(result, MoveResult)
        results.append(result)
    return results


async def _with_open_moves_first(control, planned: list[PlannedMove]) -> list[PlannedMove]:
    """An unfinished move keeps the target it was started with (a rerun resumes it)."""
    open_moves = {r["tenant_id"]: r["target_shard"] for r in await control.fetch(OPEN_MOVES_SQL)}
    fixed = [PlannedMove(m.tenant_id, m.source, open_moves.get(m.tenant_id, m.target)) for m in planned]
    return sorted(fixed, key=lambda m: m.tenant_id not in open_moves)


async def drain_shard(settings: PostgresSettings, shard_id: int, options: MoveOptions | None = None,
                      on_move: OnMove | None = None) -> tuple[list[PlannedMove], list[MoveResult]]:
    """Mark the shard draining (no new tenants), move every tenant off it, then retire it."""
    options = options or MoveOptions()
    async with connection(settings.control) as control:
        shard = await control.fetchrow(SHARD_SQL, shard_id)
        if shard is None:
            raise MoveError(f"there is no shard {shard_id}; see `wakala shard list`")
        if shard["status"] == "retired":
            raise MoveError(f"shard {shard_id} ({shard['shard_name']}) is retired already")
        active = {r["shard_id"]: float(r["weight"]) for r in await control.fetch(ACTIVE_SQL)}
        tenants = [r["tenant_id"] for r in await control.fetch(TENANTS_ON_SQL) if r["shard_id"] == shard_id]
        planned = await _with_open_moves_first(control, drain_plan(tenants, shard_id, active))
        if options.dry_run:
            return planned, []
        await control.execute(SET_STATUS_SQL, shard_id, "draining")
    results = await _run(settings, planned, options, on_move)
    async with connection(settings.control) as control:
        if await control.fetchval(LEFT_SQL, shard_id) == 0:
            await control.execute(SET_STATUS_SQL, shard_id, "retired")
    return planned, results


async def rebalance(settings: PostgresSettings, options: MoveOptions | None = None,
                    on_move: OnMove | None = None,
                    sizes: dict | None = None) -> tuple[list[PlannedMove], list[MoveResult]]:
    """Move tenants between active shards until each holds its weighted share (within one)."""
    options = options or MoveOptions()
    async with connection(settings.control) as control:
        weights = {r["shard_id"]: float(r["weight"]) for r in await control.fetch(ACTIVE_SQL)}
        held: dict[int, list] = {sid: [] for sid in weights}
        for row in await control.fetch(TENANTS_ON_SQL):
            if row["shard_id"] in held:
                held[row["shard_id"]].append(row["tenant_id"])
        planned = await _with_open_moves_first(control, rebalance_plan(held, weights, sizes))
    if options.dry_run:
        return planned, []
    return planned, await _run(settings, planned, options, on_move)
