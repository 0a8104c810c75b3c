"""How simulated drivers move: cruising speeds, street-like paths, GPS noise and dropouts.

Pure and deterministic: every random choice comes from a ``random.Random`` the caller owns, so
a driver seeded from a scenario file moves the same way on every replay.

The model, kept simple on purpose:

* **Speed.** A driver cruises at one speed per vehicle type, drawn once from
  ``SPEED_BOUNDS_MPS`` (township streets: speed bumps, taxis stopping, potholes), and covers a
  path at that constant speed. Stops at junctions are folded into the cruising speed.
* **Paths.** Roads are not straight lines. ``street_path`` walks a grid of streets rotated
  to a random angle to the trip, in a few dog-legs, with a few metres of jitter at each
  corner. The grid angle is chosen so that the path is 1.2-1.4 times the straight-line
  distance (the detour index of urban road networks, see ``geo.eta.CIRCUITY``).
* **GPS.** A fix is the true position plus a gaussian error of ``sigma_m`` metres per axis;
  about one fix in fifty is a bad one (multipath between buildings, a phone in a pocket)
  with 15-25 m. The reported accuracy is the 68% radius of that error, as phones report it.
* **Dropouts.** Before each fix a phone may lose its connection (``DROPOUT_PROBABILITY``) and
  stay silent for ``dropout_s`` seconds: no fixes at all, then it resumes where the driver
  has got to by then.

Positions are (lat, lng) in WGS84 degrees; metres are converted with a local equirectangular
approximation, exact enough over a city (0.1% over 30 km).
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from collections.abc import Iterator
from typing import NamedTuple

from geo import EARTH_RADIUS_M, UnknownVehicleType, bearing_deg, distance_m

__all__ = [
    "ACCURACY_PER_SIGMA",
    "BAD_FIX_PROBABILITY",
    "BAD_FIX_SIGMA_M",
    "CIRCUITY_BOUNDS",
    "DROPOUT_PROBABILITY",
    "DROPOUT_S",
    "SPEED_BOUNDS_MPS",
    "Fix",
    "Path",
    "cruising_speed",
    "dropout_s",
    "gps_fix",
    "street_path",
    "trace",
    "wander",
]

LatLng = tuple[float, float]

# Cruising speed ranges on township streets, m/s. ASSUMPTION: 6-14 m/s is 22-50 km/h for a
# motorbike filtering past taxis; cars and bakkies are held up by speed bumps and
# potholes; a loaded delivery bicycle does 11-22 km/h. The means sit near geo.eta.SPEEDS_KMH.
SPEED_BOUNDS_MPS: dict[str, tuple[float, float]] = {
    "motorbike": (6.0, 14.0),
    "car": (5.0, 13.0),
    "bakkie": (5.0, 12.0),
    "bicycle": (3.0, 6.0),
    "van": (5.0, 11.0),
}

# Circuity (path length / straight-line distance) of street_path: the grid is aimed at
# _CIRCUITY_TARGET, corner jitter moves it a little, never outside CIRCUITY_BOUNDS.
CIRCUITY_BOUNDS = (1.2, 1.45)
_CIRCUITY_TARGET = (1.22, 1.38)
# One dog-leg (a turn onto the other street direction and back) per this many metres.
_LEG_M = 700.0
_MAX_LEG_PAIRS = 6
# Corner jitter: a fraction of the block, capped, so short trips do not zigzag.
_JITTER_FRACTION = 0.02
_JITTER_MAX_M = 6.0

# A 2-D gaussian with per-axis sigma s puts 68% of fixes within 1.51 s of the truth; phones
# report that 68% radius as "accuracy".
ACCURACY_PER_SIGMA = 1.51
BAD_FIX_PROBABILITY = 0.02
BAD_FIX_SIGMA_M = (15.0, 25.0)

# ASSUMPTION: at a 4 s ping interval, one dropout every ~13 minutes of driving (taxi ranks,
# underpasses, a prepaid bundle running out), each lasting 10-60 s.
DROPOUT_PROBABILITY = 0.005
DROPOUT_S = (10.0, 60.0)

_M_PER_DEG_LAT = EARTH_RADIUS_M * math.pi / 180.0


def _m_per_deg_lng(lat: float) -> float:
    return _M_PER_DEG_LAT * math.cos(math.radians(lat))


def _offset(origin: LatLng, east_m: float, north_m: float) -> LatLng:
    return (origin[0] + north_m / _M_PER_DEG_LAT, origin[1] + east_m / _m_per_deg_lng(origin[0]))


def cruising_speed(vehicle_type: str, rng: random.Random) -> float:
    """A driver's cruising speed in m/s, within ``SPEED_BOUNDS_MPS[vehicle_type]``, most often
    near the middle of the range."""
    try:
        lo, hi = SPEED_BOUNDS_MPS[vehicle_type]
    except (KeyError, TypeError):
        raise UnknownVehicleType(vehicle_type) from None
    return rng.triangular(lo, hi)


def _split(total: float, parts: int, rng: random.Random) -> list[float]:
    weights = [rng.uniform(0.5, 1.5) for _ in range(parts)]
    scale = total / sum(weights)
    return [w * scale for w in weights]


def street_path(start: LatLng, end: LatLng, rng: random.Random) -> list[LatLng]:
    """A plausible street route from ``start`` to ``end``: waypoints (lat, lng), the first
    exactly ``start`` and the last exactly ``end``.

    Dog-legs along a street grid at an angle to the trip, so the route is ~1.22-1.38 times the
    straight-line distance (always within ``CIRCUITY_BOUNDS``), plus a few metres of jitter at
    the corners. ``[start, end]`` when the two are less than a metre apart.
    """
    start = (float(start[0]), float(start[1]))
    end = (float(end[0]), float(end[1]))
    straight = distance_m(*start, *end)
    if straight < 1.0:
        return [start, end]
    east = (end[1] - start[1]) * _m_per_deg_lng(start[0])
    north = (end[0] - start[0]) * _M_PER_DEG_LAT
    heading = math.atan2(north, east)
    # Walking a grid whose axes make angle a with the trip costs |cos a| + |sin a| times the
    # straight line; (cos a + sin a)^2 = 1 + sin 2a, so that picks a for a target circuity.
    target = rng.uniform(*_CIRCUITY_TARGET)
    angle = 0.5 * math.asin(min(1.0, target * target - 1.0))
    axis = heading + (angle if rng.random() < 0.5 else -angle)
    u = (math.cos(axis), math.sin(axis))                 # along the first street direction
    v = (-math.sin(axis), math.cos(axis))                # the cross streets
    along = east * u[0] + north * u[1]
    across = east * v[0] + north * v[1]
    pairs = max(1, min(_MAX_LEG_PAIRS, round(straight / _LEG_M)))
    u_legs = _split(along, pairs, rng)
    v_legs = _split(across, pairs, rng)
    legs: list[tuple[float, float]] = []
    u_first = rng.random() < 0.5
    for du, dv in zip(u_legs, v_legs, strict=True):
        step_u = (du * u[0], du * u[1])
        step_v = (dv * v[0], dv * v[1])
        legs.extend((step_u, step_v) if u_first else (step_v, step_u))
    # Corners a few metres off the grid. That changes the length to first order, so a draw
    # that would leave the circuity range is dropped for the plain grid path.
    jitter = min(_JITTER_MAX_M, _JITTER_FRACTION * straight / pairs)
    corners: list[tuple[float, float]] = []
    x = y = 0.0
    for dx, dy in legs[:-1]:
        x += dx
        y += dy
        corners.append((x, y))
    jittered = [(cx + rng.gauss(0.0, jitter), cy + rng.gauss(0.0, jitter)) for cx, cy in corners]
    for candidate in (jittered, corners):
        points = [start, *(_offset(start, cx, cy) for cx, cy in candidate), end]
        length = sum(distance_m(*a, *b) for a, b in zip(points, points[1:], strict=False))
        if CIRCUITY_BOUNDS[0] <= length / straight <= CIRCUITY_BOUNDS[1]:
            break
    return points


class Path:
    """A route covered at constant speed: ``at(t)`` is where the driver is ``t`` seconds in."""

    __slots__ = ("_cumulative", "duration_s", "length_m", "speed_mps", "waypoints")

    def __init__(self, waypoints: list[LatLng], speed_mps: float) -> None:
        if not waypoints:
            raise ValueError("a path needs at least one waypoint")
        if not (speed_mps > 0 and math.isfinite(speed_mps)):
            raise ValueError(f"speed_mps must be a positive finite number, got {speed_mps}")
        self.waypoints = [(float(lat), float(lng)) for lat, lng in waypoints]
        self.speed_mps = float(speed_mps)
        cumulative = [0.0]
        for (lat1, lng1), (lat2, lng2) in zip(self.waypoints, self.waypoints[1:], strict=False):
            cumulative.append(cumulative[-1] + distance_m(lat1, lng1, lat2, lng2))
        self._cumulative = cumulative
        self.length_m = cumulative[-1]
        self.duration_s = self.length_m / self.speed_mps

    def at(self, elapsed_s: float) -> tuple[float, float, float]:
        """(lat, lng, heading_deg) ``elapsed_s`` seconds after leaving the first waypoint;
        the start before 0, the end (with the last heading) after ``duration_s``."""
        points, cumulative = self.waypoints, self._cumulative
        if len(points) == 1 or self.length_m == 0.0:
            return points[0][0], points[0][1], 0.0
        travelled = min(max(elapsed_s, 0.0) * self.speed_mps, self.length_m)
        # The segment containing `travelled`; zero-length segments are skipped by bisect.
        i = min(bisect_right(cumulative, travelled), len(points) - 1) - 1
        while cumulative[i + 1] == cumulative[i]:   # cannot loop forever: length_m > 0
            i -= 1
        seg = cumulative[i + 1] - cumulative[i]
        f = (travelled - cumulative[i]) / seg
        (lat1, lng1), (lat2, lng2) = points[i], points[i + 1]
        heading = bearing_deg(lat1, lng1, lat2, lng2)
        return lat1 + (lat2 - lat1) * f, lng1 + (lng2 - lng1) * f, heading

    def done(self, elapsed_s: float) -> bool:
        """Whether the driver has reached the last waypoint ``elapsed_s`` seconds in."""
        return elapsed_s >= self.duration_s


def gps_fix(lat: float, lng: float, rng: random.Random, *,
            sigma_m: float = 4.0) -> tuple[float, float, float]:
    """(lat, lng, accuracy_m) a phone reports at the true (lat, lng): gaussian error of
    ``sigma_m`` per axis, or 15-25 m for the occasional bad fix, whose accuracy says so."""
    if rng.random() < BAD_FIX_PROBABILITY:
        sigma_m = rng.uniform(*BAD_FIX_SIGMA_M)
    fixed = _offset((lat, lng), rng.gauss(0.0, sigma_m), rng.gauss(0.0, sigma_m))
    return fixed[0], fixed[1], round(ACCURACY_PER_SIGMA * sigma_m, 1)


def wander(home: LatLng, rng: random.Random, *, radius_m: float = 400.0) -> LatLng:
    """Where an idle driver drifts to next: uniform in the disc of ``radius_m`` around home."""
    r = radius_m * math.sqrt(rng.random())
    theta = rng.uniform(0.0, 2.0 * math.pi)
    return _offset((float(home[0]), float(home[1])), r * math.cos(theta), r * math.sin(theta))


def dropout_s(rng: random.Random) -> float:
    """How long a dropout lasts, in (simulated) seconds: 10-60, short ones more common."""
    lo, hi = DROPOUT_S
    return rng.triangular(lo, hi, lo)


class Fix(NamedTuple):
    """One fix a phone sends, with the truth it was made from (for checking a tracker)."""

    t: float                 # seconds since the path started
    lat: float
    lng: float
    accuracy_m: float
    heading_deg: float
    speed_mps: float
    true_lat: float
    true_lng: float


def trace(path: Path, rng: random.Random, *, interval_s: float = 4.0,
          sigma_m: float = 4.0) -> Iterator[Fix]:
    """The fixes a phone sends while its driver covers ``path``: one every ``interval_s``
    from t = 0 through the first tick at or after arrival, none during a dropout.

    A convenience over ``Path.at``, ``gps_fix``, ``DROPOUT_PROBABILITY`` and ``dropout_s``
    for callers that move one driver along one path at a time.
    """
    if not (interval_s > 0 and math.isfinite(interval_s)):
        raise ValueError(f"interval_s must be a positive finite number, got {interval_s}")
    silent_until = -math.inf
    tick = 0
    while True:
        t = tick * interval_s
        tick += 1
        if t >= silent_until:
            if rng.random() < DROPOUT_PROBABILITY:
                silent_until = t + dropout_s(rng)
            else:
                lat, lng, heading = path.at(t)
                noisy_lat, noisy_lng, accuracy = gps_fix(lat, lng, rng, sigma_m=sigma_m)
                speed = 0.0 if path.done(t) else path.speed_mps
                yield Fix(t, noisy_lat, noisy_lng, accuracy, heading, speed, lat, lng)
        if path.done(t):
            return
