"""`wakala backup ...` and `wakala restore ...`: thin shells over schema.backups.

``wakala backup`` takes a tenant id or ``--all``, or one of the words ``verify``, ``list``
and ``prune`` (a tenant id is a UUID, so the two never collide). Exit codes: 0 done, 1 a
verify mismatch or a tenant of ``--all`` that failed, 2 a refusal (the CLI prints it).
"""

from __future__ import annotations

import argparse

from dispatch.core.console import format_table
from schema.backups.errors import BackupError
from schema.settings import PostgresSettings

ACTIONS = ("verify", "list", "prune")


def _settings(args: argparse.Namespace):
    from schema.backups.settings import BackupSettings

    return PostgresSettings.from_env(), BackupSettings.from_env(key_file=args.key_file)


def _mb(size: int | None) -> str:
    return "" if size is None else f"{size / 1_000_000:.2f}"


async def _backup(args: argparse.Namespace) -> int:
    from schema.backups import backup_all, backup_tenant, list_backups, prune, verify_backups

    target = args.target
    if args.backup is not None and target != "verify":
        raise BackupError(f"unexpected argument {args.backup!r}: only `wakala backup verify` takes a backup")
    if target is None and not args.all:
        raise BackupError("name a tenant id or pass --all (or: wakala backup verify|list|prune)")
    if target is not None and args.all:
        raise BackupError("--all backs up every active tenant; do not name one as well")
    if target == "list":
        if args.limit < 1:
            raise BackupError(f"--limit must be at least 1, got {args.limit}")
        rows = await list_backups(PostgresSettings.from_env(), limit=args.limit)
        print(format_table(
            ["backup", "tenant", "status", "kind", "reason", "started", "MB", "rows", "verified"],
            [(r["id"], r["slug"] or r["tenant_id"], r["status"], r["kind"], r["reason"],
              f"{r['started_at']:%Y-%m-%d %H:%M:%S}", _mb(r["size_bytes"]), r["total_rows"],
              r["verify_status"]) for r in rows]))
        return 0
    pg, settings = _settings(args)
    if target == "prune":
        pruned = await prune(pg, settings)
        print(f"expired {len(pruned.expired)} backup(s)"
              + (f"; {len(pruned.missing_files)} file(s) were already gone" if pruned.missing_files else ""))
        return 0
    if target == "verify":
        results = await verify_backups(pg, settings, args.backup)
        print(format_table(
            ["backup", "tenant", "tables", "rows", "result", "seconds"],
            [(r.backup_id, r.tenant_id, r.tables, r.rows, "ok" if r.ok else "; ".join(r.problems),
              f"{r.seconds:.1f}") for r in results]))
        if not results:
            print("no completed backups to verify")
        return 0 if all(r.ok for r in results) else 1
    if args.all:
        outcomes = await backup_all(pg, settings)
        print(format_table(
            ["tenant", "backup", "kind", "rows", "MB", "seconds", "result"],
            [(o.tenant_id, o.backup_id, o.kind, o.total_rows, _mb(o.size_bytes), f"{o.seconds:.1f}", "ok")
             if not isinstance(o, BaseException) else ("", "", "", "", "", "", f"failed: {o}")
             for o in outcomes]))
        return 0 if not any(isinstance(o, BaseException) for o in outcomes) else 1
    done = await backup_tenant(pg, settings, target)
    print(f"backup {done.backup_id} of tenant {done.tenant_id} ({done.schema_name} on {done.shard_name}): "
          f"{done.tables} tables, {done.total_rows} rows, {_mb(done.size_bytes)} MB, {done.kind}, "
          f"{done.seconds:.1f} s -> {done.path}")
    return 0


async def _restore(args: argparse.Namespace) -> int:
    from schema.backups import restore

    pg, settings = _settings(args)
    done = await restore(pg, settings, args.backup, as_new_tenant=args.as_new_tenant,
                         to_shard=args.to_shard, replace=args.replace)
    print(f"restored backup {done.backup_id} ({done.mode}) as tenant {done.tenant_id} in "
          f"{done.schema_name} on {done.shard_name}: {done.tables} tables, {done.rows} rows "
          f"verified, {done.seconds:.1f} s")
    if done.pre_restore_backup_id:
        print(f"the replaced schema was backed up first as {done.pre_restore_backup_id}")
    if done.migrations_applied:
        print(f"migrations applied since the backup: {', '.join(done.migrations_applied)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `backup` and `restore` to the top-level subcommands of `wakala`."""
    p = sub.add_parser("backup", help="encrypted per-tenant backups: take, verify, list, prune")
    p.add_argument("target", nargs="?", metavar="TENANT|verify|list|prune",
                   help="a tenant id to back up, or an action")
    p.add_argument("backup", nargs="?", metavar="BACKUP",
                   help="verify: a backup id or file (default: the latest backup of every tenant)")
    p.add_argument("--all", action="store_true", help="back up every active tenant")
    p.add_argument("--key-file", help="the backup key (default WAKALA_BACKUP_KEY / WAKALA_BACKUP_KEY_FILE)")
    p.add_argument("--limit", type=int, default=50, help="list: rows shown (newest first)")
    p.set_defaults(handler=_backup)

    r = sub.add_parser("restore", help="restore a backup (refuses a live tenant unless --replace)")
    r.add_argument("backup", metavar="BACKUP", help="a backup id (see `wakala backup list`) or a backup file")
    where = r.add_mutually_exclusive_group()
    where.add_argument("--as-new-tenant", metavar="NAME",
                       help="restore as a new tenant with this name (new id, new schema)")
    where.add_argument("--to-shard", type=int, metavar="N", help="restore the tenant onto shard N")
    r.add_argument("--replace", action="store_true",
                   help="replace the tenant's live schema (a backup of it is taken first)")
    r.add_argument("--key-file", help="the backup key (default WAKALA_BACKUP_KEY / WAKALA_BACKUP_KEY_FILE)")
    r.set_defaults(handler=_restore)
