"""Bundling one restaurant's orders and deciding when to send them: a rolling horizon. Pure.

Called every decision step (a minute in ``loadtest.mdrp``; the batch window in an engine)
with the orders placed and not yet assigned - their ready times as the restaurant announced
them - and the couriers free now. It returns the dispatches to make *now*; everything else
is decided again at the next step with what is known then. No clock, no I/O: travel times
come from the caller's ``travel`` (a matrix of minutes between points), so the same rules
run on the benchmark's planar model or the engine's calibrated ETAs.

Three steps:

1. **Bundles** (``form_bundles``). Per restaurant, orders start alone and the pair of
   bundles whose merge saves the most cost is merged, while one saves anything, up to
   ``max_size`` orders, and only when every dropoff of the result lies within
   ``max_angle_deg`` of the others as seen from the restaurant (a similar direction: the
   detour test alone would let two short trips in opposite directions merge). The cost of
   a bundle (``BundleRules``) is, in minutes:
   ``Σ click-to-door + lateness_weight · Σ minutes past target + courier_weight · courier
   minutes``, its pickup at max(its last ready time, the nearest free courier's arrival), its
   dropoff order the best of all orders (bundles are small). Merging makes the early orders
   wait for the last one's food and takes the later ones on a detour; it saves a courier
   trip. That trade is the "is waiting for a bundle worth it" decision, priced.
2. **Assignment**: bundles × free couriers, each pair priced with that courier's own arrival
   (and waiting, if it would wait at the counter) plus ``pay_weight`` minutes per order it
   would be paid beyond the pay it is already guaranteed. Solved with the engine's batch
   solver (``dispatch.matching.assignment.solve_batch``: the most bundles matched, then the
   least total cost). A pair is infeasible when the pickup would fall after the courier's
   shift ends.
3. **When** (the rolling horizon): a matched pair is sent now only if the courier, leaving
   now, would reach the counter no earlier than ``commit_slack_min`` before the food is
   ready. Otherwise sending now gains nothing - the food is not ready - and holding keeps
   the courier free for something else and lets later orders join the bundle; the pair is
   re-decided next step.

Who goes first when not every bundle can go (only with ``plan``'s ``coming``: the couriers
not free now, with when and where each will be). The costs above prefer short trips when
couriers are scarce (the courier weight grows with waiting orders per free courier). That
is right while every order will still be carried, but on a day that ends overloaded a far
order is then overtaken until the last shift ends, and lost, while newer near ones are
delivered. Two rules, both solved before the rest with older bundles first (one minute of
age outweighs any difference of cost):

* a *critical* bundle - one no coming courier could pick up before its shift ends - has
  only the couriers free now: it is matched first, so they are not all sent elsewhere;
* when the couriers left in the day could not carry every waiting bundle, oldest first
  (``_short``: each bundle in age order takes the courier that would pick it up first, a
  courier staying where it is between trips), every bundle is matched oldest first: the
  orders the day cannot carry are then the newest, not the farthest.

Without ``coming`` neither rule applies (nothing is known of later couriers).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from dispatch.matching.assignment import solve_batch

__all__ = [
    "BundleCourier",
    "BundleOrder",
    "BundleRules",
    "Dispatch",
    "Planned",
    "Stops",
    "form_bundles",
    "plan",
]

Point = tuple[float, float]
# Minutes from each origin (rows) to each destination (columns).
TravelMatrix = Callable[[Sequence[Point], Sequence[Point]], NDArray[np.float64]]


@dataclass(frozen=True, slots=True)
class BundleOrder:
    order_id: str
    restaurant_id: str
    pickup: Point
    dropoff: Point
    placed_at: float      # minutes, on the caller's clock
    ready_at: float


@dataclass(frozen=True, slots=True)
class BundleCourier:
    courier_id: str
    position: Point
    off_at: float                       # the last minute it may pick up
    covered_orders: float = math.inf    # more orders its guaranteed pay already covers
    free_at: float = -math.inf          # when it can leave ``position`` (``plan``'s ``coming``)


@dataclass(frozen=True, slots=True)
class Stops:
    """Service minutes before and after the hand-over, at the pickup and at each dropoff."""

    pickup_before: float
    pickup_after: float
    dropoff_before: float
    dropoff_after: float


@dataclass(frozen=True, slots=True)
class BundleRules:
    target_min: float = 40.0          # click-to-door target
    lateness_weight: float = 1.0      # extra weight of each minute past the target
    # ... and of its square (per 10 minutes): the later an order already is, the more its
    # next minute costs, so the oldest are served first when couriers are short (FIFO-like).
    lateness_square_weight: float = 0.5
    courier_weight: float = 0.5       # customer-minutes one courier-minute is worth
    pay_weight: float = 10.0          # minutes one order paid beyond the guarantee is worth
    max_size: int = 3
    max_angle_deg: float = 60.0
    commit_slack_min: float = 0.0
    postpone_min: float = 10.0        # how long a bundle left unmatched is assumed to wait
    scarcity: bool = True             # courier_weight × waiting orders per free courier (≥ 1)

    def __post_init__(self) -> None:
        for name in ("target_min", "lateness_weight", "lateness_square_weight", "courier_weight", "pay_weight", "max_angle_deg",
                     "commit_slack_min", "postpone_min"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a non-negative number, got {value}")
        if not 1 <= self.max_size <= 5:
            raise ValueError(f"max_size must be 1 to 5 (every drop-off order is tried), got {self.max_size}")


@dataclass(frozen=True, slots=True)
class Planned:
    """A bundle as ``form_bundles`` leaves it: orders in drop-off order and its route shape."""

    orders: tuple[BundleOrder, ...]
    ready_at: float                   # the last ready time: the earliest pickup
    drop_offsets: tuple[float, ...]   # minutes from the hand-over at the restaurant to each hand-over
    busy_after_pickup: float          # minutes from the pickup hand-over until the courier is free

    def customer_cost_at(self, pickup_at: float, rules: BundleRules) -> float:
        """``customer_cost`` for one pickup minute, in plain floats (the hot path of bundling)."""
        total = 0.0
        for o, off in zip(self.orders, self.drop_offsets, strict=True):
            ctd = pickup_at + off - o.placed_at
            over = ctd - rules.target_min if ctd > rules.target_min else 0.0
            total += ctd + rules.lateness_weight * over + rules.lateness_square_weight * over * over / 10.0
        return total

    def customer_cost(self, pickup_at: NDArray[np.float64] | float, rules: BundleRules) -> NDArray[np.float64]:
        """Σ click-to-door + lateness terms of the bundle's orders, for each pickup minute given."""
        pickup = np.asarray(pickup_at, dtype=np.float64)
        total = np.zeros_like(pickup)
        for o, off in zip(self.orders, self.drop_offsets, strict=True):
            ctd = pickup + off - o.placed_at
            over = np.maximum(ctd - rules.target_min, 0.0)
            total = total + ctd + rules.lateness_weight * over + rules.lateness_square_weight * over * over / 10.0
        return total


