"""The learned ETA model (geo.eta_model): it starts at the prior, removes a known bias from
synthetic legs level by level, and hostile or outlier legs cannot poison it."""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta, timezone

import h3
import numpy as np
import pytest

from geo.cells import cell_of
from geo.distance import destination, distance_m
from geo.eta import UnknownVehicleType, eta_seconds
from geo.eta_model import (
    AREA_RES,
    HANDOVER_PRIOR_S,
    TRAVEL_RES,
    EtaModel,
    handover_increments,
    prior_travel_s,
    travel_increments,
)

AT = datetime(2024, 5, 15, 12, 30, tzinfo=timezone(timedelta(hours=2)))
CENTRE = (-26.20, 27.95)
SLOW = destination(*CENTRE, 90.0, 25_000)     # a far cell, slow on purpose
assert cell_of(*SLOW, TRAVEL_RES) != cell_of(*CENTRE, TRAVEL_RES)


def legs(rng: random.Random, n: int, around: tuple[float, float] = CENTRE, vehicle: str = "car"):
    """n synthetic legs ending near ``around``: (start, end, distance)."""
    for _ in range(n):
        end = destination(*around, rng.uniform(0, 360), rng.uniform(0, 1_500))
        start = destination(*end, rng.uniform(0, 360), rng.uniform(800, 5_000))
        yield start, end, distance_m(*start, *end)


def errors(model: EtaModel, truth, rng: random.Random, n: int = 300, **kw) -> np.ndarray:
    out = []
    for _start, end, d in legs(rng, n, **kw):
        vehicle = kw.get("vehicle", "car")
        out.append(truth(prior_travel_s(d, vehicle, AT), vehicle) - model.travel_s(d, vehicle, AT, end))
    return np.array(out)


def test_an_empty_model_is_exactly_the_prior():
    model = EtaModel()
    assert model.line() == pytest.approx((1.0, 60.0))
    for vehicle in ("motorbike", "car", "bakkie", "bicycle"):
        assert model.travel_s(2_500.0, vehicle, AT, CENTRE) == pytest.approx(eta_seconds(2_500.0, vehicle, AT))
    assert model.handover_s("shop") == HANDOVER_PRIOR_S["shop"]


def test_it_learns_away_a_speed_and_overhead_bias_per_vehicle():
    # The "world": no parking overhead, motorbikes 30% faster than the prior, cars 15% faster.
    speed = {"motorbike": 0.70, "car": 0.85}
    rng = random.Random(7)
    model = EtaModel()

    def truth(x: float, vehicle: str) -> float:
        return speed[vehicle] * x * rng.lognormvariate(0.0, 0.10)

    before = {v: errors(model, truth, random.Random(1), vehicle=v).mean() for v in speed}
    assert before["motorbike"] < -100 and before["car"] < -60     # estimates far too long
    for vehicle in speed:
        for start, end, d in legs(rng, 400, vehicle=vehicle):
            assert model.add(travel_increments(start, end, vehicle, AT, truth(prior_travel_s(d, vehicle, AT),
                                                                              vehicle)))
    for vehicle in speed:
        err = errors(model, truth, random.Random(2), vehicle=vehicle)
        assert abs(err.mean()) < 15, vehicle   # the target is ±20 s
        assert (np.abs(err) <= 120).mean() >= 0.9   # what is left is the legs' own 10% noise
    assert model.legs() == 800


def test_a_slow_cell_is_learned_there_and_not_elsewhere():
    rng = random.Random(3)
    model = EtaModel()
    for around, factor in ((CENTRE, 1.0), (SLOW, 1.5)):
        for start, end, d in legs(rng, 300, around=around):
            model.add(travel_increments(start, end, "car", AT, factor * prior_travel_s(d, "car", AT) + 60))
    hour = 12   # the global line takes the average slowness; the cells keep their difference
    slow, plain = (model.cell_factor(cell_of(*p, TRAVEL_RES), hour) for p in (SLOW, CENTRE))
    assert slow / plain == pytest.approx(1.5, rel=0.05)
    fast = errors(model, lambda x, v: x + 60, random.Random(4))
    slow = errors(model, lambda x, v: 1.5 * x + 60, random.Random(4), around=SLOW)
    assert abs(fast.mean()) < 15 and abs(slow.mean()) < 15
    # another hour in the slow cell has no data of its own: it falls back to the level above
    assert model.cell_factor(cell_of(*SLOW, TRAVEL_RES), 3) == 1.0


