"""The engine's bundling decision for one batch window: bundle, send alone, or hold. Pure.

The dispatcher (batch mode) hands over the window's ready deliveries, the orders of the same
vendors that are about to be ready (accepted, with an expected ready time), the pickup lead
time of each vendor's nearest driver and the clock; ``decide`` answers with the bundles to
offer now (deliveries in drop-off order, with each door's seconds from the pickup), the
deliveries to offer alone, and the deliveries to hold for a partner. No I/O, no clock.

The grouping and its price are ``dispatch.matching.bundles`` (the MDRP benchmark's rules,
unchanged): per vendor, orders merge while a merge lowers ``Σ click-to-door + lateness past
the target + courier time`` and every door lies in a similar direction from the vendor. Here
its planar points are metres east and north of the vendor and its travel times the engine's
ETA model (``geo.eta``: vehicle speed at this hour, circuity, parking), in minutes.

Wait or send, a rolling horizon over the batch window. An upcoming order (expected ready
within ``max_hold_s``) takes part in the grouping as an order whose food is not ready yet.
When a ready delivery lands in a group with one, merging priced waiting for its food
against a second courier trip and found waiting cheaper, so the delivery is *held* (not
offered) until the partner's expected ready time, but never longer than ``max_hold_s`` after
it became ready itself. Each window decides again with what it knows then: the partner's
delivery arriving (the vendor marked it ready) brings the held one back into a window, and a
hold that runs out sends it with the ready deliveries only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import numpy as np
from numpy.typing import NDArray

from dispatch.matching.bundles import BundleOrder, BundleRules, Planned, Stops, form_bundles
from dispatch.matching.stops import HANDOVER_S
from geo.eta import etas_seconds

__all__ = ["DEFAULT_RULES", "HANDOVER_S", "BundlePlan", "Decision", "Ready", "Upcoming", "decide"]

DEFAULT_RULES = BundleRules(target_min=45.0, max_size=3, max_angle_deg=60.0)
_M_PER_DEG_LAT = 110_574.0
_M_PER_DEG_LNG = 111_320.0


@dataclass(frozen=True, slots=True)
class Ready:
    """A pending delivery of the window (its order is ready)."""

    delivery_id: str
    vendor_id: str
    pickup: tuple[float, float]    # (lat, lng)
    dropoff: tuple[float, float]
    placed_s: float                # epoch seconds: the order was placed
    ready_s: float                 # epoch seconds: the order was marked ready (delivery created)


@dataclass(frozen=True, slots=True)
class Upcoming:
    """An order of the same vendor still being prepared, with its expected ready time."""

    order_id: str
    vendor_id: str
    pickup: tuple[float, float]
    dropoff: tuple[float, float]
    placed_s: float
    expected_ready_s: float


@dataclass(frozen=True, slots=True)
class BundlePlan:
    delivery_ids: tuple[str, ...]      # drop-off order
    dropoff_etas_s: tuple[int, ...]    # from the pickup to each door, through the stops before


@dataclass(frozen=True, slots=True)
class Decision:
    bundles: tuple[BundlePlan, ...]
    singles: tuple[str, ...]
    held: Mapping[str, float]          # delivery id -> epoch seconds to decide again


def _planar(origin: tuple[float, float], point: tuple[float, float]) -> tuple[float, float]:
    """Metres (east, north) of ``point`` from ``origin``: flat enough within a delivery radius."""
    return ((point[1] - origin[1]) * _M_PER_DEG_LNG * math.cos(math.radians(origin[0])),
            (point[0] - origin[0]) * _M_PER_DEG_LAT)


def _travel(vehicle: str, at: datetime):
    def travel(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> NDArray[np.float64]:
        pa, pb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        metres = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(axis=2))
        return etas_seconds(metres, vehicle, at) / 60.0
    return travel


def decide(ready: Sequence[Ready], upcoming: Sequence[Upcoming], *, now_s: float, at: datetime,
           lead_s: Mapping[str, float], capacity: int, max_hold_s: float, drivers: int = 1,
           vehicle: str = "motorbike", rules: BundleRules = DEFAULT_RULES,
           handover_s: float = HANDOVER_S) -> Decision:
    """Bundle, send alone or hold each ready delivery (see the module docstring).

    ``lead_s``: per vendor, seconds until its nearest driver could be at the counter (a vendor
    missing from it has no driver now: its deliveries go alone, to wait for one as usual).
    ``capacity``: deliveries a driver may carry; below 2 nothing is bundled or held.
    ``drivers``: drivers available to the window. With ``rules.scarcity`` (as in
    ``bundles.plan``) a courier-minute weighs more when deliveries outnumber drivers: a
    delivery sent alone then waits for a driver to come back, which bundling saves.
    """
    if not (max_hold_s >= 0 and math.isfinite(max_hold_s)):
        raise ValueError(f"max_hold_s must be a non-negative number of seconds, got {max_hold_s}")
    size = min(rules.max_size, capacity)
    if size < 2:
        return Decision((), tuple(r.delivery_id for r in ready), {})
    rules = replace(rules, max_size=size)
    if rules.scarcity and len(ready) > max(drivers, 1):
        rules = replace(rules, courier_weight=rules.courier_weight * len(ready) / max(drivers, 1))
    stops = Stops(0.0, 0.0, 0.0, handover_s / 60.0)
    travel = _travel(vehicle, at)
    bundles: list[BundlePlan] = []
    singles: list[str] = []
    held: dict[str, float] = {}
    by_vendor: dict[str, list[Ready]] = {}
    for r in ready:
        by_vendor.setdefault(r.vendor_id, []).append(r)
    for vendor, rs in by_vendor.items():
        if vendor not in lead_s or (len(rs) < 2 and not upcoming):
            singles += [r.delivery_id for r in rs]
            continue
        origin = rs[0].pickup
        soon = [u for u in upcoming if u.vendor_id == vendor and u.expected_ready_s - now_s <= max_hold_s]
        orders = [BundleOrder(r.delivery_id, vendor, (0.0, 0.0), _planar(origin, r.dropoff),
                              (r.placed_s - now_s) / 60.0, (r.ready_s - now_s) / 60.0) for r in rs]
        orders += [BundleOrder(f"upcoming:{u.order_id}", vendor, (0.0, 0.0), _planar(origin, u.dropoff),
                               (u.placed_s - now_s) / 60.0, max(u.expected_ready_s - now_s, 0.0) / 60.0)
                   for u in soon]
        lead = max(lead_s[vendor], 0.0) / 60.0
        if soon:   # first with the partners to come: who waits for one
            for g in form_bundles(orders, now=0.0, lead_travel=lead, travel=travel, stops=stops, rules=rules):
                if all(not o.order_id.startswith("upcoming:") for o in g.orders):
                    continue
                for o in g.orders:
                    r = next((x for x in rs if x.delivery_id == o.order_id), None)
                    if r is not None and (until := min(now_s + g.ready_at * 60.0, r.ready_s + max_hold_s)) > now_s:
                        held[r.delivery_id] = until
        # then what is ready and not held (a hold that ran out included): bundled or alone, now
        now_ready = [o for o in orders if not o.order_id.startswith("upcoming:") and o.order_id not in held]
        for g in form_bundles(now_ready, now=0.0, lead_travel=lead, travel=travel, stops=stops, rules=rules):
            _place(g, bundles, singles)
    return Decision(tuple(bundles), tuple(singles), held)


def _place(group: Planned, bundles: list[BundlePlan], singles: list[str]) -> None:
    if len(group.orders) == 1:
        singles.append(group.orders[0].order_id)
    else:
        bundles.append(BundlePlan(tuple(o.order_id for o in group.orders),
                                  tuple(round(off * 60.0) for off in group.drop_offsets)))