@dataclass(frozen=True, slots=True)
class Dispatch:
    courier_id: str
    order_ids: tuple[str, ...]        # drop-off order
    pickup_at: float                  # planned hand-over at the restaurant
    cost: float


def _shape(orders: Sequence[BundleOrder], index: dict[str, int], legs: NDArray[np.float64],
           stops: Stops) -> tuple[tuple[float, ...], float]:
    """Offsets of each drop from the pickup hand-over, and when the courier is free."""
    t = stops.pickup_after
    at = 0   # row 0 of legs is the restaurant
    offsets = []
    for o in orders:
        k = index[o.order_id]
        t += legs[at, k] + stops.dropoff_before
        offsets.append(t)
        t += stops.dropoff_after
        at = k
    return tuple(offsets), t


def _best(orders: Sequence[BundleOrder], lead_at: float, lead_travel: float, index: dict[str, int],
          legs: NDArray[np.float64], stops: Stops, rules: BundleRules) -> tuple[Planned, float]:
    """The cheapest drop-off order of a set of orders, and its cost with the nearest courier."""
    ready = max(o.ready_at for o in orders)
    pickup = max(lead_at, ready)
    best: tuple[Planned, float] | None = None
    for seq in itertools.permutations(orders):
        offsets, busy = _shape(seq, index, legs, stops)
        planned = Planned(tuple(seq), ready, offsets, busy)
        cost = planned.customer_cost_at(pickup, rules) + rules.courier_weight * (lead_travel + busy)
        if best is None or cost < best[1]:
            best = (planned, cost)
    assert best is not None
    return best


def _spread_ok(angles: Sequence[float], limit_deg: float) -> bool:
    """Whether the directions fit in an arc of ``limit_deg`` degrees."""
    if len(angles) < 2:
        return True
    a = sorted(x % 360.0 for x in angles)
    gaps = [a[i + 1] - a[i] for i in range(len(a) - 1)] + [a[0] + 360.0 - a[-1]]
    return 360.0 - max(gaps) <= limit_deg


