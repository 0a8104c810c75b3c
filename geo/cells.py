"""H3 cell helpers: indexing points, neighbourhoods, and search-radius sizing.

Thin wrappers over h3 v4 so the rest of Wakala depends on one small surface (and one
default resolution) rather than on h3's naming, which changed wholesale between v3 and v4.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from functools import cache

import h3
import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "DEFAULT_RES",
    "cell_center",
    "cell_of",
    "cells_of",
    "covering_grid",
    "disk",
    "is_valid_cell",
    "k_for_radius",
    "parent",
    "ring",
    "rings",
]

# Res 9 hexagons average ~0.1 km² (edge ~200 m): about a city block, fine enough to
# rank nearby drivers and coarse enough that a few km fits in a disk of a few hundred cells.
DEFAULT_RES = 9


def cell_of(lat: float, lng: float, res: int = DEFAULT_RES) -> str:
    """The H3 cell containing (lat, lng) at ``res``."""
    return h3.latlng_to_cell(lat, lng, res)


def cells_of(lats: ArrayLike, lngs: ArrayLike, res: int = DEFAULT_RES) -> list[str]:
    """The H3 cell of each point, in input order."""
    lats_a = np.asarray(lats, dtype=np.float64)
    lngs_a = np.asarray(lngs, dtype=np.float64)
    if lats_a.shape != lngs_a.shape:
        raise ValueError(f"lats shape {lats_a.shape} != lngs shape {lngs_a.shape}")
    # tolist() hands h3 Python floats; per-element numpy scalars cost more than the lookup.
    to_cell = h3.latlng_to_cell
    return [to_cell(la, ln, res) for la, ln in zip(lats_a.ravel().tolist(),
                                                   lngs_a.ravel().tolist(), strict=True)]


def ring(cell: str, k: int) -> list[str]:
    """Cells at grid distance exactly ``k`` (a hollow ring; ``[cell]`` for k=0).

    6k cells, fewer when the ring passes a pentagon.
    """
    return h3.grid_ring(cell, k)


def disk(cell: str, k: int) -> list[str]:
    """Cells at grid distance at most ``k``, ``cell`` included: 3k(k+1)+1 away from pentagons."""
    return h3.grid_disk(cell, k)


def rings(cell: str, max_k: int) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(k, ring(cell, k))`` for k = 0..max_k, nearest first.

    Lazy so a matcher can stop as soon as it has enough candidates without paying for
    the outer rings (ring k costs O(k), disk k costs O(k²)).
    """
    if max_k < 0:
        raise ValueError(f"max_k must be >= 0, got {max_k}")
    yield 0, [cell]
    for k in range(1, max_k + 1):
        yield k, h3.grid_ring(cell, k)


@cache
def _edge_m(res: int) -> float:
    return h3.average_hexagon_edge_length(res, unit="m")


# Guaranteed coverage of disk(k) is (k - _K_SLACK) average edge lengths; see k_for_radius.
_K_SLACK = 0.7


