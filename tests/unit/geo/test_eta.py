"""geo/eta.py: the ETA model's shape (distance, vehicle, time of day), scalar/vector
agreement, and per-cell calibration. Pure computation, no services needed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from geo.eta import (
    CALIBRATION_RES,
    CIRCUITY,
    JOHANNESBURG_TZ,
    PARKING_OVERHEAD_S,
    SPEEDS_KMH,
    EtaCalibration,
    UnknownVehicleType,
    congestion_factor,
    eta_seconds,
    etas_seconds,
    local_hour,
)


def sast(hour: int, minute: int = 0) -> datetime:
    return datetime(2024, 5, 15, hour, minute, tzinfo=JOHANNESBURG_TZ)


RUSH = sast(8)
NIGHT = sast(3)
SOWETO = (-26.2485, 27.8540)
SOWETO_CELL = EtaCalibration.cell_for(*SOWETO)
ALEX_CELL = EtaCalibration.cell_for(-26.1030, 28.0960)


# --- time of day ---------------------------------------------------------------------------

def test_local_hour_is_utc_plus_two_all_year():
    assert local_hour(datetime(2024, 1, 10, 6, 30, tzinfo=UTC)) == 8.5
    assert local_hour(datetime(2024, 7, 10, 6, 30, tzinfo=UTC)) == 8.5  # no DST
    assert local_hour(datetime(2024, 7, 10, 23, 0, tzinfo=UTC)) == 1.0  # wraps to next day
    assert local_hour(datetime(2024, 7, 10, 8, 30, tzinfo=timezone(timedelta(hours=2)))) == 8.5


def test_naive_datetime_is_rejected():
    with pytest.raises(ValueError, match="timezone-aware"):
        eta_seconds(1000, "car", datetime(2024, 5, 15, 8, 0))


def test_rush_hours_are_slower_than_midday_and_night_is_fastest():
    night, midday = congestion_factor(3.0), congestion_factor(12.0)
    assert night < 1.0 < midday
    for h in (7.0, 7.5, 8.0, 8.5, 9.0, 16.0, 16.5, 17.0, 17.5, 18.0):
        assert congestion_factor(h) > midday, h
    assert congestion_factor(8.0) == max(congestion_factor(h / 4) for h in range(96))


def test_congestion_is_continuous_and_wraps_at_midnight():
    hours = np.linspace(0, 24, 24 * 60 + 1)
    values = np.array([congestion_factor(float(h)) for h in hours])
    assert np.max(np.abs(np.diff(values))) < 0.01  # no jumps between minutes
    assert congestion_factor(0.0) == congestion_factor(24.0) == congestion_factor(48.0)
    assert congestion_factor(25.5) == congestion_factor(1.5)
    with pytest.raises(ValueError):
        congestion_factor(float("nan"))


def test_eight_am_is_slower_than_three_am_for_every_vehicle():
    for v in SPEEDS_KMH:
        assert eta_seconds(5000, v, RUSH) > eta_seconds(5000, v, NIGHT), v


# --- distance and vehicle ------------------------------------------------------------------

@pytest.mark.parametrize("vehicle", list(SPEEDS_KMH))
def test_eta_grows_with_distance(vehicle):
    etas = [eta_seconds(d, vehicle, RUSH) for d in (0, 1, 100, 1000, 5000, 20_000)]
    assert all(a < b for a, b in zip(etas, etas[1:], strict=False))


def test_zero_distance_is_the_parking_overhead():
    assert eta_seconds(0, "car", RUSH) == PARKING_OVERHEAD_S
    assert eta_seconds(0, "car", RUSH, overhead_s=0) == 0


def test_known_value_car_off_peak():
    # 10 km crow-flies at midday-ish 12:00: road 13.5 km at 30 km/h × congestion(12:00).
    expected = 10_000 * CIRCUITY / (30 / 3.6) * congestion_factor(12.0) + PARKING_OVERHEAD_S
    assert eta_seconds(10_000, "car", sast(12)) == pytest.approx(expected)


def test_motorbike_beats_bakkie_in_traffic_and_filters_past_the_jam():
    bike, bakkie = eta_seconds(5000, "motorbike", RUSH), eta_seconds(5000, "bakkie", RUSH)
    assert bike < bakkie
    # Filtering: rush hour costs the motorbike proportionally less than the bakkie.
    assert bike / eta_seconds(5000, "motorbike", NIGHT) < bakkie / eta_seconds(5000, "bakkie", NIGHT)


@pytest.mark.parametrize("at", [NIGHT, sast(12), RUSH])
def test_bicycle_is_slowest_and_heavier_vehicles_slower_at_any_hour(at):
    etas = {v: eta_seconds(5000, v, at) for v in SPEEDS_KMH}
    assert max(etas, key=etas.__getitem__) == "bicycle"
    assert etas["van"] > etas["bakkie"] > etas["car"]


def test_motorbike_advantage_is_filtering_so_it_shrinks_on_empty_night_roads():
    def edge(at: datetime) -> float:
        return eta_seconds(5000, "car", at) / eta_seconds(5000, "motorbike", at)
    assert edge(RUSH) > edge(sast(12)) > edge(NIGHT)
    assert edge(RUSH) > 1.2


def test_circuity_and_calibration_scale_the_estimate():
    base = eta_seconds(5000, "car", RUSH, overhead_s=0)
    assert eta_seconds(5000, "car", RUSH, overhead_s=0, circuity=2 * CIRCUITY) == pytest.approx(2 * base)
    assert eta_seconds(5000, "car", RUSH, calibration=1.5) == pytest.approx(
        1.5 * eta_seconds(5000, "car", RUSH))


@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_bad_distance_is_rejected(bad):
    with pytest.raises(ValueError, match="distance_m"):
        eta_seconds(bad, "car", RUSH)
    with pytest.raises(ValueError, match="distances_m"):
        etas_seconds([1.0, bad], ["car", "car"], RUSH)


def test_unknown_vehicle_is_a_specific_error_naming_the_choices():
    with pytest.raises(UnknownVehicleType, match="'truck'.*bicycle, motorbike"):
        eta_seconds(1000, "truck", RUSH)
    with pytest.raises(UnknownVehicleType, match="'truck'"):
        etas_seconds([1.0, 2.0], ["car", "truck"], RUSH)
    with pytest.raises(UnknownVehicleType):
        etas_seconds([1.0], "truck", RUSH)


# --- vectorised ----------------------------------------------------------------------------

@given(
    st.lists(st.tuples(st.floats(0, 50_000, allow_nan=False), st.sampled_from(list(SPEEDS_KMH)),
                       st.floats(0.5, 2.0)), min_size=0, max_size=30),
    st.integers(0, 24 * 60 - 1),
)
def test_vectorised_equals_scalar(rows, minute):
    at = sast(minute // 60, minute % 60)
    d = np.array([r[0] for r in rows], dtype=np.float64)
    v = [r[1] for r in rows]
    cal = np.array([r[2] for r in rows], dtype=np.float64)
    got = etas_seconds(d, v, at, calibration=cal)
    want = [eta_seconds(r[0], r[1], at, calibration=r[2]) for r in rows]
    assert got.shape == d.shape
    assert got.tolist() == want  # same operations in the same order: bit-identical


def test_vectorised_broadcasts_a_jobs_by_drivers_matrix():
    d = np.array([[100.0, 2000.0, 0.0], [5000.0, 10.0, 300.0]])
    vehicles = np.array(["car", "bicycle", "van"])  # one per driver (column)
    cal = np.array([[1.0], [1.25]])  # one per job (row)
    got = etas_seconds(d, vehicles, RUSH, calibration=cal)
    assert got.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            assert got[i, j] == eta_seconds(d[i, j], vehicles[j], RUSH, calibration=cal[i, 0])
    assert etas_seconds(d, "car", RUSH).tolist() == [
        [eta_seconds(x, "car", RUSH) for x in row] for row in d.tolist()]


def test_vectorised_empty():
    assert etas_seconds(np.empty(0), [], RUSH).shape == (0,)
    assert etas_seconds(np.empty((3, 0)), [], RUSH).shape == (3, 0)


# --- calibration ---------------------------------------------------------------------------

def test_calibration_cells_are_res_7():
    import h3
    assert h3.get_resolution(SOWETO_CELL) == CALIBRATION_RES == 7
    assert SOWETO_CELL != ALEX_CELL


def test_no_observations_means_no_correction():
    cal = EtaCalibration()
    assert cal.factor(SOWETO_CELL) == 1.0
    assert cal.observations(SOWETO_CELL) == 0
    assert len(cal) == 0


def test_consistent_ratios_converge_to_their_value():
    cal = EtaCalibration()
    history = []
    for _ in range(2000):
        cal.observe(SOWETO_CELL, 600.0, 900.0)  # always 1.5× slower than estimated
        history.append(cal.factor(SOWETO_CELL))
    assert history[0] < history[10] < history[100] < history[-1]  # moves monotonically
    assert 1.0 < history[0] < 1.1  # a single delivery is only a nudge
    assert history[-1] == pytest.approx(1.5, abs=0.01)
    assert cal.factor(ALEX_CELL) == 1.0  # other cells untouched


def test_prior_weight_is_the_number_of_deliveries_to_move_halfway():
    cal = EtaCalibration(prior_weight=20)
    for _ in range(20):
        cal.observe(SOWETO_CELL, 100.0, 200.0)
    assert cal.factor(SOWETO_CELL) == pytest.approx(1.5)  # halfway from 1.0 to 2.0


def test_a_single_outlier_barely_moves_an_established_cell():
    cal = EtaCalibration()
    for _ in range(100):
        cal.observe(SOWETO_CELL, 600.0, 600.0)
    cal.observe(SOWETO_CELL, 600.0, 600.0 * 50)  # driver forgot to tap "delivered"
    assert cal.factor(SOWETO_CELL) == pytest.approx(1.0, abs=0.03)
    fresh = EtaCalibration()
    fresh.observe(ALEX_CELL, 600.0, 600.0 * 50)
    assert fresh.factor(ALEX_CELL) <= (20 + 4) / 21  # even alone it counts as at most 4×


def test_ratios_are_clipped_both_ways():
    cal = EtaCalibration()
    assert cal.observe(SOWETO_CELL, 100.0, 10_000.0) == 4.0
    assert cal.observe(SOWETO_CELL, 100.0, 1.0) == 0.25
    assert cal.observe(SOWETO_CELL, 100.0, 0.0) == 0.25
    assert cal.observe(SOWETO_CELL, 100.0, 130.0) == pytest.approx(1.3)
    assert cal.factor(SOWETO_CELL) == pytest.approx((20 + 4 + 0.25 + 0.25 + 1.3) / 24)


def test_observe_rejects_wrong_cells_and_times():
    cal = EtaCalibration()
    with pytest.raises(ValueError, match="res-7"):
        cal.observe("not-a-cell", 100.0, 100.0)
    with pytest.raises(ValueError, match="res-7"):
        cal.observe("89bc2e6a2a7ffff", 100.0, 100.0)  # res 9
    with pytest.raises(ValueError, match="estimated_s"):
        cal.observe(SOWETO_CELL, 0.0, 100.0)
    with pytest.raises(ValueError, match="actual_s"):
        cal.observe(SOWETO_CELL, 100.0, float("nan"))
    assert len(cal) == 0


def test_factors_feed_the_vectorised_eta():
    cal = EtaCalibration()
    for _ in range(30):
        cal.observe(SOWETO_CELL, 100.0, 150.0)
    f = cal.factors([SOWETO_CELL, ALEX_CELL])
    assert f.tolist() == [cal.factor(SOWETO_CELL), 1.0]
    assert etas_seconds([1000.0, 1000.0], "car", RUSH, calibration=f)[0] == eta_seconds(
        1000.0, "car", RUSH, calibration=cal.factor(SOWETO_CELL))


def test_round_trip_through_plain_data_and_json():
    cal = EtaCalibration(prior_weight=12.5, min_ratio=0.5, max_ratio=3.0)
    for i in range(37):
        cal.observe(SOWETO_CELL, 600.0, 500.0 + 17 * i)
    cal.observe(ALEX_CELL, 300.0, 450.0)
    data = json.loads(json.dumps(cal.to_dict()))
    back = EtaCalibration.from_dict(data)
    assert back.to_dict() == cal.to_dict()
    assert (back.prior_weight, back.min_ratio, back.max_ratio) == (12.5, 0.5, 3.0)
    for cell in (SOWETO_CELL, ALEX_CELL, EtaCalibration.cell_for(0.0, 0.0)):
        assert back.factor(cell) == cal.factor(cell)
        assert back.observations(cell) == cal.observations(cell)
    back.observe(ALEX_CELL, 300.0, 300.0)  # the copy is independent
    assert back.observations(ALEX_CELL) == 2 and cal.observations(ALEX_CELL) == 1


@pytest.mark.parametrize("mutate", [
    lambda d: d.update(version=2),
    lambda d: d.pop("cells"),
    lambda d: d.update(prior_weight=-1),
    lambda d: d["cells"].update({"nonsense": [1, 1.0]}),
    lambda d: d["cells"].update({SOWETO_CELL: [2, 100.0]}),  # mean ratio 50 > max_ratio
    lambda d: d["cells"].update({SOWETO_CELL: [0, 0.0]}),
    lambda d: d["cells"].update({SOWETO_CELL: "x"}),
])
def test_from_dict_rejects_data_it_did_not_write(mutate):
    data = EtaCalibration().to_dict()
    mutate(data)
    with pytest.raises(ValueError):
        EtaCalibration.from_dict(data)
