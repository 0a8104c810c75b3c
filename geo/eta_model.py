"""The learned ETA model: what completed legs teach about travel and handover times. Pure.

``geo.eta`` is the prior: great-circle distance × ``CIRCUITY`` × seconds per metre of the
vehicle at the hour. This module corrects it from measurement, in four nested levels, each
shrunk towards the one above it while its data is thin::

    travel_s = b + k_vehicle · m_hour · m_cell,hour · m_area · x     x = prior travel seconds

* **global** ``k, b``: a least-squares line through every leg (actual vs ``x``), with prior
  pseudo-legs on ``y = x + PARKING_OVERHEAD_S`` so an empty model is exactly the prior.
  ``b`` is what a leg costs whatever its length (parking, the last metres, GPS lag); ``k``
  corrects speed and circuity together.
* **vehicle** ``k_vehicle``: the slope of one vehicle type (motorbikes filter, bakkies do
  not), a ratio of sums shrunk towards ``k``.
* **hour** ``m_hour``: the city at a local hour (the congestion curve of the prior is an
  assumption; this measures it).
* **cell and hour** ``m_cell,hour``: one coarse H3 cell (res 6, ~36 km²: enough legs to learn
  from within days, still one township's road layout) at one hour, the leg's destination
  cell and start hour.
* **area** ``m_area``: one res-7 cell (~5 km², a neighbourhood: a taxi rank, a rail crossing,
  a hill) at every hour, on top of all the above: what the earlier per-cell factor
  (``geo.eta.EtaCalibration``) caught, and a res-6 cell averages away.

Every level keeps additive sums only (counts, Σ actual, Σ prior seconds *per vehicle type*),
so several engines add to one Redis hash with ``HINCRBYFLOAT`` and a level's factor is
recomputed from the levels above it *as they are now*: no feedback from estimates that were
themselves calibrated (the old per-cell factor learned actual ÷ an already-calibrated
estimate, so it converged to the square root of the true ratio), and no early, uncalibrated
legs frozen into a lower level.

Handover times (at the shop counter, at the customer's door) are means shrunk towards a
prior. The shop's preparation wait is a term of its own (``pickup_done_s``): a delivery
opens only when its order is ready, so callers today pass zero, and the model never adds a
wait that the world does not have.

Bounded updates: a leg whose actual time is outside ``[MIN_RATIO · x, MAX_RATIO · x +
MAX_EXTRA_S]`` (a forgotten "delivered" tap, a GPS jump), a leg shorter than ``MIN_TRAVEL_S``
(the fence radius and GPS noise dominate) or longer than ``MAX_TRAVEL_S``, and a handover over
``MAX_HANDOVER_S`` is rejected, not clipped: a clipped outlier still drags the mean. Invalid
input (NaN, negative, unknown vehicle) raises ``ValueError`` naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime

import h3
import numpy as np
from numpy.typing import NDArray

from geo.cells import cell_of
from geo.distance import distance_m
from geo.eta import (
    CIRCUITY,
    PARKING_OVERHEAD_S,
    SPEEDS_KMH,
    UnknownVehicleType,
    local_hour,
    seconds_per_m,
)

__all__ = [
    "HANDOVER_KINDS",
    "HANDOVER_PRIOR_S",
    "TRAVEL_RES",
    "EtaModel",
    "handover_increments",
    "prior_travel_s",
    "travel_increments",
]

TRAVEL_RES = 6
AREA_RES = 7
PSEUDO_LEG_S = 300.0          # size of one prior pseudo-leg, prior travel seconds
PRIOR_LEGS = {"g": 20.0, "v": 30.0, "t": 50.0, "c": 30.0, "a": 30.0}
# The global prior's pseudo-legs sit at x0·(1 ± PRIOR_SPREAD): spread wide, so that one long
# leg far from them cannot tilt the line much (its leverage is bounded by theirs).
PRIOR_SPREAD = 0.8
MIN_RATIO, MAX_RATIO, MAX_EXTRA_S = 1.0 / 3.0, 3.5, 300.0
MIN_TRAVEL_S, MAX_TRAVEL_S = 20.0, 3 * 3600.0
SLOPE_BOUNDS = (0.2, 5.0)
FACTOR_BOUNDS = (0.3, 3.0)
INTERCEPT_BOUNDS = (0.0, 600.0)
HANDOVER_KINDS = ("shop", "door")
# ASSUMPTION until measured: a minute and a half at the counter, most of a minute at the door.
HANDOVER_PRIOR_S = {"shop": 90.0, "door": 45.0}
HANDOVER_PRIOR_LEGS = 5.0
MAX_HANDOVER_S = 1800.0

LatLng = tuple[float, float]


def _point(name: str, point: object) -> LatLng:
    try:
        lat, lng = float(point[0]), float(point[1])   # type: ignore[index]
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"{name} must be a (lat, lng) pair, got {point!r}") from None
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lng <= 180.0):
        raise ValueError(f"{name} must be a (lat, lng) pair in degrees, got {point!r}")
    return lat, lng


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a non-negative finite number of seconds, got {value!r}")
    return float(value)


def prior_travel_s(distance_m_: float, vehicle_type: str, at: datetime) -> float:
    """The prior's travel seconds for a great-circle distance, without the parking overhead
    and without any learned correction: the ``x`` every level of the model scales."""
    if not distance_m_ >= 0:
        raise ValueError(f"distance_m must be a non-negative number, got {distance_m_}")
    return distance_m_ * CIRCUITY * seconds_per_m(vehicle_type, at)


def travel_increments(start: LatLng, end: LatLng, vehicle_type: str, at: datetime,
                      actual_s: float) -> dict[str, float] | None:
    """The hash increments one completed leg adds (``start`` → ``end`` starting at ``at``,
    taking ``actual_s``), or None when the leg is rejected as implausible (see the module
    docstring). Raises ValueError for input that is not a leg at all."""
    start, end = _point("start", start), _point("end", end)
    y = _seconds("actual_s", actual_s)
    if vehicle_type not in SPEEDS_KMH:
        raise UnknownVehicleType(vehicle_type)
    x = prior_travel_s(distance_m(*start, *end), vehicle_type, at)
    if not (MIN_TRAVEL_S <= x <= MAX_TRAVEL_S and MIN_RATIO * x <= y <= MAX_RATIO * x + MAX_EXTRA_S):
        return None
    v, hour = vehicle_type, int(local_hour(at))
    area = cell_of(*end, AREA_RES)
    cell = h3.cell_to_parent(area, TRAVEL_RES)
    return {"g:n": 1.0, "g:x": x, "g:y": y, "g:xx": x * x, "g:xy": x * y,
            f"v:{v}:n": 1.0, f"v:{v}:x": x, f"v:{v}:y": y,
            f"t:{hour}:n": 1.0, f"t:{hour}:y": y, f"t:{hour}:x:{v}": x,
            f"c:{cell}:{hour}:n": 1.0, f"c:{cell}:{hour}:y": y, f"c:{cell}:{hour}:x:{v}": x,
            f"a:{area}:{hour}:n": 1.0, f"a:{area}:{hour}:y": y, f"a:{area}:{hour}:x:{v}": x}


def handover_increments(kind: str, seconds: float) -> dict[str, float] | None:
    """Increments for one handover of ``kind`` (shop or door), None when implausible."""
    if kind not in HANDOVER_KINDS:
        raise ValueError(f"kind must be one of {', '.join(HANDOVER_KINDS)}, got {kind!r}")
    s = _seconds("seconds", seconds)
    if s > MAX_HANDOVER_S:
        return None
    return {f"h:{kind}:n": 1.0, f"h:{kind}:s": s}


def _valid_field(name: str) -> bool:
    """Is ``name`` a field ``travel_increments``/``handover_increments`` could have written?"""
    parts = name.split(":")
    match parts:
        case ["g", ("n" | "x" | "y" | "xx" | "xy")]:
            return True
        case ["v", v, ("n" | "x" | "y")]:
            return v in SPEEDS_KMH
        case ["t", hour, ("n" | "y")]:
            return hour.isdigit() and int(hour) < 24
        case ["t", hour, "x", v]:
            return hour.isdigit() and int(hour) < 24 and v in SPEEDS_KMH
        case [("c" | "a") as level, cell, hour, *rest] if rest in (["n"], ["y"]) or (
                len(rest) == 2 and rest[0] == "x" and rest[1] in SPEEDS_KMH):
            return (hour.isdigit() and int(hour) < 24 and h3.is_valid_cell(cell)
                    and h3.get_resolution(cell) == (TRAVEL_RES if level == "c" else AREA_RES))
        case ["h", kind, ("n" | "s")]:
            return kind in HANDOVER_KINDS
    return False


class EtaModel:
    """The learned model over a snapshot of the sums (a mapping field → value, as the Redis
    hash holds them; malformed fields are dropped and listed in ``rejected``). Factors are
    computed lazily and memoised until ``add`` changes the sums."""

    __slots__ = ("_area_hours", "_memo", "_stats", "rejected")

    def __init__(self, stats: Mapping[str, float] | None = None) -> None:
        self._stats: dict[str, float] = {}
        self._area_hours: dict[str, set[int]] = {}   # res-7 cell -> hours with legs
        self.rejected: list[str] = []   # fields dropped as malformed (for the caller to log)
        for name, value in (stats or {}).items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            if isinstance(name, str) and _valid_field(name) and math.isfinite(number) and number >= 0:
                self._stats[name] = number
                self._index(name)
            else:
                self.rejected.append(str(name)[:60])
        self._memo: dict[object, float | tuple[float, float]] = {}

    def stats(self) -> dict[str, float]:
        return dict(self._stats)

    def add(self, increments: Mapping[str, float] | None) -> bool:
        """Learn in memory (a simulation, a test): add what ``travel_increments`` or
        ``handover_increments`` returned; None (a rejected leg) adds nothing. The shared
        model learns through Redis instead (``dispatch.matching.calibration``)."""
        if increments is None:
            return False
        for name, value in increments.items():
            self._stats[name] = self._stats.get(name, 0.0) + value
            self._index(name)
        self._memo.clear()
        return True

    def _index(self, name: str) -> None:
        if name.startswith("a:") and name.endswith(":n"):
            _, area, hour, _ = name.split(":")
            self._area_hours.setdefault(area, set()).add(int(hour))

    def _get(self, name: str) -> float:
        return self._stats.get(name, 0.0)

    def legs(self) -> int:
        """How many travel legs the model has learned from."""
        return int(self._get("g:n"))

    # -- travel -------------------------------------------------------------------------------

    def line(self) -> tuple[float, float]:
        """Global (slope k, intercept b seconds), the prior pseudo-legs included."""
        memo = self._memo.get("line")
        if memo is None:
            w, x0, b0 = PRIOR_LEGS["g"], PSEUDO_LEG_S, PARKING_OVERHEAD_S
            # Pseudo-legs at x0·(1 ± spread) on y = x + b0: mean x0, variance (spread·x0)².
            second = (1.0 + PRIOR_SPREAD * PRIOR_SPREAD) * x0 * x0
            n = self._get("g:n") + w
            sx = self._get("g:x") + w * x0
            sy = self._get("g:y") + w * (x0 + b0)
            sxx = self._get("g:xx") + w * second
            sxy = self._get("g:xy") + w * (second + x0 * b0)
            k = (n * sxy - sx * sy) / (n * sxx - sx * sx)
            b = (sy - k * sx) / n
            if not INTERCEPT_BOUNDS[0] <= b <= INTERCEPT_BOUNDS[1]:
                b = min(max(b, INTERCEPT_BOUNDS[0]), INTERCEPT_BOUNDS[1])
                k = (sxy - b * sx) / sxx   # the best slope with b held at its bound
            memo = self._memo["line"] = (min(max(k, SLOPE_BOUNDS[0]), SLOPE_BOUNDS[1]), b)
        return memo   # type: ignore[return-value]

    def slope(self, vehicle_type: str) -> float:
        """``k_vehicle``: the vehicle's ratio of sums, shrunk towards the global slope."""
        key = ("v", vehicle_type)
        memo = self._memo.get(key)
        if memo is None:
            if vehicle_type not in SPEEDS_KMH:
                raise UnknownVehicleType(vehicle_type)
            k, b = self.line()
            w = PRIOR_LEGS["v"] * PSEUDO_LEG_S
            p = f"v:{vehicle_type}:"
            num = self._get(p + "y") - self._get(p + "n") * b + w * k
            memo = self._memo[key] = _bound(num / (self._get(p + "x") + w), SLOPE_BOUNDS)
        return memo   # type: ignore[return-value]

    def _scaled_x(self, prefix: str) -> float:
        """Σ over vehicle types of k_vehicle · Σx: a group's prior seconds, vehicle-corrected."""
        return sum(self.slope(v) * self._get(f"{prefix}x:{v}") for v in SPEEDS_KMH)

    def hour_factor(self, hour: int) -> float:
        key = ("t", hour)
        memo = self._memo.get(key)
        if memo is None:
            b = self.line()[1]
            w = PRIOR_LEGS["t"] * PSEUDO_LEG_S
            p = f"t:{hour}:"
            num = self._get(p + "y") - self._get(p + "n") * b + w
            memo = self._memo[key] = _bound(num / (self._scaled_x(p) + w), FACTOR_BOUNDS)
        return memo   # type: ignore[return-value]

    def cell_factor(self, cell: str, hour: int) -> float:
        """``m_cell,hour`` of a res-6 cell at a local hour, shrunk towards 1 (the hour's)."""
        key = ("c", cell, hour)
        memo = self._memo.get(key)
        if memo is None:
            p = f"c:{cell}:{hour}:"
            n = self._get(p + "n")
            if n == 0:
                memo = 1.0
            else:
                b, m_h = self.line()[1], self.hour_factor(hour)
                w = PRIOR_LEGS["c"] * PSEUDO_LEG_S
                num = self._get(p + "y") - n * b + w
                memo = _bound(num / (m_h * self._scaled_x(p) + w), FACTOR_BOUNDS)
            self._memo[key] = memo
        return memo   # type: ignore[return-value]

    def legs_in_area(self, area: str) -> int:
        """How many legs ended in the res-7 cell ``area``."""
        return int(sum(self._get(f"a:{area}:{h}:n") for h in self._area_hours.get(area, ())))

    def area_factor(self, area: str) -> float:
        """``m_area`` of a res-7 cell, shrunk towards 1 (the levels above), over every hour it
        has legs of: its legs' residual after ``b + k_vehicle · m_hour · m_cell,hour · x``."""
        key = ("a", area)
        memo = self._memo.get(key)
        if memo is None:
            hours = self._area_hours.get(area)
            if not hours:
                memo = 1.0
            else:
                b, parent = self.line()[1], h3.cell_to_parent(area, TRAVEL_RES)
                w = PRIOR_LEGS["a"] * PSEUDO_LEG_S
                num, den = w, w
                for hour in hours:
                    p = f"a:{area}:{hour}:"
                    num += self._get(p + "y") - self._get(p + "n") * b
                    den += self.hour_factor(hour) * self.cell_factor(parent, hour) * self._scaled_x(p)
                memo = _bound(num / den, FACTOR_BOUNDS)
            self._memo[key] = memo
        return memo   # type: ignore[return-value]

    def travel_s(self, distance_m_: float, vehicle_type: str, at: datetime,
                 end: LatLng) -> float:
        """Seconds to cover a great-circle ``distance_m_`` ending at ``end`` (lat, lng), by
        ``vehicle_type``, leaving at ``at``: arrival at the point, no handover."""
        x = prior_travel_s(distance_m_, vehicle_type, at)
        hour = int(local_hour(at))
        area = cell_of(end[0], end[1], AREA_RES)
        cell = h3.cell_to_parent(area, TRAVEL_RES)
        b = self.line()[1]
        return b + (self.slope(vehicle_type) * self.hour_factor(hour) * self.cell_factor(cell, hour)
                    * self.area_factor(area) * x)

    def leg_s(self, start: LatLng, end: LatLng, vehicle_type: str, at: datetime) -> float:
        """``travel_s`` between two points."""
        return self.travel_s(distance_m(*start, *end), vehicle_type, at, end)

    # -- waits --------------------------------------------------------------------------------

    def handover_s(self, kind: str) -> float:
        """Expected seconds of a handover at the ``shop`` counter or the customer's ``door``."""
        if kind not in HANDOVER_KINDS:
            raise ValueError(f"kind must be one of {', '.join(HANDOVER_KINDS)}, got {kind!r}")
        w = HANDOVER_PRIOR_LEGS
        return ((self._get(f"h:{kind}:s") + w * HANDOVER_PRIOR_S[kind])
                / (self._get(f"h:{kind}:n") + w))

    def pickup_done_s(self, travel_s: float, ready_in_s: float = 0.0,
                      waited_s: float = 0.0) -> float:
        """Seconds until the order is in the driver's hands: the driver arrives after
        ``travel_s``, the order is ready after ``ready_in_s`` (0 when it already is, as every
        delivery is when it opens), then the counter handover, less ``waited_s`` already
        spent at the counter."""
        handover = max(self.handover_s("shop") - waited_s, 0.0)
        return max(travel_s, ready_in_s) + handover

    # -- the cost matrices of ``dispatch.matching.assignment`` ----------------------------------

    def travel_matrix(self, great_circle_m: NDArray[np.float64], vehicle_types: Sequence[str],
                      at: datetime, ends: Sequence[LatLng]) -> NDArray[np.float64]:
        """``travel_s`` for a jobs × drivers matrix: ``great_circle_m[i, j]`` from driver j to
        job i's ``ends[i]`` (its pickup), driver j's ``vehicle_types[j]``, all leaving at ``at``.
        Element by element what ``travel_s`` gives (up to float rounding), so a batch solve
        ranks pairs by the same pickup ETAs the offers then carry."""
        gc = np.asarray(great_circle_m, dtype=np.float64)
        if gc.shape != (len(ends), len(vehicle_types)):
            raise ValueError(f"great_circle_m {gc.shape} does not match {len(ends)} ends "
                             f"× {len(vehicle_types)} vehicle types")
        if not np.all(gc >= 0):
            raise ValueError("great_circle_m must all be non-negative numbers")
        hour = int(local_hour(at))
        per_vehicle = {v: self.slope(v) * seconds_per_m(v, at) for v in dict.fromkeys(vehicle_types)}
        columns = np.array([per_vehicle[v] for v in vehicle_types], dtype=np.float64)
        rows = np.empty(len(ends), dtype=np.float64)
        for i, (lat, lng) in enumerate(ends):
            area = cell_of(lat, lng, AREA_RES)
            rows[i] = (self.hour_factor(hour) * self.cell_factor(h3.cell_to_parent(area, TRAVEL_RES), hour)
                       * self.area_factor(area))
        return self.line()[1] + rows[:, None] * columns[None, :] * (gc * CIRCUITY)


def _bound(value: float, bounds: tuple[float, float]) -> float:
    return min(max(value, bounds[0]), bounds[1])
