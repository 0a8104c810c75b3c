"""geo/: distances against an independent formula, bearings, destinations, H3 neighbourhoods
and the k_for_radius coverage guarantee. Pure computation, no services needed."""

from __future__ import annotations

import math

import h3
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import geo
from geo import (
    EARTH_RADIUS_M,
    bearing_deg,
    cell_center,
    cell_of,
    cells_of,
    destination,
    disk,
    distance_m,
    distances_m,
    implied_speed_kmh,
    is_valid_cell,
    k_for_radius,
    pairwise_distances_m,
    parent,
    ring,
    rings,
)

JOBURG_PARK = (-26.1952, 28.0416)
MAPONYA_MALL = (-26.2565, 27.9038)
LONDON = (51.5074, -0.1278)
PARIS = (48.8566, 2.3522)

lats = st.floats(-90, 90, allow_nan=False)
lngs = st.floats(-180, 180, allow_nan=False)


def reference_m(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Central angle as atan2(|u×v|, u·v) of unit vectors: a different formula from the
    haversine under test, well conditioned at every separation."""
    def unit(lat: float, lng: float) -> np.ndarray:
        p, lam = math.radians(lat), math.radians(lng)
        return np.array([math.cos(p) * math.cos(lam), math.cos(p) * math.sin(lam), math.sin(p)])
    u, v = unit(lat1, lng1), unit(lat2, lng2)
    return EARTH_RADIUS_M * math.atan2(float(np.linalg.norm(np.cross(u, v))), float(u @ v))


def random_points(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniform on the sphere (uniform latitude would over-sample the poles)."""
    return np.degrees(np.arcsin(rng.uniform(-1, 1, n))), rng.uniform(-180, 180, n)


# --- distances ----------------------------------------------------------------------------

# Expected values are from reference_m (spherical, R = 6371008.8 m) and agree with it to
# 1 mm; the looser sanity bounds are the commonly quoted figures. The WGS84 ellipsoidal
# distance differs from the spherical one by up to ~0.5%, which is not what is tested here.
@pytest.mark.parametrize(("a", "b", "expected_m", "ballpark_km"), [
    (JOBURG_PARK, MAPONYA_MALL, 15_342.6206, 15.4),
    (LONDON, PARIS, 343_556.5349, 343.5),
    ((0.0, 0.0), (0.0, 1.0), 111_195.0802, 111.195),
])
def test_known_distances(a, b, expected_m, ballpark_km):
    d = distance_m(*a, *b)
    assert d == pytest.approx(expected_m, abs=1e-3)
    assert d == pytest.approx(reference_m(*a, *b), abs=1e-3)
    assert d / 1000 == pytest.approx(ballpark_km, rel=0.01)
    assert distance_m(*b, *a) == d


def test_antipodal_and_same_point():
    half = math.pi * EARTH_RADIUS_M
    assert distance_m(0, 0, 0, 180) == pytest.approx(half, abs=1e-6)
    assert distance_m(10, 20, -10, -160) == pytest.approx(half, abs=1e-6)
    assert distance_m(90, 0, -90, 0) == pytest.approx(half, abs=1e-6)
    assert distance_m(*JOBURG_PARK, *JOBURG_PARK) == 0.0


def test_antimeridian_is_short_way_round():
    assert distance_m(0, 179.5, 0, -179.5) == pytest.approx(111_195.08, abs=0.01)


@given(lats, lngs, lats, lngs)
def test_haversine_matches_reference(lat1, lng1, lat2, lng2):
    assert distance_m(lat1, lng1, lat2, lng2) == pytest.approx(
        reference_m(lat1, lng1, lat2, lng2), abs=1e-3)


def test_vectorised_equals_scalar():
    rng = np.random.default_rng(20240601)
    la, ln = random_points(rng, 500)
    for lat, lng in zip(*random_points(rng, 20), strict=True):
        got = distances_m(lat, lng, la, ln)
        assert got.shape == (500,)
        want = [distance_m(lat, lng, a, b) for a, b in zip(la, ln, strict=True)]
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-6)


def test_distances_keeps_shape_and_checks_it():
    la = np.array([[-26.0, -26.1], [-26.2, -26.3]])
    ln = np.full((2, 2), 28.0)
    assert distances_m(-26.0, 28.0, la, ln).shape == (2, 2)
    assert distances_m(-26.0, 28.0, [], []).shape == (0,)
    with pytest.raises(ValueError):
        distances_m(0, 0, [1.0, 2.0], [1.0])


