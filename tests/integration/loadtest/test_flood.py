"""`wakala bench flood` end to end with tiny numbers: a real engine, a real flood, one JSON line.

The figures themselves are not asserted (two shared cores make them noise at this size); what
is asserted is that the bench ran every phase against a live engine, counted what the engine
answered, measured the engine's memory and the legitimate workload in both halves, and
ended on the JSON line of figures with their units in their names.
"""

from __future__ import annotations

import json

import pytest

from loadtest.flood import FloodBench, run_flood_bench

pytestmark = pytest.mark.timeout(180)

KEYS = {
    "rss_before_mb", "rss_after_token_flood_mb", "rss_peak_mb", "rss_end_mb", "rss_growth_mb",
    "api_p99_baseline_ms", "api_p99_flood_ms", "ratio_p99_flood_vs_baseline", "refusals",
    "flood_requests_per_s", "tokens_sent", "rss_target_met", "p99_target_met", "ws_ack_p99_baseline_ms",
    "api_p99_by_call_ms", "engine_open_fds_peak_by_phase", "token_flood_cpu_cores",
}


async def test_a_tiny_flood_runs_every_phase_and_ends_on_its_figures(platform, capsys):
    figures = await run_flood_bench(FloodBench(
        tokens=2_000, concurrency=16, source_ips=4, body_mb=5, body_parallel=3, slow_clients=10, stuck_drivers=2,
        slow_s=3, baseline_s=4, bodies_s=0, customers=2, drivers=2, postgres=platform))
    out = capsys.readouterr().out.strip().splitlines()
    last = json.loads(out[-1])
    assert last == json.loads(json.dumps(figures))
    assert KEYS <= set(last)
    assert last["tokens_sent"] == 2_000 and last["flood_requests_per_s"] > 0
    refusals = last["refusals"]
    assert {"401", "413", "429", "431", "414", "closed"} <= set(refusals)
    # every token was refused one way or another, none accepted
    assert sum(last["outcomes_by_phase"]["tokens"].values()) == 2_000
    assert last["outcomes_by_phase"]["tokens"].get("accepted", 0) == 0
    assert sum(last["outcomes_by_phase"]["bodies"].values()) == 10
    assert last["rss_before_mb"] > 0 and last["rss_peak_mb"] >= last["rss_before_mb"]
    assert last["api_calls_baseline"] > 0 and last["api_calls_flood"] > 0
    assert last["api_p99_baseline_ms"] > 0 and last["ratio_p99_flood_vs_baseline"] > 0
    assert last["rss_target_met"] is None   # 2,000 tokens say nothing about the 100,000-token target
    assert "ratio flood / baseline" in "\n".join(out[:-1])


def test_the_command_line_reaches_the_bench_and_refuses_what_it_cannot_run(capsys):
    from dispatch.cli import build_parser, main

    args = build_parser().parse_args(["bench", "flood", "--tokens", "2000", "--body-mb", "5"])
    assert (args.tokens, args.body_mb, args.auth_failure_limit) == (2000, 5.0, None)
    assert main(["bench", "flood", "--tokens", "-1"]) == 2 and "tokens" in capsys.readouterr().err