def test_a_slow_neighbourhood_inside_a_normal_cell_is_learned_at_its_own_resolution():
    """A res-7 area (a taxi rank, a rail crossing) 1.6 times slower than the rest of its res-6
    cell: the area level learns it, the rest of the cell is left alone."""
    slow_area = cell_of(*CENTRE, AREA_RES)
    rng = random.Random(11)
    model = EtaModel()
    for start, end, d in legs(rng, 1_200, around=CENTRE):
        factor = 1.6 if cell_of(*end, AREA_RES) == slow_area else 1.0
        model.add(travel_increments(start, end, "car", AT, factor * prior_travel_s(d, "car", AT)))
    others = {cell_of(*e, AREA_RES) for _, e, _ in legs(random.Random(12), 300, around=CENTRE)} - {slow_area}
    def local(area: str) -> float:   # the cell's and the area's factors: what is local there
        return model.cell_factor(h3.cell_to_parent(area, TRAVEL_RES), 12) * model.area_factor(area)

    learned = [local(a) for a in others if model.legs_in_area(a) >= 30]
    assert len(learned) >= 2   # the levels above take the average; the areas keep their difference
    assert all(1.4 < local(slow_area) / f < 1.8 for f in learned)
    inside = [(s, e, d) for s, e, d in legs(random.Random(13), 400, around=CENTRE)
              if cell_of(*e, AREA_RES) == slow_area]
    err = [1.6 * prior_travel_s(d, "car", AT) - model.travel_s(d, "car", AT, e) for _, e, d in inside]
    assert len(err) > 20 and abs(float(np.mean(err))) < 30


def test_levels_are_recomputed_from_the_sums_so_early_legs_do_not_double_count():
    """Adding the same legs in another order gives the same model: no level learned from an
    estimate that another level had already corrected."""
    rng = random.Random(5)
    increments = [travel_increments(s, e, v, AT, 0.6 * prior_travel_s(d, v, AT))
                  for v in ("motorbike", "bakkie") for s, e, d in legs(rng, 100)]
    a, b = EtaModel(), EtaModel()
    for inc in increments:
        a.add(inc)
    for inc in reversed(increments):
        b.add(inc)
    assert a.travel_s(3_000, "bakkie", AT, CENTRE) == pytest.approx(b.travel_s(3_000, "bakkie", AT, CENTRE))
    assert EtaModel(a.stats()).travel_s(3_000, "bakkie", AT, CENTRE) == pytest.approx(
        a.travel_s(3_000, "bakkie", AT, CENTRE))


@pytest.mark.parametrize("actual", [math.nan, math.inf, -1.0, -math.inf, "60", None, True])
def test_a_leg_that_is_not_a_number_of_seconds_is_refused_naming_the_field(actual):
    with pytest.raises(ValueError, match="actual_s"):
        travel_increments(CENTRE, SLOW, "car", AT, actual)


@pytest.mark.parametrize(("start", "end", "field"), [
    ((math.nan, 27.9), CENTRE, "start"), ((91.0, 27.9), CENTRE, "start"),
    (CENTRE, (-26.2, 181.0), "end"), (CENTRE, "here", "end"), (None, CENTRE, "start")])
def test_a_leg_with_impossible_points_is_refused_naming_the_point(start, end, field):
    with pytest.raises(ValueError, match=field):
        travel_increments(start, end, "car", AT, 300.0)


def test_an_unknown_vehicle_is_refused():
    with pytest.raises(UnknownVehicleType):
        travel_increments(CENTRE, SLOW, "hovercraft", AT, 300.0)