def test_pairwise_shape_and_values():
    rng = np.random.default_rng(7)
    la1, ln1 = random_points(rng, 5)
    la2, ln2 = random_points(rng, 3)
    m = pairwise_distances_m(la1, ln1, la2, ln2)
    assert m.shape == (5, 3)
    for i in range(5):
        for j in range(3):
            assert m[i, j] == pytest.approx(distance_m(la1[i], ln1[i], la2[j], ln2[j]), abs=1e-6)
    assert pairwise_distances_m([], [], la2, ln2).shape == (0, 3)
    with pytest.raises(ValueError):
        pairwise_distances_m([1.0], [1.0, 2.0], la2, ln2)


# --- bearings and destinations -----------------------------------------------------------

@pytest.mark.parametrize(("to", "expected"), [
    ((1.0, 0.0), 0.0), ((0.0, 1.0), 90.0), ((-1.0, 0.0), 180.0), ((0.0, -1.0), 270.0),
])
def test_cardinal_bearings_at_equator(to, expected):
    assert bearing_deg(0.0, 0.0, *to) == pytest.approx(expected, abs=1e-9)


def test_bearing_toward_poles_and_same_point():
    assert bearing_deg(*JOBURG_PARK, 90.0, 0.0) == pytest.approx(0.0, abs=1e-9)
    assert bearing_deg(*JOBURG_PARK, -90.0, 0.0) == pytest.approx(180.0, abs=1e-9)
    assert 0.0 <= bearing_deg(*JOBURG_PARK, *JOBURG_PARK) < 360.0


@given(lats, lngs, lats, lngs)
def test_bearing_range(lat1, lng1, lat2, lng2):
    assert 0.0 <= bearing_deg(lat1, lng1, lat2, lng2) < 360.0


def test_destination_known_moves():
    lat, lng = destination(0.0, 0.0, 0.0, 111_195.0802335329)
    assert (lat, lng) == (pytest.approx(1.0, abs=1e-12), pytest.approx(0.0, abs=1e-12))
    lat, lng = destination(0.0, 179.5, 90.0, 111_195.0802335329)
    assert (lat, lng) == (pytest.approx(0.0, abs=1e-12), pytest.approx(-179.5, abs=1e-9))
    assert destination(*JOBURG_PARK, 123.0, 0.0) == (
        pytest.approx(JOBURG_PARK[0], abs=1e-12), pytest.approx(JOBURG_PARK[1], abs=1e-12))


@given(lats, lngs, st.floats(0, 360, exclude_max=True), st.floats(0, 19_000_000))
def test_destination_round_trips_distance(lat, lng, bearing, d):
    lat2, lng2 = destination(lat, lng, bearing, d)
    assert -90.0 <= lat2 <= 90.0 and -180.0 <= lng2 <= 180.0
    assert distance_m(lat, lng, lat2, lng2) == pytest.approx(d, abs=1e-6, rel=1e-9)


@given(st.floats(-80, 80), lngs, st.floats(0, 360, exclude_max=True), st.floats(1, 1_000_000))
def test_destination_round_trips_bearing(lat, lng, bearing, d):
    lat2, lng2 = destination(lat, lng, bearing, d)
    diff = (bearing_deg(lat, lng, lat2, lng2) - bearing + 180.0) % 360.0 - 180.0
    assert abs(diff) < 1e-6


# --- implied speed ------------------------------------------------------------------------

def test_implied_speed():
    north_1km = destination(*JOBURG_PARK, 0.0, 1000.0)
    assert implied_speed_kmh(*JOBURG_PARK, 100.0, *north_1km, 160.0) == pytest.approx(60.0)
    # order of the fixes does not matter
    assert implied_speed_kmh(*north_1km, 160.0, *JOBURG_PARK, 100.0) == pytest.approx(60.0)
    assert implied_speed_kmh(*JOBURG_PARK, 100.0, *north_1km, 100.0) == math.inf
    assert implied_speed_kmh(*JOBURG_PARK, 100.0, *JOBURG_PARK, 100.0) == 0.0
    assert implied_speed_kmh(*JOBURG_PARK, 100.0, *JOBURG_PARK, 500.0) == 0.0


# --- cells --------------------------------------------------------------------------------

def test_cell_of_matches_h3_at_default_res_9():
    rng = np.random.default_rng(3)
    la, ln = random_points(rng, 200)
    for lat, lng in zip(la.tolist(), ln.tolist(), strict=True):
        assert cell_of(lat, lng) == h3.latlng_to_cell(lat, lng, 9)
        assert cell_of(lat, lng, 5) == h3.latlng_to_cell(lat, lng, 5)
    assert h3.get_resolution(cell_of(*JOBURG_PARK)) == 9
    assert cells_of(la, ln) == [h3.latlng_to_cell(a, b, 9) for a, b in zip(la, ln, strict=True)]
    assert cells_of(la, ln, 7) == [h3.latlng_to_cell(a, b, 7) for a, b in zip(la, ln, strict=True)]
    assert cells_of(np.array([]), np.array([])) == []
    with pytest.raises(ValueError):
        cells_of([1.0, 2.0], [1.0])


