"""``wakala status [--json] [--timeout S]``: live health on one screen (``dispatch.ops.status``).

Exit status: 0 when every service answers and every part was read, 1 otherwise (stale
backups and unfinished moves are shown, not counted as down), 2 for a user error.
"""

from __future__ import annotations

import argparse
import json
import math

from schema.errors import WakalaError

__all__ = ["register", "timeout_seconds"]


def timeout_seconds(text: str) -> float:
    """argparse type of ``--timeout``: seconds per check, 0.1 to 60."""
    try:
        value = float(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or not 0.1 <= value <= 60:
        raise argparse.ArgumentTypeError(f"between 0.1 and 60 seconds, got {text!r}")
    return value


async def _status(args: argparse.Namespace) -> int:
    from dispatch.ops.status import gather_status, render, to_json, verdict
    from schema.settings import PostgresSettings
    from streams.settings import StreamSettings

    try:
        pg, streams = PostgresSettings.from_env(), StreamSettings.from_env()
    except ValueError as exc:  # ConfigError is a WakalaError already; a bad number in streams is not
        raise WakalaError(str(exc)) from None
    report = await gather_status(pg, streams, timeout_s=args.timeout)
    print(json.dumps(to_json(report), default=str, sort_keys=True) if args.json else render(report))
    return 0 if verdict(report) else 1


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``status`` to the top-level subparsers of ``wakala``."""
    p = sub.add_parser("status", help="live health: services, shards, deliveries, moves, backups, lag")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--timeout", type=timeout_seconds, default=3.0,
                   help="seconds each check may take before its service counts as down (3)")
    p.set_defaults(handler=_status)
