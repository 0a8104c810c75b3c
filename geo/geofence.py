"""Geofences: "is this position inside the pickup circle / the vendor's premises?".

A ``Geofence`` is a shapely polygon in a local metric plane centred on the fence, plus the
projection that puts positions into that plane. The plane is the spherical **azimuthal
equidistant** projection about the fence's centre: every point lands at its exact great-circle
distance from the centre, in the direction of its initial bearing. So

* a circle fence is exactly the set of points within ``radius_m`` of the centre as
  ``geo.distance_m`` measures it (up to the polygon's chord error, held below
  ``CIRCLE_TOLERANCE_M``), at any latitude — an equirectangular plane would squash it by
  cos(lat) errors away from the centre, and a Web-Mercator one inflates it by 1/cos(lat);
* straight polygon edges stand for geodesics with an error of well under a millimetre for
  fences of a few km (it grows with the square of the size), which is why fences are limited
  to ``MAX_EXTENT_M`` from their centre.

The sphere is the one of ``geo.distance`` (its own error, ~0.5%, is far below GPS noise).
Pure: no I/O. Fences are immutable and prepared once; ``contains_many`` tests many points
with one ``shapely.contains_xy`` call. Points exactly on the boundary are outside.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import shapely
from numpy.typing import ArrayLike, NDArray
from shapely.geometry import Point, Polygon
from shapely.geometry.base import BaseGeometry

from geo.distance import EARTH_RADIUS_M

__all__ = ["CIRCLE_TOLERANCE_M", "MAX_EXTENT_M", "Geofence"]

# A circle is stored as a polygon inscribed in it; its edges stay within this of the true circle.
CIRCLE_TOLERANCE_M = 0.05
# Fences are local: a neighbourhood, a mall, a pickup circle. Beyond this the planar edges
# drift from geodesics (by ~1 m at 50 km) and a fence is probably a data error.
MAX_EXTENT_M = 50_000.0


def _check_lat_lng(lat: float, lng: float, what: str) -> tuple[float, float]:
    try:
        lat, lng = float(lat), float(lng)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be numbers (lat, lng), got {lat!r}, {lng!r}") from None
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lng <= 180.0):  # also rejects NaN
        raise ValueError(f"{what} ({lat}, {lng}) is not a latitude in [-90, 90] and a "
                         f"longitude in [-180, 180]")
    return lat, lng


def _project(lat0: float, lng0: float, lats: NDArray[np.float64],
             lngs: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Azimuthal equidistant (x east, y north, metres) about (lat0, lng0) on the sphere."""
    p0 = math.radians(lat0)
    sp0, cp0 = math.sin(p0), math.cos(p0)
    p = np.radians(lats)
    dl = np.radians(lngs - lng0)
    sp, cp = np.sin(p), np.cos(p)
    # Direction: the east/north components of the initial bearing, of length sin(c).
    east = cp * np.sin(dl)
    north = cp0 * sp - sp0 * cp * np.cos(dl)
    # Angular distance c by the same haversine/atan2 form as geo.distance (exact when small).
    half_dl = dl / 2
    cc = cp0 * cp
    h = np.sin((p - p0) / 2) ** 2 + cc * np.sin(half_dl) ** 2
    h_anti = np.sin((p + p0) / 2) ** 2 + cc * np.cos(half_dl) ** 2
    c = 2 * np.arctan2(np.sqrt(h), np.sqrt(h_anti))
    norm = np.hypot(east, north)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(norm > 0, EARTH_RADIUS_M * c / norm, 0.0)
    return east * scale, north * scale


