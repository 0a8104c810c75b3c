"""dispatch/assignment.py: the pickup-ETA cost matrix, optimal batch assignment and the
greedy nearest-first baseline. Pure computation, no services needed."""

from __future__ import annotations

import itertools
from datetime import datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.matching.assignment import (
    INFEASIBLE_S,
    Assignment,
    assign_batch,
    assign_greedy,
    cost_matrix,
)
from dispatch.matching.ranking import Candidate, Job, feasibility
from geo import destination, distance_m
from geo.eta import JOHANNESBURG_TZ, EtaCalibration, eta_seconds
from geo.eta_model import EtaModel, prior_travel_s, travel_increments

AT = datetime(2024, 5, 15, 12, 30, tzinfo=JOHANNESBURG_TZ)
ORIGIN = (-26.2041, 28.0473)  # Johannesburg CBD
VEHICLES = ("bicycle", "motorbike", "car", "bakkie", "van")


def east(metres: float) -> tuple[float, float]:
    """A point ``metres`` east (negative: west) of ORIGIN."""
    return destination(*ORIGIN, 90.0 if metres >= 0 else 270.0, abs(metres))


def job_at(point: tuple[float, float], **overrides) -> Job:
    fields = dict(tenant_id="t1", pickup_lat=point[0], pickup_lng=point[1],
                  dropoff_lat=ORIGIN[0], dropoff_lng=ORIGIN[1], vehicle_types=None,
                  needs_cold_storage=False, max_pickup_m=20_000.0)
    fields.update(overrides)
    return Job(**fields)


def driver_at(driver_id: str, point: tuple[float, float], **overrides) -> Candidate:
    fields = dict(driver_id=driver_id, lat=point[0], lng=point[1], vehicle_type="car",
                  has_cold_storage=False, status="available", tenant_id="t1", seen_ms=0)
    fields.update(overrides)
    return Candidate(**fields)


def total(assignments: list[Assignment]) -> float:
    return sum(a.cost_s for a in assignments)


def check_valid(result: list[Assignment], jobs: list[Job], cands: list[Candidate]) -> None:
    """Every pair feasible, priced as in the cost matrix, each job and driver at most once."""
    f = feasibility(jobs, cands)
    costs = cost_matrix(jobs, cands, at=AT)
    column = {c.driver_id: j for j, c in enumerate(cands)}
    assert len({a.job_index for a in result}) == len(result)
    assert len({a.driver_id for a in result}) == len(result)
    assert [a.job_index for a in result] == sorted(a.job_index for a in result)
    for a in result:
        j = column[a.driver_id]
        assert f.feasible[a.job_index, j], a
        assert a.cost_s == costs[a.job_index, j]


# --- cost matrix ---------------------------------------------------------------------------

def test_cost_matrix_is_pickup_eta_by_the_drivers_vehicle_and_infeasible_elsewhere():
    jobs = [job_at(east(0)), job_at(east(3000), needs_cold_storage=True)]
    cands = [driver_at("bike", east(1000), vehicle_type="bicycle"),
             driver_at("van", east(2000), vehicle_type="van", has_cold_storage=True),
             driver_at("busy", east(100), status="busy")]
    costs = cost_matrix(jobs, cands, at=AT)
    assert costs.shape == (2, 3)
    for i, jb in enumerate(jobs):
        for j, c in enumerate(cands[:2]):
            if (i, j) == (1, 0):
                continue
            d = distance_m(jb.pickup_lat, jb.pickup_lng, c.lat, c.lng)
            assert costs[i, j] == pytest.approx(eta_seconds(d, c.vehicle_type, AT))
    assert costs[1, 0] == INFEASIBLE_S  # bicycle has no cold storage
    assert costs[:, 2].tolist() == [INFEASIBLE_S] * 2  # busy
    assert cost_matrix(jobs, cands, at=AT, infeasible=123.0)[1, 0] == 123.0


