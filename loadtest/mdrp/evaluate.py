"""Feasibility with the set's rules, and the set's measures of a feasible solution.

``check`` applies every rule of the set's evaluator (``MDRP_code/compute_performance_summary.py``
in ``grubhub/mdrplib``) to a ``Solution``, in the evaluator's own terms:

* every order is in at most one assignment;
* no assignment before any of its orders is placed;
* every bundle is picked up no later than its courier's off time, and no earlier than the
  ready time of any of its orders;
* a bundle's dropoffs follow its sequence, each at least one dropoff service after the last;
* each courier's moves are continuous (a move starts where the last one ended, the first at
  the courier's start ``0``) and in time: arrival = departure + travel time, and the times
  on_time, departure, arrival, departure, ... never go back;
* at each pickup (dropoff) minute the courier is at the restaurant (customer): the place of
  the last timeline point strictly before that minute, as the evaluator's ``bisect_left`` has it.

and adds the rules the evaluator takes for granted, which a simulation bug would break first:
ids are the instance's; each order has exactly one line in the orders file, consistent with
its assignment (same courier, pickup minute), delivered if and only if assigned; a bundle's
orders share one restaurant; an assignment is made while its courier is on shift and not
after its pickup; the first dropoff comes after the pickup.

``measures`` are the figures the set reports, over the delivered orders (minutes unless the
name says otherwise): click-to-door (dropoff - placement) mean and p90, overage past the
target, ready-to-pickup; orders per courier-hour (all delivered orders over all scheduled
courier hours); courier payment, each courier paid max(pay per order x orders, guaranteed
pay per hour x shift hours); mean bundle size (orders per assignment).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from loadtest.mdrp.instance import Instance
from loadtest.mdrp.solution import START, Solution
from loadtest.mdrp.travel import TravelModel

__all__ = ["Violation", "check", "measures"]


@dataclass(frozen=True, slots=True)
class Violation:
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.detail}"


def _timelines(instance: Instance, solution: Solution,
               out: list[Violation]) -> dict[str, tuple[list[int], list[str]]]:
    travel = TravelModel(instance.params.metres_per_minute)
    by_courier: dict[str, list] = defaultdict(list)
    for m in solution.moves:
        by_courier[m.courier].append(m)
    lines: dict[str, tuple[list[int], list[str]]] = {}
    for c in instance.couriers:
        times, places = [c.on_at], [c.id]
        for m in by_courier.pop(c.id, []):
            origin = c.id if m.origin == START else m.origin
            if origin != places[-1]:
                out.append(Violation("move_continuity", f"courier {c.id} leaves {m.origin} at {m.departure} "
                                     f"but is at {places[-1]}"))
            try:
                minutes = travel.minutes(instance.location(origin), instance.location(m.destination))
            except KeyError:
                out.append(Violation("known_ids", f"move of {c.id} at {m.departure}: unknown place "
                                     f"{m.origin} or {m.destination}"))
                minutes = 0
            times += [m.departure, m.departure + minutes]
            places += ["", m.destination]
        if times != sorted(times):
            out.append(Violation("move_times", f"courier {c.id} departs before arriving: {times[:12]}..."))
        lines[c.id] = (times, places)
    for courier in by_courier:
        out.append(Violation("known_ids", f"moves of unknown courier {courier}"))
    return lines


def _place_at(line: tuple[list[int], list[str]] | None, minute: int) -> str | None:
    if line is None:
        return None
    times, places = line
    i = bisect_left(times, minute) - 1
    return places[i] if i >= 0 else None


def check(instance: Instance, solution: Solution) -> list[Violation]:
    """Every rule the solution breaks; empty when it is feasible."""
    out: list[Violation] = []
    p = instance.params
    known_orders = {o.id for o in instance.orders}
    known_couriers = {c.id for c in instance.couriers}
    trip_of: dict[str, int] = {}
    for k, trip in enumerate(solution.trips):
        label = f"assignment {k + 1} ({trip.courier}: {' '.join(trip.orders)})"
        if trip.courier not in known_couriers or not trip.orders or any(o not in known_orders for o in trip.orders):
            out.append(Violation("known_ids", f"{label}: unknown courier or order, or no orders"))
            continue
        courier = instance.courier(trip.courier)
        for o in trip.orders:
            if o in trip_of:
                out.append(Violation("one_assignment_per_order", f"order {o} in assignments {trip_of[o] + 1} and {k + 1}"))
            trip_of[o] = k
            order = instance.order(o)
            if trip.assigned_at < order.placed_at:
                out.append(Violation("assigned_after_placement", f"{label}: at {trip.assigned_at}, {o} placed at {order.placed_at}"))
            if trip.pickup_at < order.ready_at:
                out.append(Violation("pickup_after_ready", f"{label}: pickup {trip.pickup_at}, {o} ready at {order.ready_at}"))
        if len({instance.order(o).restaurant for o in trip.orders}) != 1:
            out.append(Violation("one_restaurant_per_bundle", label))
        if trip.pickup_at > courier.off_at:
            out.append(Violation("pickup_before_off_time", f"{label}: pickup {trip.pickup_at}, off at {courier.off_at}"))
        if not courier.on_at <= trip.assigned_at <= min(trip.pickup_at, courier.off_at):
            out.append(Violation("assigned_on_shift", f"{label}: assigned at {trip.assigned_at}, shift "
                                 f"{courier.on_at}-{courier.off_at}, pickup {trip.pickup_at}"))

    rows = {}
    for row in solution.orders:
        if row.order not in known_orders:
            out.append(Violation("known_ids", f"orders file: unknown order {row.order}"))
        elif row.order in rows:
            out.append(Violation("order_rows", f"order {row.order} has two lines"))
        rows[row.order] = row
    for o in known_orders - rows.keys():
        out.append(Violation("order_rows", f"order {o} has no line"))

    lines = _timelines(instance, solution, out)
    for k, trip in enumerate(solution.trips):
        if trip.courier not in known_couriers or any(o not in known_orders for o in trip.orders):
            continue
        line = lines[trip.courier]
        restaurant = instance.order(trip.orders[0]).restaurant
        if _place_at(line, trip.pickup_at) != restaurant:
            out.append(Violation("pickup_location", f"{trip.courier} is at {_place_at(line, trip.pickup_at)!r}, "
                                 f"not {restaurant}, at pickup {trip.pickup_at}"))
        last = trip.pickup_at
        for n, o in enumerate(trip.orders):
            row = rows.get(o)
            if row is None:
                continue
            if row.courier != trip.courier or row.pickup_at != trip.pickup_at or row.dropoff_at is None:
                out.append(Violation("order_rows", f"order {o}: line says courier {row.courier}, pickup "
                                     f"{row.pickup_at}, dropoff {row.dropoff_at}; assignment {k + 1} says "
                                     f"{trip.courier}, {trip.pickup_at}"))
                continue
            gap = p.dropoff_service_min if n else 1
            if row.dropoff_at < last + gap:
                out.append(Violation("dropoff_sequence", f"order {o} dropped at {row.dropoff_at}, "
                                     f"{'previous dropoff' if n else 'pickup'} at {last}"))
            last = row.dropoff_at
            if _place_at(line, row.dropoff_at) != o:
                out.append(Violation("dropoff_location", f"{trip.courier} is at {_place_at(line, row.dropoff_at)!r}, "
                                     f"not {o}, at dropoff {row.dropoff_at}"))
    for o, row in rows.items():
        if o not in trip_of and (row.dropoff_at is not None or row.pickup_at is not None or row.courier is not None):
            out.append(Violation("order_rows", f"order {o} has times or a courier but no assignment"))
    return out


def _mean(values: np.ndarray) -> float | None:
    return round(float(values.mean()), 3) if values.size else None


def measures(instance: Instance, solution: Solution) -> dict[str, float | int | None]:
    """The set's measures of a (feasible) solution; see the module docstring."""
    p = instance.params
    done = [r for r in solution.orders if r.dropoff_at is not None]
    placed = np.array([instance.order(r.order).placed_at for r in done], dtype=np.float64)
    ready = np.array([instance.order(r.order).ready_at for r in done], dtype=np.float64)
    dropoff = np.array([r.dropoff_at for r in done], dtype=np.float64)
    pickup = np.array([r.pickup_at for r in done], dtype=np.float64)
    ctd = dropoff - placed
    per_courier: dict[str, int] = defaultdict(int)
    for r in done:
        per_courier[r.courier] += 1  # type: ignore[index]
    shift_min = sum(c.off_at - c.on_at for c in instance.couriers)
    guaranteed = [(c.off_at - c.on_at) / 60.0 * p.guaranteed_pay_per_hour for c in instance.couriers]
    paid = [max(p.pay_per_order * per_courier.get(c.id, 0), g) for c, g in zip(instance.couriers, guaranteed, strict=True)]
    total_pay = float(sum(paid))
    sizes = np.array([len(t.orders) for t in solution.trips], dtype=np.float64)
    return {
        "orders_total": len(instance.orders),
        "orders_delivered": len(done),
        "click_to_door_mean_min": _mean(ctd),
        "click_to_door_p90_min": round(float(np.percentile(ctd, 90)), 3) if ctd.size else None,
        "click_to_door_overage_mean_min": _mean(np.maximum(ctd - p.target_click_to_door_min, 0.0)),
        "orders_over_max_click_to_door": int((ctd > p.max_click_to_door_min).sum()),
        "ready_to_pickup_mean_min": _mean(pickup - ready),
        "orders_per_courier_hour": round(len(done) / (shift_min / 60.0), 4),
        "courier_payment_total": round(total_pay, 2),
        "courier_payment_per_order": round(total_pay / len(done), 4) if done else None,
        # as the set's evaluator counts them: order earnings below the guarantee
        "couriers_on_guarantee_share": round(sum(p.pay_per_order * per_courier.get(c.id, 0) < g for c, g in
                                                 zip(instance.couriers, guaranteed, strict=True)) / len(paid), 4),
        "bundle_size_mean_orders": _mean(sizes),
    }
