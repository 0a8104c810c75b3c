"""The city replay's report: figures against numpy, the files it writes, the terminal tables.

No services: the report is plain functions over a ``ReplayMetrics`` filled here with
synthetic but realistic data (fixed seed).
"""

from __future__ import annotations

import io
import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import h3
import numpy as np
import pytest
from PIL import Image

from loadtest.city_report import (
    REPORT_FILES,
    ReplayMetrics,
    _bucketed_percentiles,
    print_report,
    read_metrics,
    render,
    summarize,
    write_report,
)

STARTED_AT = 1_760_000_000.0
WALL_S = 600.0
ROUTES = ("POST /v1/orders", "GET /v1/orders/{id}", "POST /v1/vendors/orders/{id}/ready")
SOWETO = (-26.25, 27.88)


def city_metrics(seed: int = 7) -> ReplayMetrics:
    """Ten wall minutes of a 10x replay: 180 orders, 150 assigned, 140 delivered."""
    rng = np.random.default_rng(seed)
    m = ReplayMetrics(scenario="scenarios/soweto.yaml", seed=seed, speed=10.0,
                      started_at=STARTED_AT, ended_at=STARTED_AT + WALL_S)
    m.counters.update({
        "orders_planned": 200, "orders_placed": 180, "orders_refused": 20,
        "refused:out_of_stock": 12, "refused:vendor_closed": 8,
        "orders_accepted_by_vendor": 170, "orders_ready": 160, "orders_delivered": 140,
        "orders_failed": 6, "orders_cancelled": 4, "offers": 220, "offers_accepted": 150,
        "offers_declined": 40, "offers_ignored": 30, "pings_sent": 60_000, "pings_refused": 50,
        "pings_dropped_out": 300, "watchers": 100, "tracking_frames": 9_000,
        "tracking_positions": 8_000, "api_errors": 3,
    })
    placed_at = np.sort(rng.uniform(0, 450, 180))
    for i, t in enumerate(placed_at):
        key = f"ord-{i:03d}"
        m.orders.append((float(t), key, "placed"))
        if i < 150:
            m.orders.append((float(t) + 20, key, "assigned"))
        if i < 140:
            m.orders.append((float(t) + 60, key, "picked_up"))
            m.orders.append((float(t) + 120, key, "delivered"))
        elif 140 <= i < 146:
            m.orders.append((float(t) + 90, key, "failed"))
        elif 150 <= i < 154:
            m.orders.append((float(t) + 30, key, "cancelled"))
    m.orders.append((300.0, "ord-000", "assigned"))  # re-offered: still one assigned order
    for i in range(20):
        m.orders.append((float(rng.uniform(0, 450)), f"refused-{i}", "refused"))

    for t in placed_at[:150]:
        m.time_to_assign.append((float(t) + 20, float(rng.lognormal(4.0, 0.6))))
    for t in placed_at[:150]:
        estimated = float(rng.uniform(120, 900))
        m.pickup_eta.append((float(t) + 60, estimated, estimated + float(rng.normal(30, 110))))
    for t in placed_at[:140]:
        estimated = float(rng.uniform(300, 1500))
        m.dropoff_eta.append((float(t) + 120, estimated, estimated + float(rng.normal(-20, 150))))

    for t in np.sort(rng.uniform(0, WALL_S, 3_000)):
        route = ROUTES[int(rng.integers(0, len(ROUTES)))]
        m.api_latency.append((float(t), route, float(rng.lognormal(3.0, 0.5))))
    for t in np.sort(rng.uniform(0, WALL_S, 8_000)):
        m.tracking_latency.append((float(t), float(rng.gamma(4.0, 25.0))))
    for t in np.arange(0, WALL_S, 5.0):
        m.broker_lag.append((float(t), "driver-locations/worker", int(rng.poisson(40))))
        m.broker_lag.append((float(t), "delivery-events/dispatcher", int(rng.poisson(3))))

    for lat, lng in zip(rng.normal(SOWETO[0], 0.03, 180), rng.normal(SOWETO[1], 0.04, 180),
                        strict=True):
        m.demand_cells[h3.latlng_to_cell(float(lat), float(lng), 8)] += 1
    for lat, lng in zip(rng.normal(SOWETO[0], 0.02, 400), rng.normal(SOWETO[1], 0.03, 400),
                        strict=True):
        m.supply_cells[h3.latlng_to_cell(float(lat), float(lng), 8)] += 150
    return m


