"""The orders bench's pure parts: reading pgbench's tps, the ratio to it, CPU per order."""

from __future__ import annotations

import pytest

from loadtest.orders import OrdersBench, cpu_ms_per_order, parse_pgbench_tps, ratio_vs_pgbench

PGBENCH_15 = """\
pgbench (15.10 (Debian 15.10-0+deb12u1))
transaction type: <builtin: TPC-B (sort of)>
scaling factor: 10
query mode: simple
number of clients: 32
number of threads: 2
maximum number of tries: 1
duration: 15 s
number of transactions actually processed: 56732
number of failed transactions: 0 (0.000%)
latency average = 8.458 ms
initial connection time = 41.734 ms
tps = 3782.123456 (without initial connection time)
"""


def test_pgbench_tps_is_the_figure_without_connection_time():
    assert parse_pgbench_tps(PGBENCH_15) == pytest.approx(3782.123456)


@pytest.mark.parametrize("output", [
    "",
    "pgbench: error: connection to server failed: FATAL: too many clients already\n",
    "tps = lots (without initial connection time)\n",
    "latency average = 8.458 ms\ntps = 3782.1 (including connections establishing)\n",
])
def test_pgbench_output_without_a_usable_tps_line_gives_none(output):
    assert parse_pgbench_tps(output) is None


def test_ratio_to_pgbench_is_rounded_and_none_without_a_yardstick():
    assert ratio_vs_pgbench(412.3, 3782.123456) == 0.109
    assert ratio_vs_pgbench(1.0, 3.0) == 0.3333
    assert ratio_vs_pgbench(412.3, None) is None
    assert ratio_vs_pgbench(412.3, 0.0) is None


def test_cpu_per_order_is_cores_times_a_thousand_over_orders_per_second():
    per_order = cpu_ms_per_order({"engine": 1.2, "load_generator": 0.1, "machine": 2.0}, 400.0)
    assert per_order == {"engine": 3.0, "load_generator": 0.25, "machine": 5.0}
    assert cpu_ms_per_order({"engine": 1.2}, 0.0) == {"engine": None}   # nothing paid: no figure, no crash


@pytest.mark.parametrize(("seconds", "pgbench_seconds", "expected"), [
    (20.0, None, 15), (8.0, None, 8), (20.0, 30.0, 30), (20.0, 0.0, 0), (20.0, 0.2, 1),
])
def test_pgbench_runs_min_15_and_bench_seconds_unless_told_and_0_skips(seconds, pgbench_seconds, expected):
    assert OrdersBench(seconds=seconds, pgbench_seconds=pgbench_seconds).pgbench_run_s() == expected
