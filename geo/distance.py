"""Great-circle distances, bearings and destinations on a spherical Earth.

Scalar functions use ``math`` (no array overhead on the hot per-event path); the
one-to-many and pairwise forms use numpy for matcher candidate sets and cost matrices.
A sphere is within ~0.5% of the WGS84 ellipsoid, which is far below GPS noise and
road-vs-crow-flies error at dispatch scales.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "EARTH_RADIUS_M",
    "bearing_deg",
    "destination",
    "distance_m",
    "distances_m",
    "implied_speed_kmh",
    "pairwise_distances_m",
]

# IUGG mean radius (2a+b)/3: minimises the average error of spherical distances.
EARTH_RADIUS_M = 6_371_008.8


def distance_m(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Haversine great-circle distance in metres between two points in degrees."""
    p1 = math.radians(lat1)
    p2 = math.radians(lat2)
    half_dl = math.radians(lng2 - lng1) / 2
    cc = math.cos(p1) * math.cos(p2)
    h = math.sin((p2 - p1) / 2) ** 2 + cc * math.sin(half_dl) ** 2
    # 1 - h is the haversine to the antipode of point 2. Computing it directly instead of
    # by subtraction keeps near-antipodal pairs exact (1 - h would lose ~10 cm there).
    h_anti = math.sin((p1 + p2) / 2) ** 2 + cc * math.cos(half_dl) ** 2
    return 2 * EARTH_RADIUS_M * math.atan2(math.sqrt(h), math.sqrt(h_anti))


def _haversine(lat1: NDArray[np.float64], lng1: NDArray[np.float64],
               lat2: NDArray[np.float64], lng2: NDArray[np.float64]) -> NDArray[np.float64]:
    # Same formulation as distance_m, so scalar and vector agree to rounding.
    p1 = np.radians(lat1)
    p2 = np.radians(lat2)
    half_dl = np.radians(lng2 - lng1) / 2
    cc = np.cos(p1) * np.cos(p2)
    h = np.sin((p2 - p1) / 2) ** 2 + cc * np.sin(half_dl) ** 2
    h_anti = np.sin((p1 + p2) / 2) ** 2 + cc * np.cos(half_dl) ** 2
    return 2 * EARTH_RADIUS_M * np.arctan2(np.sqrt(h), np.sqrt(h_anti))


def distances_m(lat: float, lng: float, lats: ArrayLike, lngs: ArrayLike) -> NDArray[np.float64]:
    """Distances in metres from one point to each of ``lats``/``lngs`` (same shape out)."""
    lats_a = np.asarray(lats, dtype=np.float64)
    lngs_a = np.asarray(lngs, dtype=np.float64)
    if lats_a.shape != lngs_a.shape:
        raise ValueError(f"lats shape {lats_a.shape} != lngs shape {lngs_a.shape}")
    return _haversine(np.float64(lat), np.float64(lng), lats_a, lngs_a)


def pairwise_distances_m(lats1: ArrayLike, lngs1: ArrayLike,
                         lats2: ArrayLike, lngs2: ArrayLike) -> NDArray[np.float64]:
    """n×m matrix of distances in metres: row i is point i of set 1, column j point j of set 2."""
    a_lat = np.asarray(lats1, dtype=np.float64).ravel()
    a_lng = np.asarray(lngs1, dtype=np.float64).ravel()
    b_lat = np.asarray(lats2, dtype=np.float64).ravel()
    b_lng = np.asarray(lngs2, dtype=np.float64).ravel()
    if a_lat.shape != a_lng.shape or b_lat.shape != b_lng.shape:
        raise ValueError("each point set needs as many latitudes as longitudes")
    return _haversine(a_lat[:, None], a_lng[:, None], b_lat[None, :], b_lng[None, :])


def bearing_deg(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Initial great-circle bearing from point 1 to point 2, degrees clockwise from north in [0, 360).

    Coincident points (and a start at a pole, where north is undefined) give an
    arbitrary but finite answer rather than raising.
    """
    p1 = math.radians(lat1)
    p2 = math.radians(lat2)
    dl = math.radians(lng2 - lng1)
    y = math.sin(dl) * math.cos(p2)
    x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    b = math.degrees(math.atan2(y, x)) % 360.0
    # A tiny negative angle wraps to exactly 360.0 in floating point.
    return 0.0 if b >= 360.0 else b


def destination(lat: float, lng: float, bearing_deg: float,
                distance_m: float) -> tuple[float, float]:
    """The point reached by travelling ``distance_m`` metres from (lat, lng) on initial ``bearing_deg``.

    Returns (lat, lng) in degrees with lng in [-180, 180].
    """
    # Unit-vector form rather than the textbook asin formula: asin loses ~1e-8 rad near
    # the poles, and this stays exact there (at a pole, "north" follows the given lng).
    phi = math.radians(lat)
    lam = math.radians(lng)
    theta = math.radians(bearing_deg)
    delta = distance_m / EARTH_RADIUS_M
    sp, cp, sl, cl = math.sin(phi), math.cos(phi), math.sin(lam), math.cos(lam)
    cd, sd, ct, st = math.cos(delta), math.sin(delta), math.cos(theta), math.sin(theta)
    # start + (north·cosθ + east·sinθ) moved along the great circle by δ
    x = cp * cl * cd + (-sp * cl * ct - sl * st) * sd
    y = cp * sl * cd + (-sp * sl * ct + cl * st) * sd
    z = sp * cd + cp * ct * sd
    return math.degrees(math.atan2(z, math.hypot(x, y))), math.degrees(math.atan2(y, x))


def implied_speed_kmh(lat1: float, lng1: float, t1: float,
                      lat2: float, lng2: float, t2: float) -> float:
    """Speed in km/h needed to cover the distance between two fixes, times in seconds.

    Order of the fixes does not matter. No movement is 0.0 even with equal timestamps;
    movement with equal timestamps is ``inf`` (a teleport, for GPS-jump filters).
    """
    d = distance_m(lat1, lng1, lat2, lng2)
    if d == 0.0:
        return 0.0
    dt = abs(t2 - t1)
    if dt == 0:
        return math.inf
    return d / dt * 3.6
