"""ETA model: great-circle distance × circuity ÷ speed by vehicle and time of day, calibrated.

``eta = (distance_m · circuity · seconds_per_m(vehicle, local hour) + overhead_s) · calibration``

* ``circuity`` turns a crow-flies distance into a road distance.
* ``seconds_per_m`` is the free-flow speed of the vehicle type slowed (or, at night, sped up)
  by a time-of-day congestion multiplier, damped for vehicles that filter through traffic.
* ``overhead_s`` is the fixed time to park and walk in at the end of a leg.
* ``calibration`` is a per-area correction learned from completed deliveries
  (``EtaCalibration``): the ratio actual/estimated, shrunk towards 1.0 while data is thin.

Every constant below is an assumption to be replaced by measurement. This is the *prior*:
the engine's offers and tracking use ``geo.eta_model.EtaModel``, which learns speed,
circuity, a per-leg overhead and handovers from completed legs on top of it (by vehicle,
hour and coarse cell) and equals this function until it has data. ``EtaCalibration`` (one
factor per res-7 cell of actual ÷ whole estimate) was the earlier way back from measurement;
``wakala bench matching`` still reports it beside the learned model. Pure: no clock, no I/O —
the caller passes the time.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import h3
import numpy as np
from numpy.typing import ArrayLike, NDArray

from geo.cells import cell_of

__all__ = [
    "CALIBRATION_RES",
    "CIRCUITY",
    "CONGESTION_SENSITIVITY",
    "JOHANNESBURG_TZ",
    "PARKING_OVERHEAD_S",
    "SPEEDS_KMH",
    "EtaCalibration",
    "UnknownVehicleType",
    "congestion_factor",
    "eta_seconds",
    "etas_seconds",
    "local_hour",
    "seconds_per_m",
]

# Road distance / great-circle distance. ASSUMPTION, not measured for Wakala: published
# detour indices for road networks are mostly 1.2-1.4 (e.g. Ballou et al. 2002 country
# circuity factors; Boscoe et al. 2012 ~1.4 for US driving routes). South African townships
# sit at the high end: grid blocks with few through-streets, cul-de-sacs, and rail lines or
# highways crossable only at a few points. EtaCalibration corrects it per area.
CIRCUITY = 1.35

# Average door-to-door moving speed in free-flowing urban traffic (intersections, robots and
# minibus-taxi stops included), km/h. ASSUMPTION. Motorbikes beat cars even off-peak because
# they filter past queues; bakkies and vans are heavier, slower to park and use main roads.
SPEEDS_KMH: dict[str, float] = {
    "bicycle": 14.0,
    "motorbike": 32.0,
    "car": 30.0,
    "bakkie": 28.0,
    "van": 24.0,
}

# How much of the car congestion multiplier each vehicle feels: 1 = all of it, 0 = none.
# Bicycles and motorbikes filter between lanes, so a jam costs them a fraction of the time.
CONGESTION_SENSITIVITY: dict[str, float] = {
    "bicycle": 0.2,
    "motorbike": 0.4,
    "car": 1.0,
    "bakkie": 1.0,
    "van": 1.0,
}

# Parking, finding the entrance and walking to the counter (or door) at the end of a leg.
PARKING_OVERHEAD_S = 60.0

# South African Standard Time: UTC+2 all year, no DST since 1944.
JOHANNESBURG_TZ = timezone(timedelta(hours=2), "SAST")

# Travel-time multiplier for a car by local hour (piecewise linear, periodic over 24 h).
# ASSUMPTION shaped after Gauteng weekday commuting: peaks around 07-09 and 16-18 (up to
# +60% travel time), free-ish flow at night (-15%). Weekends are not distinguished.
_CONGESTION_KNOTS: tuple[tuple[float, float], ...] = (
    (0.0, 0.85),
    (5.0, 0.85),
    (6.0, 1.15),
    (7.0, 1.50),
    (8.0, 1.60),
    (9.0, 1.35),
    (10.0, 1.15),
    (15.0, 1.20),
    (16.0, 1.45),
    (17.0, 1.60),
    (18.0, 1.45),
    (19.0, 1.20),
    (21.0, 1.00),
    (22.0, 0.85),
    (24.0, 0.85),
)
_KNOT_HOURS = tuple(h for h, _ in _CONGESTION_KNOTS)
_KNOT_FACTORS = tuple(f for _, f in _CONGESTION_KNOTS)


class UnknownVehicleType(ValueError):
    """A vehicle type with no speed in SPEEDS_KMH."""

    def __init__(self, vehicle_type: object) -> None:
        super().__init__(f"unknown vehicle type {vehicle_type!r}; "
                         f"expected one of {', '.join(SPEEDS_KMH)}")
        self.vehicle_type = vehicle_type


def local_hour(at: datetime) -> float:
    """Johannesburg local time of day of ``at`` in fractional hours, [0, 24).

    ``at`` must be timezone-aware: a naive datetime is ambiguous (server UTC or local?)
    and would silently shift the rush hours by two.
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"at must be timezone-aware (e.g. datetime.now(timezone.utc)), got {at!r}")
    t = at.astimezone(JOHANNESBURG_TZ)
    return t.hour + t.minute / 60 + (t.second + t.microsecond / 1e6) / 3600


