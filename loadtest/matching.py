"""`wakala bench matching`: greedy nearest-first vs the batch solve vs batch with bundles.

A deterministic discrete-event simulation (no services, no wall clock): the same seeded
scenario (``loadtest.matching_scenario``: one order stream, one fleet, one hidden truth) is
replayed through each mode.

Modes (``simulate``)
  * greedy: an order is offered on arrival with ``assign_greedy`` (one job, every free
    driver); if no driver is eligible it stays pending, and every time a driver becomes free
    ``assign_greedy`` runs again over all pending orders in arrival order.
  * batch: orders and freed drivers accumulate; every ``window_s`` ``assign_batch`` solves
    pending × free (waiting so far weighted ``wait_weight``); unassigned orders stay pending.
  * bundle: batch, with the engine's bundling step in front of the solve, as the dispatcher
    runs it when drivers may carry more than one delivery (``capacity``): the window's
    pending orders go through ``bundle_policy.decide`` (per shop, orders going one way merge
    while a merge lowers click-to-door + lateness + courier time; the pickup lead is the
    shop's nearest free driver's ETA), and each unit - a bundle or a single - is one job of
    the solve, standing in for its deliveries by its first one (they share the pickup), as
    ``Dispatcher.dispatch_batch`` does. Orders here are ready when they arrive, so nothing is
    held for a partner still being prepared.
  A driver assigned at time t drives to the pickup (actual pickup time), then to each
  dropoff in the unit's order, and is available again at the last one. Every mode matches on
  the cost matrix calibrated by its own online ``EtaCalibration``.

Measured, per mode, over the orders that got a driver:
  * ``pickup ETA`` = wait for assignment (assigned at − arrived at; the batch window and
    waiting for a free eligible driver both count) + the *estimated* pickup ETA of the chosen
    pair (the cost-matrix entry, calibrated). Mean and p90, in seconds. A bundle's orders
    share their pickup.
  * the same with the *actual* pickup drive time instead of the estimate (``actual_pickup``),
    so an estimate that flatters one mode would show.
  * improvement = (greedy − mode) / greedy × 100, for the mean and the p90 pickup ETA.
  * click-to-door: arrival to leaving the door (the handover done), actual times. Bundling
    trades a later door for some customers (the stops before theirs) against a driver sooner
    for everyone; this shows which side wins.
ETA error, in the batch run, over every pickup and dropoff leg that started, of the arrival
estimate of three estimators learning online side by side from the legs that completed: the
prior, the per-res-7-cell ``EtaCalibration`` (the earlier model), and the learned
``geo.eta_model.EtaModel`` (the engine's). Per leg: mean absolute error, bias (actual −
estimate) and the share within 2 minutes; the top-level ``pickup_eta_*``/``dropoff_eta_*``
figures are the learned model's. Matching decisions still use the per-cell calibrated cost.

Orders that never get a driver count in ``orders`` but not in ``assigned``, and not in the
ETA figures. The pickup radius is fixed, as in the engine, so an order can be stranded (every
eligible driver ends out of reach), and under sustained overload (``offered_load`` > 1) pure
min-cost batching can starve far-away orders until ``DRAIN_LIMIT_S`` after the last arrival.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal

import numpy as np

from dispatch.matching.assignment import INFEASIBLE_S, assign_batch, assign_greedy, cost_matrix
from dispatch.matching.bundle_policy import Ready, decide
from dispatch.matching.ranking import AVAILABLE, Candidate, Job
from geo.distance import distance_m
from geo.eta import EtaCalibration, eta_seconds
from geo.eta_model import EtaModel, handover_increments, travel_increments
from loadtest.matching_scenario import TENANT, MatchingBench, Scenario, make_scenario

__all__ = ["DRAIN_LIMIT_S", "MODES", "MatchingBench", "Mode", "ModeOutcome", "Scenario",
           "make_scenario", "simulate"]

Mode = Literal["greedy", "batch", "bundle"]
MODES: tuple[Mode, ...] = ("greedy", "batch", "bundle")
# After the last arrival the run drains the backlog; this caps it if some order can never
# be served (e.g. cold storage needed and no such driver ever comes within reach).
DRAIN_LIMIT_S = 6 * 3600.0
# Event order at equal times: a driver freed at t can take an order arriving at t, and a
# window at t sees both.
_FREE, _PICKED_UP, _ARRIVAL, _WINDOW = 0, 1, 2, 3
# A bundle is never held for a partner here (orders are ready on arrival).
_NO_HOLD_S = 0.0


@dataclass
class ModeOutcome:
    mode: Mode
    orders: int
    assigned_at_s: list[float | None]  # per order
    driver_of: list[str | None]  # per order
    est_pickup_s: list[float | None]  # cost-matrix pickup ETA of the chosen pair
    actual_pickup_s: list[float | None]
    delivered_at_s: list[float | None] = field(default_factory=list)  # per order: left the door
    max_pending: int = 0
    assignments: list[tuple[int, str, float]] = field(default_factory=list)  # order, driver, t
    units: list[int] = field(default_factory=list)  # deliveries per assignment (bundle sizes)
    free_at_end: list[Candidate] = field(default_factory=list)  # to tell stranded from starved
    # Per leg started: (uncalibrated estimate, calibrated estimate, actual), seconds.
    legs: list[tuple[float, float, float]] = field(default_factory=list)
    # Per leg started, arrival ETAs: (0 pickup | 1 dropoff, prior, per-cell calibration,
    # learned model, actual), seconds.
    eta_legs: list[tuple[int, float, float, float, float]] = field(default_factory=list)


def simulate(bench: MatchingBench, scenario: Scenario, mode: Mode) -> ModeOutcome:
    """Replay ``scenario`` with one matching mode; see the module docstring."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    orders, fleet, truth = scenario.orders, scenario.fleet, scenario.truth
    n = len(orders)
    out = ModeOutcome(mode, n, [None] * n, [None] * n, [None] * n, [None] * n, [None] * n)
    cal = EtaCalibration()
    cells: dict[tuple[float, float], str] = {}

    def cell(lat: float, lng: float) -> str:
        c = cells.get((lat, lng))
        if c is None:
            c = cells[(lat, lng)] = EtaCalibration.cell_for(lat, lng)
        return c

    def at(t: float) -> datetime:
        return bench.start + timedelta(seconds=t)

    index = {d.driver_id: i for i, d in enumerate(fleet)}
    free: dict[int, Candidate] = {
        i: Candidate(d.driver_id, d.lat, d.lng, d.vehicle_type, d.has_cold_storage, AVAILABLE,
                     TENANT, 0) for i, d in enumerate(fleet)}
    pending: list[int] = []  # order indices, arrival order
    events: list[tuple[float, int, int, int]] = []  # (time, kind, seq, payload)
    seq = 0

    def push(t: float, kind: int, payload: int) -> None:
        nonlocal seq
        heapq.heappush(events, (t, kind, seq, payload))
        seq += 1

    # In-flight legs, to observe on completion: driver -> (order, prior estimate, actual
    # travel, start point, start time, handover after the arrival); and the orders each
    # driver still has to drop after its current leg, in sequence.
    in_flight: dict[int, tuple[int, float, float, tuple[float, float], float, float]] = {}
    route: dict[int, list[int]] = {}
    model = EtaModel()   # the learned model, online from completed legs as the engine does

    def leg_truth(i: int, d: int, start: tuple[float, float], end: tuple[float, float],
                  raw: float, pickup: bool) -> tuple[float, float]:
        """(actual travel seconds, handover seconds after it) of one leg."""
        o, factor = orders[i], truth.factor(cell(*end))
        if bench.truth == "model":
            return raw * factor * (o.pickup_noise if pickup else o.dropoff_noise), 0.0
        circuity = o.pickup_circuity if pickup else o.dropoff_circuity
        travel = distance_m(*start, *end) * circuity / fleet[d].speed_mps * factor
        return travel, (o.shop_s if pickup else o.door_s)

    def start_leg(t: float, i: int, d: int, start: tuple[float, float], end: tuple[float, float],
                  raw: float, calibrated: float, pickup: bool, handover: float | None = None) -> float:
        actual, own_handover = leg_truth(i, d, start, end, raw, pickup)
        learned = model.travel_s(distance_m(*start, *end), fleet[d].vehicle_type, at(t), end)
        out.legs.append((raw, calibrated, actual))
        out.eta_legs.append((0 if pickup else 1, raw, calibrated, learned, actual))
        in_flight[d] = (i, raw, actual, start, t, own_handover if handover is None else handover)
        push(t + actual + in_flight[d][5], _PICKED_UP if pickup else _FREE, d)
        return actual

    def drop_next(t: float, d: int, start: tuple[float, float]) -> None:
        i = route[d].pop(0)
        job = orders[i].job
        dropoff = (job.dropoff_lat, job.dropoff_lng)
        raw = eta_seconds(distance_m(*start, *dropoff), fleet[d].vehicle_type, at(t))
        start_leg(t, i, d, start, dropoff, raw, raw * cal.factor(cell(*dropoff)), pickup=False)

    def learn(d: int, end: tuple[float, float], kind: str) -> int:
        i, raw, actual, start, t0, handover = in_flight.pop(d)
        cal.observe(cell(*end), raw, actual)
        model.add(travel_increments(start, end, fleet[d].vehicle_type, at(t0), actual))
        if bench.truth == "city":
            model.add(handover_increments(kind, handover))
        return i

    def give(t: float, units: Sequence[tuple[int, ...]],
             assignments: Sequence[tuple[int, str, float]]) -> None:
        taken: set[int] = set()
        for unit_index, driver_id, cost_s in assignments:
            unit, d = units[unit_index], index[driver_id]
            job, cand = orders[unit[0]].job, free.pop(d)
            raw = cost_s / cal.factor(cell(job.pickup_lat, job.pickup_lng))
            # One counter wait for the whole bundle: the longest of its orders'.
            actual = start_leg(t, unit[0], d, (cand.lat, cand.lng), (job.pickup_lat, job.pickup_lng),
                               raw, cost_s, pickup=True,
                               handover=max(orders[i].shop_s for i in unit) if bench.truth == "city" else None)
            for i in unit:
                out.assigned_at_s[i], out.driver_of[i] = t, cand.driver_id
                out.est_pickup_s[i], out.actual_pickup_s[i] = cost_s, actual
                out.assignments.append((i, cand.driver_id, t))
            out.units.append(len(unit))
            route[d] = list(unit)
            taken.update(unit)
        if taken:
            pending[:] = [i for i in pending if i not in taken]

    def bundled(t: float, jobs: list[int], cands: list[Candidate]) -> list[tuple[int, ...]]:
        """The engine's bundling step over the window's pending orders: units to solve."""
        costs = cost_matrix([orders[i].job for i in jobs], cands, at=at(t), calibration=cal)
        feasible = np.where(costs < INFEASIBLE_S, costs, np.inf).min(axis=1)
        lead: dict[str, float] = {}
        for i, best in zip(jobs, feasible.tolist(), strict=True):
            if best != np.inf:
                lead[orders[i].vendor] = min(lead.get(orders[i].vendor, np.inf), best)
        ready = [Ready(str(i), orders[i].vendor, (orders[i].job.pickup_lat, orders[i].job.pickup_lng),
                       (orders[i].job.dropoff_lat, orders[i].job.dropoff_lng), orders[i].arrival_s,
                       orders[i].arrival_s) for i in jobs]
        decision = decide(ready, [], now_s=t, at=at(t), lead_s=lead, capacity=bench.capacity,
                          max_hold_s=_NO_HOLD_S, drivers=len(cands))
        units = [tuple(int(x) for x in b.delivery_ids) for b in decision.bundles]
        units += [(int(x),) for x in decision.singles]
        return sorted(units, key=min)

    def unit_job(unit: tuple[int, ...]) -> Job:
        first = orders[unit[0]].job
        cold = any(orders[i].job.needs_cold_storage for i in unit)
        return first if cold == first.needs_cold_storage else replace(first, needs_cold_storage=cold)

    def match(t: float, jobs: list[int]) -> int:
        if not jobs or not free:
            return 0
        cands = list(free.values())
        units = bundled(t, jobs, cands) if mode == "bundle" and bench.capacity > 1 else [(i,) for i in jobs]
        if mode == "greedy":
            found = assign_greedy([orders[i].job for i in jobs], cands, at=at(t), calibration=cal)
        else:
            found = assign_batch([unit_job(u) for u in units], cands, at=at(t), calibration=cal,
                                 waited_s=[t - min(orders[i].arrival_s for i in u) for u in units],
                                 wait_weight=bench.wait_weight)
        give(t, units, found)
        return len(found)

    for i, o in enumerate(orders):
        push(o.arrival_s, _ARRIVAL, i)
    last_arrival_s = orders[-1].arrival_s if orders else 0.0
    if mode != "greedy":
        push(bench.window_s, _WINDOW, 0)
    arrived = 0
    while events:
        t, kind, _, payload = heapq.heappop(events)
        if t > last_arrival_s + DRAIN_LIMIT_S:
            break
        if kind == _ARRIVAL:
            arrived += 1
            pending.append(payload)
            out.max_pending = max(out.max_pending, len(pending))
            if mode == "greedy":
                match(t, [payload])
        elif kind == _PICKED_UP:
            d = payload
            job = orders[in_flight[d][0]].job
            pickup = (job.pickup_lat, job.pickup_lng)
            learn(d, pickup, "shop")
            drop_next(t, d, pickup)
        elif kind == _FREE:   # at a door: the next stop, or free there
            d = payload
            job = orders[in_flight[d][0]].job
            door = (job.dropoff_lat, job.dropoff_lng)
            out.delivered_at_s[learn(d, door, "door")] = t
            if route[d]:
                drop_next(t, d, door)
                continue
            free[d] = Candidate(fleet[d].driver_id, *door, fleet[d].vehicle_type,
                                fleet[d].has_cold_storage, AVAILABLE, TENANT, 0)
            if mode == "greedy":
                match(t, list(pending))
        else:  # _WINDOW
            matched = match(t, list(pending))
            # Stop when nothing can change any more: all arrived, and either nothing is
            # pending or nobody is on the road and this window matched no one.
            if arrived < n or (pending and (in_flight or matched)):
                push(t + bench.window_s, _WINDOW, 0)
    out.free_at_end = list(free.values())
    return out
