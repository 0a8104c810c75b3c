"""`wakala bench backup`: how long an encrypted, verified tenant backup and restore take, next
to plain ``pg_dump -Fc`` / ``pg_restore`` of the same schema.

The bench makes its own control plane and two shards (``wkbench_<hex>_*``, never the
configured control database), fills one tenant per size with ``loadtest.tenant_data``, and
for each run:

1. ``backup_tenant`` (snapshot, checksums, pg_dump, AES-GCM chunks, fsync): ``backup_s``;
2. the yardstick ``pg_dump -Fc -n <schema>`` to a file: ``pg_dump_s``;
3. the schema is dropped (a lost tenant) and the yardstick ``pg_restore --single-transaction``
   puts it back: ``pg_restore_s``; dropped again;
4. ``restore`` in place (sha256, decrypt and authenticate to a temporary file, pg_restore,
   checksums compared with the header, migrations recorded and checked): ``restore_s``.

Medians over the runs are reported; ``ratio_vs_pg_dump`` is backup_s / pg_dump_s and
``restore_ratio_vs_pg_restore`` restore_s / pg_restore_s. Everything the bench created
(databases, files) is removed at the end, also when it fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from dispatch.core.console import format_table
from loadtest.tenant_data import MAX_ORDERS, fill_tenant
from schema.backups import BackupSettings, backup_tenant, restore
from schema.backups.dump import dump_schema_to_file, restore_archive
from schema.backups.settings import BackupKey
from schema.checksums import quote_ident
from schema.connect import connection, drop_database
from schema.errors import ConfigError
from schema.migrate import migrate, shard_dsn
from schema.settings import PostgresSettings
from schema.tenants import create_tenant

PREFIX = "wkbench_"


@dataclass(frozen=True)
class BackupBench:
    orders: tuple[int, ...] = (10_000, 100_000)
    runs: int = 3


def parse_orders(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"--orders takes comma-separated whole numbers, got {text!r}") from None
    if not sizes or any(not 1 <= n <= MAX_ORDERS for n in sizes):
        raise ConfigError(f"--orders sizes must be 1..{MAX_ORDERS}, got {text!r}")
    return sizes


def bench_settings(base: PostgresSettings, prefix: str) -> PostgresSettings:
    return replace(base, control=base.control.with_database(f"{prefix}_control"),
                   shard_databases=(f"{prefix}_shard_0", f"{prefix}_shard_1"))


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


async def _drop_schema(settings: PostgresSettings, place, schema_name: str) -> None:
    async with connection(shard_dsn(settings, place)) as conn:
        await conn.execute(f"DROP SCHEMA {quote_ident(schema_name)} CASCADE")


async def _measure(settings: PostgresSettings, backups: BackupSettings, orders: int, runs: int,
                   workdir: Path) -> dict[str, object]:

    tenant = await create_tenant(settings, f"Bench {orders}")
    filled = time.perf_counter()
    counts = await fill_tenant(settings, tenant.id, orders)
    fill_s = time.perf_counter() - filled
    async with connection(settings.control) as control:
        place = await control.fetchrow("SELECT host, port, database_name FROM shard_map "
                                       "WHERE shard_id = $1", tenant.shard_id)
    dsn = shard_dsn(settings, place)
    async with connection(dsn) as conn:
        await conn.execute("VACUUM ANALYZE")
    samples: dict[str, list[float]] = {k: [] for k in
                                       ("backup_s", "restore_s", "pg_dump_s", "pg_restore_s")}
    rows = backup_mb = pg_dump_mb = 0.0
    for _ in range(runs):
        done = await backup_tenant(settings, backups, tenant.id)
        samples["backup_s"].append(done.seconds)
        rows, backup_mb = done.total_rows, done.size_bytes / 1e6
        plain = workdir / "plain.dump"
        started = time.perf_counter()
        await dump_schema_to_file(dsn, tenant.schema_name, plain)
        samples["pg_dump_s"].append(time.perf_counter() - started)
        pg_dump_mb = plain.stat().st_size / 1e6
        await _drop_schema(settings, place, tenant.schema_name)
        started = time.perf_counter()
        await restore_archive(dsn, plain)
        samples["pg_restore_s"].append(time.perf_counter() - started)
        await _drop_schema(settings, place, tenant.schema_name)
        restored = await restore(settings, backups, str(done.backup_id))
        samples["restore_s"].append(restored.seconds)
        plain.unlink()
        for old in done.path.parent.glob("*.wkb"):
            old.unlink()   # keep one backup's worth of disk per size
    medians = {k: _median(v) for k, v in samples.items()}
    return {
        "orders": orders, "rows": int(rows), "order_rows": counts.get("orders", orders),
        "fill_s": round(fill_s, 2), **medians,
        "backup_mb": round(backup_mb, 2), "pg_dump_mb": round(pg_dump_mb, 2),
        "backup_rows_per_s": round(rows / medians["backup_s"]) if medians["backup_s"] else None,
        "restore_rows_per_s": round(rows / medians["restore_s"]) if medians["restore_s"] else None,
        "ratio_vs_pg_dump": round(medians["backup_s"] / medians["pg_dump_s"], 2),
        "restore_ratio_vs_pg_restore": round(medians["restore_s"] / medians["pg_restore_s"], 2),
        "size_ratio_vs_pg_dump": round(backup_mb / pg_dump_mb, 3) if pg_dump_mb else None,
    }


async def run_backup_bench(bench: BackupBench = BackupBench(), *,
                           base: PostgresSettings | None = None) -> dict[str, object]:
    """Run the bench, print the table and the JSON line; return the figures."""
    if bench.runs < 1:
        raise ConfigError(f"--runs must be at least 1, got {bench.runs}")
    prefix = f"{PREFIX}{uuid.uuid4().hex[:8]}"
    settings = bench_settings(base or PostgresSettings.from_env(), prefix)
    workdir = Path(tempfile.mkdtemp(prefix="wakala-bench-backup-"))
    backups = BackupSettings(directory=workdir / "backups", key=BackupKey(os.urandom(32)))
    results = []
    try:
        await migrate(settings)
        for orders in bench.orders:
            results.append(await _measure(settings, backups, orders, bench.runs, workdir))
    finally:
        for database in (settings.control.database, *settings.shard_databases):
            await drop_database(settings.control.with_database(database))
        shutil.rmtree(workdir, ignore_errors=True)
    figures = {"bench": "backup", "runs": bench.runs, "databases_prefix": prefix,
               "cpu_count": os.cpu_count(), "results": results}
    print(f"backup bench: {bench.runs} run(s) per size, medians; one tenant per size, "
          "AES-256-GCM over pg_dump -Fc vs plain pg_dump -Fc / pg_restore")
    print(format_table(
        ["orders", "rows", "backup s", "pg_dump s", "ratio", "restore s", "pg_restore s", "ratio",
         "backup MB", "pg_dump MB", "backup rows/s", "restore rows/s"],
        [(r["orders"], r["rows"], r["backup_s"], r["pg_dump_s"], r["ratio_vs_pg_dump"],
          r["restore_s"], r["pg_restore_s"], r["restore_ratio_vs_pg_restore"], r["backup_mb"],
          r["pg_dump_mb"], r["backup_rows_per_s"], r["restore_rows_per_s"]) for r in results]))
    print(json.dumps(figures, sort_keys=True))
    return figures


async def _handler(args: argparse.Namespace) -> int:
    await run_backup_bench(BackupBench(orders=parse_orders(args.orders), runs=args.runs))
    return 0


def add_parser(bsub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `wakala bench backup` under the bench subcommands."""
    p = bsub.add_parser("backup", help="encrypted tenant backup and restore vs plain pg_dump/pg_restore")
    p.add_argument("--orders", default="10000,100000", help="tenant sizes in orders, comma-separated")
    p.add_argument("--runs", type=int, default=3, help="backups and restores per size (medians reported)")
    p.set_defaults(handler=_handler)
    return p