def congestion_factor(local_hour: float) -> float:
    """Car travel-time multiplier at a Johannesburg local hour (>1 slower, <1 faster).

    Hours wrap modulo 24, so 25.5 is 01:30.
    """
    if not math.isfinite(local_hour):
        raise ValueError(f"local_hour must be finite, got {local_hour}")
    h = local_hour % 24.0
    i = bisect_right(_KNOT_HOURS, h) - 1  # h < 24 = last knot, so i + 1 exists
    h0, h1 = _KNOT_HOURS[i], _KNOT_HOURS[i + 1]
    f0, f1 = _KNOT_FACTORS[i], _KNOT_FACTORS[i + 1]
    return f0 + (f1 - f0) * (h - h0) / (h1 - h0)


def _seconds_per_m(vehicle_type: str, congestion: float) -> float:
    try:
        speed_kmh = SPEEDS_KMH[vehicle_type]
        sensitivity = CONGESTION_SENSITIVITY[vehicle_type]
    except (KeyError, TypeError):
        raise UnknownVehicleType(vehicle_type) from None
    return 3.6 / speed_kmh * (1.0 + sensitivity * (congestion - 1.0))


def seconds_per_m(vehicle_type: str, at: datetime) -> float:
    """The prior's seconds per road metre for ``vehicle_type`` at ``at`` (speed and the
    time-of-day congestion it feels); ``geo.eta_model`` learns corrections on top of it."""
    return _seconds_per_m(vehicle_type, congestion_factor(local_hour(at)))


def eta_seconds(distance_m: float, vehicle_type: str, at: datetime, *,
                circuity: float = CIRCUITY, calibration: float = 1.0,
                overhead_s: float = PARKING_OVERHEAD_S) -> float:
    """Seconds to cover a great-circle ``distance_m`` by ``vehicle_type`` leaving at ``at``.

    Scalar and numpy-free for the per-location-update path. ``calibration`` is a factor from
    ``EtaCalibration.factor``; it scales the whole estimate, overhead included, because it
    was learned as actual/estimated of whole estimates.
    """
    if not distance_m >= 0:  # also rejects NaN
        raise ValueError(f"distance_m must be a non-negative number, got {distance_m}")
    _check_positive("circuity", circuity)
    _check_positive("calibration", calibration)
    spm = _seconds_per_m(vehicle_type, congestion_factor(local_hour(at)))
    return (distance_m * circuity * spm + overhead_s) * calibration


