"""`wakala tenant move`, `wakala shard drain`, `wakala shard rebalance`: operator commands over schema.moves."""

from __future__ import annotations

import argparse
import sys

from dispatch.core.console import format_table
from schema.errors import MoveError
from schema.moves.balance import PlannedMove
from schema.moves.plan import MovePlan, human_bytes
from schema.moves.runner import MoveOptions, MoveResult
from schema.settings import PostgresSettings


def add_tenant_move(tsub: argparse._SubParsersAction) -> None:
    p = tsub.add_parser("move", help="move a tenant to another shard, online (resumable; --dry-run shows the plan)")
    p.add_argument("tenant", nargs="?", help="tenant id (omit with --cleanup to clean up every due move)")
    p.add_argument("--to", type=int, metavar="SHARD", help="target shard id (see `wakala shard list`)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and sizes, change nothing")
    p.add_argument("--offline", action="store_true",
                   help="allow the paused copy when the source lacks wal_level=logical (writes wait for the whole copy)")
    p.add_argument("--abort", action="store_true", help="undo the tenant's unfinished move (before its switch)")
    p.add_argument("--cleanup", action="store_true",
                   help="drop the old schema of the tenant's finished moves now (without TENANT: every move past its grace)")
    p.set_defaults(handler=tenant_move)


def add_shard_commands(ssub: argparse._SubParsersAction) -> None:
    p = ssub.add_parser("drain", help="move every tenant off a shard, then retire it")
    p.add_argument("shard", type=int)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--offline", action="store_true")
    p.set_defaults(handler=shard_drain)
    p = ssub.add_parser("rebalance", help="move tenants until every active shard holds its weighted share")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--offline", action="store_true")
    p.set_defaults(handler=shard_rebalance)