def form_bundles(orders: Sequence[BundleOrder], *, now: float, lead_travel: float, travel: TravelMatrix,
                 stops: Stops, rules: BundleRules) -> list[Planned]:
    """Partition one restaurant's orders into bundles (see the module docstring, step 1).

    ``lead_travel``: minutes from now until the nearest free courier could hand over at the
    counter (its travel and the pickup's before-service).
    """
    if not orders:
        return []
    if len({o.restaurant_id for o in orders}) != 1:
        raise ValueError("form_bundles takes the orders of one restaurant")
    restaurant = orders[0].pickup
    points = [restaurant] + [o.dropoff for o in orders]
    legs = np.asarray(travel(points, points), dtype=np.float64)
    index = {o.order_id: k + 1 for k, o in enumerate(orders)}
    angle = {o.order_id: math.degrees(math.atan2(o.dropoff[1] - restaurant[1], o.dropoff[0] - restaurant[0]))
             for o in orders}
    lead_at = now + lead_travel
    groups = [_best([o], lead_at, lead_travel, index, legs, stops, rules) for o in orders]
    while len(groups) > 1 and rules.max_size > 1:
        best_saving, best_pair, best_merged = 0.0, None, None
        for i, j in itertools.combinations(range(len(groups)), 2):
            together = groups[i][0].orders + groups[j][0].orders
            if len(together) > rules.max_size:
                continue
            if not _spread_ok([angle[o.order_id] for o in together], rules.max_angle_deg):
                continue
            merged = _best(together, lead_at, lead_travel, index, legs, stops, rules)
            saving = groups[i][1] + groups[j][1] - merged[1]
            if saving > best_saving + 1e-9:
                best_saving, best_pair, best_merged = saving, (i, j), merged
        if best_pair is None or best_merged is None:
            break
        i, j = best_pair
        groups = [g for k, g in enumerate(groups) if k not in (i, j)] + [best_merged]
    return [g[0] for g in groups]


def _critical(bundles: Sequence[tuple[int, Planned]], restaurants: Sequence[Point], coming: Sequence[BundleCourier],
              travel: TravelMatrix, stops: Stops) -> NDArray[np.bool_]:
    """Per bundle: whether no courier of ``coming`` could ever pick it up before its shift ends.

    Such a bundle has only the couriers free now; once they are sent elsewhere it is lost.
    """
    out = np.ones(len(bundles), dtype=np.bool_)
    if not coming or not bundles:
        return out
    to_counter = np.asarray(travel([c.position for c in coming], list(restaurants)), dtype=np.float64)
    handover = np.array([c.free_at for c in coming], dtype=np.float64)[:, None] + to_counter + stops.pickup_before
    off = np.array([c.off_at for c in coming], dtype=np.float64)
    for i, (k, b) in enumerate(bundles):
        out[i] = not bool((np.maximum(handover[:, k], b.ready_at) <= off).any())
    return out


def _short(now: float, bundles: Sequence[tuple[int, Planned]], restaurants: Sequence[Point],
           couriers: Sequence[BundleCourier], coming: Sequence[BundleCourier], to_counter: NDArray[np.float64],
           travel: TravelMatrix, stops: Stops) -> bool:
    """Whether the couriers left in the day could not carry every waiting bundle, oldest first.

    Each bundle in age order takes the courier (free now, or of ``coming``) that would pick
    it up first, which is then busy until that trip ends; a courier keeps its position (where
    a trip ends is not known before it is chosen). A bundle no courier could pick up before
    its shift ends means some waiting orders will not be delivered.
    """
    avail = np.array([now] * len(couriers) + [c.free_at for c in coming], dtype=np.float64)
    off = np.array([c.off_at for c in (*couriers, *coming)], dtype=np.float64)
    reach = to_counter
    if coming:
        later = np.asarray(travel([c.position for c in coming], list(restaurants)), dtype=np.float64)
        reach = np.vstack([to_counter, later + stops.pickup_before])
    for k, b in sorted(bundles, key=lambda kb: min(o.placed_at for o in kb[1].orders)):
        pickup = np.maximum(avail + reach[:, k], b.ready_at)
        pickup[pickup > off] = np.inf
        c = int(np.argmin(pickup))
        if not math.isfinite(pickup[c]):
            return True
        avail[c] = pickup[c] + b.busy_after_pickup
    return False


def _priority(costs: NDArray[np.float64], feasible: NDArray[np.bool_], age: NDArray[np.float64]) -> NDArray[np.float64]:
    """Costs that rank older bundles first, then the pair cost: one minute of age outweighs
    any difference of total pair cost over a whole matching."""
    spread = float(costs[feasible].max() - costs[feasible].min()) + 1.0
    weight = spread * min(costs.shape)
    return costs + weight * (float(age.max()) - age)[:, None]


def _solve(costs: NDArray[np.float64], feasible: NDArray[np.bool_], ids: Sequence[str]) -> list[tuple[int, int]]:
    """``solve_batch`` on a sub-problem: (row, column) of each match."""
    if not feasible.any():
        return []
    costs = costs - float(costs[feasible].min())    # a constant: the same optimum, and costs >= 0
    infeasible = 2.0 * (float(costs[feasible].max()) + 1.0) * min(costs.shape) + 1.0
    column = {d: j for j, d in enumerate(ids)}
    found = solve_batch(np.where(feasible, costs, infeasible), feasible, ids, infeasible=infeasible)
    return [(a.job_index, column[a.driver_id]) for a in found]