def etas_seconds(distances_m: ArrayLike, vehicle_types: Sequence[str] | NDArray[np.str_] | str,
                 at: datetime, *, circuity: float = CIRCUITY,
                 calibration: float | ArrayLike = 1.0,
                 overhead_s: float = PARKING_OVERHEAD_S) -> NDArray[np.float64]:
    """``eta_seconds`` over arrays: one ETA per distance, all at time ``at``.

    ``vehicle_types`` (one string, or an array of strings) and ``calibration`` (a scalar or
    an array) broadcast against ``distances_m``: for a jobs × drivers matrix pass one
    vehicle type per driver (columns) and a calibration column of shape (jobs, 1).
    Equal to the scalar function element by element (same operations, same order).
    """
    d = np.asarray(distances_m, dtype=np.float64)
    if not np.all(d >= 0):
        raise ValueError("distances_m must all be non-negative numbers")
    _check_positive("circuity", circuity)
    cal = np.asarray(calibration, dtype=np.float64)
    if not np.all(cal > 0) or not np.all(np.isfinite(cal)):
        raise ValueError("calibration must be positive and finite")
    congestion = congestion_factor(local_hour(at))
    # Five vehicle types: look each up once, then map; no per-element float maths in Python.
    per_type = {v: _seconds_per_m(v, congestion) for v in SPEEDS_KMH}
    spm = _lookup(per_type, vehicle_types)
    return (d * circuity * spm + overhead_s) * cal


def _lookup(per_type: Mapping[str, float],
            vehicle_types: Sequence[str] | NDArray[np.str_] | str) -> NDArray[np.float64]:
    if isinstance(vehicle_types, str):
        if vehicle_types not in per_type:
            raise UnknownVehicleType(vehicle_types)
        return np.float64(per_type[vehicle_types])  # type: ignore[return-value]
    types = np.asarray(vehicle_types)
    flat = types.ravel().tolist()
    try:
        values = [per_type[v] for v in flat]
    except (KeyError, TypeError):
        bad = next(v for v in flat if not isinstance(v, str) or v not in per_type)
        raise UnknownVehicleType(bad) from None
    return np.array(values, dtype=np.float64).reshape(types.shape)