def k_for_radius(radius_m: float, res: int = DEFAULT_RES) -> int:
    """Smallest k such that ``disk(cell_of(p), k)`` contains the cell of every point
    within ``radius_m`` of p, for any point p on Earth.

    Why the bound is ``ceil(radius_m / e + 0.7)`` with e the *average* hexagon edge length:

    * Regular hexagonal grid of edge e: a point of the centre cell is at most e (the
      circumradius) from its centre. Ring centres lie on a super-hexagon whose flat sides
      are k·√3e·cos30° = 1.5ke from the centre, and the notches between cells on those sides
      stick out a further e/2, so disk(k) covers every point within (1.5k + 0.5)e of the
      centre, hence a circle of (1.5k - 0.5)e around any point of the centre cell.
    * H3 is not regular. Its hexagons shrink towards the 12 pentagons (neighbour spacing
      down to ~0.70 of the average √3e) and are skewed, and a cell's circumradius reaches
      1.10 e. So per-ring growth can be as low as ~1.05 e, not 1.5e.
    * Measured over 300-3000 random cells at res 0-4, 7-9, 11, 12, 15 and every cell within
      6-8 rings of each pentagon at res 3, 9, 10, 13, the margin (coverage radius of disk(k)
      minus centre-cell circumradius) / e is at least 0.55 at k=1 and 1.65 at k=2, then grows
      by at least 1.0 per ring (res 0: 0.43 at k=1). Taking the guaranteed radius as
      (k - 0.7)e stays at least 0.13 e below every measured value; tests/test_geo.py
      re-checks it with random points.

    Returns 0 for radius 0 (the point's own cell is enough).
    """
    if not radius_m >= 0:  # also rejects NaN
        raise ValueError(f"radius_m must be a non-negative number, got {radius_m}")
    if radius_m == 0:
        return 0
    if math.isinf(radius_m):
        raise ValueError("radius_m must be finite")
    return math.ceil(radius_m / _edge_m(res) + _K_SLACK)


def cell_center(cell: str) -> tuple[float, float]:
    """(lat, lng) of the cell's centre, in degrees."""
    return h3.cell_to_latlng(cell)


def parent(cell: str, res: int) -> str:
    """The ancestor of ``cell`` at the coarser resolution ``res`` (``cell`` itself at its own res)."""
    return h3.cell_to_parent(cell, res)


def is_valid_cell(cell: object) -> bool:
    """Whether ``cell`` is a valid H3 cell index string; never raises."""
    return isinstance(cell, str) and h3.is_valid_cell(cell)


def covering_grid(points: Sequence[tuple[float, float]], res: int = DEFAULT_RES, *, max_cells: int = 400,
                  pad_m: float = 400.0, min_res: int = 5) -> tuple[int, list[list[list[float]]]]:
    """A light grid under some points: the boundaries (``[[lat, lng], ...]`` per cell) of the
    cells covering the points' bounding box padded by ``pad_m``, at ``res`` or, if that takes
    more than ``max_cells`` cells, the finest coarser resolution (not below ``min_res``) that
    does not. Returns ``(resolution, boundaries)``.

    The point cells are always included, so a box thinner than a cell still gets a grid. Not
    meant for boxes spanning the antimeridian (a city's deliveries never do).
    """
    if not points:
        raise ValueError("covering_grid needs at least one point")
    lats = [p[0] for p in points]
    lngs = [p[1] for p in points]
    pad_lat = pad_m / 111_320.0
    pad_lng = pad_m / (111_320.0 * max(0.01, math.cos(math.radians(sum(lats) / len(lats)))))
    south, north = max(-89.9, min(lats) - pad_lat), min(89.9, max(lats) + pad_lat)
    west, east = max(-180.0, min(lngs) - pad_lng), min(180.0, max(lngs) + pad_lng)
    box = h3.LatLngPoly([(south, west), (south, east), (north, east), (north, west)])
    for r in range(res, min_res - 1, -1):
        # estimate first: polygon_to_cells on a huge box at a fine resolution is itself costly
        if r > min_res and _box_area_km2(south, west, north, east) / h3.average_hexagon_area(r, "km^2") > 2 * max_cells:
            continue
        cells = set(h3.polygon_to_cells(box, r))
        cells.update(h3.latlng_to_cell(lat, lng, r) for lat, lng in points)
        if len(cells) <= max_cells or r == min_res:
            return r, [[[round(a, 6), round(b, 6)] for a, b in h3.cell_to_boundary(c)] for c in sorted(cells)]
    raise AssertionError("unreachable: the last resolution always returns")


def _box_area_km2(south: float, west: float, north: float, east: float) -> float:
    height = (north - south) * 111.32
    width = (east - west) * 111.32 * math.cos(math.radians((north + south) / 2))
    return max(height * width, 0.0)