def test_cost_matrix_applies_the_pickup_cells_calibration_per_job():
    jobs = [job_at(east(0)), job_at(east(8000))]
    cands = [driver_at("a", east(2000)), driver_at("b", east(5000))]
    cal = EtaCalibration()
    slow_cell = EtaCalibration.cell_for(jobs[1].pickup_lat, jobs[1].pickup_lng)
    for _ in range(50):
        cal.observe(slow_cell, 600.0, 900.0)
    plain = cost_matrix(jobs, cands, at=AT)
    calibrated = cost_matrix(jobs, cands, at=AT, calibration=cal)
    assert calibrated[0].tolist() == plain[0].tolist()
    assert calibrated[1] == pytest.approx(plain[1] * cal.factor(slow_cell))
    assert cal.factor(slow_cell) > 1.3


def test_with_the_learned_model_the_cost_is_the_offers_pickup_eta_per_pair():
    """The batch solve and the offers use one ETA: a learned slow vehicle and a slow area
    change the solve's costs exactly as they change ``EtaModel.travel_s``."""
    jobs = [job_at(east(0)), job_at(east(8000))]
    cands = [driver_at("a", east(2000)), driver_at("b", east(5000), vehicle_type="motorbike")]
    model = EtaModel()
    slow = (jobs[1].pickup_lat, jobs[1].pickup_lng)
    for k in range(80):   # motorbikes 1.4x the prior into the slow job's area, cars as the prior
        start = destination(*slow, 45.0 * (k % 8), 3_000.0 + 20 * k)
        d = distance_m(*start, *slow)
        model.add(travel_increments(start, slow, "motorbike", AT, 1.4 * prior_travel_s(d, "motorbike", AT) + 60))
        start = destination(*ORIGIN, 45.0 * (k % 8), 3_000.0 + 20 * k)
        d = distance_m(*start, *ORIGIN)
        model.add(travel_increments(start, ORIGIN, "car", AT, prior_travel_s(d, "car", AT) + 60))
    costs = cost_matrix(jobs, cands, at=AT, model=model)
    for i, jb in enumerate(jobs):
        for j, c in enumerate(cands):
            expected = model.travel_s(distance_m(c.lat, c.lng, jb.pickup_lat, jb.pickup_lng), c.vehicle_type, AT,
                                      (jb.pickup_lat, jb.pickup_lng))
            assert costs[i, j] == pytest.approx(expected, rel=1e-9)
    assert costs[1, 1] > cost_matrix(jobs, cands, at=AT, overhead_s=0.0)[1, 1] * 1.2   # learned, not the prior
    found = assign_batch(jobs, cands, at=AT, model=model)
    ids = [c.driver_id for c in cands]
    assert len(found) == 2
    for a in found:
        assert a.cost_s == costs[a.job_index, ids.index(a.driver_id)]
    with pytest.raises(ValueError, match="calibration or model"):
        cost_matrix(jobs, cands, at=AT, model=model, calibration=EtaCalibration())


def test_the_learned_models_matrix_refuses_shapes_and_distances_that_do_not_fit():
    model = EtaModel()
    with pytest.raises(ValueError, match="great_circle_m"):
        model.travel_matrix(np.zeros((2, 2)), ["car"], AT, [ORIGIN, ORIGIN])
    with pytest.raises(ValueError, match="non-negative"):
        model.travel_matrix(np.array([[-1.0]]), ["car"], AT, [ORIGIN])
    with pytest.raises(ValueError, match="non-negative"):
        model.travel_matrix(np.array([[np.nan]]), ["car"], AT, [ORIGIN])


def test_cost_matrix_empty_shapes():
    assert cost_matrix([], [driver_at("a", ORIGIN)], at=AT).shape == (0, 1)
    assert cost_matrix([job_at(ORIGIN)], [], at=AT).shape == (1, 0)


# --- the crossing case ---------------------------------------------------------------------