def plan(now: float, orders: Sequence[BundleOrder], couriers: Sequence[BundleCourier], *,
         travel: TravelMatrix, stops: Stops, rules: BundleRules = BundleRules(),
         coming: Sequence[BundleCourier] | None = None) -> list[Dispatch]:
    """The dispatches to make now (see the module docstring). Orders must have distinct ids,
    couriers distinct ids; the result gives each order and each courier at most once.

    ``coming``: the couriers not free now that will be, each from ``free_at`` at
    ``position`` until ``off_at`` (busy ones from where their trip ends, ones whose shift
    has not started from their start). ``None``: not known, and no bundle is critical.
    """
    if not orders or not couriers:
        return []
    by_restaurant: dict[str, list[BundleOrder]] = {}
    for o in sorted(orders, key=lambda o: (o.ready_at, o.placed_at, o.order_id)):
        by_restaurant.setdefault(o.restaurant_id, []).append(o)
    if rules.scarcity and len(orders) > len(couriers):
        rules = replace(rules, courier_weight=rules.courier_weight * len(orders) / len(couriers))
    restaurants = list(by_restaurant)
    to_counter = np.asarray(travel([c.position for c in couriers],
                                   [by_restaurant[r][0].pickup for r in restaurants]), dtype=np.float64)
    to_counter = to_counter + stops.pickup_before          # couriers × restaurants: minutes to hand-over
    bundles: list[tuple[int, Planned]] = []
    lead_of = to_counter.min(axis=0)
    for k, r in enumerate(restaurants):
        lead = float(lead_of[k])
        bundles += [(k, b) for b in form_bundles(by_restaurant[r], now=now, lead_travel=lead, travel=travel,
                                                 stops=stops, rules=rules)]
    off = np.array([c.off_at for c in couriers], dtype=np.float64)
    covered = np.array([c.covered_orders for c in couriers], dtype=np.float64)
    costs = np.zeros((len(bundles), len(couriers)))
    feasible = np.zeros((len(bundles), len(couriers)), dtype=np.bool_)
    pickups = np.zeros((len(bundles), len(couriers)))
    for i, (k, b) in enumerate(bundles):
        handover = now + to_counter[:, k]
        pickup = np.maximum(handover, b.ready_at)
        pickups[i] = pickup
        feasible[i] = pickup <= off
        courier_min = pickup - now + b.busy_after_pickup
        beyond = np.maximum(len(b.orders) - np.maximum(covered, 0.0), 0.0)
        # Minus what leaving it for later would cost its customers: the solver then weighs
        # each bundle's urgency (an old, late order's next minutes cost most), not its total.
        later = b.customer_cost_at(max(now + float(lead_of[k]), b.ready_at) + rules.postpone_min, rules)
        costs[i] = (b.customer_cost(pickup, rules) - later + rules.courier_weight * courier_min
                    + rules.pay_weight * beyond)
    if not feasible.any():
        return []
    ids = [c.courier_id for c in couriers]
    matches: list[tuple[int, int]] = []
    rows = np.arange(len(bundles))
    cols = np.arange(len(couriers))
    stages = [(rows, False)]
    if coming is not None:
        pickups_at = [by_restaurant[r][0].pickup for r in restaurants]
        critical = _critical(bundles, pickups_at, coming, travel, stops)
        short = _short(now, bundles, pickups_at, couriers, coming, to_counter, travel, stops)
        stages = [(np.flatnonzero(critical), True), (np.flatnonzero(~critical), short)]
    for rows, oldest_first in stages:
        rows = rows[feasible[rows][:, cols].any(axis=1)] if cols.size else rows[:0]
        if not rows.size:
            continue
        sub = feasible[np.ix_(rows, cols)]
        sub_costs = costs[np.ix_(rows, cols)]
        if oldest_first:
            age = np.array([now - min(o.placed_at for o in bundles[i][1].orders) for i in rows])
            sub_costs = _priority(sub_costs, sub, age)
        found = _solve(sub_costs, sub, [ids[c] for c in cols])
        matches += [(int(rows[r]), int(cols[c])) for r, c in found]
        cols = np.setdiff1d(cols, [cols[c] for _, c in found])
    out = []
    for i, j in sorted(matches):
        k, b = bundles[i]
        if now + to_counter[j, k] < b.ready_at - rules.commit_slack_min:
            continue   # the food would not be ready: decide again next step
        out.append(Dispatch(ids[j], tuple(o.order_id for o in b.orders), float(pickups[i, j]), float(costs[i, j])))
    return out
