"""`wakala bench matching`'s figures and report: every mode of ``loadtest.matching`` on one
scenario, the improvements over greedy, and the arrival-ETA error of the batch run."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from loadtest.matching import MODES, ModeOutcome, simulate
from loadtest.matching_scenario import MatchingBench, make_scenario
from loadtest.report import emit

__all__ = ["ESTIMATORS", "WITHIN_S", "matching_figures", "run_matching_bench"]

WITHIN_S = 120.0  # "within 2 minutes"


def _mode_figures(o: ModeOutcome, arrivals: Sequence[float],
                  bench: MatchingBench) -> dict[str, float | int | None]:
    # Driving time the orders needed ÷ driver time the period offered: above 1 the fleet
    # cannot keep up and the waits measure the backlog more than the matching.
    load = round(sum(leg[2] for leg in o.legs) / (bench.drivers * bench.minutes * 60.0), 3)
    done = [i for i, a in enumerate(o.assigned_at_s) if a is not None]
    wait = np.array([o.assigned_at_s[i] - arrivals[i] for i in done])  # type: ignore[operator]
    est = np.array([o.est_pickup_s[i] for i in done], dtype=np.float64)
    actual = np.array([o.actual_pickup_s[i] for i in done], dtype=np.float64)

    def r(x: float) -> float:
        return round(float(x), 1)

    if not done:
        return {"orders": o.orders, "assigned": 0, "mean_pickup_eta_s": None,
                "p90_pickup_eta_s": None, "mean_actual_pickup_s": None,
                "p90_actual_pickup_s": None, "mean_wait_s": None, "p90_wait_s": None,
                "max_pending": o.max_pending, "offered_load": load, "mean_click_to_door_s": None,
                "mean_bundle_size": None}
    return {
        "orders": o.orders,
        "assigned": len(done),
        "mean_pickup_eta_s": r((wait + est).mean()),
        "p90_pickup_eta_s": r(np.percentile(wait + est, 90)),
        "mean_actual_pickup_s": r((wait + actual).mean()),
        "p90_actual_pickup_s": r(np.percentile(wait + actual, 90)),
        "mean_wait_s": r(wait.mean()),
        "p90_wait_s": r(np.percentile(wait, 90)),
        "max_pending": o.max_pending,
        "offered_load": load,
        "mean_click_to_door_s": r(np.mean(door)) if (door := [o.delivered_at_s[i] - arrivals[i] for i in done
                                                              if o.delivered_at_s[i] is not None]) else None,
        "mean_bundle_size": round(float(np.mean(o.units)), 3) if o.units else None,
    }


def _eta_error(legs: Sequence[tuple[float, float, float]]) -> dict[str, float | int | None]:
    if not legs:
        return {"eta_legs": 0, "eta_mae_uncalibrated_s": None, "eta_mae_calibrated_s": None,
                "share_within_2_min_uncalibrated": None, "share_within_2_min_calibrated": None}
    arr = np.asarray(legs, dtype=np.float64)
    err_raw = np.abs(arr[:, 0] - arr[:, 2])
    err_cal = np.abs(arr[:, 1] - arr[:, 2])
    return {
        "eta_legs": len(legs),
        "eta_mae_uncalibrated_s": round(float(err_raw.mean()), 1),
        "eta_mae_calibrated_s": round(float(err_cal.mean()), 1),
        "share_within_2_min_uncalibrated": round(float((err_raw <= WITHIN_S).mean()), 4),
        "share_within_2_min_calibrated": round(float((err_cal <= WITHIN_S).mean()), 4),
    }


ESTIMATORS = ("prior", "per_cell_calibration", "learned")


def _arrival_eta_figures(eta_legs: Sequence[tuple[int, float, float, float, float]]
                         ) -> dict[str, dict[str, float | int | None]]:
    """Per estimator, per leg: samples, mean absolute error, bias (actual − estimate: negative
    when the estimate is too long, as in the replay's report) and share within 2 minutes."""
    arr = np.asarray(eta_legs, dtype=np.float64).reshape(-1, 5)
    out: dict[str, dict[str, float | int | None]] = {}
    for column, name in enumerate(ESTIMATORS, start=1):
        figures: dict[str, float | int | None] = {}
        for kind, leg in enumerate(("pickup", "dropoff")):
            rows = arr[arr[:, 0] == kind]
            err = rows[:, 4] - rows[:, column]
            empty = err.size == 0
            figures[f"{leg}_eta_samples"] = int(err.size)
            figures[f"{leg}_eta_mae_s"] = None if empty else round(float(np.abs(err).mean()), 1)
            figures[f"{leg}_eta_bias_s"] = None if empty else round(float(err.mean()), 1)
            figures[f"{leg}_eta_within_2min_share"] = (
                None if empty else round(float((np.abs(err) <= WITHIN_S).mean()), 4))
        out[name] = figures
    return out


def _improvement_pct(greedy: float | int | None, batch: float | int | None) -> float | None:
    if greedy is None or batch is None or greedy == 0:
        return None
    return round((greedy - batch) / greedy * 100.0, 2)


def matching_figures(bench: MatchingBench) -> dict[str, object]:
    """Run both modes on the bench's scenario; the figures ``run_matching_bench`` reports."""
    scenario = make_scenario(bench)
    arrivals = [o.arrival_s for o in scenario.orders]
    runs = {mode: simulate(bench, scenario, mode) for mode in MODES}
    modes = {mode: _mode_figures(run, arrivals, bench) for mode, run in runs.items()}
    g = modes["greedy"]
    improvements: dict[str, float | None] = {}
    for mode in ("batch", "bundle"):
        m, tag = modes[mode], "" if mode == "batch" else "bundle_"
        improvements |= {
            f"improvement_{tag}mean_pct": _improvement_pct(g["mean_pickup_eta_s"], m["mean_pickup_eta_s"]),
            f"improvement_{tag}p90_pct": _improvement_pct(g["p90_pickup_eta_s"], m["p90_pickup_eta_s"]),
            f"improvement_{tag}mean_actual_pct": _improvement_pct(g["mean_actual_pickup_s"],
                                                                  m["mean_actual_pickup_s"]),
        }
    return {
        "bench": "matching", "seed": bench.seed, "minutes": bench.minutes,
        "orders_per_min": bench.orders_per_min, "drivers": bench.drivers,
        "window_s": bench.window_s, "radius_m": bench.radius_m, "wait_weight": bench.wait_weight,
        "capacity": bench.capacity, "vendors": bench.hotspots * bench.vendors_per_hotspot,
        "modes": modes,
        **improvements,
        **_eta_error(runs["batch"].legs),
        "truth": bench.truth,
        **(etas := _arrival_eta_figures(runs["batch"].eta_legs))["learned"],
        "eta_models": etas,
    }


async def run_matching_bench(bench: MatchingBench) -> dict[str, object]:
    """Simulate, print the table and the JSON line, return the figures. CPU only."""
    figures = matching_figures(bench)
    modes: dict[str, dict[str, object]] = figures["modes"]  # type: ignore[assignment]
    rows: list[tuple[str, object]] = [
        ("seed / minutes / orders per min / drivers / window / radius / truth",
         f"{bench.seed} / {bench.minutes:g} / {bench.orders_per_min:g} / {bench.drivers} / "
         f"{bench.window_s:g} s / {bench.radius_m:g} m / {bench.truth}"),
        ("vendors / bundle mode capacity", f"{figures['vendors']} / {bench.capacity}"),
    ]
    for name, m in modes.items():
        rows += [
            (f"{name}: orders / assigned / max pending / offered load",
             f"{m['orders']} / {m['assigned']} / {m['max_pending']} / {m['offered_load']}"),
            (f"{name}: pickup ETA (wait + estimate) mean / p90",
             f"{m['mean_pickup_eta_s']} / {m['p90_pickup_eta_s']} s"),
            (f"{name}: wait + actual pickup mean / p90",
             f"{m['mean_actual_pickup_s']} / {m['p90_actual_pickup_s']} s"),
            (f"{name}: wait for assignment mean / p90", f"{m['mean_wait_s']} / {m['p90_wait_s']} s"),
            (f"{name}: click-to-door mean (actual)", f"{m['mean_click_to_door_s']} s"),
            (f"{name}: deliveries per assignment", m["mean_bundle_size"]),
        ]
    rows += [
        ("batch improvement over greedy, mean / p90",
         f"{figures['improvement_mean_pct']} / {figures['improvement_p90_pct']} %"),
        ("batch improvement, wait + actual pickup mean", f"{figures['improvement_mean_actual_pct']} %"),
        ("bundle improvement over greedy, mean / p90",
         f"{figures['improvement_bundle_mean_pct']} / {figures['improvement_bundle_p90_pct']} %"),
        ("bundle improvement, wait + actual pickup mean",
         f"{figures['improvement_bundle_mean_actual_pct']} %"),
        ("ETA legs (batch run)", figures["eta_legs"]),
        ("ETA MAE uncalibrated / calibrated",
         f"{figures['eta_mae_uncalibrated_s']} / {figures['eta_mae_calibrated_s']} s"),
        ("ETA within 2 min uncalibrated / calibrated",
         f"{figures['share_within_2_min_uncalibrated']} / "
         f"{figures['share_within_2_min_calibrated']}"),
    ]
    etas: dict[str, dict[str, object]] = figures["eta_models"]  # type: ignore[assignment]
    for leg in ("pickup", "dropoff"):
        for name in ESTIMATORS:
            e = etas[name]
            rows.append((f"{leg} arrival ETA, {name.replace('_', ' ')}: MAE / bias / within 2 min",
                         f"{e[f'{leg}_eta_mae_s']} s / {e[f'{leg}_eta_bias_s']} s / "
                         f"{e[f'{leg}_eta_within_2min_share']} ({e[f'{leg}_eta_samples']} legs)"))
    emit("wakala bench matching", rows, figures)
    return figures
