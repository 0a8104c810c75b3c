"""dispatch/matching/bundles.py: bundling, the assignment and the send-now-or-wait rule. Pure."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dispatch.matching.bundles import (
    BundleCourier,
    BundleOrder,
    BundleRules,
    Stops,
    _spread_ok,
    form_bundles,
    plan,
)

STOPS = Stops(2, 2, 2, 2)
R = (0.0, 0.0)


def travel(a, b):
    """100 m per minute, whole minutes."""
    pa, pb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(axis=2))
    return np.ceil(d / 100.0)


def order(oid: str, dropoff, *, ready: float = 10.0, placed: float = 0.0, restaurant: str = "r1",
          pickup=R) -> BundleOrder:
    return BundleOrder(oid, restaurant, pickup, dropoff, placed, ready)


def courier(cid: str, at=(0.0, 300.0), off: float = 600.0, covered: float = math.inf) -> BundleCourier:
    return BundleCourier(cid, at, off, covered)


def test_nothing_to_do_without_orders_or_couriers():
    assert plan(0, [], [courier("c1")], travel=travel, stops=STOPS) == []
    assert plan(0, [order("o1", (500, 0))], [], travel=travel, stops=STOPS) == []


def test_two_orders_the_same_way_ride_together_nearer_drop_first():
    orders = [order("o2", (600, 0)), order("o1", (500, 0))]
    bundles = form_bundles(orders, now=10, lead_travel=5, travel=travel, stops=STOPS,
                           rules=BundleRules(courier_weight=2.0))
    assert [tuple(o.order_id for o in b.orders) for b in bundles] == [("o1", "o2")]
    # leave 2 min after the hand-over, 5 min to o1, 2 min before its hand-over
    assert bundles[0].drop_offsets[0] == 2 + 5 + 2
    assert bundles[0].drop_offsets[1] == 9 + 2 + 1 + 2


def test_orders_in_opposite_directions_never_ride_together():
    orders = [order("o1", (500, 0)), order("o2", (-500, 0))]
    bundles = form_bundles(orders, now=10, lead_travel=5, travel=travel, stops=STOPS,
                           rules=BundleRules(courier_weight=50.0))
    assert sorted(len(b.orders) for b in bundles) == [1, 1]


def test_waiting_long_for_a_partner_is_not_worth_it_waiting_a_minute_is():
    rules = BundleRules(courier_weight=1.0)
    soon = form_bundles([order("o1", (500, 0), ready=10), order("o2", (550, 50), ready=11)],
                        now=5, lead_travel=5, travel=travel, stops=STOPS, rules=rules)
    late = form_bundles([order("o1", (500, 0), ready=10), order("o2", (550, 50), ready=40)],
                        now=5, lead_travel=5, travel=travel, stops=STOPS, rules=rules)
    assert [len(b.orders) for b in soon] == [2]
    assert sorted(len(b.orders) for b in late) == [1, 1]


def test_a_bundle_never_exceeds_max_size():
    orders = [order(f"o{k}", (500 + 10 * k, 0)) for k in range(6)]
    bundles = form_bundles(orders, now=10, lead_travel=1, travel=travel, stops=STOPS,
                           rules=BundleRules(courier_weight=100.0, max_size=2))
    assert all(len(b.orders) <= 2 for b in bundles)
    assert sorted(o.order_id for b in bundles for o in b.orders) == [f"o{k}" for k in range(6)]


def test_form_bundles_takes_one_restaurant():
    with pytest.raises(ValueError, match="one restaurant"):
        form_bundles([order("o1", (1, 1)), order("o2", (1, 1), restaurant="r2")], now=0, lead_travel=0,
                     travel=travel, stops=STOPS, rules=BundleRules())


def test_the_courier_is_held_until_leaving_now_reaches_the_counter_as_the_food_is_ready():
    # c1 is 3 min away plus 2 min of service: food ready at 30 -> sent at 25, not before.
    o = [order("o1", (500, 0), ready=30)]
    assert plan(10, o, [courier("c1")], travel=travel, stops=STOPS) == []
    assert plan(24, o, [courier("c1")], travel=travel, stops=STOPS) == []
    sent = plan(25, o, [courier("c1")], travel=travel, stops=STOPS)
    assert [(d.courier_id, d.order_ids, d.pickup_at) for d in sent] == [("c1", ("o1",), 30.0)]
    # ready food: sent at once
    assert len(plan(40, o, [courier("c1")], travel=travel, stops=STOPS)) == 1


def test_a_courier_whose_shift_ends_before_the_pickup_is_never_used():
    o = [order("o1", (500, 0), ready=30)]
    # leaving at 25 it hands over at 30
    assert plan(25, o, [courier("c1", off=29)], travel=travel, stops=STOPS) == []
    assert len(plan(25, o, [courier("c1", off=30)], travel=travel, stops=STOPS)) == 1
    assert plan(26, o, [courier("c1", off=30)], travel=travel, stops=STOPS) == []


def test_each_order_and_courier_at_most_once_and_the_nearer_courier_wins():
    orders = [order("o1", (500, 0), ready=0), order("o2", (0, -500), ready=0, restaurant="r2", pickup=(2000, 0))]
    couriers = [courier("far", at=(5000, 5000)), courier("near1", at=(0, 100)), courier("near2", at=(2000, 100))]
    sent = plan(10, orders, couriers, travel=travel, stops=STOPS)
    assert sorted((d.courier_id, d.order_ids) for d in sent) == [("near1", ("o1",)), ("near2", ("o2",))]


def test_the_oldest_order_goes_first_when_couriers_are_short():
    # Same restaurant, opposite directions, same distance: one courier; o_old is already late.
    orders = [order("o_new", (-500, 0), ready=50, placed=45), order("o_old", (500, 0), ready=50, placed=0)]
    sent = plan(50, orders, [courier("c1")], travel=travel, stops=STOPS)
    assert [d.order_ids for d in sent] == [("o_old",)]


def test_a_courier_already_paid_for_by_its_guarantee_is_preferred():
    o = [order("o1", (500, 0), ready=0)]
    couriers = [courier("paid_per_order", at=(0, 300), covered=0), courier("guaranteed", at=(0, -400), covered=5)]
    sent = plan(10, o, couriers, travel=travel, stops=STOPS, rules=BundleRules(pay_weight=10.0))
    assert sent[0].courier_id == "guaranteed"
    sent = plan(10, o, couriers, travel=travel, stops=STOPS, rules=BundleRules(pay_weight=0.0))
    assert sent[0].courier_id == "paid_per_order"


@pytest.mark.parametrize("angles, ok", [([0, 50], True), ([350, 20], True), ([0, 90], False),
                                        ([0, 30, 61], False), ([10], True), ([0, 180], False)])
def test_directions_fit_in_an_arc(angles, ok):
    assert _spread_ok(angles, 60.0) is ok


@pytest.mark.parametrize("field, value", [("courier_weight", -1.0), ("lateness_weight", math.nan),
                                          ("postpone_min", math.inf), ("max_size", 0), ("max_size", 9)])
def test_rules_out_of_range_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        BundleRules(**{field: value})


def test_a_bundle_only_the_free_courier_can_still_reach_is_not_left_to_be_lost():
    # c1 could serve either; a is nearer, so on cost alone c1 takes a. c2 comes free at 20
    # and its shift ends at 30: it can still reach a's counter (25), not b's (33). Sent to
    # a, c1 would leave b to nobody.
    a = order("a", (500, 0), ready=0)
    b = order("b", (1500, 0), ready=0, restaurant="rB", pickup=(1000, 0))
    c1 = courier("c1", at=(0, 300))
    c2 = BundleCourier("c2", (0, -300), 30, math.inf, free_at=20)
    assert [d.order_ids for d in plan(10, [a, b], [c1], travel=travel, stops=STOPS)] == [("a",)]
    assert [d.order_ids for d in plan(10, [a, b], [c1], travel=travel, stops=STOPS, coming=[c2])] == [("b",)]


def test_when_the_day_cannot_carry_every_waiting_order_the_oldest_go_first():
    # Three orders, two courier trips left in the day (c1 now, c2 once at 60). On cost
    # alone c1 takes the short new trip and the old, long one is overtaken; with the
    # shortage known the oldest goes first. With two orders both trips suffice: cost decides.
    old = order("old", (2500, 0), ready=50, placed=20)
    mid = order("mid", (-300, 10), ready=50, placed=44)
    new = order("new", (-300, 0), ready=50, placed=45)
    c1 = courier("c1", at=(0, 100), off=60)
    c2 = BundleCourier("c2", (0, 100), 70, math.inf, free_at=60)
    rules = BundleRules(target_min=200, max_size=1)
    sent = plan(50, [old, mid, new], [c1], travel=travel, stops=STOPS, rules=rules)
    assert [d.order_ids for d in sent] == [("new",)]
    sent = plan(50, [old, mid, new], [c1], travel=travel, stops=STOPS, rules=rules, coming=[c2])
    assert [d.order_ids for d in sent] == [("old",)]
    sent = plan(50, [old, new], [c1], travel=travel, stops=STOPS, rules=rules, coming=[c2])
    assert [d.order_ids for d in sent] == [("new",)]