class _Progress:
    """Step lines, and a bar for the initial copy (tables ready, rows so far)."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, event: str, fields: dict) -> None:
        if event == "copy":
            if not sys.stderr.isatty():
                return
            from tqdm import tqdm

            if self.bar is None:
                self.bar = tqdm(total=max(fields.get("rows_expected") or 0, 1), unit=" rows", file=sys.stderr,
                                desc="copying", leave=False)
            self.bar.n = fields["rows"]
            if "ready" in fields:
                self.bar.set_postfix_str(f"{fields['ready']}/{fields['total']} tables ready")
            self.bar.refresh()
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if event == "step":
            print(f"  step: {fields['step']}", flush=True)
        elif event == "lag":
            print(f"  caught up: {fields['bytes']} bytes behind", flush=True)
        elif event == "pause":
            print("  writes paused", flush=True)
        elif event == "verified":
            print(f"  verified: {fields['tables']} tables, {fields['rows']} rows, counts and checksums equal", flush=True)
        elif event == "switched":
            print(f"  switched: writes were paused {fields['pause_ms']:.0f} ms", flush=True)


def print_plan(plan: MovePlan) -> None:
    print(f"tenant {plan.tenant_id} ({plan.schema_name}): shard {plan.source.shard_id} ({plan.source.name}) -> "
          f"shard {plan.target.shard_id} ({plan.target.name}), method {plan.method}"
          + (" (the source lacks wal_level=logical: needs --offline; writes pause for the whole copy)"
             if plan.method == "copy" else "")
          + (f", resuming at {plan.resume_status}" if plan.resume_status else ""))
    print(format_table(["table", "rows (estimate)", "size"],
                       [(t.table, t.rows, human_bytes(t.bytes)) for t in plan.tables if t.rows or t.bytes > 16384]
                       + [("total", plan.rows, human_bytes(plan.bytes))]))
    print("steps:")
    for line in plan.steps():
        print(f"  {line}")


def print_result(result: MoveResult) -> None:
    rate = result.rows / result.copy_seconds if result.copy_seconds else None
    print(format_table(["move", "rows", "copy s", "rows/s", "catch-up lag", "write pause ms", "status"], [(
        str(result.move_id)[:8], result.rows, f"{result.copy_seconds:.2f}" if result.copy_seconds is not None else "-",
        f"{rate:.0f}" if rate else "-",
        f"{result.catchup_lag_bytes} B" if result.catchup_lag_bytes is not None else "-",
        f"{result.pause_ms:.0f}" if result.pause_ms is not None else "-", result.status)]))
    print("the old schema stays fenced until `wakala tenant move --cleanup` or its grace period ends")


async def tenant_move(args: argparse.Namespace) -> int:
    from schema.moves.cleanup import cleanup_moves
    from schema.moves.runner import abort_move, move_tenant

    settings = PostgresSettings.from_env()
    if args.cleanup:
        done = await cleanup_moves(settings, args.tenant)
        for c in done:
            print(f"dropped {c.schema_name} on shard {c.shard_id} (tenant {c.tenant_id}, move {c.move_id})")
        print(f"{len(done)} old schema(s) dropped")
        return 0
    if args.tenant is None:
        raise MoveError("name the tenant to move (and --to SHARD), or pass --cleanup")
    if args.abort:
        print(await abort_move(settings, args.tenant))
        return 0
    if args.to is None:
        raise MoveError("--to SHARD is required: the shard to move the tenant to (see `wakala shard list`)")
    options = MoveOptions(dry_run=args.dry_run, offline=args.offline, progress=_Progress())
    outcome = await move_tenant(settings, args.tenant, args.to, options)
    if isinstance(outcome, MovePlan):
        print_plan(outcome)
        return 0
    print_result(outcome)
    return 0


def _print_planned(planned: list[PlannedMove], what: str) -> None:
    if not planned:
        print(f"{what}: nothing to move")
        return
    print(format_table(["tenant", "from", "to"], [(str(m.tenant_id), m.source, m.target) for m in planned]))


def _announce(move: PlannedMove, n: int, total: int) -> None:
    print(f"[{n}/{total}] tenant {move.tenant_id}: shard {move.source} -> {move.target}", flush=True)


async def shard_drain(args: argparse.Namespace) -> int:
    from schema.moves.fleet import drain_shard

    options = MoveOptions(dry_run=args.dry_run, offline=args.offline, progress=_Progress())
    planned, results = await drain_shard(PostgresSettings.from_env(), args.shard, options, _announce)
    _print_planned(planned, f"shard {args.shard}")
    if not args.dry_run:
        print(f"shard {args.shard}: {len(results)} tenant(s) moved off; retired")
    return 0


async def shard_rebalance(args: argparse.Namespace) -> int:
    from schema.moves.fleet import rebalance

    options = MoveOptions(dry_run=args.dry_run, offline=args.offline, progress=_Progress())
    planned, results = await rebalance(PostgresSettings.from_env(), options, _announce)
    _print_planned(planned, "the shards are within their weights")
    if not args.dry_run and planned:
        print(f"{len(results)} tenant(s) moved")
    return 0


def add_bench(bsub: argparse._SubParsersAction) -> None:
    p = bsub.add_parser("tenant-move", help="online tenant move under order load vs the paused COPY move "
                                            "(a private cluster with wal_level=logical)")
    p.add_argument("--orders", default="10000,100000", help="tenant sizes in orders, comma-separated")
    p.add_argument("--mover-clients", type=int, default=3)
    p.add_argument("--other-clients", type=int, default=1)
    p.set_defaults(handler=bench_tenant_move)


async def bench_tenant_move(args: argparse.Namespace) -> int:
    from loadtest.backup import parse_orders
    from loadtest.tenant_move import TenantMoveBench, run_tenant_move_bench

    bench = TenantMoveBench(parse_orders(args.orders), args.mover_clients, args.other_clients)
    figures = await run_tenant_move_bench(bench)
    return 0 if all(not s["other_errors"] for s in figures["sizes"]) else 1