def empty_metrics() -> ReplayMetrics:
    return ReplayMetrics(scenario="scenarios/empty.yaml", seed=1, speed=10.0,
                         started_at=time.time() - 5.0, interrupted=True)


@pytest.fixture(scope="module")
def city_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The report of ``city_metrics()``, written once (each write draws four figures)."""
    return write_report(city_metrics(), tmp_path_factory.mktemp("city") / "nested" / "run-1")


@pytest.fixture(scope="module")
def empty_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_report(empty_metrics(), tmp_path_factory.mktemp("empty"))


def assert_close(actual: Any, expected: Any, path: str = "") -> None:
    """Equal, floats to 0.01 (the report rounds them)."""
    if isinstance(expected, dict):
        assert set(actual) == set(expected), path
        for key in expected:
            assert_close(actual[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, abs=0.011), path
    else:
        assert actual == expected, path


def png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"), dtype=float)


# --- figures -------------------------------------------------------------------------------

def test_summary_counts_and_rates_follow_the_counters_and_the_order_events() -> None:
    s = summarize(city_metrics())
    assert (s["orders_planned"], s["orders_placed"], s["orders_refused"]) == (200, 180, 20)
    assert (s["orders_delivered"], s["orders_failed"], s["orders_cancelled"]) == (140, 6, 4)
    assert s["orders_assigned"] == 150  # distinct orders, the re-offer counts once
    assert s["orders_open"] == 180 - 140 - 6 - 4
    assert s["assignment_rate"] == pytest.approx(150 / 160, abs=1e-4)
    assert s["delivered_rate"] == pytest.approx(140 / 180, abs=1e-4)
    assert s["offer_accept_rate"] == pytest.approx(150 / 220, abs=1e-4)
    assert s["refusal_reasons"] == {"out_of_stock": 12, "vendor_closed": 8}
    assert (s["offers"], s["offers_accepted"], s["offers_declined"], s["offers_ignored"]) == (
        220, 150, 40, 30)
    assert s["wall_s"] == 600.0 and s["sim_s"] == 6000.0 and s["speed"] == 10.0
    assert s["pings_per_s"] == 100.0
    assert s["interrupted"] is False
    assert (s["cells_with_demand"], s["cells_with_supply"]) == (len(city_metrics().demand_cells),
                                                      len(city_metrics().supply_cells))


def test_summary_eta_error_and_time_to_assign_match_numpy() -> None:
    m = city_metrics()
    s = summarize(m)
    for leg, samples in (("pickup", m.pickup_eta), ("dropoff", m.dropoff_eta)):
        errors = np.array([actual - estimated for _, estimated, actual in samples])
        assert s[f"{leg}_eta_samples"] == len(samples)
        assert s[f"{leg}_eta_mae_s"] == pytest.approx(np.abs(errors).mean(), abs=0.006)
        assert s[f"{leg}_eta_bias_s"] == pytest.approx(errors.mean(), abs=0.006)
        assert s[f"{leg}_eta_within_2min_share"] == pytest.approx(
            (np.abs(errors) <= 120).mean(), abs=1e-4)
        assert 0 < s[f"{leg}_eta_within_2min_share"] < 1  # the data straddles the threshold
    tta = np.array([v for _, v in m.time_to_assign])
    p50, p90 = np.percentile(tta, [50, 90])
    assert s["time_to_assign_p50_s"] == pytest.approx(p50, abs=0.006)
    assert s["time_to_assign_p90_s"] == pytest.approx(p90, abs=0.006)


def test_summary_latency_percentiles_overall_per_route_and_broker_lag_match_numpy() -> None:
    m = city_metrics()
    s = summarize(m)
    api = np.array([ms for _, _, ms in m.api_latency])
    assert s["api_requests"] == 3_000
    assert s["api_p50_ms"] == pytest.approx(np.percentile(api, 50), abs=0.006)
    assert s["api_p99_ms"] == pytest.approx(np.percentile(api, 99), abs=0.006)
    assert set(s["api_routes"]) == set(ROUTES)
    for route in ROUTES:
        samples = np.array([ms for _, r, ms in m.api_latency if r == route])
        figures = s["api_routes"][route]
        assert figures["count"] == samples.size
        assert figures["p50_ms"] == pytest.approx(np.percentile(samples, 50), abs=0.006)
        assert figures["p99_ms"] == pytest.approx(np.percentile(samples, 99), abs=0.006)
    tracking = np.array([ms for _, ms in m.tracking_latency])
    assert s["tracking_p50_ms"] == pytest.approx(np.percentile(tracking, 50), abs=0.006)
    assert s["tracking_p99_ms"] == pytest.approx(np.percentile(tracking, 99), abs=0.006)
    lag = np.array([n for _, _, n in m.broker_lag])
    assert s["broker_lag_max_messages"] == lag.max()
    assert s["broker_lag_p99_messages"] == pytest.approx(np.percentile(lag, 99), abs=0.006)
    assert s["broker_lag_max_by_label_messages"]["delivery-events/dispatcher"] == max(
        n for _, label, n in m.broker_lag if label == "delivery-events/dispatcher")


def test_summary_of_a_few_hand_counted_samples() -> None:
    m = ReplayMetrics(scenario="s", seed=0, speed=4.0, started_at=100.0, ended_at=104.0)
    m.counters.update({"pings_sent": 10, "orders_ready": 4})
    m.orders += [(1.0, "a", "assigned"), (2.0, "b", "assigned"), (3.0, "c", "assigned")]
    # errors -200, -60, 0, 120, 130: |.| sums to 510, 3 of 5 within 120 s (inclusive), mean -2
    m.pickup_eta += [(1.0, 500.0, 300.0), (1.0, 300.0, 240.0), (1.0, 60.0, 60.0),
                     (1.0, 180.0, 300.0), (1.0, 70.0, 200.0)]
    m.api_latency += [(1.0, "GET /x", 10.0), (1.0, "GET /x", 20.0), (2.0, "POST /y", 30.0),
                      (2.0, "POST /y", 40.0)]
    m.tracking_latency += [(1.0, 5.0), (2.0, math.nan), (3.0, 15.0)]  # NaN is ignored
    s = summarize(m)
    assert s["pickup_eta_mae_s"] == 102.0
    assert s["pickup_eta_within_2min_share"] == 0.6
    assert s["pickup_eta_bias_s"] == -2.0
    assert s["dropoff_eta_mae_s"] is None and s["dropoff_eta_within_2min_share"] is None
    assert s["assignment_rate"] == 0.75
    assert s["pings_per_s"] == 2.5
    assert s["wall_s"] == 4.0 and s["sim_s"] == 16.0
    assert s["api_p50_ms"] == 25.0
    assert s["api_routes"]["GET /x"]["p50_ms"] == 15.0
    assert s["api_routes"]["POST /y"]["count"] == 2
    assert s["tracking_samples"] == 2 and s["tracking_p50_ms"] == 10.0


def test_record_helpers_stamp_wall_seconds_since_the_start() -> None:
    m = ReplayMetrics(scenario="s", seed=0, speed=10.0, started_at=time.time() - 10.0)
    m.record_api("POST /v1/orders", 12.5)
    m.record_order("o1", "placed")
    m.record_tracking(80.0)
    m.record_pickup_eta(300.0, 330.0)
    t, route, ms = m.api_latency[0]
    assert 9.9 < t < 12 and route == "POST /v1/orders" and ms == 12.5
    assert m.orders[0][1:] == ("o1", "placed")
    assert m.pickup_eta[0][1:] == (300.0, 330.0)
    m.finish(interrupted=True)
    assert m.interrupted and m.ended_at is not None and 9.9 < m.wall_s() < 12


def test_an_interrupted_replay_where_nothing_happened_summarizes_to_none_figures() -> None:
    s = summarize(empty_metrics())
    assert s["interrupted"] is True
    assert s["orders_placed"] == 0 and s["orders_assigned"] == 0
    for name in ("assignment_rate", "delivered_rate", "offer_accept_rate",
                 "time_to_assign_p50_s", "time_to_assign_p90_s", "pickup_eta_mae_s",
                 "pickup_eta_within_2min_share", "dropoff_eta_mae_s",
                 "dropoff_eta_within_2min_share", "api_p50_ms", "api_p99_ms",
                 "tracking_p50_ms", "tracking_p99_ms", "broker_lag_max_messages",
                 "broker_lag_p99_messages"):
        assert s[name] is None, name
    assert s["pings_per_s"] == 0.0
    assert s["api_routes"] == {}
    json.dumps(s, allow_nan=False)
    assert "INTERRUPTED" in render(s)


def test_bucketed_percentiles_group_samples_by_wall_time() -> None:
    t = np.array([0.5, 1.5, 0.1, 1.9, 5.2])
    ms = np.array([10.0, 100.0, 30.0, 300.0, 7.0])
    centres, pct = _bucketed_percentiles(t, ms, 1.0, (50, 100))
    assert centres.tolist() == [0.5, 1.5, 5.5]
    assert pct.tolist() == [[20.0, 30.0], [200.0, 300.0], [7.0, 7.0]]


# --- terminal ------------------------------------------------------------------------------

def test_render_shows_the_key_figures_in_tables() -> None:
    s = summarize(city_metrics())
    text = render(s)
    assert "scenarios/soweto.yaml" in text and "10x" in text
    assert "INTERRUPTED" not in text
    assert "93.8%" in text  # assignment rate, 150 of 160 ready
    assert "100.00/s" in text  # pings per wall second
    for route in ROUTES:
        assert route in text
    for value in (s["api_p99_ms"], s["tracking_p99_ms"], s["pickup_eta_mae_s"],
                  s["dropoff_eta_mae_s"], s["time_to_assign_p50_s"]):
        assert f"{value:,.2f}" in text
    assert f"{s['pickup_eta_within_2min_share'] * 100:.1f}%" in text
    assert "driver-locations/worker" in text
    assert "out_of_stock 12" in text


def test_print_report_ends_with_one_json_line_of_the_figures(tmp_path: Path) -> None:
    m = city_metrics()
    out = io.StringIO()
    figures = print_report(m, tmp_path / "report", out=out)
    lines = out.getvalue().rstrip("\n").splitlines()
    assert json.loads(lines[-1]) == figures == summarize(m)
    assert any(line.startswith("Orders") for line in lines)
    assert (tmp_path / "report" / "report.json").exists()


# --- files ---------------------------------------------------------------------------------

def test_write_report_writes_json_and_four_pngs_of_sensible_size(
        city_report: dict[str, Path]) -> None:
    paths = city_report
    folder = paths["report"].parent
    assert folder.name == "run-1" and folder.parent.name == "nested"  # parents created
    assert set(paths) == set(REPORT_FILES)
    assert {p.name for p in folder.iterdir()} == set(REPORT_FILES.values())
    for name, path in paths.items():
        assert path.parent == folder and path.stat().st_size > 0
        if path.suffix == ".png":
            pixels = png(path)
            height, width, _ = pixels.shape
            assert 800 <= width <= 2000 and 400 <= height <= 1200, name
            assert pixels.var() > 0, name


def test_the_map_draws_demand_and_supply_hexagons_in_colour(
        city_report: dict[str, Path], empty_report: dict[str, Path]) -> None:
    full = png(city_report["supply_demand_map"])
    empty = png(empty_report["supply_demand_map"])
    assert full.var() > 0
    half = full.shape[1] // 2
    red, blue = full[..., 0], full[..., 2]
    reddish = red - blue > 60
    bluish = blue - red > 60
    # demand (left, reds) and supply (right, blues) each fill a good part of their panel
    assert reddish[:, :half].mean() > 0.03
    assert bluish[:, half:].mean() > 0.03
    assert reddish[:, half:].mean() < 0.005 and bluish[:, :half].mean() < 0.005
    # with no data nothing is coloured in
    colourful = empty.max(axis=2) - empty.min(axis=2) > 60
    assert colourful.mean() < 0.001


def test_report_json_round_trips_the_summary_and_the_series(
        city_report: dict[str, Path], tmp_path: Path) -> None:
    m = city_metrics()
    path = city_report["report"]
    document = json.loads(path.read_text())
    assert document["summary"] == summarize(m)
    assert len(document["series"]["api_latency"]["ms"]) == 3_000
    assert document["demand_cells"] == dict(m.demand_cells)
    again = read_metrics(path)
    assert again.counters == m.counters and again.supply_cells == m.supply_cells
    assert [e for _, _, e in again.orders] == [e for _, _, e in m.orders]
    assert_close(summarize(again), summarize(m))
    # enough to redo the plots from the file alone
    redone = write_report(again, tmp_path / "redone")
    assert all(p.exists() for p in redone.values())


def test_an_empty_interrupted_replay_still_writes_every_file(
        empty_report: dict[str, Path]) -> None:
    paths = empty_report
    document = json.loads(paths["report"].read_text())
    assert document["summary"]["interrupted"] is True
    assert document["summary"]["api_p99_ms"] is None
    assert document["series"]["orders"] == {"t_s": [], "order_key": [], "event": []}
    for path in paths.values():
        assert path.exists() and path.stat().st_size > 0
        if path.suffix == ".png":
            assert png(path).var() > 0  # the "no data" panels are drawn
    assert read_metrics(paths["report"]).counters == Counter()
