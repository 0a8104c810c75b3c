"""dispatch/ranking.py: eligibility filters, exact nearest-first order with a stable
tie-break, and the ring search plan. Pure computation, no services needed."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.matching.ranking import (
    Candidate,
    DuplicateCandidate,
    Job,
    RankedCandidate,
    feasibility,
    rank,
    search_complete,
    search_plan,
)
from geo import cell_of, destination, distances_m, k_for_radius
from geo.eta import CIRCUITY

PICKUP = (-26.2485, 27.8540)  # Soweto
DROPOFF = (-26.2300, 27.8800)
VEHICLES = ("bicycle", "motorbike", "car", "bakkie", "van")


def job(**overrides) -> Job:
    fields = dict(tenant_id="t1", pickup_lat=PICKUP[0], pickup_lng=PICKUP[1],
                  dropoff_lat=DROPOFF[0], dropoff_lng=DROPOFF[1], vehicle_types=None,
                  needs_cold_storage=False, max_pickup_m=5000.0)
    fields.update(overrides)
    return Job(**fields)


def driver(driver_id: str, road_m: float = 1000.0, bearing: float = 0.0, **overrides) -> Candidate:
    """A candidate whose road distance (great-circle × CIRCUITY) to PICKUP is ``road_m``."""
    lat, lng = destination(*PICKUP, bearing, road_m / CIRCUITY)
    fields = dict(driver_id=driver_id, lat=lat, lng=lng, vehicle_type="motorbike",
                  has_cold_storage=False, status="available", tenant_id="t1", seen_ms=0)
    fields.update(overrides)
    return Candidate(**fields)


def ids(ranked: list[RankedCandidate]) -> list[str]:
    return [r.driver_id for r in ranked]


def brute_force(j: Job, cands: list[Candidate], k: int, exclude=frozenset()) -> list[str]:
    """Filter and sort with plain Python, one candidate at a time."""
    road = distances_m(j.pickup_lat, j.pickup_lng, [c.lat for c in cands],
                       [c.lng for c in cands]) * CIRCUITY
    keep = [(float(d), c.driver_id) for c, d in zip(cands, road, strict=True)
            if c.tenant_id == j.tenant_id
            and c.status == "available"
            and (j.vehicle_types is None or c.vehicle_type in j.vehicle_types)
            and (c.has_cold_storage or not j.needs_cold_storage)
            and d <= j.max_pickup_m
            and c.driver_id not in exclude]
    return [driver_id for _, driver_id in sorted(keep)[:k]]


# --- filters -------------------------------------------------------------------------------

def test_nearest_first_with_road_distance():
    cands = [driver("far", 3000, 90), driver("near", 500, 200), driver("mid", 1500, 10)]
    ranked = rank(job(), cands)
    assert ids(ranked) == ["near", "mid", "far"]
    assert [r.distance_m for r in ranked] == pytest.approx([500, 1500, 3000], abs=0.01)
    assert ranked[0].candidate is cands[1]


def test_other_tenants_drivers_are_never_offered():
    ranked = rank(job(), [driver("mine", 900), driver("theirs", 100, tenant_id="t2")])
    assert ids(ranked) == ["mine"]
    assert rank(job(tenant_id="t3"), [driver("mine", 900)]) == []


@pytest.mark.parametrize("status", ["busy", "offline", "Available", ""])
def test_only_available_drivers(status):
    assert ids(rank(job(), [driver("a", 900), driver("b", 100, status=status)])) == ["a"]


def test_vehicle_types_allowed():
    cands = [driver(v, 100 * (i + 1), vehicle_type=v) for i, v in enumerate(VEHICLES)]
    assert ids(rank(job(vehicle_types=None), cands)) == list(VEHICLES)
    assert ids(rank(job(vehicle_types=frozenset({"van", "bakkie"})), cands)) == ["bakkie", "van"]
    assert rank(job(vehicle_types=frozenset()), cands) == []


def test_cold_storage_only_when_the_order_needs_it():
    cands = [driver("warm", 100), driver("cold", 900, has_cold_storage=True)]
    assert ids(rank(job(needs_cold_storage=True), cands)) == ["cold"]
    assert ids(rank(job(needs_cold_storage=False), cands)) == ["warm", "cold"]


def test_delivery_radius_is_a_road_distance_limit():
    cands = [driver("inside", 2990), driver("edge", 3000, 45), driver("outside", 3010, 90)]
    assert ids(rank(job(max_pickup_m=3000.0 + 1e-6), cands)) == ["inside", "edge"]
    # 2300 m crow-flies is 3105 m by road: within a naive crow-flies radius, out by road.
    crow = driver("crow", 2300 * CIRCUITY)
    assert rank(job(max_pickup_m=3000.0), [crow]) == []
    here = replace(driver("here"), lat=PICKUP[0], lng=PICKUP[1])
    assert ids(rank(job(max_pickup_m=0.0), [here])) == ["here"]


def test_drivers_who_declined_are_excluded():
    cands = [driver("a", 100), driver("b", 200), driver("c", 300)]
    assert ids(rank(job(), cands, exclude=frozenset({"a", "c", "unknown"}))) == ["b"]


def test_every_filter_at_once_matches_brute_force():
    cands = [driver("ok", 1000, vehicle_type="van", has_cold_storage=True),
             driver("tenant", 100, tenant_id="t9", vehicle_type="van", has_cold_storage=True),
             driver("busy", 100, status="busy", vehicle_type="van", has_cold_storage=True),
             driver("vehicle", 100, vehicle_type="bicycle", has_cold_storage=True),
             driver("warm", 100, vehicle_type="van"),
             driver("far", 9000, vehicle_type="van", has_cold_storage=True),
             driver("declined", 100, vehicle_type="van", has_cold_storage=True)]
    j = job(vehicle_types=frozenset({"van"}), needs_cold_storage=True)
    assert ids(rank(j, cands, exclude=frozenset({"declined"}))) == ["ok"]
    assert brute_force(j, cands, 10, frozenset({"declined"})) == ["ok"]


# --- order, k and edge cases ---------------------------------------------------------------

def test_ties_break_by_driver_id_whatever_the_input_order():
    cands = [driver(name, 1000, bearing) for name, bearing in
             [("d", 0), ("b", 90), ("a", 180), ("c", 270)]]
    # Different bearings give distances equal only to ~1e-9 m; same point gives exact ties.
    same = [replace(c, lat=cands[0].lat, lng=cands[0].lng) for c in cands]
    for order in (same, same[::-1], same[1:] + same[:1]):
        assert ids(rank(job(), order)) == ["a", "b", "c", "d"]
        assert ids(rank(job(), order, k=2)) == ["a", "b"]


def test_k_cut_through_a_tie_keeps_the_smallest_ids():
    rng = np.random.default_rng(7)
    names = [f"drv-{i:03d}" for i in rng.permutation(200)]
    cands = [driver(n, 1000.0) for n in names[:150]] + [driver(n, 500.0) for n in names[150:]]
    got = ids(rank(job(), cands, k=60))
    assert got[:50] == sorted(names[150:])
    assert got[50:] == sorted(names[:150])[:10]
    assert got == brute_force(job(), cands, 60)


def test_k_bigger_than_candidates_returns_all_feasible():
    cands = [driver("a", 300), driver("b", 100), driver("x", 100, status="busy")]
    assert ids(rank(job(), cands, k=50)) == ["b", "a"]


def test_k_limits_the_result():
    cands = [driver(f"d{i}", 100.0 * i + 50) for i in range(30)]
    assert ids(rank(job(), cands, k=3)) == ["d0", "d1", "d2"]
    assert rank(job(), cands, k=0) == []
    with pytest.raises(ValueError):
        rank(job(), cands, k=-1)


def test_empty_candidates():
    assert rank(job(), []) == []
    f = feasibility([job()], [])
    assert f.feasible.shape == f.road_m.shape == (1, 0)


def test_duplicate_driver_is_rejected():
    with pytest.raises(DuplicateCandidate, match="'a'"):
        rank(job(), [driver("a", 100), driver("b", 200), driver("a", 300)])


def test_job_validation():
    with pytest.raises(ValueError, match="max_pickup_m"):
        job(max_pickup_m=-1.0)
    with pytest.raises(ValueError, match="max_pickup_m"):
        job(max_pickup_m=math.nan)
    with pytest.raises(TypeError, match="frozenset"):
        job(vehicle_types="car")


def test_feasibility_matrix_rows_agree_with_rank():
    jobs = [job(), job(tenant_id="t2"), job(needs_cold_storage=True, max_pickup_m=2000.0)]
    cands = [driver("a", 100), driver("b", 2500, has_cold_storage=True),
             driver("c", 1500, has_cold_storage=True, tenant_id="t2"), driver("d", 700)]
    f = feasibility(jobs, cands, excludes=[frozenset({"d"}), frozenset(), frozenset()])
    assert f.feasible.tolist() == [[True, True, False, False],
                                   [False, False, True, False],
                                   [False, False, False, False]]
    assert f.road_m == pytest.approx(f.great_circle_m * CIRCUITY)
    with pytest.raises(ValueError, match="one entry per job"):
        feasibility(jobs, cands, excludes=[frozenset()])


# --- property: rank == brute force ---------------------------------------------------------

candidate_rows = st.lists(
    st.tuples(
        st.floats(0, 8000),  # road metres
        st.floats(0, 360, exclude_max=True),  # bearing
        st.sampled_from(VEHICLES),
        st.booleans(),  # cold storage
        st.sampled_from(["available", "available", "busy", "offline"]),
        st.sampled_from(["t1", "t1", "t2"]),
        st.booleans(),  # share the previous driver's position (exact ties)
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(
    rows=candidate_rows,
    k=st.integers(0, 45),
    allowed=st.none() | st.frozensets(st.sampled_from(VEHICLES)),
    needs_cold=st.booleans(),
    max_pickup=st.floats(0, 9000),
    n_excluded=st.integers(0, 5),
)
def test_rank_equals_brute_force_filter_and_sort(rows, k, allowed, needs_cold, max_pickup,
                                                 n_excluded):
    cands: list[Candidate] = []
    for i, (road_m, bearing, vehicle, cold, status, tenant, tie) in enumerate(rows):
        c = driver(f"d{(i * 7919) % 1000:03d}", road_m, bearing, vehicle_type=vehicle,
                   has_cold_storage=cold, status=status, tenant_id=tenant)
        if tie and cands:
            c = replace(c, lat=cands[-1].lat, lng=cands[-1].lng)
        cands.append(c)
    exclude = frozenset(c.driver_id for c in cands[:n_excluded])
    j = job(vehicle_types=allowed, needs_cold_storage=needs_cold, max_pickup_m=max_pickup)
    got = rank(j, cands, k=k, exclude=exclude)
    assert ids(got) == brute_force(j, cands, k, exclude)
    assert all(r.candidate.driver_id == r.driver_id for r in got)
    assert [r.distance_m for r in got] == sorted(r.distance_m for r in got)


# --- search plan ---------------------------------------------------------------------------

def test_search_plan_expands_rings_nearest_first_up_to_the_radius():
    plan = search_plan(*PICKUP, 3000.0)
    assert [k for k, _ in plan] == list(range(k_for_radius(3000.0) + 1))
    assert plan[0] == (0, [cell_of(*PICKUP)])
    assert all(len(cells) == 6 * k for k, cells in plan[1:])
    assert search_plan(*PICKUP, 0.0) == [(0, [cell_of(*PICKUP)])]


@pytest.mark.parametrize("res", [8, 9])
def test_search_plan_covers_every_point_within_the_radius(res):
    radius = 2500.0
    covered = {c for _, cells in search_plan(*PICKUP, radius, res) for c in cells}
    rng = np.random.default_rng(res)
    for bearing, frac in zip(rng.uniform(0, 360, 500), np.sqrt(rng.uniform(0, 1, 500)),
                             strict=True):
        assert cell_of(*destination(*PICKUP, float(bearing), radius * float(frac)), res) in covered


def test_search_complete_once_the_nth_distance_is_covered():
    k_needed = k_for_radius(1200.0)
    assert not search_complete(k_needed - 1, 1200.0)
    assert search_complete(k_needed, 1200.0)
    assert search_complete(0, 0.0)