def _as_points(lats: ArrayLike, lngs: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    try:
        lat_a = np.asarray(lats, dtype=np.float64)
        lng_a = np.asarray(lngs, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("lats and lngs must be arrays of numbers") from None
    if lat_a.shape != lng_a.shape:
        raise ValueError(f"lats shape {lat_a.shape} != lngs shape {lng_a.shape}")
    if not (np.all((lat_a >= -90.0) & (lat_a <= 90.0))
            and np.all((lng_a >= -180.0) & (lng_a <= 180.0))):  # NaN fails both comparisons
        raise ValueError("every latitude must be in [-90, 90] and every longitude in "
                         "[-180, 180] (no NaN or infinity)")
    return lat_a, lng_a


class Geofence:
    """A circle or a polygon on the Earth's surface; build with ``circle`` or ``polygon``."""

    __slots__ = ("center", "kind", "shape")

    def __init__(self, kind: str, center: tuple[float, float], shape: BaseGeometry) -> None:
        # Use the constructors: they validate and project; this only stores.
        self.kind = kind                # "circle" | "polygon"
        self.center = center            # (lat, lng) of the projection's centre
        self.shape = shape              # prepared shapely polygon, metres in that projection

    @classmethod
    def circle(cls, lat: float, lng: float, radius_m: float) -> Geofence:
        """Every point less than ``radius_m`` metres (great-circle) from (lat, lng)."""
        lat, lng = _check_lat_lng(lat, lng, "circle centre")
        if isinstance(radius_m, bool) or not isinstance(radius_m, numbers.Real):
            raise ValueError(f"radius_m must be a number of metres, got {radius_m!r}")
        if not (0.0 < radius_m <= MAX_EXTENT_M):  # also rejects NaN and infinity
            raise ValueError(f"radius_m must be > 0 and at most {MAX_EXTENT_M:g} m, got {radius_m}")
        # Chord error of an n-gon inscribed in radius r is r·(1 - cos(π/n)).
        ratio = max(-1.0, 1.0 - CIRCLE_TOLERANCE_M / radius_m)
        quad_segs = max(8, math.ceil(math.pi / math.acos(ratio) / 4))
        shape = Point(0.0, 0.0).buffer(float(radius_m), quad_segs=quad_segs)
        shapely.prepare(shape)
        return cls("circle", (lat, lng), shape)

    @classmethod
    def polygon(cls, ring: Sequence[tuple[float, float]]) -> Geofence:
        """The area inside a ring of (lat, lng) vertices, open or closed, either winding.

        Raises ValueError for fewer than 3 distinct vertices, a vertex off the globe, a ring
        that crosses itself or has no area, or one larger than ``MAX_EXTENT_M`` from its centre.
        """
        try:
            pairs = [(lat, lng) for lat, lng in ring]
        except (TypeError, ValueError):
            raise ValueError("ring must be a sequence of (lat, lng) pairs") from None
        vertices = [_check_lat_lng(lat, lng, "polygon vertex") for lat, lng in pairs]
        if len(set(vertices)) < 3:
            raise ValueError(f"a polygon needs at least 3 distinct vertices, got {len(set(vertices))}")
        lats = np.array([v[0] for v in vertices])
        lngs = np.array([v[1] for v in vertices])
        center = _spherical_mean(lats, lngs)
        xs, ys = _project(*center, lats, lngs)
        if float(np.max(np.hypot(xs, ys))) > MAX_EXTENT_M:
            raise ValueError(f"polygon reaches more than {MAX_EXTENT_M:g} m from its centre; "
                             "geofences are local")
        shape = Polygon(np.column_stack([xs, ys]))
        if not shape.is_valid or shape.area <= 0.0:
            reason = shapely.is_valid_reason(shape) if not shape.is_valid else "no area"
            raise ValueError(f"polygon is not a simple ring with an area: {reason}")
        shapely.prepare(shape)
        return cls("polygon", center, shape)

    def contains(self, lat: float, lng: float) -> bool:
        """Whether the point is strictly inside the fence."""
        lat, lng = _check_lat_lng(lat, lng, "point")
        x, y = _project(*self.center, np.float64(lat), np.float64(lng))
        return bool(shapely.contains_xy(self.shape, x, y))

    def contains_many(self, lats: ArrayLike, lngs: ArrayLike) -> NDArray[np.bool_]:
        """``contains`` for each point: a bool array of the inputs' shape."""
        lat_a, lng_a = _as_points(lats, lngs)
        x, y = _project(*self.center, lat_a, lng_a)
        return np.asarray(shapely.contains_xy(self.shape, x, y), dtype=np.bool_)

    def __repr__(self) -> str:
        lat, lng = self.center
        return f"Geofence.{self.kind}(centre=({lat:.6f}, {lng:.6f}), area={self.shape.area:.0f} m²)"


def _spherical_mean(lats: NDArray[np.float64], lngs: NDArray[np.float64]) -> tuple[float, float]:
    # The mean of unit vectors: right across the antimeridian, where averaging degrees is not.
    p, lam = np.radians(lats), np.radians(lngs)
    x = float(np.mean(np.cos(p) * np.cos(lam)))
    y = float(np.mean(np.cos(p) * np.sin(lam)))
    z = float(np.mean(np.sin(p)))
    return math.degrees(math.atan2(z, math.hypot(x, y))), math.degrees(math.atan2(y, x))