def crossing() -> tuple[list[Job], list[Candidate]]:
    """J1 at 0 grabs A (100 m east); J2 at 1000 m east is left with B (150 m west of 0).
    Optimal: J1 takes B (150 m) and J2 takes A (900 m)."""
    jobs = [job_at(east(0)), job_at(east(1000))]
    cands = [driver_at("A", east(100)), driver_at("B", east(-150))]
    return jobs, cands


def test_greedy_takes_the_nearest_driver_in_arrival_order():
    jobs, cands = crossing()
    assert [(a.job_index, a.driver_id) for a in assign_greedy(jobs, cands, at=AT)] == [
        (0, "A"), (1, "B")]


def test_batch_uncrosses_and_is_strictly_cheaper_than_greedy():
    jobs, cands = crossing()
    batch, greedy = assign_batch(jobs, cands, at=AT), assign_greedy(jobs, cands, at=AT)
    assert [(a.job_index, a.driver_id) for a in batch] == [(0, "B"), (1, "A")]
    check_valid(batch, jobs, cands)
    check_valid(greedy, jobs, cands)
    # Road metres 1050 vs 1250 at the same speed: batch saves 200 m of driving.
    assert total(batch) < total(greedy)
    saved_s = eta_seconds(1250, "car", AT, overhead_s=0) - eta_seconds(1050, "car", AT, overhead_s=0)
    assert total(greedy) - total(batch) == pytest.approx(saved_s)


# --- feasibility and cardinality -----------------------------------------------------------

def test_infeasible_pairs_are_never_assigned_even_when_cheapest():
    jobs = [job_at(east(0), needs_cold_storage=True), job_at(east(500), tenant_id="t2")]
    cands = [driver_at("warm", east(10)), driver_at("cold", east(9000), has_cold_storage=True),
             driver_at("t1-only", east(490))]
    for assign in (assign_batch, assign_greedy):
        result = assign(jobs, cands, at=AT)
        assert [(a.job_index, a.driver_id) for a in result] == [(0, "cold")]
        check_valid(result, jobs, cands)


def test_declined_drivers_are_not_assigned_to_that_job():
    jobs, cands = crossing()
    excludes = [frozenset({"B"}), frozenset()]
    for assign in (assign_batch, assign_greedy):
        result = assign(jobs, cands, at=AT, excludes=excludes)
        assert (0, "B") not in [(a.job_index, a.driver_id) for a in result]
    assert [(a.job_index, a.driver_id) for a in assign_batch(jobs, cands, at=AT,
                                                            excludes=excludes)] == [(0, "A"), (1, "B")]


def test_batch_matches_more_jobs_when_greedy_strands_one():
    # J1 takes the only driver J2 could use; the batch gives J1 the other one.
    jobs = [job_at(east(0)), job_at(east(1000), vehicle_types=frozenset({"van"}))]
    cands = [driver_at("van", east(500), vehicle_type="van"), driver_at("car", east(-2000))]
    greedy = assign_greedy(jobs, cands, at=AT)
    batch = assign_batch(jobs, cands, at=AT)
    assert [(a.job_index, a.driver_id) for a in greedy] == [(0, "van")]
    assert [(a.job_index, a.driver_id) for a in batch] == [(0, "car"), (1, "van")]


def test_more_jobs_than_drivers():
    jobs = [job_at(east(x)) for x in (0, 400, 800, 1200, 1600)]
    cands = [driver_at("a", east(790)), driver_at("b", east(10))]
    for assign in (assign_batch, assign_greedy):
        result = assign(jobs, cands, at=AT)
        assert len(result) == 2
        check_valid(result, jobs, cands)
    assert {(a.job_index, a.driver_id) for a in assign_batch(jobs, cands, at=AT)} == {
        (0, "b"), (2, "a")}


