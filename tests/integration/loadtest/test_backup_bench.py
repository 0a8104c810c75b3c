"""`wakala bench backup` at a tiny size: the table, the JSON line last, nothing left behind."""

from __future__ import annotations

import argparse
import json

import asyncpg
import pytest

from loadtest.backup import BackupBench, add_parser, parse_orders, run_backup_bench
from schema.errors import ConfigError
from schema.settings import PostgresSettings


@pytest.mark.timeout(300)
async def test_bench_reports_figures_and_drops_its_databases(capsys):
    figures = await run_backup_bench(BackupBench(orders=(30,), runs=2))
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == figures
    assert "backup s" in lines[1] and "pg_dump s" in lines[1]
    [result] = figures["results"]
    assert result["orders"] == 30 and result["rows"] > 30
    for key in ("backup_s", "restore_s", "pg_dump_s", "pg_restore_s", "backup_mb", "pg_dump_mb",
                "ratio_vs_pg_dump", "backup_rows_per_s", "restore_rows_per_s"):
        assert result[key] > 0, key
    # encrypted chunks of a compressed dump: about the size of the plain dump, a bit more
    assert 1.0 <= result["size_ratio_vs_pg_dump"] < 1.5
    prefix = figures["databases_prefix"]
    assert prefix.startswith("wkbench_")
    conn = await asyncpg.connect(PostgresSettings.from_env().control.with_database("postgres").url())
    try:
        left = await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1",
                                prefix.replace("_", "\\_") + "%")
    finally:
        await conn.close()
    assert left == []


@pytest.mark.parametrize("text", ["", ",", "ten", "0", "-5", "1,x", "1.5", "99999999"])
def test_hostile_sizes_are_refused(text):
    with pytest.raises(ConfigError, match="--orders"):
        parse_orders(text)


async def test_zero_runs_is_refused_before_anything_is_created():
    with pytest.raises(ConfigError, match="--runs"):
        await run_backup_bench(BackupBench(orders=(1,), runs=0))


def test_the_subcommand_parses():
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="bench"))
    args = parser.parse_args(["backup", "--orders", "10,20", "--runs", "1"])
    assert parse_orders(args.orders) == (10, 20) and args.runs == 1 and args.handler
