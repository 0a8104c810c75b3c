"""`wakala bench matching`'s arrival-ETA figures: against the city's truth the learned model
removes the prior's bias, and it is reported per leg beside the earlier estimators."""

from __future__ import annotations

import functools
import math

import pytest

from loadtest.matching import MatchingBench, make_scenario
from loadtest.matching_report import ESTIMATORS, matching_figures

BENCH = MatchingBench(minutes=30, orders_per_min=20, drivers=300)


@functools.cache
def figures() -> dict:
    return matching_figures(BENCH)


def test_the_city_truth_is_the_replays_drivers_not_the_prior():
    scenario = make_scenario(BENCH)
    speeds = {}
    for d in scenario.fleet:
        speeds.setdefault(d.vehicle_type, []).append(d.speed_mps)
    assert 6.0 <= min(speeds["motorbike"]) and max(speeds["motorbike"]) <= 14.0
    assert len(set(speeds["car"])) > 10                   # one speed per driver
    for o in scenario.orders:
        assert 1.22 <= o.pickup_circuity <= 1.38 and 1.22 <= o.dropoff_circuity <= 1.38
        assert 30.0 <= o.shop_s <= 150.0 and 15.0 <= o.door_s <= 75.0
    # the same seed gives the same orders whatever the truth
    other = make_scenario(MatchingBench(minutes=30, orders_per_min=20, drivers=300, truth="model"))
    assert [o.job for o in other.orders] == [o.job for o in scenario.orders]


def test_the_learned_model_removes_the_bias_the_prior_and_the_per_cell_factor_leave():
    f = figures()
    models = f["eta_models"]
    assert set(models) == set(ESTIMATORS)
    for leg in ("pickup", "dropoff"):
        prior, per_cell, learned = (models[m] for m in ESTIMATORS)
        assert learned[f"{leg}_eta_samples"] > 400
        assert prior[f"{leg}_eta_bias_s"] < -60               # the prior is far too long here
        assert abs(learned[f"{leg}_eta_bias_s"]) < 20
        assert learned[f"{leg}_eta_mae_s"] < per_cell[f"{leg}_eta_mae_s"] < prior[f"{leg}_eta_mae_s"]
        assert learned[f"{leg}_eta_within_2min_share"] > per_cell[f"{leg}_eta_within_2min_share"]
        assert f[f"{leg}_eta_bias_s"] == learned[f"{leg}_eta_bias_s"]   # the top level: the learned model


def test_the_figures_carry_their_units_and_are_finite():
    f = figures()
    for leg in ("pickup", "dropoff"):
        for name in ("eta_mae_s", "eta_bias_s", "eta_within_2min_share", "eta_samples"):
            assert math.isfinite(f[f"{leg}_{name}"])
    assert 0.0 <= f["pickup_eta_within_2min_share"] <= 1.0
    assert f["truth"] == "city"


def test_an_unknown_truth_is_refused():
    with pytest.raises(ValueError, match="truth"):
        MatchingBench(truth="wishful")   # type: ignore[arg-type]