def test_center_parent_validity():
    c = cell_of(*JOBURG_PARK)
    assert cell_of(*cell_center(c)) == c
    assert distance_m(*cell_center(c), *JOBURG_PARK) < 2 * h3.average_hexagon_edge_length(9, "m")
    assert parent(c, 7) == cell_of(*JOBURG_PARK, 7)
    assert parent(c, 9) == c
    assert is_valid_cell(c)
    for bad in ("", "not-a-cell", "8928308280fffff0", None, 617700169957507071):
        assert not is_valid_cell(bad)


def test_rings_and_disks_away_from_pentagons():
    c = cell_of(*JOBURG_PARK)
    assert ring(c, 0) == [c]
    seen: set[str] = set()
    for k, cells in rings(c, 8):
        assert len(cells) == (6 * k if k else 1)
        assert sorted(cells) == sorted(ring(c, k))
        assert seen.isdisjoint(cells)
        seen.update(cells)
        assert set(disk(c, k)) == seen
        assert len(disk(c, k)) == 3 * k * (k + 1) + 1
        assert all(h3.grid_distance(c, x) == k for x in cells)


def test_rings_yields_k_in_order_and_validates():
    c = cell_of(*LONDON)
    assert [k for k, _ in rings(c, 4)] == [0, 1, 2, 3, 4]
    assert list(rings(c, 0)) == [(0, [c])]
    with pytest.raises(ValueError):
        list(rings(c, -1))


def test_rings_union_to_disk_around_a_pentagon():
    pent = h3.get_pentagons(9)[0]
    for centre in (pent, h3.grid_ring(pent, 2)[0]):
        seen: set[str] = set()
        for k, cells in rings(centre, 5):
            seen.update(cells)
            assert set(disk(centre, k)) == seen
    assert len(ring(pent, 1)) == 5


# --- k_for_radius -------------------------------------------------------------------------

def test_k_for_radius_basics():
    e = h3.average_hexagon_edge_length(9, "m")
    assert k_for_radius(0.0) == 0
    assert k_for_radius(1.0) == 1
    ks = [k_for_radius(r) for r in np.linspace(0, 10_000, 200)]
    assert ks == sorted(ks)
    # conservative, but not wastefully so: at most one ring beyond radius / edge
    for n in range(1, 30):
        assert k_for_radius(n * e) <= n + 1
    assert k_for_radius(1000.0, 7) < k_for_radius(1000.0, 9) < k_for_radius(1000.0, 11)
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError):
            k_for_radius(bad)


def _assert_covers(rng: np.random.Generator, origin: tuple[float, float],
                   radius: float, res: int, n_points: int = 150) -> None:
    k = k_for_radius(radius, res)
    cover = set(disk(cell_of(*origin, res), k))
    # half on the rim, where a too-small k fails first, half uniform over the disc
    dist = np.concatenate([np.full(n_points // 2, radius),
                           radius * np.sqrt(rng.uniform(0, 1, n_points - n_points // 2))])
    for b, d in zip(rng.uniform(0, 360, n_points).tolist(), dist.tolist(), strict=True):
        p = destination(*origin, b, d)
        assert cell_of(*p, res) in cover, (origin, radius, res, k, b, d)


@pytest.mark.parametrize("res", [5, 7, 9, 11, 13])
def test_k_for_radius_covers_random_circles(res):
    rng = np.random.default_rng(1000 + res)
    e = h3.average_hexagon_edge_length(res, "m")
    la, ln = random_points(rng, 150)
    for lat, lng in zip(la.tolist(), ln.tolist(), strict=True):
        # small radii matter most: there the centre cell's own size dominates the bound
        radius = e * float(rng.choice([rng.uniform(0, 2), rng.uniform(0, 12)]))
        _assert_covers(rng, (lat, lng), radius, res)


@pytest.mark.parametrize("res", [7, 9])
def test_k_for_radius_covers_circles_near_pentagons(res):
    """Hexagons are smallest and most skewed around the 12 pentagons, the bound's worst case."""
    rng = np.random.default_rng(2000 + res)
    e = h3.average_hexagon_edge_length(res, "m")
    for pent in h3.get_pentagons(res):
        centre = cell_center(pent)
        for _ in range(12):
            origin = destination(*centre, rng.uniform(0, 360), e * rng.uniform(0, 8))
            _assert_covers(rng, origin, e * rng.uniform(0, 6), res)


@settings(max_examples=200)
@given(st.floats(-85, 85), st.floats(-179, 179), st.floats(0, 3_000))
def test_k_for_radius_covers_property(lat, lng, radius):
    _assert_covers(np.random.default_rng(0), (lat, lng), radius, 9, n_points=60)


def test_package_exports():
    for name in geo.__all__:
        assert hasattr(geo, name), name