def test_more_drivers_than_jobs():
    jobs = [job_at(east(0)), job_at(east(5000))]
    cands = [driver_at(f"d{x}", east(x)) for x in range(-3000, 9001, 1000)]
    for assign in (assign_batch, assign_greedy):
        result = assign(jobs, cands, at=AT)
        assert [(a.job_index, a.driver_id) for a in result] == [(0, "d0"), (1, "d5000")]
        check_valid(result, jobs, cands)


def test_empty_inputs():
    for assign in (assign_batch, assign_greedy):
        assert assign([], [], at=AT) == []
        assert assign([job_at(ORIGIN)], [], at=AT) == []
        assert assign([], [driver_at("a", ORIGIN)], at=AT) == []
        assert assign([job_at(ORIGIN)], [driver_at("a", ORIGIN, status="busy")], at=AT) == []


def test_greedy_ties_go_to_the_smaller_driver_id():
    jobs = [job_at(ORIGIN)]
    cands = [driver_at(name, east(300)) for name in ("m", "c", "x")]
    assert assign_greedy(jobs, cands, at=AT)[0].driver_id == "c"


def test_batch_refuses_a_penalty_too_small_to_put_matches_first():
    jobs, cands = crossing()
    with pytest.raises(ValueError, match="infeasible"):
        assign_batch(jobs, cands, at=AT, infeasible=50.0)


# --- random scenarios: batch is optimal, greedy never beats it -----------------------------

def scenario(rng: np.random.Generator, n_jobs: int, n_drivers: int) -> tuple[list[Job], list[Candidate]]:
    def point() -> tuple[float, float]:
        return destination(*ORIGIN, float(rng.uniform(0, 360)), float(rng.uniform(0, 6000)))

    jobs = []
    for _ in range(n_jobs):
        allowed = None if rng.random() < 0.6 else frozenset(
            rng.choice(VEHICLES, size=int(rng.integers(1, 4)), replace=False).tolist())
        jobs.append(job_at(point(), tenant_id=str(rng.choice(["t1", "t1", "t1", "t2"])),
                           vehicle_types=allowed, needs_cold_storage=bool(rng.random() < 0.2),
                           max_pickup_m=float(rng.uniform(2000, 12000))))
    cands = [driver_at(f"d{i:02d}", point(), vehicle_type=str(rng.choice(VEHICLES)),
                       has_cold_storage=bool(rng.random() < 0.3),
                       status=str(rng.choice(["available"] * 5 + ["busy"])),
                       tenant_id=str(rng.choice(["t1", "t1", "t1", "t2"])))
             for i in range(n_drivers)]
    return jobs, cands


def brute_force_best(jobs: list[Job], cands: list[Candidate]) -> tuple[int, float]:
    """(most matches, least total cost among those) over every partial assignment."""
    costs = cost_matrix(jobs, cands, at=AT)
    feasible = feasibility(jobs, cands).feasible
    best = (0, 0.0)
    n, m = len(jobs), len(cands)
    for drivers in itertools.product(range(-1, m), repeat=n):  # -1: job unassigned
        used = [d for d in drivers if d >= 0]
        if len(used) != len(set(used)):
            continue
        pairs = [(i, d) for i, d in enumerate(drivers) if d >= 0]
        if not all(feasible[i, d] for i, d in pairs):
            continue
        value = (len(pairs), sum(costs[i, d] for i, d in pairs))
        if value[0] > best[0] or (value[0] == best[0] and value[1] < best[1]):
            best = value
    return best


def greedy_replay(jobs: list[Job], cands: list[Candidate]) -> list[tuple[int, str]]:
    """Greedy in plain Python: each job in turn takes the cheapest free feasible driver."""
    costs = cost_matrix(jobs, cands, at=AT)
    feasible = feasibility(jobs, cands).feasible
    free = set(range(len(cands)))
    out = []
    for i in range(len(jobs)):
        options = [(costs[i, j], cands[j].driver_id, j) for j in free if feasible[i, j]]
        if options:
            _, driver_id, j = min(options)
            free.remove(j)
            out.append((i, driver_id))
    return out