def test_outlier_legs_are_rejected_and_cannot_poison_the_model():
    model = EtaModel()
    start, end = CENTRE, destination(*CENTRE, 45.0, 3_000)
    x = prior_travel_s(distance_m(*start, *end), "car", AT)
    before = model.travel_s(3_000, "car", AT, end)
    # hours-long legs (a forgotten "delivered" tap), a teleport, a zero-length leg, a 5-hour trip
    for actual in (5 * 3600.0, 0.0, x / 10):
        for _ in range(1_000):
            assert travel_increments(start, end, "car", AT, actual) is None
            assert not model.add(travel_increments(start, end, "car", AT, actual))
    assert travel_increments(CENTRE, CENTRE, "car", AT, 30.0) is None            # too short to learn from
    far = destination(*CENTRE, 0.0, 300_000)
    assert travel_increments(CENTRE, far, "bicycle", AT, 40_000.0) is None      # over MAX_TRAVEL_S
    assert model.travel_s(3_000, "car", AT, end) == before


def test_one_extreme_but_plausible_leg_moves_the_model_a_bounded_amount():
    start, end = CENTRE, destination(*CENTRE, 45.0, 3_000)
    x = prior_travel_s(3_000, "car", AT)
    worst = travel_increments(start, end, "car", AT, 3.5 * x + 300)   # the upper bound
    empty = EtaModel()
    before = empty.travel_s(3_000, "car", AT, end)
    assert empty.add(worst)
    assert empty.travel_s(3_000, "car", AT, end) < before * 2      # every level leans, none runs away
    warm = EtaModel()
    for s, e, d in legs(random.Random(9), 100, around=end):
        warm.add(travel_increments(s, e, "car", AT, prior_travel_s(d, "car", AT) + 60))
    before = warm.travel_s(3_000, "car", AT, end)
    assert warm.add(worst)
    assert warm.travel_s(3_000, "car", AT, end) < before * 1.1


def test_garbage_in_the_sums_is_dropped_and_listed():
    good = travel_increments(CENTRE, destination(*CENTRE, 10.0, 2_000), "car", AT, 200.0)
    hostile = {**good, "g:n": "nan", "g:zz": 1.0, "v:hovercraft:n": 3.0, "t:25:n": 1.0, "t:x:n": 1.0,
               "c:8928308280fffff:12:n": 1.0, "c:zzz:12:y": 1.0, "a:8928308280fffff:12:n": 1.0, "h:shop:s": -5.0, "h:lunch:n": 1.0,
               "": 1.0, ":::": 2.0, "v:car:x": math.inf, 7: 1.0}
    model = EtaModel(hostile)
    assert set(model.rejected) == {"g:n", "g:zz", "v:hovercraft:n", "t:25:n", "t:x:n", "c:8928308280fffff:12:n",
                                   "c:zzz:12:y", "a:8928308280fffff:12:n", "h:shop:s", "h:lunch:n", "", ":::", "v:car:x", "7"}
    estimate = model.travel_s(2_000, "car", AT, CENTRE)
    assert math.isfinite(estimate) and estimate > 0


def test_handovers_are_learned_bounded_and_the_ready_wait_only_counts_when_there_is_one():
    model = EtaModel()
    for _ in range(95):
        assert model.add(handover_increments("shop", 30.0))
    assert model.handover_s("shop") == pytest.approx((95 * 30 + 5 * 90) / 100)
    assert handover_increments("door", 3 * 3600.0) is None                      # a forgotten tap
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="seconds"):
            handover_increments("door", bad)
    with pytest.raises(ValueError, match="kind"):
        handover_increments("kitchen", 10.0)
    shop = model.handover_s("shop")
    assert model.pickup_done_s(300.0) == pytest.approx(300.0 + shop)             # order ready: no wait
    assert model.pickup_done_s(300.0, ready_in_s=600.0) == pytest.approx(600.0 + shop)
    assert model.pickup_done_s(0.0, waited_s=10.0) == pytest.approx(shop - 10.0)
    assert model.pickup_done_s(0.0, waited_s=1e6) == 0.0
