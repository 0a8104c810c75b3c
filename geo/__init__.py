"""Pure geometry: H3 cells, distances, ETAs, geofences. No I/O.

Latitudes and longitudes are WGS84 degrees, distances metres, times seconds, and cells
H3 v4 index strings (resolution 9 unless given).
"""

from geo.cells import (
    DEFAULT_RES,
    cell_center,
    cell_of,
    cells_of,
    covering_grid,
    disk,
    is_valid_cell,
    k_for_radius,
    parent,
    ring,
    rings,
)
from geo.distance import (
    EARTH_RADIUS_M,
    bearing_deg,
    destination,
    distance_m,
    distances_m,
    implied_speed_kmh,
    pairwise_distances_m,
)
from geo.eta import CIRCUITY, EtaCalibration, UnknownVehicleType, eta_seconds, etas_seconds
from geo.geofence import Geofence

__all__ = [
    "CIRCUITY",
    "DEFAULT_RES",
    "EARTH_RADIUS_M",
    "EtaCalibration",
    "Geofence",
    "UnknownVehicleType",
    "bearing_deg",
    "cell_center",
    "cell_of",
    "cells_of",
    "covering_grid",
    "destination",
    "disk",
    "distance_m",
    "distances_m",
    "eta_seconds",
    "etas_seconds",
    "implied_speed_kmh",
    "is_valid_cell",
    "k_for_radius",
    "pairwise_distances_m",
    "parent",
    "ring",
    "rings",
]
