"""loadtest/mdrp/evaluate.py: the set's feasibility rules on hand-made solutions with known faults."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from loadtest.mdrp.evaluate import check, measures
from loadtest.mdrp.instance import read_instance
from loadtest.mdrp.solution import Move, OrderRow, Solution, Trip, read_solution, write_solution
from tests.unit.loadtest.mdrp.conftest import write_instance

# Worked by hand for the tiny instance (100 m/min, 2 + 2 service minutes at each stop):
# c1 (0,300) leaves at 2 for r1 (3 min), hands over at max(5+2, ready 12) = 12, leaves at 14,
# o1 (5 min) at 19 + 2 = 21, leaves 23, o2 (1 min) at 24 + 2 = 26.
# c2 (1000,1000) leaves at 5 for r2 (10 min), hands over at max(17, ready 20) = 20, leaves
# at 22, o3 (5 min) at 27 + 2 = 29.
GOOD = Solution(
    trips=(Trip(2, 12, "c1", ("o1", "o2")), Trip(5, 20, "c2", ("o3",))),
    orders=(OrderRow("o1", 12, 21, "c1"), OrderRow("o2", 12, 26, "c1"), OrderRow("o3", 20, 29, "c2")),
    moves=(Move("c1", 2, "0", "r1"), Move("c1", 14, "r1", "o1"), Move("c1", 23, "o1", "o2"),
           Move("c2", 5, "0", "r2"), Move("c2", 22, "r2", "o3")),
)


def rules(instance, solution: Solution) -> set[str]:
    return {v.rule for v in check(instance, solution)}


def with_trip(k: int, **changes) -> Solution:
    trips = list(GOOD.trips)
    trips[k] = replace(trips[k], **changes)
    return replace(GOOD, trips=tuple(trips))


def with_row(order: str, **changes) -> Solution:
    return replace(GOOD, orders=tuple(replace(r, **changes) if r.order == order else r for r in GOOD.orders))


def with_moves(*moves: Move) -> Solution:
    return replace(GOOD, moves=moves)


def test_the_hand_made_solution_is_feasible_and_measured(tiny_dir: Path):
    instance = read_instance(tiny_dir)
    assert check(instance, GOOD) == []
    m = measures(instance, GOOD)
    assert m["orders_delivered"] == 3
    assert m["click_to_door_mean_min"] == pytest.approx((21 + 24 + 24) / 3, abs=1e-3)
    assert m["ready_to_pickup_mean_min"] == pytest.approx(2 / 3, abs=1e-3)
    assert m["click_to_door_overage_mean_min"] == 0
    # c1: max(2 x 10, 1 h x 15) = 20; c2: max(10, 15) = 15
    assert m["courier_payment_total"] == 35
    assert m["courier_payment_per_order"] == pytest.approx(35 / 3, abs=1e-3)
    assert m["orders_per_courier_hour"] == pytest.approx(1.5)
    assert m["bundle_size_mean_orders"] == 1.5


def test_written_files_read_back_to_the_same_solution(tiny_dir: Path, tmp_path: Path):
    instance = read_instance(tiny_dir)
    write_solution(instance, GOOD, tmp_path / "sol")
    back = read_solution(tmp_path / "sol")
    assert back.trips == GOOD.trips and back.orders == GOOD.orders
    assert sorted(back.moves, key=lambda m: (m.courier, m.departure)) == sorted(
        GOOD.moves, key=lambda m: (m.courier, m.departure))
    assert check(instance, back) == []
    assert (tmp_path / "sol" / "solution_info_orders.txt").read_text().splitlines()[0] == (
        "order placement_time restaurant x y ready_time pickup_time dropoff_time courier")


@pytest.mark.parametrize("solution, rule", [
    (with_trip(0, assigned_at=1), "assigned_after_placement"),          # o2 is placed at 2
    (with_trip(1, pickup_at=19), "pickup_after_ready"),                 # o3 ready at 20
    (replace(GOOD, trips=GOOD.trips + (Trip(6, 20, "c2", ("o3",)),)), "one_assignment_per_order"),
    (with_trip(0, orders=("o1", "o3")), "one_restaurant_per_bundle"),
    (with_row("o2", dropoff_at=24), "dropoff_sequence"),                # 21 + 4 > 24
    (with_row("o1", dropoff_at=19), "dropoff_location"),                # arrives at 19: not yet there
    (with_row("o3", courier="c1"), "order_rows"),
    (replace(GOOD, orders=GOOD.orders[:2]), "order_rows"),
    (with_moves(Move("c1", 2, "0", "r1"), Move("c1", 14, "r1", "o1"), Move("c1", 23, "r1", "o2"),
                Move("c2", 5, "0", "r2"), Move("c2", 22, "r2", "o3")), "move_continuity"),     # teleport
    (with_moves(Move("c1", 2, "0", "r1"), Move("c1", 14, "r1", "o1"), Move("c1", 18, "o1", "o2"),
                Move("c2", 5, "0", "r2"), Move("c2", 22, "r2", "o3")), "move_times"),          # leaves before arriving
    (with_moves(Move("c1", 2, "0", "r1"), Move("c1", 14, "r1", "o1"), Move("c1", 23, "o1", "o2"),
                Move("c2", 15, "0", "r2"), Move("c2", 25, "r2", "o3")), "pickup_location"),    # arrives at 25
    (with_trip(1, courier="c9"), "known_ids"),
])
def test_known_faults_are_named(tiny_dir: Path, solution: Solution, rule: str):
    assert rule in rules(read_instance(tiny_dir), solution)


def test_a_pickup_after_the_couriers_off_time_is_refused(tmp_path: Path):
    instance = read_instance(write_instance(tmp_path / "i", couriers__txt=(
        "courier\tx\ty\ton_time\toff_time\nc1\t0\t300\t0\t60\nc2\t1000\t1000\t0\t19\n")))
    assert rules(instance, GOOD) == {"pickup_before_off_time"}


def test_an_assignment_before_the_shift_starts_is_refused(tmp_path: Path):
    instance = read_instance(write_instance(tmp_path / "i", couriers__txt=(
        "courier\tx\ty\ton_time\toff_time\nc1\t0\t300\t0\t60\nc2\t1000\t1000\t6\t60\n")))
    assert "assigned_on_shift" in rules(instance, GOOD)


def test_undelivered_orders_count_only_where_they_are(tiny_dir: Path):
    instance = read_instance(tiny_dir)
    partial = Solution(GOOD.trips[:1], GOOD.orders[:2] + (OrderRow("o3", None, None, None),),
                       GOOD.moves[:3])
    assert check(instance, partial) == []
    m = measures(instance, partial)
    assert (m["orders_delivered"], m["orders_total"]) == (2, 3)
    # an order with a dropoff but no assignment is not "delivered" by a typo
    assert "order_rows" in rules(instance, replace(partial, orders=GOOD.orders))
