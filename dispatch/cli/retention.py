"""``wakala retention``: run the retention policies, list them, change one.

::

    wakala retention run [--dry-run] [--tenant T] [--table X] [--allow-financial]
    wakala retention policies [--allow-financial]
    wakala retention set TABLE --days N [--inactive] [--reason TEXT] [--allow-financial]

A real run takes the maintenance lock, so it never overlaps an engine's maintenance round
(it is refused, naming why, when one is under way); a dry run only reads and needs no lock.
Batch size, pauses and timeouts come from ``WAKALA_RETENTION_*`` (see
``schema.retention.policies.RetentionSettings``). Exit status: 0 done, 1 a policy was refused
or a table stopped on an error, 2 a user error (an unknown table or tenant, a period out of
range).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from dispatch.core.console import format_table
from schema.errors import WakalaError
from schema.settings import PostgresSettings

__all__ = ["RetentionBusy", "register"]


class RetentionBusy(WakalaError):
    """A maintenance round (or another run) holds the maintenance lock."""


def _days(text: str) -> int:
    """A whole number of days (argparse type); the range is the policy's rule to check."""
    try:
        return int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number of days, got {text!r}") from None


def _settings(args: argparse.Namespace):
    from schema.retention.policies import RetentionSettings

    settings = RetentionSettings.from_env()
    return replace(settings, allow_financial=True) if args.allow_financial else settings


async def _run(args: argparse.Namespace) -> int:
    from schema.retention.runner import maintenance_lock, run_retention

    pg, retention = PostgresSettings.from_env(), _settings(args)
    if args.dry_run:
        report = await run_retention(pg, retention, dry_run=True, tenant=args.tenant, table=args.table)
    else:
        async with maintenance_lock(pg) as held:
            if held is None:
                raise RetentionBusy("an engine's maintenance round (or another `wakala retention run`) "
                                    "is running; try again when it has finished, or use --dry-run")
            report = await run_retention(pg, retention, tenant=args.tenant, table=args.table)
    shown = [o for o in report.outcomes if o.deleted or o.error or o.partitions_dropped]
    print(format_table(
        ["schema", "table", "would delete" if report.dry_run else "deleted", "batches", "partitions",
         "error"],
        [(o.schema_name, o.table, o.deleted, o.batches, ", ".join(o.partitions_dropped) or "-",
          o.error or "") for o in shown]))
    verb = "would be deleted" if report.dry_run else "deleted"
    run = "dry run (nothing changed, nothing logged)" if report.dry_run else f"run {report.run_id}"
    print(f"{run}: {report.deleted} row(s) {verb} in {len(report.outcomes)} tenant table(s); "
          f"{len(report.outcomes) - len(shown)} had nothing to delete")
    for refused in report.refused:
        print(f"refused: {refused}", file=sys.stderr)
    return 1 if report.refused or report.errors else 0


async def _policies(args: argparse.Namespace) -> int:
    from schema.retention.runner import list_policies

    rows = await list_policies(PostgresSettings.from_env(), allow_financial=_settings(args).allow_financial)
    print(format_table(
        ["table", "days", "active", "conditions", "status", "reason"],
        [(r.table_name, r.delete_after_days or r.retention_days, "yes" if r.is_active else "no",
          "-" if r.conditions in (None, "{}") else r.conditions,
          "ok" if r.problem is None else f"refused: {r.problem}", r.reason or "")
         for r in rows]))
    return 1 if any(r.problem and r.is_active for r in rows) else 0


async def _set(args: argparse.Namespace) -> int:
    from schema.retention.runner import set_policy

    row = await set_policy(PostgresSettings.from_env(), args.table, args.days, active=not args.inactive,
                           allow_financial=_settings(args).allow_financial, reason=args.reason)
    print(f"{row.table_name}: rows older than {row.retention_days} day(s) "
          f"{'are deleted' if row.is_active else 'are kept (policy inactive)'} (policy {row.id})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``retention`` to the top-level subparsers of ``wakala``."""
    p = sub.add_parser("retention", help="delete data the retention policies say has aged out")
    rsub = p.add_subparsers(dest="action", required=True)
    run = rsub.add_parser("run", help="apply the active policies (in batches; logged per tenant and table)")
    run.add_argument("--dry-run", action="store_true", help="count what would go; change and log nothing")
    run.add_argument("--tenant", help="only this tenant (id or slug)")
    run.add_argument("--table", help="only this table's policies")
    policies = rsub.add_parser("policies", help="list the policies, and whether each would run")
    change = rsub.add_parser("set", help="set the period of a table's policy (created if missing)")
    change.add_argument("table")
    change.add_argument("--days", type=_days, required=True, help="rows older than this go")
    change.add_argument("--inactive", action="store_true", help="keep the policy but do not apply it")
    change.add_argument("--reason", help="why this period (kept with the policy)")
    for parser in (run, policies, change):
        parser.add_argument("--allow-financial", action="store_true",
                            help="allow an active policy on orders (as WAKALA_RETENTION_ALLOW_FINANCIAL=1)")
    run.set_defaults(handler=_run)
    policies.set_defaults(handler=_policies)
    change.set_defaults(handler=_set)