def _check_positive(name: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number, got {value}")


# --- calibration ----------------------------------------------------------------------------

# Res 7 hexagons average ~5 km² (edge ~1.2 km): a neighbourhood, big enough to collect
# deliveries quickly, small enough that one township's road layout dominates it.
CALIBRATION_RES = 7


class EtaCalibration:
    """Per-H3-res-7-cell multiplicative ETA correction learned from completed deliveries.

    Each completed leg contributes ``ratio = actual_s / estimated_s``, clipped to
    [min_ratio, max_ratio] so a forgotten "delivered" tap cannot wreck an area. The factor
    is the mean ratio shrunk towards 1.0 by ``prior_weight`` pseudo-observations of 1.0::

        factor = (prior_weight · 1.0 + Σ ratios) / (prior_weight + n)

    so an empty cell is exactly 1.0, a handful of deliveries nudges it, and after many
    consistent ones it converges to their mean. The arithmetic mean of ratios leans slightly
    high relative to a log-mean, which for ETAs shown to customers errs on the safe side.

    Which cell a leg belongs to is the caller's choice; the convention is the cell of the
    leg's destination (``cell_for(dest_lat, dest_lng)``), whose streets dominate the detour.
    Plain data in and out (``to_dict``/``from_dict``); persistence lives elsewhere.
    """

    __slots__ = ("_cells", "max_ratio", "min_ratio", "prior_weight")

    def __init__(self, prior_weight: float = 20.0, *, min_ratio: float = 0.25,
                 max_ratio: float = 4.0) -> None:
        _check_positive("prior_weight", prior_weight)
        _check_positive("min_ratio", min_ratio)
        _check_positive("max_ratio", max_ratio)
        if not min_ratio <= 1.0 <= max_ratio:
            raise ValueError(f"need min_ratio <= 1 <= max_ratio, got {min_ratio}, {max_ratio}")
        self.prior_weight = float(prior_weight)
        self.min_ratio = float(min_ratio)
        self.max_ratio = float(max_ratio)
        self._cells: dict[str, list[float]] = {}  # cell -> [n, sum of clipped ratios]

    @staticmethod
    def cell_for(lat: float, lng: float) -> str:
        """The res-7 cell a point's observations are filed under."""
        return cell_of(lat, lng, CALIBRATION_RES)

    def observe(self, cell: str, estimated_s: float, actual_s: float) -> float:
        """Record one completed leg; returns the clipped ratio that was counted."""
        if not (isinstance(cell, str) and h3.is_valid_cell(cell)
                and h3.get_resolution(cell) == CALIBRATION_RES):
            raise ValueError(f"cell must be an H3 res-{CALIBRATION_RES} cell "
                             f"(EtaCalibration.cell_for(lat, lng)), got {cell!r}")
        _check_positive("estimated_s", estimated_s)
        if not (actual_s >= 0 and math.isfinite(actual_s)):
            raise ValueError(f"actual_s must be a non-negative finite number, got {actual_s}")
        ratio = min(max(actual_s / estimated_s, self.min_ratio), self.max_ratio)
        stats = self._cells.get(cell)
        if stats is None:
            self._cells[cell] = [1.0, ratio]
        else:
            stats[0] += 1.0
            stats[1] += ratio
        return ratio

    def factor(self, cell: str) -> float:
        """The correction for ``cell``: 1.0 with no observations."""
        stats = self._cells.get(cell)
        if stats is None:
            return 1.0
        return (self.prior_weight + stats[1]) / (self.prior_weight + stats[0])

    def factors(self, cells: Iterable[str]) -> NDArray[np.float64]:
        """``factor`` of each cell, as an array for ``etas_seconds(calibration=...)``."""
        return np.array([self.factor(c) for c in cells], dtype=np.float64)

    def observations(self, cell: str) -> int:
        """How many legs have been recorded for ``cell``."""
        stats = self._cells.get(cell)
        return 0 if stats is None else int(stats[0])

    def __len__(self) -> int:
        """Number of cells with at least one observation."""
        return len(self._cells)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready plain data: parameters and per-cell ``[n, ratio_sum]``."""
        return {
            "version": 1,
            "prior_weight": self.prior_weight,
            "min_ratio": self.min_ratio,
            "max_ratio": self.max_ratio,
            "cells": {cell: [int(n), s] for cell, (n, s) in self._cells.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EtaCalibration:
        """Inverse of ``to_dict``; raises ValueError on anything it did not write."""
        if data.get("version") != 1:
            raise ValueError(f"unsupported EtaCalibration data version {data.get('version')!r}")
        try:
            cal = cls(float(data["prior_weight"]), min_ratio=float(data["min_ratio"]),
                      max_ratio=float(data["max_ratio"]))
            cells = data["cells"]
            for cell, (n, ratio_sum) in cells.items():
                n, ratio_sum = int(n), float(ratio_sum)
                if not (h3.is_valid_cell(cell) and h3.get_resolution(cell) == CALIBRATION_RES):
                    raise ValueError(f"not an H3 res-{CALIBRATION_RES} cell: {cell!r}")
                slack = 1e-9 * n  # float error accumulated over n additions
                if n < 1 or not (cal.min_ratio * n - slack <= ratio_sum
                                 <= cal.max_ratio * n + slack):
                    raise ValueError(f"cell {cell}: ratio_sum {ratio_sum} impossible for n={n}")
                cal._cells[cell] = [float(n), ratio_sum]
        except (KeyError, TypeError, AttributeError, OverflowError) as exc:   # int(inf): OverflowError
            raise ValueError(f"malformed EtaCalibration data: {exc!r}") from exc
        return cal
