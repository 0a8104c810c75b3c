"""geo.geofence: circles agree with great-circle distance to the metre at any latitude, polygons
contain what they should, and hostile input is refused. Pure computation, no services."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import geo
from geo import Geofence, destination, distance_m

JOBURG = (-26.2041, 28.0473)
TROMSO = (69.6492, 18.9553)
BEARINGS = (0.0, 37.0, 90.0, 133.0, 180.0, 222.5, 270.0, 315.0)


@pytest.mark.parametrize("center", [JOBURG, TROMSO, (0.0, 179.9999), (-89.5, 10.0)],
                         ids=["joburg", "tromso", "antimeridian", "near-pole"])
@pytest.mark.parametrize("radius", [5.0, 75.0, 1_000.0, 5_000.0])
def test_a_circle_holds_radius_minus_1_m_and_not_radius_plus_1_m(center, radius):
    fence = Geofence.circle(*center, radius)
    for bearing in BEARINGS:
        inside = destination(*center, bearing, radius - 1.0)
        outside = destination(*center, bearing, radius + 1.0)
        assert fence.contains(*inside), (bearing, inside)
        assert not fence.contains(*outside), (bearing, outside)
    assert fence.contains(*center)


@given(st.floats(-85, 85), st.floats(-180, 180), st.floats(0, 360),
       st.floats(10, 20_000), st.floats(0.0, 1.0))
@settings(max_examples=300, deadline=None)
def test_circle_membership_is_great_circle_distance_away_from_the_edge(lat, lng, bearing, radius, f):
    fence = Geofence.circle(lat, lng, radius)
    point = destination(lat, lng, bearing, f * 2 * radius)
    d = distance_m(lat, lng, *point)
    if abs(d - radius) > 0.1:   # within the polygon's chord tolerance the answer may go either way
        assert fence.contains(*point) is (d < radius)


def test_contains_many_agrees_with_contains_and_keeps_the_shape():
    fence = Geofence.circle(*JOBURG, 75.0)
    points = [destination(*JOBURG, b, d) for b in BEARINGS for d in (0.0, 20.0, 74.0, 76.0, 500.0)]
    lats = np.array([p[0] for p in points]).reshape(8, 5)
    lngs = np.array([p[1] for p in points]).reshape(8, 5)
    many = fence.contains_many(lats, lngs)
    assert many.dtype == np.bool_ and many.shape == (8, 5)
    assert many.tolist() == [[fence.contains(*p) for p in points[i * 5:i * 5 + 5]] for i in range(8)]
    assert many[:, :3].all() and not many[:, 3:].any()
    assert fence.contains_many([], []).shape == (0,)


# A vendor's premises: an L-shaped yard a few tens of metres across, in Soweto.
YARD = [(-26.2485, 27.8540), (-26.2485, 27.8546), (-26.2489, 27.8546), (-26.2489, 27.8543),
        (-26.2493, 27.8543), (-26.2493, 27.8540)]


def test_a_polygon_contains_its_interior_and_not_its_notch_or_the_street():
    fence = Geofence.polygon(YARD)
    assert fence.kind == "polygon"
    assert fence.contains(-26.2487, 27.8543)           # the wide part
    assert fence.contains(-26.2491, 27.85415)          # the narrow leg
    assert not fence.contains(-26.2491, 27.8545)       # the notch of the L
    assert not fence.contains(-26.2480, 27.8543)       # the street north of it
    assert fence.contains_many([-26.2487, -26.2491, -26.2480], [27.8543, 27.8545, 27.8543]).tolist() == [
        True, False, False]
    # open or closed, clockwise or not: the same area
    closed_reversed = Geofence.polygon([*YARD, YARD[0]][::-1])
    assert closed_reversed.contains(-26.2487, 27.8543)
    assert not closed_reversed.contains(-26.2491, 27.8545)
    assert math.isclose(closed_reversed.shape.area, fence.shape.area, rel_tol=1e-9)
    # about 66 m x 60 m minus the notch: the projection keeps metres
    assert 2_500 < fence.shape.area < 5_000


def test_a_polygon_across_the_antimeridian():
    fence = Geofence.polygon([(-17.0, 179.99), (-17.0, -179.99), (-17.02, -179.99), (-17.02, 179.99)])
    assert fence.contains(-17.01, 180.0) and fence.contains(-17.01, -179.995)
    assert not fence.contains(-17.01, 179.98)


@pytest.mark.parametrize("args", [
    (math.nan, 28.0, 75.0), (-26.2, math.inf, 75.0), (91.0, 28.0, 75.0), (-26.2, -180.5, 75.0),
    (-26.2, 28.0, 0.0), (-26.2, 28.0, -5.0), (-26.2, 28.0, math.nan), (-26.2, 28.0, math.inf),
    (-26.2, 28.0, 1e9), (-26.2, 28.0, True), (-26.2, 28.0, "75"), ("-26.2; drop", 28.0, 75.0),
])
def test_a_hostile_circle_is_refused(args):
    with pytest.raises(ValueError):
        Geofence.circle(*args)


@pytest.mark.parametrize("ring, match", [
    ([], "3 distinct"),
    ([(0.0, 0.0), (0.0, 0.001)], "3 distinct"),
    ([(0.0, 0.0), (0.0, 0.001), (0.0, 0.0), (0.0, 0.001)], "3 distinct"),
    ([(0.0, 0.0), (0.0, 0.001), (0.0, 0.002)], "area"),                              # collinear
    ([(0.0, 0.0), (0.001, 0.001), (0.0, 0.001), (0.001, 0.0)], "simple ring"),       # a bow tie
    ([(0.0, 0.0), (0.0, 0.001), (math.nan, 0.0)], "latitude"),
    ([(0.0, 0.0), (0.0, 0.001), (0.001, math.inf)], "latitude"),
    ([(0.0, 0.0), (0.0, 0.001), (95.0, 0.0)], "latitude"),
    ([(0.0, 0.0), (0.0, 1.0), (1.0, 0.0)], "local"),                                  # ~110 km
    ([(0.0,), (0.0, 0.001), (0.001, 0.0)], "pairs"),
    ([(0.0, "x"), (0.0, 0.001), (0.001, 0.0)], "numbers"),
])
def test_a_degenerate_or_hostile_polygon_is_refused(ring, match):
    with pytest.raises(ValueError, match=match):
        Geofence.polygon(ring)


def test_hostile_points_are_refused_not_answered():
    fence = Geofence.circle(*JOBURG, 75.0)
    for lat, lng in ((math.nan, 28.0), (-26.2, math.inf), (-91.0, 28.0), (0.0, 181.0)):
        with pytest.raises(ValueError):
            fence.contains(lat, lng)
        with pytest.raises(ValueError):
            fence.contains_many([JOBURG[0], lat], [JOBURG[1], lng])
    with pytest.raises(ValueError, match="shape"):
        fence.contains_many([1.0, 2.0], [1.0])


def test_geofence_is_exported_from_geo():
    assert geo.Geofence is Geofence and "Geofence" in geo.__all__
