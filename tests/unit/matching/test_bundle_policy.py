"""dispatch/matching/bundle_policy.py (bundle, alone or hold) and stops.py (the drop-off
sequence the tracker estimates). Pure, no service needed."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from dispatch.matching.active import ActiveDelivery
from dispatch.matching.bundle_policy import Ready, Upcoming, decide
from dispatch.matching.stops import HANDOVER_S, earlier_stops, through_stops
from geo import destination

SHOP = (-26.2360, 27.9090)
NOW = 1_800_000_000.0
AT = datetime(2026, 1, 14, 10, 0, tzinfo=UTC)   # mid-morning: no rush hour


def ready(d: str, bearing: float, metres: float, *, vendor: str = "v1", ready_ago: float = 5.0) -> Ready:
    return Ready(d, vendor, SHOP, destination(*SHOP, bearing, metres), NOW - 300, NOW - ready_ago)


def upcoming(o: str, bearing: float, metres: float, in_s: float) -> Upcoming:
    return Upcoming(o, "v1", SHOP, destination(*SHOP, bearing, metres), NOW - 200, NOW + in_s)


def run(rs, ups=(), *, capacity=2, max_hold_s=60.0, lead=None):
    return decide(rs, ups, now_s=NOW, at=AT, lead_s={"v1": 120.0} if lead is None else lead,
                  capacity=capacity, max_hold_s=max_hold_s)


def test_two_ready_orders_of_one_vendor_going_the_same_way_are_one_bundle_nearer_door_first():
    decision = run([ready("far", 80.0, 2200), ready("near", 90.0, 1500)])
    assert decision.singles == () and decision.held == {}
    (bundle,) = decision.bundles
    assert bundle.delivery_ids == ("near", "far")
    first, second = bundle.dropoff_etas_s
    assert 0 < first < second and second - first >= HANDOVER_S   # the second door waits for the first


def test_opposite_directions_other_vendors_and_single_slot_drivers_are_not_bundled():
    assert run([ready("e", 90.0, 1500), ready("w", 270.0, 1500)]).singles == ("e", "w")
    other = ready("x", 90.0, 1600, vendor="v2")
    assert sorted(run([ready("a", 90.0, 1500), other], lead={"v1": 120.0, "v2": 120.0}).singles) == ["a", "x"]
    assert run([ready("a", 90.0, 1500), ready("b", 85.0, 2000)], capacity=1).bundles == ()
    # a vendor with no driver near now: alone, to wait for one as usual
    assert run([ready("a", 90.0, 1500), ready("b", 85.0, 2000)], lead={}).singles == ("a", "b")


def test_a_ready_order_waits_for_a_partner_about_to_be_ready_but_never_beyond_the_max_hold():
    decision = run([ready("a", 90.0, 1500)], [upcoming("o", 85.0, 1900, in_s=30)])
    assert decision.bundles == () and decision.singles == ()
    assert decision.held == {"a": pytest.approx(NOW + 30)}
    # the partner is further off than the max hold: no wait
    assert run([ready("a", 90.0, 1500)], [upcoming("o", 85.0, 1900, in_s=90)]).singles == ("a",)
    # held since it became ready: the hold ends at ready + max hold, even if the partner is late
    late = run([ready("a", 90.0, 1500, ready_ago=50)], [upcoming("o", 85.0, 1900, in_s=40)])
    assert late.held == {"a": pytest.approx(NOW + 10)}
    gone = run([ready("a", 90.0, 1500, ready_ago=70)], [upcoming("o", 85.0, 1900, in_s=20)])
    assert gone.singles == ("a",) and gone.held == {}
    # max hold 0: never waits
    assert run([ready("a", 90.0, 1500)], [upcoming("o", 85.0, 1900, in_s=5)], max_hold_s=0).singles == ("a",)


def test_a_hold_that_ran_out_still_bundles_what_is_ready():
    decision = run([ready("a", 90.0, 1500, ready_ago=70), ready("b", 88.0, 1800, ready_ago=70)],
                   [upcoming("o", 86.0, 2000, in_s=20)])
    assert decision.held == {} and [b.delivery_ids for b in decision.bundles] == [("a", "b")]


@pytest.mark.parametrize("value", [-1.0, math.nan, math.inf])
def test_hostile_max_hold_is_refused(value):
    with pytest.raises(ValueError, match="max_hold_s"):
        run([ready("a", 90.0, 1500)], max_hold_s=value)


def active(d: str, stop: int | None, dropoff, *, status="picked_up", bundle="b1", driver="x") -> ActiveDelivery:
    return ActiveDelivery(d, "t", driver, "motorbike", status, SHOP, dropoff, bundle_id=bundle if stop else None,
                          stop=stop, stops=3 if stop else None)


def test_earlier_stops_are_the_open_stops_of_the_same_bundle_and_driver_before_each():
    one, two, three = (active(f"d{k}", k, destination(*SHOP, 90.0, 1000 * k)) for k in (1, 2, 3))
    alone = active("solo", None, SHOP)
    other = active("o2", 1, SHOP, bundle="b2")
    found = earlier_stops([three, alone, one, other, two])
    assert found == {"d2": (one,), "d3": (one, two)}
    assert earlier_stops([three, two]) == {"d3": (two,)}   # stop 1 delivered: its hash is gone


def test_the_eta_of_a_later_stop_runs_through_the_doors_before_it():
    def remaining(status, start, d):   # 1 s per metre east, the start's status ignored
        return None, abs(d.dropoff[1] - start[1]) * 100_000

    one, two = active("d1", 1, (SHOP[0], SHOP[1] + 0.01)), active("d2", 2, (SHOP[0], SHOP[1] + 0.03))
    assert through_stops((), one, SHOP, remaining) == pytest.approx(1000)
    assert through_stops((one,), two, SHOP, remaining) == pytest.approx(1000 + HANDOVER_S + 2000)


def test_more_deliveries_than_drivers_make_a_courier_minute_dearer_so_a_bundle_pays_sooner():
    pair = [ready("far", 80.0, 2300), ready("near", 90.0, 1500)]
    assert run(pair, lead={"v1": 30.0}).bundles[0].delivery_ids == ("near", "far")   # one driver for two
    plenty = decide(pair, (), now_s=NOW, at=AT, lead_s={"v1": 30.0}, capacity=2, max_hold_s=60, drivers=2)
    assert plenty.bundles == () and sorted(plenty.singles) == ["far", "near"]
