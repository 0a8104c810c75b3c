"""The decision rules `wakala bench mdrp` compares, each the engine's own code.

``greedy`` and ``batch`` are the engine's dispatcher as it is (``dispatch.matching``):

* A delivery opens when the vendor marks the order ready (``dispatch.deliveries.handoff``),
  so an order becomes a job at its ready time, and jobs arrive in ready-time order.
* One order per courier (``dispatch.deliveries.store.DEFAULT_CAPACITY`` is 1).
* Eligibility is ``dispatch.matching.ranking.feasibility``: the courier is available, and
  not among the job's excluded drivers. A courier who could not hand over before its shift
  ends would decline the offer (the offer rules move on to the next candidate), so it is
  excluded up front. No pickup radius: the set has none (the engine's is the vendor's
  delivery radius). Coordinates reach ``feasibility`` through a flat projection at the
  equator (metres / 111,320 per degree); only its mask is used.
* The pickup cost is where the engine uses its ETA model (``dispatch.matching.assignment``):
  here the set's travel time to the restaurant plus the pickup's before-service (the
  engine's parking overhead), injected through ``solve_greedy`` / ``solve_batch``, the
  solves ``assign_greedy`` / ``assign_batch`` run on their own ETA matrix.
* ``greedy``: the waiting jobs in arrival order each take the free courier with the least
  pickup time (``solve_greedy``); what per-order dispatch with immediate accepts does.
  ``batch``: the engine's batch mode, every window the waiting jobs are solved together
  (``solve_batch``, waited time weighted 1:1). The engine's default window is 2 s
  (``WAKALA_BATCH_WINDOW_MS=2000``); on the set's one-minute clock every window falls inside
  the minute its orders arrive, so batch solves once per minute.
  Couriers accept every offer (the set has no declines).

``bundle`` is ``dispatch.matching.bundles.plan``: orders are visible from their placement
with their announced ready times, bundled per restaurant, and sent when a courier leaving
now would reach the counter as the food is ready. It is also shown the couriers still to
come (busy ones with when and where their trip ends, ones whose shift has not started): a
dispatcher knows both, from the trips it assigned and the shift schedule. ``plan`` uses them
to send first the bundles no later courier could reach, and to go oldest first once the day
cannot carry every waiting order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from dispatch.matching.assignment import INFEASIBLE_S, solve_batch, solve_greedy
from dispatch.matching.bundles import BundleCourier, BundleOrder, BundleRules, Stops, plan
from dispatch.matching.ranking import AVAILABLE, Candidate, Job, feasibility
from loadtest.mdrp.instance import Instance, Order
from loadtest.mdrp.sim import FreeCourier
from loadtest.mdrp.travel import Service, TravelModel

__all__ = ["POLICIES", "BundlePolicy", "EnginePolicy", "make_policy"]

POLICIES = ("greedy", "batch", "bundle")
TENANT = "mdrp"
DEGREE_M = 111_320.0


def _job(instance: Instance, o: Order) -> Job:
    r = instance.restaurants[o.restaurant]
    return Job(TENANT, r.y / DEGREE_M, r.x / DEGREE_M, o.y / DEGREE_M, o.x / DEGREE_M, None, False, math.inf)


def _candidate(c: FreeCourier) -> Candidate:
    return Candidate(c.courier.id, c.y / DEGREE_M, c.x / DEGREE_M, "motorbike", False, AVAILABLE, TENANT, 0)


class EnginePolicy:
    """``greedy`` or ``batch``: see the module docstring."""

    def __init__(self, instance: Instance, mode: str) -> None:
        if mode not in ("greedy", "batch"):
            raise ValueError(f"mode must be greedy or batch, got {mode!r}")
        self.name, self.instance = mode, instance
        self.travel = TravelModel(instance.params.metres_per_minute)
        self.service = Service.of(instance.params)
        self.rank_of = {o.id: k for k, o in enumerate(instance.orders)}

    def decide(self, now: int, orders: Sequence[Order], couriers: Sequence[FreeCourier]
               ) -> list[tuple[str, tuple[str, ...]]]:
        jobs = sorted((o for o in orders if o.ready_at <= now),
                      key=lambda o: (o.ready_at, o.placed_at, self.rank_of[o.id]))
        if not jobs or not couriers:
            return []
        rest = [self.instance.restaurants[o.restaurant] for o in jobs]
        costs: NDArray[np.float64] = self.travel.matrix(
            np.array([r.x for r in rest]), np.array([r.y for r in rest]),
            np.array([c.x for c in couriers]), np.array([c.y for c in couriers])) + self.service.pickup_before
        off = np.array([c.courier.off_at for c in couriers])
        late = now + costs > off[None, :]        # would hand over after the shift: declines
        ids = [c.courier.id for c in couriers]
        excludes = [[ids[j] for j in np.flatnonzero(row).tolist()] for row in late]
        mask = feasibility([_job(self.instance, o) for o in jobs], [_candidate(c) for c in couriers],
                           excludes=excludes).feasible
        if self.name == "greedy":
            found = solve_greedy(costs, mask, ids)
        else:
            found = solve_batch(costs, mask, ids, infeasible=INFEASIBLE_S,
                                waited_s=[float(now - o.ready_at) for o in jobs], wait_weight=1.0)
        return [(a.driver_id, (jobs[a.job_index].id,)) for a in found]


class BundlePolicy:
    """``bundle``: ``dispatch.matching.bundles.plan`` with the set's travel model and pay."""

    name = "bundle"
    sees_coming = True

    def __init__(self, instance: Instance, rules: BundleRules | None = None) -> None:
        p = instance.params
        self.instance = instance
        self.rules = rules or BundleRules(target_min=p.target_click_to_door_min)
        self.travel = TravelModel(p.metres_per_minute)
        s = Service.of(p)
        self.stops = Stops(s.pickup_before, s.pickup_after, s.dropoff_before, s.dropoff_after)
        # Orders each courier's guaranteed pay covers: beyond them every order costs its pay.
        self.covered = {c.id: ((c.off_at - c.on_at) / 60.0 * p.guaranteed_pay_per_hour / p.pay_per_order
                               if p.pay_per_order > 0 else math.inf) for c in instance.couriers}

    def _matrix(self, a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> NDArray[np.float64]:
        pa, pb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        return self.travel.matrix(pa[:, 0], pa[:, 1], pb[:, 0], pb[:, 1])

    def _courier(self, c: FreeCourier) -> BundleCourier:
        return BundleCourier(c.courier.id, (c.x, c.y), c.courier.off_at, self.covered[c.courier.id] - c.delivered,
                             c.free_at)

    def decide(self, now: int, orders: Sequence[Order], couriers: Sequence[FreeCourier],
               coming: Sequence[FreeCourier] | None = None) -> list[tuple[str, tuple[str, ...]]]:
        rs = self.instance.restaurants
        found = plan(
            now,
            [BundleOrder(o.id, o.restaurant, (rs[o.restaurant].x, rs[o.restaurant].y), (o.x, o.y),
                         o.placed_at, o.ready_at) for o in orders],
            [self._courier(c) for c in couriers],
            travel=self._matrix, stops=self.stops, rules=self.rules,
            coming=None if coming is None else [self._courier(c) for c in coming])
        return [(d.courier_id, d.order_ids) for d in found]


def make_policy(name: str, instance: Instance) -> EnginePolicy | BundlePolicy:
    if name == "bundle":
        return BundlePolicy(instance)
    return EnginePolicy(instance, name)
