"""`wakala bench matching`'s scenario: one seeded order stream, one fleet, one hidden truth.

Orders arrive as a Poisson process (``orders_per_min``) for ``minutes``. Each comes from one
of ``hotspots`` vendor clusters (uneven popularity) and, inside it, from one of
``vendors_per_hotspot`` shops (fixed points ~200 m around the hotspot, equally popular), so a
busy shop sees several orders in a few minutes and bundling has something to work with. The
dropoff is 0.5-6 km great-circle away (kept inside the box); ``cold_jobs_share`` need cold
storage. Any vehicle type may take any order; ``max_pickup_m`` is ``radius_m × CIRCUITY``
(``radius_m`` is great-circle, as in ``bench nearest``). Drivers start available at uniform
random positions with the vehicle mix and cold-storage share of ``MatchingBench``.

The truth (``truth``). "city" (default): the replay's drivers - a cruising speed per driver
(``movement.SPEED_BOUNDS_MPS``), a street circuity of 1.22-1.38 per leg, 30-150 s at the
counter and half that at the door, arrival at the point - times a hidden factor of the leg's
destination H3 res-7 cell (lognormal around 1, σ 0.10; one cell in ten a slow "township
congestion" cell at 1.3-1.6). "model": the prior's own estimate (``geo.eta``) times that
factor times per-leg noise (lognormal, σ 0.15): the earlier runs' truth, unbiased for the
prior by construction.

Random streams. The orders, the fleet's positions, the drivers' speeds and the city draws each
come from a stream of their own seeded by ``seed``, so the same seed gives the same orders
whatever the fleet size or the truth: a sweep over ``drivers`` compares one day of orders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import numpy as np

from dispatch.matching.ranking import Job
from geo.distance import destination
from geo.eta import CIRCUITY, JOHANNESBURG_TZ
from loadtest.movement import SPEED_BOUNDS_MPS

__all__ = ["CITY_CIRCUITY", "CITY_HANDOVER_S", "TENANT", "Driver", "MatchingBench", "Order",
           "RoadTruth", "Scenario", "Truth", "make_scenario"]

Truth = Literal["city", "model"]
# The city replay's drivers (``loadtest.city_driver``, ``loadtest.movement``): street paths of
# circuity 1.22-1.38 at one cruising speed per driver, 30-150 s at the shop counter and half
# that at the door; arrival is at the point (no parking overhead in the truth).
CITY_CIRCUITY = (1.22, 1.38)
CITY_HANDOVER_S = (30.0, 150.0)
TENANT = "bench-matching"
_M_PER_DEG = 111_320.0


@dataclass(frozen=True)
class MatchingBench:
    seed: int = 7
    minutes: float = 60.0
    orders_per_min: float = 40.0
    # At 40 orders/min: greedy's driving load 0.70 under the city truth (0.99 at 600 drivers,
    # 1.19 at 500; about 1.0 at 800 under the "model" truth); docs/benchmarks.md has the sweep.
    drivers: int = 800
    window_s: float = 2.0
    wait_weight: float = 1.0        # batch: seconds of pickup ETA one second of waiting is worth
    capacity: int = 3               # bundle mode: deliveries one driver may carry
    # Johannesburg CBD to Soweto: ~22 km × 30 km.
    lat_range: tuple[float, float] = (-26.30, -26.10)
    lng_range: tuple[float, float] = (27.80, 28.10)
    vehicle_mix: tuple[tuple[str, float], ...] = (("motorbike", 0.60), ("car", 0.25),
                                                  ("bakkie", 0.15))
    cold_storage_share: float = 0.15  # of drivers
    cold_jobs_share: float = 0.05  # of orders
    radius_m: float = 5_000.0  # great-circle; max_pickup_m = radius_m × CIRCUITY
    hotspots: int = 30
    vendors_per_hotspot: int = 4
    # A weekday midday: the congestion multiplier of geo.eta applies along the clock.
    start: datetime = datetime(2024, 5, 15, 12, 0, tzinfo=JOHANNESBURG_TZ)
    truth: Truth = "city"

    def __post_init__(self) -> None:
        if self.minutes <= 0 or self.orders_per_min <= 0 or self.drivers < 1:
            raise ValueError("minutes and orders_per_min must be positive, drivers at least 1")
        if not (self.window_s > 0 and math.isfinite(self.window_s)):
            raise ValueError(f"window_s must be a positive number, got {self.window_s}")
        if self.truth not in ("city", "model"):
            raise ValueError(f"truth must be city or model, got {self.truth!r}")
        if self.capacity < 1 or self.vendors_per_hotspot < 1 or self.hotspots < 1:
            raise ValueError("capacity, hotspots and vendors_per_hotspot must be at least 1")


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
    vendor: str = "v0"


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
    return Scenario(_orders(bench), _fleet(bench), RoadTruth(bench.seed))


def _clamp(bench: MatchingBench, lat: float, lng: float) -> tuple[float, float]:
    (lat0, lat1), (lng0, lng1) = bench.lat_range, bench.lng_range
    return min(max(lat, lat0), lat1), min(max(lng, lng0), lng1)


def _fleet(bench: MatchingBench) -> tuple[Driver, ...]:
    (lat0, lat1), (lng0, lng1) = bench.lat_range, bench.lng_range
    rng, speeds = np.random.default_rng([bench.seed, 0]), np.random.default_rng([bench.seed, 1])
    types = [v for v, _ in bench.vehicle_mix]
    shares = np.array([s for _, s in bench.vehicle_mix], dtype=np.float64)
    out = []
    for i in range(bench.drivers):
        lat, lng = float(rng.uniform(lat0, lat1)), float(rng.uniform(lng0, lng1))
        vehicle = types[int(rng.choice(len(types), p=shares / shares.sum()))]
        cold = bool(rng.random() < bench.cold_storage_share)
        out.append(Driver(f"d{i:05d}", lat, lng, vehicle, cold,
                          float(speeds.triangular(*_bounds_mode(vehicle)))))
    return tuple(out)


def _orders(bench: MatchingBench) -> tuple[Order, ...]:
    (lat0, lat1), (lng0, lng1) = bench.lat_range, bench.lng_range
    rng, city = np.random.default_rng(bench.seed), np.random.default_rng([bench.seed, 2])
    hot_lat = rng.uniform(lat0 + 0.01, lat1 - 0.01, bench.hotspots)
    hot_lng = rng.uniform(lng0 + 0.01, lng1 - 0.01, bench.hotspots)
    popularity = rng.dirichlet(np.full(bench.hotspots, 1.5))
    shops = [[_clamp(bench, hot_lat[h] + dy / _M_PER_DEG,
                    hot_lng[h] + dx / (_M_PER_DEG * math.cos(math.radians(hot_lat[h]))))
              for dy, dx in rng.normal(0.0, 200.0, (bench.vendors_per_hotspot, 2))]
             for h in range(bench.hotspots)]
    period_s, mean_gap_s = bench.minutes * 60.0, 60.0 / bench.orders_per_min
    max_pickup_m = bench.radius_m * CIRCUITY
    orders: list[Order] = []
    t = float(rng.exponential(mean_gap_s))
    while t < period_s:
        h = int(rng.choice(bench.hotspots, p=popularity))
        v = int(rng.integers(bench.vendors_per_hotspot))
        p_lat, p_lng = shops[h][v]
        reach_m = float(rng.uniform(500.0, 6_000.0))
        for _ in range(20):  # another bearing until the dropoff is in the box
            d_lat, d_lng = destination(p_lat, p_lng, float(rng.uniform(0.0, 360.0)), reach_m)
            if lat0 <= d_lat <= lat1 and lng0 <= d_lng <= lng1:
                break
        d_lat, d_lng = _clamp(bench, d_lat, d_lng)
        noise = rng.lognormal(0.0, 0.15, 2)
        job = Job(TENANT, float(p_lat), float(p_lng), d_lat, d_lng, None,
                  bool(rng.random() < bench.cold_jobs_share), max_pickup_m)
        circ, hand = city.uniform(*CITY_CIRCUITY, 2), city.uniform(*CITY_HANDOVER_S, 2)
        orders.append(Order(t, job, float(noise[0]), float(noise[1]), float(circ[0]),
                            float(circ[1]), float(hand[0]), float(hand[1]) / 2, f"v{h:02d}.{v}"))
        t += float(rng.exponential(mean_gap_s))
    return tuple(orders)


def _bounds_mode(vehicle_type: str) -> tuple[float, float, float]:
    lo, hi = SPEED_BOUNDS_MPS[vehicle_type]
    return lo, (lo + hi) / 2, hi   # movement.cruising_speed: triangular, mode mid-range