@pytest.mark.parametrize("seed", range(300))
def test_batch_never_worse_than_greedy_on_random_scenarios(seed):
    rng = np.random.default_rng(seed)
    jobs, cands = scenario(rng, int(rng.integers(0, 13)), int(rng.integers(0, 13)))
    batch, greedy = assign_batch(jobs, cands, at=AT), assign_greedy(jobs, cands, at=AT)
    check_valid(batch, jobs, cands)
    check_valid(greedy, jobs, cands)
    assert [(a.job_index, a.driver_id) for a in greedy] == greedy_replay(jobs, cands)
    assert len(batch) >= len(greedy)
    if len(batch) == len(greedy):
        assert total(batch) <= total(greedy) + 1e-6


@pytest.mark.parametrize("seed", range(60))
def test_batch_is_the_true_optimum_on_small_scenarios(seed):
    rng = np.random.default_rng(10_000 + seed)
    jobs, cands = scenario(rng, int(rng.integers(1, 5)), int(rng.integers(1, 6)))
    batch = assign_batch(jobs, cands, at=AT)
    matches, cost = brute_force_best(jobs, cands)
    assert len(batch) == matches
    assert total(batch) == pytest.approx(cost, abs=1e-6)


@settings(max_examples=150, deadline=None)
@given(
    jobs_x=st.lists(st.floats(-5000, 5000), min_size=1, max_size=8),
    drivers_x=st.lists(st.floats(-5000, 5000), min_size=1, max_size=8),
    vehicles=st.lists(st.sampled_from(VEHICLES), min_size=8, max_size=8),
)
def test_batch_total_at_most_greedy_on_a_street(jobs_x, drivers_x, vehicles):
    """All pairs feasible along one street: both match min(n, m); batch costs no more."""
    jobs = [job_at(east(x)) for x in jobs_x]
    cands = [driver_at(f"d{i}", east(x), vehicle_type=vehicles[i])
             for i, x in enumerate(drivers_x)]
    batch, greedy = assign_batch(jobs, cands, at=AT), assign_greedy(jobs, cands, at=AT)
    assert len(batch) == len(greedy) == min(len(jobs), len(cands))
    assert total(batch) <= total(greedy) + 1e-6
    check_valid(batch, jobs, cands)


def test_time_waited_lets_an_old_far_order_beat_a_new_near_one():
    # One driver, two orders: a new one 200 m away and one 3 km away that has waited 20 min.
    jobs = [job_at(east(200)), job_at(east(3000))]
    cands = [driver_at("a", ORIGIN)]
    assert [a.job_index for a in assign_batch(jobs, cands, at=AT)] == [0]          # ETA alone
    aged = assign_batch(jobs, cands, at=AT, waited_s=[0.0, 1200.0])
    assert [a.job_index for a in aged] == [1]
    assert aged[0].cost_s == pytest.approx(cost_matrix(jobs, cands, at=AT)[1, 0])   # still the ETA
    # weight 0 is the pure-ETA solve; a short wait does not outweigh ~3 km of driving
    assert [a.job_index for a in assign_batch(jobs, cands, at=AT, waited_s=[0, 1200], wait_weight=0)] == [0]
    assert [a.job_index for a in assign_batch(jobs, cands, at=AT, waited_s=[0, 10])] == [0]


@pytest.mark.parametrize("waited, weight", [
    ([0.0], 1.0), ([0.0, -1.0], 1.0), ([0.0, float("nan")], 1.0), ([0.0, float("inf")], 1.0),
    ([0.0, 1.0], -1.0), ([0.0, 1.0], float("nan")),
])
def test_bad_waiting_times_are_refused(waited, weight):
    jobs = [job_at(east(200)), job_at(east(3000))]
    with pytest.raises(ValueError):
        assign_batch(jobs, [driver_at("a", ORIGIN)], at=AT, waited_s=waited, wait_weight=weight)
