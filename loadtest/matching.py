"""`wakala bench matching`: optimal batch assignment vs greedy nearest-first, one scenario.

A deterministic discrete-event simulation (no services, no wall clock): the same seeded
scenario — one order stream and one initial fleet — is replayed through both modes.

Scenario (``make_scenario``)
  * Orders arrive as a Poisson process (``orders_per_min``) for ``minutes``, each at one of
    ``hotspots`` vendor clusters (uneven popularity, ~200 m jitter) inside the bounding box,
    with a dropoff 0.5-6 km great-circle away (kept inside the box); ``cold_jobs_share`` need
    cold storage. Any vehicle type may take any order; ``max_pickup_m`` is
    ``radius_m × CIRCUITY`` (``radius_m`` is great-circle, as in ``bench nearest``).
  * Drivers start available at uniform random positions with the vehicle mix and cold-storage
    share of ``MatchingBench``.
  * The truth (``truth``). "city" (default): the replay's drivers — a cruising speed per
    driver (``movement.SPEED_BOUNDS_MPS``), a street circuity of 1.22-1.38 per leg, 30-150 s
    at the counter and half that at the door, arrival at the point — times a hidden factor of
    the leg's destination H3 res-7 cell (lognormal around 1, σ 0.10; one cell in ten a slow
    "township congestion" cell at 1.3-1.6). "model": the prior's own estimate (``geo.eta``)
    times that factor times per-leg noise (lognormal, σ 0.15): the earlier runs' truth,
    unbiased for the prior by construction. Draws are made per order up front (own random
    streams), so both modes and both truths see the same orders.

Modes (``simulate``)
  * greedy: an order is offered on arrival with ``assign_greedy`` (one job, every free
    driver); if no driver is eligible it stays pending, and every time a driver becomes free
    ``assign_greedy`` runs again over all pending orders in arrival order.
  * batch: orders and freed drivers accumulate; every ``window_s`` ``assign_batch`` solves
    pending × free; unassigned orders stay pending to the next window.
  A driver assigned at time t drives to the pickup (actual pickup time), then to the dropoff
  (actual dropoff time), and is available again at the dropoff. Both modes match on the cost
  matrix calibrated by their own online ``EtaCalibration``.

Measured, per mode, over the orders that got a driver:
  * ``pickup ETA`` = wait for assignment (assigned at − arrived at; the batch window and
    waiting for a free eligible driver both count) + the *estimated* pickup ETA of the chosen
    pair (the cost-matrix entry, calibrated). Mean and p90, in seconds.
  * the same with the *actual* pickup drive time instead of the estimate (``actual_pickup``),
    so an estimate that flatters one mode would show.
  * improvement = (greedy − batch) / greedy × 100, for the mean and the p90 pickup ETA.
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
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

import numpy as np

from dispatch.matching.assignment import assign_batch, assign_greedy
from dispatch.matching.ranking import AVAILABLE, Candidate, Job
from geo.distance import destination, distance_m
from geo.eta import CIRCUITY, JOHANNESBURG_TZ, EtaCalibration, eta_seconds
from geo.eta_model import EtaModel, handover_increments, travel_increments
from loadtest.movement import SPEED_BOUNDS_MPS
from loadtest.report import emit

__all__ = [
    "MatchingBench",
    "ModeOutcome",
    "RoadTruth",
    "Scenario",
    "make_scenario",
    "matching_figures",
    "run_matching_bench",
    "simulate",
]

Mode = Literal["greedy", "batch"]
Truth = Literal["city", "model"]
# The city replay's drivers (``loadtest.city_driver``, ``loadtest.movement``): street paths of
# circuity 1.22-1.38 at one cruising speed per driver, 30-150 s at the shop counter and half
# that at the door; arrival is at the point (no parking overhead in the truth).
CITY_CIRCUITY = (1.22, 1.38)
CITY_HANDOVER_S = (30.0, 150.0)
TENANT = "bench-matching"
WITHIN_S = 120.0  # "within 2 minutes"
# After the last arrival the run drains the backlog; this caps it if some order can never
# be served (e.g. cold storage needed and no such driver ever comes within reach).
DRAIN_LIMIT_S = 6 * 3600.0
# Event order at equal times: a driver freed at t can take an order arriving at t, and a
# window at t sees both.
_FREE, _PICKED_UP, _ARRIVAL, _WINDOW = 0, 1, 2, 3


@dataclass(frozen=True)
class MatchingBench:
    seed: int = 7
    minutes: float = 60.0
    orders_per_min: float = 40.0
    drivers: int = 800              # load ~1.0 at 40 orders/min: 300 is overloaded (see docs/benchmarks.md)
    window_s: float = 2.0
    wait_weight: float = 1.0        # batch: seconds of pickup ETA one second of waiting is worth
    # Johannesburg CBD to Soweto: ~22 km × 30 km.
    lat_range: tuple[float, float] = (-26.30, -26.10)
    lng_range: tuple[float, float] = (27.80, 28.10)
    vehicle_mix: tuple[tuple[str, float], ...] = (("motorbike", 0.60), ("car", 0.25),
                                                  ("bakkie", 0.15))
    cold_storage_share: float = 0.15  # of drivers
    cold_jobs_share: float = 0.05  # of orders
    radius_m: float = 5_000.0  # great-circle; max_pickup_m = radius_m × CIRCUITY
    hotspots: int = 30
    # A weekday midday: the congestion multiplier of geo.eta applies along the clock.
    start: datetime = datetime(2024, 5, 15, 12, 0, tzinfo=JOHANNESBURG_TZ)
    # "city": the replay's drivers (per-driver speed, street circuity, handovers) × the hidden
    # per-cell factor; "model": the prior's own estimate × that factor × per-leg noise (the
    # truth of earlier runs: unbiased for the prior by construction).
    truth: Truth = "city"

    def __post_init__(self) -> None:
        if self.minutes <= 0 or self.orders_per_min <= 0 or self.drivers < 1:
            raise ValueError("minutes and orders_per_min must be positive, drivers at least 1")
        if not (self.window_s > 0 and math.isfinite(self.window_s)):
            raise ValueError(f"window_s must be a positive number, got {self.window_s}")
        if self.truth not in ("city", "model"):
            raise ValueError(f"truth must be city or model, got {self.truth!r}")


@dataclass(frozen=True, slots=True)
class Order:
    arrival_s: float
    job: Job
    pickup_noise: float  # actual/true-factor ratio of the pickup leg, whoever drives it
    dropoff_noise: float
    # City truth: street circuity of each leg, seconds at the shop and at the door.
    pickup_circuity: float = 1.3
    dropoff_circuity: float = 1.3
    shop_s: float = 0.0
    door_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Driver:
    driver_id: str
    lat: float
    lng: float
    vehicle_type: str
    has_cold_storage: bool
    speed_mps: float = 10.0   # city truth: the driver's cruising speed


class RoadTruth:
    """The hidden true/estimated travel-time factor of each res-7 cell.

    Derived from (seed, cell) alone, so it does not depend on which cells a run visits first.
    """

    SLOW_SHARE = 0.10
    SLOW_RANGE = (1.3, 1.6)
    SIGMA = 0.10

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._factors: dict[str, float] = {}

    def factor(self, cell: str) -> float:
        f = self._factors.get(cell)
        if f is None:
            rng = np.random.default_rng([self.seed, int(cell, 16)])
            if rng.random() < self.SLOW_SHARE:
                f = float(rng.uniform(*self.SLOW_RANGE))
            else:
                f = float(rng.lognormal(0.0, self.SIGMA))
            self._factors[cell] = f
        return f


@dataclass(frozen=True)
class Scenario:
    orders: tuple[Order, ...]
    fleet: tuple[Driver, ...]
    truth: RoadTruth


def make_scenario(bench: MatchingBench) -> Scenario:
    rng = np.random.default_rng(bench.seed)
    (lat0, lat1), (lng0, lng1) = bench.lat_range, bench.lng_range

    def inside(lat: float, lng: float) -> bool:
        return lat0 <= lat <= lat1 and lng0 <= lng <= lng1

    types = [v for v, _ in bench.vehicle_mix]
    shares = np.array([s for _, s in bench.vehicle_mix], dtype=np.float64)
    fleet = [
        Driver(f"d{i:05d}", float(rng.uniform(lat0, lat1)), float(rng.uniform(lng0, lng1)),
               types[int(rng.choice(len(types), p=shares / shares.sum()))],
               bool(rng.random() < bench.cold_storage_share))
        for i in range(bench.drivers)]
    # City-truth draws come from streams of their own, so the orders and the fleet stay those
    # of the same seed whatever the truth.
    speeds = np.random.default_rng([bench.seed, 1])
    fleet = tuple(Driver(d.driver_id, d.lat, d.lng, d.vehicle_type, d.has_cold_storage,
                         float(speeds.triangular(*_bounds_mode(d.vehicle_type)))) for d in fleet)
    city = np.random.default_rng([bench.seed, 2])

    hot_lat = rng.uniform(lat0 + 0.01, lat1 - 0.01, bench.hotspots)
    hot_lng = rng.uniform(lng0 + 0.01, lng1 - 0.01, bench.hotspots)
    popularity = rng.dirichlet(np.full(bench.hotspots, 1.5))
    period_s = bench.minutes * 60.0
    mean_gap_s = 60.0 / bench.orders_per_min
    max_pickup_m = bench.radius_m * CIRCUITY
    orders: list[Order] = []
    t = float(rng.exponential(mean_gap_s))
    while t < period_s:
        h = int(rng.choice(bench.hotspots, p=popularity))
        jitter_lat, jitter_lng = rng.normal(0.0, 200.0, 2)
        p_lat = min(max(hot_lat[h] + jitter_lat / 111_320.0, lat0), lat1)
        p_lng = min(max(hot_lng[h] + jitter_lng / (111_320.0 * math.cos(math.radians(p_lat))),
                        lng0), lng1)
        reach_m = float(rng.uniform(500.0, 6_000.0))
        for _ in range(20):  # another bearing until the dropoff is in the box
            d_lat, d_lng = destination(p_lat, p_lng, float(rng.uniform(0.0, 360.0)), reach_m)
            if inside(d_lat, d_lng):
                break
        d_lat, d_lng = min(max(d_lat, lat0), lat1), min(max(d_lng, lng0), lng1)
        noise = rng.lognormal(0.0, 0.15, 2)
        job = Job(TENANT, float(p_lat), float(p_lng), d_lat, d_lng, None,
                  bool(rng.random() < bench.cold_jobs_share), max_pickup_m)
        circ, hand = city.uniform(*CITY_CIRCUITY, 2), city.uniform(*CITY_HANDOVER_S, 2)
        orders.append(Order(t, job, float(noise[0]), float(noise[1]), float(circ[0]),
                            float(circ[1]), float(hand[0]), float(hand[1]) / 2))
        t += float(rng.exponential(mean_gap_s))
    return Scenario(tuple(orders), fleet, RoadTruth(bench.seed))


def _bounds_mode(vehicle_type: str) -> tuple[float, float, float]:
    lo, hi = SPEED_BOUNDS_MPS[vehicle_type]
    return lo, (lo + hi) / 2, hi   # movement.cruising_speed: triangular, mode mid-range


@dataclass
class ModeOutcome:
    mode: Mode
    orders: int
    assigned_at_s: list[float | None]  # per order
    driver_of: list[str | None]  # per order
    est_pickup_s: list[float | None]  # cost-matrix pickup ETA of the chosen pair
    actual_pickup_s: list[float | None]
    max_pending: int = 0
    assignments: list[tuple[int, str, float]] = field(default_factory=list)  # order, driver, t
    free_at_end: list[Candidate] = field(default_factory=list)  # to tell stranded from starved
    # Per leg started: (uncalibrated estimate, calibrated estimate, actual), seconds.
    legs: list[tuple[float, float, float]] = field(default_factory=list)
    # Per leg started, arrival ETAs: (0 pickup | 1 dropoff, prior, per-cell calibration,
    # learned model, actual), seconds.
    eta_legs: list[tuple[int, float, float, float, float]] = field(default_factory=list)


def simulate(bench: MatchingBench, scenario: Scenario, mode: Mode) -> ModeOutcome:
    """Replay ``scenario`` with one matching mode; see the module docstring."""
    orders, fleet, truth = scenario.orders, scenario.fleet, scenario.truth
    n = len(orders)
    out = ModeOutcome(mode, n, [None] * n, [None] * n, [None] * n, [None] * n)
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
    # travel, start point, start time, handover after the arrival).
    in_flight: dict[int, tuple[int, float, float, tuple[float, float], float, float]] = {}
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
                  raw: float, calibrated: float, pickup: bool) -> float:
        actual, handover = leg_truth(i, d, start, end, raw, pickup)
        learned = model.travel_s(distance_m(*start, *end), fleet[d].vehicle_type, at(t), end)
        out.legs.append((raw, calibrated, actual))
        out.eta_legs.append((0 if pickup else 1, raw, calibrated, learned, actual))
        in_flight[d] = (i, raw, actual, start, t, handover)
        return actual

    def learn(d: int, end: tuple[float, float], kind: str) -> int:
        i, raw, actual, start, t0, handover = in_flight.pop(d)
        cal.observe(cell(*end), raw, actual)
        model.add(travel_increments(start, end, fleet[d].vehicle_type, at(t0), actual))
        if bench.truth == "city":
            model.add(handover_increments(kind, handover))
        return i

    def give(t: float, jobs: Sequence[int], assignments: Sequence[tuple[int, str, float]]) -> None:
        taken: set[int] = set()
        for job_index, driver_id, cost_s in assignments:
            i, d = jobs[job_index], index[driver_id]
            job, cand = orders[i].job, free.pop(d)
            pickup_cell = cell(job.pickup_lat, job.pickup_lng)
            raw = cost_s / cal.factor(pickup_cell)
            actual = start_leg(t, i, d, (cand.lat, cand.lng), (job.pickup_lat, job.pickup_lng),
                               raw, cost_s, pickup=True)
            out.assigned_at_s[i], out.driver_of[i] = t, cand.driver_id
            out.est_pickup_s[i], out.actual_pickup_s[i] = cost_s, actual
            out.assignments.append((i, cand.driver_id, t))
            push(t + actual + in_flight[d][5], _PICKED_UP, d)
            taken.add(i)
        if taken:
            pending[:] = [i for i in pending if i not in taken]

    def match(t: float, jobs: list[int]) -> int:
        if not jobs or not free:
            return 0
        cands = list(free.values())
        if mode == "batch":
            found = assign_batch([orders[i].job for i in jobs], cands, at=at(t), calibration=cal,
                                 waited_s=[t - orders[i].arrival_s for i in jobs],
                                 wait_weight=bench.wait_weight)
        else:
            found = assign_greedy([orders[i].job for i in jobs], cands, at=at(t), calibration=cal)
        give(t, jobs, found)
        return len(found)

    for i, o in enumerate(orders):
        push(o.arrival_s, _ARRIVAL, i)
    last_arrival_s = orders[-1].arrival_s if orders else 0.0
    if mode == "batch":
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
            pickup, dropoff = (job.pickup_lat, job.pickup_lng), (job.dropoff_lat, job.dropoff_lng)
            i = learn(d, pickup, "shop")
            raw = eta_seconds(distance_m(*pickup, *dropoff), fleet[d].vehicle_type, at(t))
            actual = start_leg(t, i, d, pickup, dropoff, raw, raw * cal.factor(cell(*dropoff)),
                               pickup=False)
            push(t + actual + in_flight[d][5], _FREE, d)
        elif kind == _FREE:
            d = payload
            job = orders[in_flight[d][0]].job
            learn(d, (job.dropoff_lat, job.dropoff_lng), "door")
            free[d] = Candidate(fleet[d].driver_id, job.dropoff_lat, job.dropoff_lng,
                                fleet[d].vehicle_type, fleet[d].has_cold_storage, AVAILABLE,
                                TENANT, 0)
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


def _mode_figures(o: ModeOutcome, arrivals: Sequence[float],
                  bench: MatchingBench) -> dict[str, float | int | None]:
    # Driving time the orders needed ÷ driver time the period offered: above 1 the fleet
    # cannot keep up and the waits measure the backlog more than the matching.
    load = round(sum(leg[2] for leg in o.legs) / (bench.drivers * bench.minutes * 60.0), 3)
    done = [i for i, a in enumerate(o.assigned_at_s) if a is not None]
    wait = np.array([o.assigned_at_s[i] - arrivals[i] for i in done])  # type: ignore[operator]
    est = np.array([o.est_pickup_s[i] for i in done], dtype=np.float64)
    actual = np.array([o.actual_pickup_s[i] for i in done], dtype=np.float64)

    def r(x: float) -> float:
        return round(float(x), 1)

    if not done:
        return {"orders": o.orders, "assigned": 0, "mean_pickup_eta_s": None,
                "p90_pickup_eta_s": None, "mean_actual_pickup_s": None,
                "p90_actual_pickup_s": None, "mean_wait_s": None, "p90_wait_s": None,
                "max_pending": o.max_pending, "offered_load": load}
    return {
        "orders": o.orders,
        "assigned": len(done),
        "mean_pickup_eta_s": r((wait + est).mean()),
        "p90_pickup_eta_s": r(np.percentile(wait + est, 90)),
        "mean_actual_pickup_s": r((wait + actual).mean()),
        "p90_actual_pickup_s": r(np.percentile(wait + actual, 90)),
        "mean_wait_s": r(wait.mean()),
        "p90_wait_s": r(np.percentile(wait, 90)),
        "max_pending": o.max_pending,
        "offered_load": load,
    }


def _eta_error(legs: Sequence[tuple[float, float, float]]) -> dict[str, float | int | None]:
    if not legs:
        return {"eta_legs": 0, "eta_mae_uncalibrated_s": None, "eta_mae_calibrated_s": None,
                "share_within_2_min_uncalibrated": None, "share_within_2_min_calibrated": None}
    arr = np.asarray(legs, dtype=np.float64)
    err_raw = np.abs(arr[:, 0] - arr[:, 2])
    err_cal = np.abs(arr[:, 1] - arr[:, 2])
    return {
        "eta_legs": len(legs),
        "eta_mae_uncalibrated_s": round(float(err_raw.mean()), 1),
        "eta_mae_calibrated_s": round(float(err_cal.mean()), 1),
        "share_within_2_min_uncalibrated": round(float((err_raw <= WITHIN_S).mean()), 4),
        "share_within_2_min_calibrated": round(float((err_cal <= WITHIN_S).mean()), 4),
    }


ESTIMATORS = ("prior", "per_cell_calibration", "learned")


def _arrival_eta_figures(eta_legs: Sequence[tuple[int, float, float, float, float]]
                         ) -> dict[str, dict[str, float | int | None]]:
    """Per estimator, per leg: samples, mean absolute error, bias (actual − estimate: negative
    when the estimate is too long, as in the replay's report) and share within 2 minutes."""
    arr = np.asarray(eta_legs, dtype=np.float64).reshape(-1, 5)
    out: dict[str, dict[str, float | int | None]] = {}
    for column, name in enumerate(ESTIMATORS, start=1):
        figures: dict[str, float | int | None] = {}
        for kind, leg in enumerate(("pickup", "dropoff")):
            rows = arr[arr[:, 0] == kind]
            err = rows[:, 4] - rows[:, column]
            empty = err.size == 0
            figures[f"{leg}_eta_samples"] = int(err.size)
            figures[f"{leg}_eta_mae_s"] = None if empty else round(float(np.abs(err).mean()), 1)
            figures[f"{leg}_eta_bias_s"] = None if empty else round(float(err.mean()), 1)
            figures[f"{leg}_eta_within_2min_share"] = (
                None if empty else round(float((np.abs(err) <= WITHIN_S).mean()), 4))
        out[name] = figures
    return out


def _improvement_pct(greedy: float | int | None, batch: float | int | None) -> float | None:
    if greedy is None or batch is None or greedy == 0:
        return None
    return round((greedy - batch) / greedy * 100.0, 2)


def matching_figures(bench: MatchingBench) -> dict[str, object]:
    """Run both modes on the bench's scenario; the figures ``run_matching_bench`` reports."""
    scenario = make_scenario(bench)
    arrivals = [o.arrival_s for o in scenario.orders]
    greedy = simulate(bench, scenario, "greedy")
    batch = simulate(bench, scenario, "batch")
    modes = {"greedy": _mode_figures(greedy, arrivals, bench),
             "batch": _mode_figures(batch, arrivals, bench)}
    g, b = modes["greedy"], modes["batch"]
    return {
        "bench": "matching", "seed": bench.seed, "minutes": bench.minutes,
        "orders_per_min": bench.orders_per_min, "drivers": bench.drivers,
        "window_s": bench.window_s, "radius_m": bench.radius_m, "wait_weight": bench.wait_weight,
        "modes": modes,
        "improvement_mean_pct": _improvement_pct(g["mean_pickup_eta_s"], b["mean_pickup_eta_s"]),
        "improvement_p90_pct": _improvement_pct(g["p90_pickup_eta_s"], b["p90_pickup_eta_s"]),
        "improvement_mean_actual_pct": _improvement_pct(g["mean_actual_pickup_s"],
                                                        b["mean_actual_pickup_s"]),
        **_eta_error(batch.legs),
        "truth": bench.truth,
        **(etas := _arrival_eta_figures(batch.eta_legs))["learned"],
        "eta_models": etas,
    }


async def run_matching_bench(bench: MatchingBench) -> dict[str, object]:
    """Simulate, print the table and the JSON line, return the figures. CPU only."""
    figures = matching_figures(bench)
    modes: dict[str, dict[str, object]] = figures["modes"]  # type: ignore[assignment]
    rows: list[tuple[str, object]] = [
        ("seed / minutes / orders per min / drivers / window / radius",
         f"{bench.seed} / {bench.minutes:g} / {bench.orders_per_min:g} / {bench.drivers} / "
         f"{bench.window_s:g} s / {bench.radius_m:g} m"),
    ]
    for name, m in modes.items():
        rows += [
            (f"{name}: orders / assigned / max pending / offered load",
             f"{m['orders']} / {m['assigned']} / {m['max_pending']} / {m['offered_load']}"),
            (f"{name}: pickup ETA (wait + estimate) mean / p90",
             f"{m['mean_pickup_eta_s']} / {m['p90_pickup_eta_s']} s"),
            (f"{name}: wait + actual pickup mean / p90",
             f"{m['mean_actual_pickup_s']} / {m['p90_actual_pickup_s']} s"),
            (f"{name}: wait for assignment mean / p90", f"{m['mean_wait_s']} / {m['p90_wait_s']} s"),
        ]
    rows += [
        ("batch improvement over greedy, mean / p90",
         f"{figures['improvement_mean_pct']} / {figures['improvement_p90_pct']} %"),
        ("batch improvement, wait + actual pickup mean", f"{figures['improvement_mean_actual_pct']} %"),
        ("ETA legs (batch run)", figures["eta_legs"]),
        ("ETA MAE uncalibrated / calibrated",
         f"{figures['eta_mae_uncalibrated_s']} / {figures['eta_mae_calibrated_s']} s"),
        ("ETA within 2 min uncalibrated / calibrated",
         f"{figures['share_within_2_min_uncalibrated']} / "
         f"{figures['share_within_2_min_calibrated']}"),
    ]
    etas: dict[str, dict[str, object]] = figures["eta_models"]  # type: ignore[assignment]
    for leg in ("pickup", "dropoff"):
        for name in ESTIMATORS:
            e = etas[name]
            rows.append((f"{leg} arrival ETA, {name.replace('_', ' ')}: MAE / bias / within 2 min",
                         f"{e[f'{leg}_eta_mae_s']} s / {e[f'{leg}_eta_bias_s']} s / "
                         f"{e[f'{leg}_eta_within_2min_share']} ({e[f'{leg}_eta_samples']} legs)"))
    emit("wakala bench matching", rows, figures)
    return figures
