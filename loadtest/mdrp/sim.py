"""An instance's day, minute by minute, with the decisions made by a policy.

The set's clock is whole minutes, so this discrete-event simulation steps in minutes and
skips the ones where nothing can be decided: at each step it shows the policy the orders
placed by then and not yet assigned (with their announced ready times) and the couriers
free then - on shift (on_time <= now < off_time) and back from their last trip - and
carries out what the policy returns. Nothing after ``now`` is visible: an order placed at
minute 500 exists for the policy from minute 500. A policy that asks (``sees_coming``) is
also shown the couriers not free now whose shift has not ended, with when and where each
will be free: what the dispatches already made and the shift schedule fix.

A dispatch at minute t of courier c to a bundle of restaurant r: c leaves where it stands
at t and travels to r (the set's travel time), the hand-over is at max(arrival + the
pickup's before-service, the last ready time), it leaves after the after-service and drops
the orders in the bundle's order, each with its own before- and after-service
(``loadtest.mdrp.travel.Service``). It is free again, where the last customer is, once the
last after-service ends. A dispatch the rules forbid (an order already assigned or not yet
placed, a courier not free, orders of two restaurants, a pickup after the shift ends) is a
bug in the policy and raises ``PolicyError``.

The day ends when every order is assigned, or when no courier can take a pickup any more
(the last off time); orders still waiting then are undelivered.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from loadtest.mdrp.instance import Courier, Instance, Order
from loadtest.mdrp.solution import START, Move, OrderRow, Solution, Trip
from loadtest.mdrp.travel import Service, TravelModel

__all__ = ["FreeCourier", "Outcome", "Policy", "PolicyError", "simulate"]


class PolicyError(RuntimeError):
    """A policy asked for a dispatch the rules forbid."""


@dataclass(frozen=True, slots=True)
class FreeCourier:
    """A courier free at the decision minute, as a policy sees it."""

    courier: Courier
    x: float
    y: float
    delivered: int          # orders it has been given so far
    free_at: int = 0        # for ``coming`` couriers: when it can leave (x, y); else <= now


class Policy(Protocol):
    name: str

    def decide(self, now: int, orders: Sequence[Order], couriers: Sequence[FreeCourier]
               ) -> list[tuple[str, tuple[str, ...]]]:
        """(courier id, order ids in drop-off order) to dispatch now.

        A policy with ``sees_coming = True`` is called with ``coming=`` as well: the couriers
        not free now whose shift has not ended, with ``free_at`` the minute each is free
        (back from its trip, or its shift starting) and (x, y) where it will be then.
        """


@dataclass
class _State:
    courier: Courier
    place: str
    x: float
    y: float
    free_at: int
    delivered: int = 0


@dataclass
class Outcome:
    solution: Solution
    decision_steps: int
    seconds: float
    policy_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def simulate(instance: Instance, policy: Policy) -> Outcome:
    started = time.perf_counter()
    travel = TravelModel(instance.params.metres_per_minute)
    service = Service.of(instance.params)
    states = {c.id: _State(c, START, c.x, c.y, c.on_at) for c in instance.couriers}
    by_placement = sorted(instance.orders, key=lambda o: o.placed_at)
    rows: dict[str, OrderRow] = {}
    trips: list[Trip] = []
    moves: list[Move] = []
    waiting: dict[str, Order] = {}
    next_order = 0
    last_pickup_minute = max(c.off_at for c in instance.couriers)
    now = min(by_placement[0].placed_at, min(c.on_at for c in instance.couriers))
    steps = 0
    policy_s = 0.0

    def dispatch(courier_id: str, order_ids: tuple[str, ...]) -> None:
        s = states.get(courier_id)
        if s is None or not (s.courier.on_at <= now < s.courier.off_at and s.free_at <= now):
            raise PolicyError(f"{policy.name}: courier {courier_id} is not free at {now}")
        if not order_ids or len(set(order_ids)) != len(order_ids) or any(o not in waiting for o in order_ids):
            raise PolicyError(f"{policy.name}: orders {order_ids} are not all waiting at {now}")
        orders = [waiting[o] for o in order_ids]
        if len({o.restaurant for o in orders}) != 1:
            raise PolicyError(f"{policy.name}: bundle {order_ids} spans restaurants")
        restaurant = instance.restaurants[orders[0].restaurant]
        arrive = now
        if s.place != restaurant.id:
            moves.append(Move(courier_id, now, s.place, restaurant.id))
            arrive = now + travel.minutes((s.x, s.y), (restaurant.x, restaurant.y))
        pickup = max(arrive + service.pickup_before, max(o.ready_at for o in orders))
        if pickup > s.courier.off_at:
            raise PolicyError(f"{policy.name}: pickup {pickup} of {order_ids} after {courier_id}'s off time")
        trips.append(Trip(now, pickup, courier_id, order_ids))
        leave, place, x, y = pickup + service.pickup_after, restaurant.id, restaurant.x, restaurant.y
        for o in orders:
            moves.append(Move(courier_id, leave, place, o.id))
            drop = leave + travel.minutes((x, y), (o.x, o.y)) + service.dropoff_before
            rows[o.id] = OrderRow(o.id, pickup, drop, courier_id)
            leave, place, x, y = drop + service.dropoff_after, o.id, o.x, o.y
            del waiting[o.id]
        s.place, s.x, s.y, s.free_at = place, x, y, leave
        s.delivered += len(orders)

    while now <= last_pickup_minute:
        while next_order < len(by_placement) and by_placement[next_order].placed_at <= now:
            o = by_placement[next_order]
            waiting[o.id] = o
            next_order += 1
        if waiting:
            free = [FreeCourier(s.courier, s.x, s.y, s.delivered) for s in states.values()
                    if s.courier.on_at <= now < s.courier.off_at and s.free_at <= now]
            if free:
                steps += 1
                t0 = time.perf_counter()
                if getattr(policy, "sees_coming", False):
                    coming = [FreeCourier(s.courier, s.x, s.y, s.delivered, max(s.free_at, s.courier.on_at))
                              for s in states.values()
                              if now < s.courier.off_at and not (s.courier.on_at <= now and s.free_at <= now)]
                    decided = policy.decide(now, [waiting[k] for k in waiting], free, coming=coming)
                else:
                    decided = policy.decide(now, [waiting[k] for k in waiting], free)
                policy_s += time.perf_counter() - t0
                for courier_id, order_ids in decided:
                    dispatch(courier_id, tuple(order_ids))
            now += 1
        elif next_order < len(by_placement):
            now = by_placement[next_order].placed_at
        else:
            break
    solution = Solution(tuple(trips),
                        tuple(rows.get(o.id, OrderRow(o.id, None, None, None)) for o in instance.orders),
                        tuple(moves))
    return Outcome(solution, steps, time.perf_counter() - started, policy_s)
