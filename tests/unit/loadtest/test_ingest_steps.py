"""The ingest bench's load steps: plan, verdict, stop rule and the last line's shape."""

from __future__ import annotations

import json

import pytest

from loadtest.ingest_steps import (
    Step,
    StepResult,
    clearly_failed,
    parse_steps,
    plan_steps,
    sockets_fit,
    summary,
    sustained,
    why_not_sustained,
)


def result(offered: float, achieved: float, p99: float | None = 200.0, failures: int = 0, connected: int | None = None,
           dead: int = 0, hz: float = 2.0) -> StepResult:
    drivers = round(offered / hz)
    return StepResult(step=Step(offered, drivers), pings_per_s=achieved, p50_ms=50.0 if p99 else None, p99_ms=p99,
                      latency_samples=100 if p99 else 0,
                      drivers_connected=drivers if connected is None else connected, client_failures=failures,
                      client_errors=0, dead_clients=dead, cpu_cores_used={"gateway": 1.2, "load clients": 0.3})


def test_steps_parse_as_rising_positive_loads():
    assert parse_steps("10000, 20000,40k") == [10_000.0, 20_000.0, 40_000.0]
    for bad in ("", "0", "10000,5000", "10000,10000", "fast"):
        with pytest.raises(ValueError):
            parse_steps(bad)


def test_a_step_is_load_over_hz_drivers():
    assert plan_steps([10_000, 60_000], 2.0) == [Step(10_000.0, 5_000), Step(60_000.0, 30_000)]
    assert plan_steps([20_000], 1.0) == [Step(20_000.0, 20_000)]   # the old single shape
    with pytest.raises(ValueError):
        plan_steps([1000], 0)


def test_sockets_fit_the_open_file_limit_per_process_with_spare():
    assert sockets_fit(30_000, 2, 20_000)
    assert not sockets_fit(60_000, 2, 20_000)
    assert not sockets_fit(38_500, 2, 20_000)   # 19,250 each leaves less than 1,000 spare


def test_a_step_is_sustained_only_when_every_rule_holds():
    assert sustained(result(20_000, 19_000))                     # exactly 95%
    assert why_not_sustained(result(20_000, 18_999)) == ["achieved 95.0% of offered"]
    assert why_not_sustained(result(20_000, 20_000, p99=1_000.1)) == ["p99 1,000 ms"]
    assert why_not_sustained(result(20_000, 20_000, p99=None)) == ["no latency samples"]
    assert why_not_sustained(result(20_000, 20_000, failures=1)) == ["1 client failures"]
    assert why_not_sustained(result(20_000, 20_000, connected=9_999)) == ["connected 9999/10000"]
    assert why_not_sustained(result(20_000, 20_000, dead=1)) == ["1 load-client process(es) died"]


def test_only_a_clear_failure_stops_the_stepping():
    assert not clearly_failed(result(40_000, 37_000, p99=1_500.0, failures=3))   # narrow: try the next step
    assert clearly_failed(result(40_000, 31_000))
    assert clearly_failed(result(40_000, 40_000, p99=6_000.0))
    assert clearly_failed(result(40_000, 40_000, connected=19_000))
    assert clearly_failed(result(40_000, 40_000, dead=1))


def test_summary_takes_the_highest_sustained_step_and_the_best_achieved():
    steps = [result(10_000, 10_050.0, p99=150.0), result(20_000, 19_800.0, p99=400.0),
             result(40_000, 33_000.0, p99=2_500.0, failures=12)]
    figures = summary(steps, baseline_pings_per_s=66_000.0)
    assert figures["max_sustained_pings_per_s"] == 19_800.0
    assert figures["max_sustained_offered_pings_per_s"] == 20_000.0
    assert figures["p99_ms"] == 400.0
    assert figures["pings_per_s"] == 33_000.0
    assert figures["ratio_vs_baseline"] == 0.5
    assert figures["sustained_ratio_vs_baseline"] == 0.3
    assert [s["sustained"] for s in figures["steps"]] == [True, True, False]
    json.loads(json.dumps(figures))   # the last line is plain JSON


def test_summary_with_no_sustained_step_says_so_with_nulls():
    figures = summary([result(10_000, 5_000.0)], baseline_pings_per_s=50_000.0)
    assert figures["max_sustained_pings_per_s"] is None and figures["p99_ms"] is None
    assert figures["sustained_ratio_vs_baseline"] is None
    assert figures["ratio_vs_baseline"] == 0.1


def test_every_step_entry_carries_the_figures_with_units():
    entry = summary([result(10_000, 10_000.0)], 1.0)["steps"][0]
    for key in ("offered_pings_per_s", "pings_per_s", "p50_ms", "p99_ms", "client_failures", "client_errors",
                "cpu_cores_used", "drivers", "drivers_connected", "window_s"):
        assert key in entry
    assert entry["cpu_cores_used"] == {"gateway": 1.2, "load clients": 0.3}
