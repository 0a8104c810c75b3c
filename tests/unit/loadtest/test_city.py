"""loadtest/city.py and loadtest/movement.py: the synthetic city is deterministic, its file
round-trips and refuses bad input line by line, and its statistics are what it claims (the
daily curve, Poisson arrivals, clustering, demand by cell, tenancy, fleet, plausible movement).
Pure computation, no services needed."""

from __future__ import annotations

import json
import math
import random
import statistics
import time
from collections import Counter
from dataclasses import replace
from decimal import Decimal

import h3
import numpy as np
import pytest
from scipy import stats

from geo import bearing_deg, distance_m, pairwise_distances_m
from loadtest import city, movement
from loadtest.city import CityConfig, ScenarioError

DEFAULT = CityConfig()
SMALL = CityConfig(seed=3, tenants=2, vendors=8, drivers=10, customers=120)
BBOX = city.CITIES["johannesburg-soweto"]["bbox"]
HOTSPOTS = city.CITIES["johannesburg-soweto"]["hotspots"]


@pytest.fixture(scope="module")
def timed_default() -> tuple[city.Scenario, float]:
    """The default city and the CPU seconds this process spent making it (CPU, not wall
    time: the suite runs beside other workers and services on two cores)."""
    started = time.process_time()
    scenario = city.generate(DEFAULT)
    return scenario, time.process_time() - started


@pytest.fixture(scope="module")
def scenario(timed_default: tuple[city.Scenario, float]) -> city.Scenario:
    return timed_default[0]


@pytest.fixture(scope="module")
def small_text() -> str:
    return city.to_jsonl(city.generate(SMALL))


def poisson_within(observed: int, expected: float, sigmas: float = 4.0) -> bool:
    return abs(observed - expected) <= sigmas * math.sqrt(expected)


# --- determinism and the file -----------------------------------------------------------------


def test_the_same_seed_writes_byte_identical_files(tmp_path, scenario: city.Scenario) -> None:
    city.write(scenario, tmp_path / "a.jsonl")
    city.write(city.generate(DEFAULT), tmp_path / "b.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_a_different_seed_gives_a_different_city(scenario: city.Scenario) -> None:
    other = city.generate(replace(DEFAULT, seed=DEFAULT.seed + 1))
    assert other.header["seed"] == DEFAULT.seed + 1
    assert [v["lat"] for v in other.vendors] != [v["lat"] for v in scenario.vendors]
    assert [c["lat"] for c in other.customers] != [c["lat"] for c in scenario.customers]
    assert [o["t"] for o in other.orders] != [o["t"] for o in scenario.orders]


def test_reading_what_was_written_gives_the_same_scenario(tmp_path, scenario: city.Scenario) -> None:
    path = tmp_path / "city.jsonl"
    city.write(scenario, path)
    again = city.read(path)
    assert again == scenario
    assert again.vendor("v3") == scenario.vendors[3]
    assert again.customer("c10")["key"] == "c10"
    assert again.product("v0", "p0") == scenario.vendors[0]["products"][0]
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["kind"] == "scenario"
    kinds = [json.loads(line)["kind"] for line in lines]
    first_order = kinds.index("order")
    assert set(kinds[first_order:]) == {"order"}, "entities come before orders"
    assert len(lines) == 1 + sum(scenario.header["counts"].values())


def test_the_file_holds_only_plain_json_values(scenario: city.Scenario) -> None:
    def walk(value: object) -> None:
        if isinstance(value, dict):
            assert all(isinstance(k, str) for k in value)
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        else:
            assert type(value) in (str, int, float, bool), f"{value!r} is a {type(value)}"
    for entity in scenario.entities():
        walk(entity)


def test_the_header_describes_the_scenario(scenario: city.Scenario) -> None:
    h = scenario.header
    assert (h["kind"], h["version"], h["seed"], h["city"]) == ("scenario", 1, 7, "johannesburg-soweto")
    assert (h["start_s"], h["duration_s"], h["h3_resolution"]) == (39600, 7200, 8)
    assert h["bbox"] == BBOX
    assert h["expected_orders"] == pytest.approx(city.expected_orders(DEFAULT), abs=1e-3)
    assert h["counts"] == {"tenants": 3, "vendors": 45, "drivers": 120, "customers": 1500,
                           "orders": len(scenario.orders)}


def test_generating_the_default_city_takes_under_five_cpu_seconds(
        timed_default: tuple[city.Scenario, float]) -> None:
    assert timed_default[1] < 5.0


def _edit(text: str, line: int, change) -> str:
    lines = text.splitlines()
    lines[line - 1] = change(lines[line - 1])
    return "\n".join(lines) + "\n"


def _edit_obj(text: str, line: int, **fields) -> str:
    return _edit(text, line, lambda raw: json.dumps({**json.loads(raw), **fields}))


def _line_of(text: str, kind: str, nth: int = 0) -> int:
    found = [n for n, raw in enumerate(text.splitlines(), start=1) if json.loads(raw)["kind"] == kind]
    return found[nth]


@pytest.mark.parametrize("case", [
    "bad json", "unknown kind", "wrong version", "missing header", "unknown vendor",
    "other tenant's customer", "unknown product", "nan", "duplicate key", "unsorted orders",
    "entity after orders", "missing field", "wrong type", "blank line", "wrong count",
    "unknown vehicle", "shift outside the window", "huge integer",
])
def test_a_corrupt_or_hostile_file_is_refused_naming_the_line(small_text: str, case: str) -> None:
    first_order = _line_of(small_text, "order")
    second_order = first_order + 1
    vendor = _line_of(small_text, "vendor")
    driver = _line_of(small_text, "driver", 2)
    tenant_of_first_order = json.loads(small_text.splitlines()[first_order - 1])["tenant"]
    foreign = next(obj["key"] for obj in map(json.loads, small_text.splitlines())
                   if obj["kind"] == "customer" and obj["tenant"] != tenant_of_first_order)
    bad, line = {
        "bad json": (_edit(small_text, vendor, lambda raw: raw[:-5]), vendor),
        "unknown kind": (_edit_obj(small_text, vendor, kind="warehouse"), vendor),
        "wrong version": (_edit_obj(small_text, 1, version=2), 1),
        "missing header": ("\n".join(small_text.splitlines()[1:]) + "\n", 1),
        "unknown vendor": (_edit_obj(small_text, first_order, vendor="v999"), first_order),
        "other tenant's customer": (_edit_obj(small_text, first_order, customer=foreign), first_order),
        "unknown product": (_edit_obj(small_text, first_order,
                                      lines=[{"product": "p99", "quantity": 1}]), first_order),
        "nan": (_edit(small_text, first_order,
                      lambda raw: json.dumps({**json.loads(raw), "t": math.nan})), first_order),
        "duplicate key": (_edit(small_text, vendor, lambda raw: raw[:-1] + ', "lat": 0}'), vendor),
        "unsorted orders": (_edit_obj(small_text, second_order, t=0.0), second_order),
        "entity after orders": (small_text + small_text.splitlines()[vendor - 1] + "\n",
                                len(small_text.splitlines()) + 1),
        "missing field": (_edit(small_text, vendor, lambda raw: json.dumps(
            {k: v for k, v in json.loads(raw).items() if k != "delivery_radius_m"})), vendor),
        "wrong type": (_edit_obj(small_text, vendor, lat="-26.2"), vendor),
        "blank line": (_edit(small_text, vendor, lambda raw: ""), vendor),
        "wrong count": ("\n".join(small_text.splitlines()[:-1]) + "\n", 1),
        "unknown vehicle": (_edit_obj(small_text, driver, vehicle_type="hovercraft"), driver),
        "shift outside the window": (_edit_obj(small_text, driver, shift_end_s=10**6), driver),
        "huge integer": (_edit(small_text, driver, lambda raw: raw.replace(
            '"seed": ', '"seed": ' + "9" * 5000, 1)), driver),
    }[case]
    with pytest.raises(ValueError, match=rf"line {line}\b") as caught:
        city.from_jsonl(bad, source="hostile.jsonl")
    assert isinstance(caught.value, ScenarioError) and caught.value.line == line
    assert "hostile.jsonl" in str(caught.value)


def test_an_empty_or_binary_file_is_refused(tmp_path, small_text: str) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="line 1"):
        city.read(tmp_path / "empty.jsonl")
    lines = small_text.encode().split(b"\n")
    lines[3] = b"\xff\xfe" + lines[3]
    (tmp_path / "binary.jsonl").write_bytes(b"\n".join(lines))
    with pytest.raises(ValueError, match="line 4"):
        city.read(tmp_path / "binary.jsonl")


@pytest.mark.parametrize("bad", [
    {"city": "cape-town"}, {"tenants": 0}, {"vendors": 2, "tenants": 3}, {"duration_s": 0},
    {"start_s": 86400}, {"orders_per_day": -1.0}, {"customers": 0},
])
def test_a_nonsense_config_is_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        city.generate(replace(SMALL, **bad))


# --- the daily curve and arrivals -------------------------------------------------------------


def test_the_daily_curve_integrates_to_orders_per_day() -> None:
    t = np.linspace(0.0, city.DAY_S, 8641)
    rate = np.array([city.order_rate_per_s(x, 4000.0) for x in t])
    assert np.trapezoid(rate, t) == pytest.approx(4000.0, rel=1e-6)
    assert city.orders_between(0, city.DAY_S, 4000.0) == pytest.approx(4000.0, rel=1e-9)
    # Any 24 hours, not just midnight to midnight, and the window form agrees with the rate.
    assert city.orders_between(5 * 3600, 29 * 3600, 4000.0) == pytest.approx(4000.0, rel=1e-9)
    window = np.linspace(DEFAULT.start_s, DEFAULT.start_s + DEFAULT.duration_s, 721)
    numeric = np.trapezoid([city.order_rate_per_s(x, 4000.0) for x in window], window)
    assert city.expected_orders(DEFAULT) == pytest.approx(numeric, rel=1e-6)


def test_the_daily_curve_peaks_at_lunch_and_in_the_evening() -> None:
    def rate(hour: float) -> float:
        return city.order_rate_per_s(hour * 3600, 4000.0)
    minutes = np.arange(0, 24 * 60) / 60
    rates = np.array([rate(h) for h in minutes])
    lunch_window = (minutes >= 11) & (minutes <= 14)
    evening_window = (minutes >= 17) & (minutes <= 20)
    lunch_at = minutes[lunch_window][np.argmax(rates[lunch_window])]
    evening_at = minutes[evening_window][np.argmax(rates[evening_window])]
    assert abs(lunch_at - 12.5) <= 0.34 and abs(evening_at - 18.5) <= 0.34
    assert rates.argmax() == np.flatnonzero(minutes == evening_at)[0], "the evening is the busiest"
    night, morning, afternoon = rate(3.0), rate(9.0), rate(15.5)
    assert rate(18.5) > rate(12.5) > afternoon > morning > night
    assert rate(12.5) > 1.5 * afternoon, "a real dip between the peaks"
    assert rate(18.5) > 8 * night
    assert rate(0.0) == pytest.approx(rate(24.0)), "periodic over a day"


def test_the_order_count_matches_expected_orders_within_poisson_bounds() -> None:
    light = replace(SMALL, customers=60, vendors=6, drivers=4)
    observed = expected = 0.0
    for seed in range(20):
        config = replace(light, seed=seed)
        observed += len(city.generate(config).orders)
        expected += city.expected_orders(config)
    assert poisson_within(int(observed), expected)
    whole_day = replace(light, start_s=0, duration_s=city.DAY_S, orders_per_day=6000.0)
    day = city.generate(whole_day)
    assert city.expected_orders(whole_day) == pytest.approx(6000.0)
    assert poisson_within(len(day.orders), 6000.0)
    # ... and the daily shape shows in the counts: the evening hour vs a night hour.
    hours = Counter(int(o["t"] // 3600) for o in day.orders)
    for hour in (3, 12, 18):
        assert poisson_within(hours[hour], city.orders_between(hour * 3600, (hour + 1) * 3600, 6000.0))


def test_arrivals_are_a_poisson_process() -> None:
    # Time rescaling: mapped through the expected count so far, a non-homogeneous Poisson
    # process has i.i.d. Exp(1) gaps, whatever the curve.
    config = replace(SMALL, customers=60, vendors=6, drivers=4, start_s=0, duration_s=city.DAY_S,
                     orders_per_day=5000.0)
    times = [o["t"] for o in city.generate(config).orders]
    assert times == sorted(times) and 0 <= times[0] and times[-1] < city.DAY_S
    rescaled = np.array([city.orders_between(0, t, config.orders_per_day) for t in times])
    gaps = np.diff(rescaled)
    assert stats.kstest(gaps, "expon").pvalue > 1e-3
    # On a flat stretch (03:00-05:00, the night floor) the raw gaps are exponential:
    # mean 1/rate and coefficient of variation 1.
    night = replace(config, start_s=3 * 3600, duration_s=2 * 3600, orders_per_day=200_000.0)
    t = np.array([o["t"] for o in city.generate(night).orders])
    raw_gaps = np.diff(t)
    rate = city.order_rate_per_s(4 * 3600, night.orders_per_day)
    assert len(raw_gaps) > 1500
    assert raw_gaps.mean() == pytest.approx(1 / rate, rel=0.08)
    assert raw_gaps.std() / raw_gaps.mean() == pytest.approx(1.0, abs=0.08)
    assert stats.kstest(raw_gaps, "expon", args=(0, 1 / rate)).pvalue > 1e-3


# --- geography --------------------------------------------------------------------------------


def _inside(lat: float, lng: float) -> bool:
    return BBOX["south"] <= lat <= BBOX["north"] and BBOX["west"] <= lng <= BBOX["east"]


def test_the_bbox_and_hotspots_are_real_places() -> None:
    # Orlando (Soweto) to Alexandra: the box spans ~30 km east-west.
    assert 25_000 < distance_m(BBOX["south"], BBOX["west"], BBOX["south"], BBOX["east"]) < 40_000
    for name in ("Orlando West", "Diepkloof", "Meadowlands", "Dobsonville", "Protea Glen",
                 "Alexandra", "Hillbrow", "Jabulani"):
        assert _inside(HOTSPOTS[name]["lat"], HOTSPOTS[name]["lng"]), name
    vilakazi_street = (-26.2378, 27.9086)
    orlando = HOTSPOTS["Orlando West"]
    assert distance_m(orlando["lat"], orlando["lng"], *vilakazi_street) < 1000


def test_everything_is_inside_the_bbox(scenario: city.Scenario) -> None:
    points = ([(v["lat"], v["lng"]) for v in scenario.vendors]
              + [(c["lat"], c["lng"]) for c in scenario.customers]
              + [tuple(d["home"]) for d in scenario.drivers])
    assert all(_inside(lat, lng) for lat, lng in points)


def test_vendors_cluster_like_spaza_shops(scenario: city.Scenario) -> None:
    lats = [v["lat"] for v in scenario.vendors]
    lngs = [v["lng"] for v in scenario.vendors]
    d = pairwise_distances_m(lats, lngs, lats, lngs)
    np.fill_diagonal(d, np.inf)
    nearest = d.min(axis=1).mean()
    # Uniform points: mean nearest-neighbour distance 0.5 / sqrt(density) (more at the edges).
    width = distance_m(BBOX["south"], BBOX["west"], BBOX["south"], BBOX["east"])
    height = distance_m(BBOX["south"], BBOX["west"], BBOX["north"], BBOX["west"])
    uniform = 0.5 / math.sqrt(len(lats) / (width * height))
    assert nearest < 0.3 * uniform
    # Every vendor is within a few spreads of a named hotspot.
    for v in scenario.vendors:
        assert min(distance_m(v["lat"], v["lng"], h["lat"], h["lng"]) for h in HOTSPOTS.values()) < 1500


def test_customers_live_where_demand_is(scenario: city.Scenario) -> None:
    for c in scenario.customers:
        assert c["cell"] == h3.latlng_to_cell(c["lat"], c["lng"], 8)
    per_cell = Counter(c["cell"] for c in scenario.customers)
    hotspot_cells = {h3.latlng_to_cell(h["lat"], h["lng"], 8) for h in HOTSPOTS.values()}
    poly = h3.LatLngPoly([(BBOX["south"], BBOX["west"]), (BBOX["south"], BBOX["east"]),
                          (BBOX["north"], BBOX["east"]), (BBOX["north"], BBOX["west"])])
    background = [cell for cell in h3.h3shape_to_cells(poly, 8)
                  if min(distance_m(*h3.cell_to_latlng(cell), h["lat"], h["lng"])
                         for h in HOTSPOTS.values()) > 4000]
    hot_mean = statistics.mean(per_cell[c] for c in hotspot_cells)
    background_mean = statistics.mean(per_cell[c] for c in background)
    assert hot_mean > 20 * background_mean
    # ... but there is some background demand too.
    far = [c for c in scenario.customers
           if min(distance_m(c["lat"], c["lng"], h["lat"], h["lng"]) for h in HOTSPOTS.values()) > 3000]
    assert 0.01 * len(scenario.customers) < len(far) < 0.3 * len(scenario.customers)
    watchers = sum(c["watches"] for c in scenario.customers)
    assert 0.25 < watchers / len(scenario.customers) < 0.35


# --- tenancy, orders and vendors --------------------------------------------------------------


def test_several_tenants_share_the_city(scenario: city.Scenario) -> None:
    keys = [t["key"] for t in scenario.tenants]
    assert len(keys) == 3 and len({t["slug"] for t in scenario.tenants}) == 3
    for group in (scenario.vendors, scenario.customers, scenario.drivers, scenario.orders):
        assert {e["tenant"] for e in group} == set(keys)
    # They share it: some hotspot has vendors of more than one tenant.
    tenants_at = {}
    for v in scenario.vendors:
        spot = min(HOTSPOTS, key=lambda n: distance_m(v["lat"], v["lng"], HOTSPOTS[n]["lat"], HOTSPOTS[n]["lng"]))
        tenants_at.setdefault(spot, set()).add(v["tenant"])
    assert max(len(t) for t in tenants_at.values()) >= 2


def test_orders_stay_in_their_tenant_and_the_vendors_delivery_radius(scenario: city.Scenario) -> None:
    chosen, available = [], []
    for o in scenario.orders:
        vendor, customer = scenario.vendor(o["vendor"]), scenario.customer(o["customer"])
        assert vendor["tenant"] == customer["tenant"] == o["tenant"]
        d = distance_m(customer["lat"], customer["lng"], vendor["lat"], vendor["lng"])
        assert d <= vendor["delivery_radius_m"]
        assert o["watch"] == customer["watches"]
        chosen.append(d)
        available.append(statistics.mean(
            distance_m(customer["lat"], customer["lng"], v["lat"], v["lng"]) for v in scenario.vendors
            if v["tenant"] == o["tenant"]
            and distance_m(customer["lat"], customer["lng"], v["lat"], v["lng"]) <= v["delivery_radius_m"]))
    assert statistics.mean(chosen) < 0.85 * statistics.mean(available), "nearer vendors preferred"


def test_order_lines_are_small_baskets_that_meet_the_minimum(scenario: city.Scenario) -> None:
    ordered: Counter[tuple[str, str]] = Counter()
    for o in scenario.orders:
        assert 1 <= len(o["lines"]) <= 3
        assert len({line["product"] for line in o["lines"]}) == len(o["lines"])
        subtotal = Decimal(0)
        for line in o["lines"]:
            assert 1 <= line["quantity"] <= 3
            subtotal += Decimal(scenario.product(o["vendor"], line["product"])["price"]) * line["quantity"]
            ordered[o["vendor"], line["product"]] += line["quantity"]
        assert subtotal >= Decimal(scenario.vendor(o["vendor"])["minimum_order_value"])
    for (vendor, product), quantity in ordered.items():
        assert scenario.product(vendor, product)["stock"] >= quantity
    methods = Counter(o["payment_method"] for o in scenario.orders)
    assert set(methods) == {"cash", "card"}
    assert 0.52 < methods["cash"] / len(scenario.orders) < 0.68


def test_vendors_sell_a_spaza_catalogue(scenario: city.Scenario) -> None:
    for v in scenario.vendors:
        assert 6 <= len(v["products"]) <= 12
        assert len({p["sku"] for p in v["products"]}) == len(v["products"])
        assert v["delivery_radius_m"] >= 3000 and v["prep_s"] > 0 and v["accept_delay_s"] > 0
        for p in v["products"]:
            assert Decimal(p["price"]) > 0 and Decimal(p["price"]).as_tuple().exponent == -2
            assert p["stock"] >= 100
            assert "AIRTIME" not in p["sku"]
    products = {p["sku"]: p for v in scenario.vendors for p in v["products"]}
    assert products["CHICKEN-2KG"]["cold"] and not products["MILK-FULL-1L"]["cold"]   # a cooler box will do
    assert not products["BREAD-BROWN-700"]["cold"] and not products["PARAFFIN-1L"]["cold"]
    assert any(sku.startswith("KOTA") for sku in products), "some takeaways"
    assert len({v["name"] for v in scenario.vendors}) == len(scenario.vendors)


# --- the fleet --------------------------------------------------------------------------------


def test_the_fleet_mixes_vehicles_shifts_and_cold_storage(scenario: city.Scenario) -> None:
    drivers = scenario.drivers
    types = Counter(d["vehicle_type"] for d in drivers)
    assert set(types) == {"motorbike", "car", "bakkie", "bicycle"}
    assert types["motorbike"] > types["car"] > types["bicycle"] and types["bakkie"] > types["bicycle"]
    cold = [d for d in drivers if d["cold_storage"]]
    assert cold and all(d["vehicle_type"] in ("car", "bakkie") for d in cold)
    assert len(cold) <= 0.25 * (types["car"] + types["bakkie"])
    # every tenant can move its frozen goods
    assert {d["tenant"] for d in cold} == {t["key"] for t in scenario.tenants}
    duration = scenario.header["duration_s"]
    full = 0
    for d in drivers:
        assert 0 <= d["shift_start_s"] < d["shift_end_s"] <= duration
        full += (d["shift_start_s"], d["shift_end_s"]) == (0, duration)
        lo, hi = movement.SPEED_BOUNDS_MPS[d["vehicle_type"]]
        assert lo <= d["speed_mps"] <= hi
        assert 0.7 <= d["accept_probability"] <= 0.97 and 3 <= d["reply_delay_s"] <= 12
        assert d["ping_interval_s"] == 4.0
    assert 0.5 * len(drivers) < full < len(drivers), "most, not all, work the whole window"


def test_tenants_get_drivers_in_proportion_to_their_orders(scenario: city.Scenario) -> None:
    orders = Counter(o["tenant"] for o in scenario.orders)
    drivers = Counter(d["tenant"] for d in scenario.drivers)
    for tenant, n in orders.items():
        assert abs(drivers[tenant] - len(scenario.drivers) * n / len(scenario.orders)) <= 1


@pytest.mark.parametrize("seed", [7, 11, 12])
def test_drivers_wait_near_the_vendors_that_get_the_orders(seed: int) -> None:
    # A small city (few vendors per tenant) is where a bad placement shows: a tenant's drivers
    # at a vendor nobody orders from, far from the one that gets every order.
    small = city.CityConfig(seed=seed, duration_s=600, tenants=2, vendors=4, drivers=10, customers=60)
    scenario = city.generate(small)
    ordered_from = Counter(o["vendor"] for o in scenario.orders)
    for v in scenario.vendors:
        if ordered_from[v["key"]] >= 2:
            near = [d for d in scenario.drivers if d["tenant"] == v["tenant"]
                    and distance_m(*d["home"], v["lat"], v["lng"]) <= v["delivery_radius_m"]]
            assert near, f"no driver of {v['tenant']} within reach of {v['key']}"
    # and most drivers wait within reach of a vendor of theirs that gets orders
    busy = [v for v in scenario.vendors if ordered_from[v["key"]]]
    within = [any(v["tenant"] == d["tenant"] and distance_m(*d["home"], v["lat"], v["lng"]) <= v["delivery_radius_m"]
                  for v in busy) for d in scenario.drivers]
    assert sum(within) >= 0.8 * len(within)


def test_identities_are_unique_and_plausible(scenario: city.Scenario) -> None:
    phones = [p["phone"] for p in (*scenario.drivers, *scenario.customers)]
    assert len(set(phones)) == len(phones)
    assert all(p.startswith("+27") and len(p) == 12 and p[1:].isdigit() for p in phones)
    for field in ("license_number", "registration", "seed"):
        values = [d[field] for d in scenario.drivers]
        assert len(set(values)) == len(values), field
    assert all(d["registration"].endswith(" GP") for d in scenario.drivers)


# --- movement ---------------------------------------------------------------------------------


def _trip(rng: random.Random, max_deg: float = 0.04) -> tuple[tuple[float, float], tuple[float, float]]:
    start = (rng.uniform(BBOX["south"], BBOX["north"]), rng.uniform(BBOX["west"], BBOX["east"]))
    return start, (start[0] + rng.uniform(-max_deg, max_deg), start[1] + rng.uniform(-max_deg, max_deg))


def _path_length(points: list[tuple[float, float]]) -> float:
    return sum(distance_m(*a, *b) for a, b in zip(points, points[1:], strict=False))


def test_street_paths_join_the_points_with_a_plausible_detour() -> None:
    rng = random.Random(11)
    circuities = []
    for _ in range(1500):
        start, end = _trip(rng)
        path = movement.street_path(start, end, rng)
        assert path[0] == start and path[-1] == end
        straight = distance_m(*start, *end)
        if straight >= 1.0:
            circuities.append(_path_length(path) / straight)
    assert min(circuities) >= 1.2 and max(circuities) <= 1.45
    assert 1.25 < statistics.mean(circuities) < 1.35
    home = (-26.2385, 27.9085)
    assert movement.street_path(home, home, rng) == [home, home]


def test_street_paths_follow_a_grid_and_are_deterministic() -> None:
    rng = random.Random(5)
    for _ in range(200):
        start, end = _trip(rng)
        if distance_m(*start, *end) < 1000:
            continue
        state = rng.getstate()
        path = movement.street_path(start, end, rng)
        rng.setstate(state)
        assert movement.street_path(start, end, rng) == path
        assert len(path) >= 3, "not a straight line"
        # Legs run along two perpendicular street directions (up to corner jitter).
        bearings = np.radians([4 * bearing_deg(*a, *b)
                               for a, b in zip(path, path[1:], strict=False)])
        spread = math.degrees(stats.circstd(bearings)) / 4
        assert spread < 6.0


def test_a_path_is_covered_at_constant_speed_and_clamps_at_the_end() -> None:
    start, end = (-26.2385, 27.9085), (-26.2385, 27.9185)       # ~1 km due east
    path = movement.Path([start, end], speed_mps=10.0)
    assert path.length_m == pytest.approx(distance_m(*start, *end))
    assert path.duration_s == pytest.approx(path.length_m / 10.0)
    assert path.at(0)[:2] == start and path.at(-5)[:2] == start
    assert path.at(path.duration_s)[:2] == pytest.approx(end)
    assert path.at(path.duration_s + 100)[:2] == pytest.approx(end)
    lat, lng, heading = path.at(30)
    assert distance_m(*start, lat, lng) == pytest.approx(300, rel=1e-3)
    assert heading == pytest.approx(90, abs=0.5)
    assert not path.done(path.duration_s - 1) and path.done(path.duration_s)
    still = movement.Path([start, start], speed_mps=5.0)
    assert still.duration_s == 0 and still.done(0) and still.at(10)[:2] == start
    with pytest.raises(ValueError):
        movement.Path([start, end], speed_mps=0)


def test_a_simulated_driver_moves_plausibly_fix_by_fix() -> None:
    rng = random.Random(2024)
    interval = 4.0
    exceed, pairs = 0, 0
    for vehicle, (lo, hi) in movement.SPEED_BOUNDS_MPS.items():
        for _ in range(15):
            speed = movement.cruising_speed(vehicle, rng)
            assert lo <= speed <= hi
            start, end = _trip(rng, 0.02)
            path = movement.Path(movement.street_path(start, end, rng), speed)
            fixes = list(movement.trace(path, rng, interval_s=interval))
            for a, b in zip(fixes, fixes[1:], strict=False):
                dt = b.t - a.t
                assert dt >= interval
                true_d = distance_m(a.true_lat, a.true_lng, b.true_lat, b.true_lng)
                # (1e-4: Path interpolates linearly in degrees, distance_m is great-circle)
                assert true_d <= speed * dt * (1 + 1e-4), "no teleporting"
                assert true_d / dt <= hi * (1 + 1e-4)
                # Noise: per-axis sigma of each fix is accuracy / ACCURACY_PER_SIGMA.
                sigma = math.hypot(a.accuracy_m, b.accuracy_m) / movement.ACCURACY_PER_SIGMA
                implied = distance_m(a.lat, a.lng, b.lat, b.lng) / dt
                assert implied <= hi + 6.5 * sigma / dt
                exceed += implied > hi + 3 * sigma / dt
                pairs += 1
            if fixes:
                last = fixes[-1]
                assert (last.true_lat, last.true_lng) == pytest.approx(end) or last.t < path.duration_s
    assert pairs > 3000
    assert exceed / pairs < 0.025        # P(|2-D gaussian| > 3 sigma) = e^-4.5 = 1.1%


def test_gps_noise_matches_the_accuracy_it_reports() -> None:
    rng = random.Random(8)
    at = (-26.2385, 27.9085)
    good_errors, bad = [], 0
    for _ in range(20_000):
        lat, lng, accuracy = movement.gps_fix(*at, rng, sigma_m=4.0)
        if accuracy > 15:
            bad += 1
            assert 15 * movement.ACCURACY_PER_SIGMA - 0.1 <= accuracy <= 25 * movement.ACCURACY_PER_SIGMA + 0.1
        else:
            assert accuracy == pytest.approx(4.0 * movement.ACCURACY_PER_SIGMA, abs=0.05)
            good_errors.append(distance_m(*at, lat, lng))
    assert 0.015 < bad / 20_000 < 0.025
    errors = np.array(good_errors)
    assert math.sqrt((errors ** 2).mean() / 2) == pytest.approx(4.0, rel=0.03)   # per-axis sigma
    # "accuracy" is the 68% radius
    assert (errors <= 4.0 * movement.ACCURACY_PER_SIGMA).mean() == pytest.approx(0.68, abs=0.02)


def test_dropouts_happen_at_about_dropout_probability() -> None:
    rng = random.Random(99)
    interval = 4.0
    fixes = dropouts = 0
    silences = []
    for _ in range(40):
        start = (-26.1, 27.8)
        end = (start[0] - 0.2, start[1] + 0.3)
        path = movement.Path(movement.street_path(start, end, rng), 10.0)
        trace = list(movement.trace(path, rng, interval_s=interval))
        fixes += len(trace)
        for a, b in zip(trace, trace[1:], strict=False):
            if b.t - a.t > interval:
                dropouts += 1
                silences.append(b.t - a.t)
    ticks = fixes + dropouts        # each dropout starts on a tick that sends nothing
    expected = movement.DROPOUT_PROBABILITY * ticks
    assert ticks > 30_000
    assert poisson_within(dropouts, expected)
    lo, hi = movement.DROPOUT_S
    assert all(lo <= s <= hi + 2 * interval for s in silences)
    for _ in range(1000):
        assert lo <= movement.dropout_s(rng) <= hi


def test_idle_drivers_wander_uniformly_near_home() -> None:
    rng = random.Random(4)
    home = (-26.2385, 27.9085)
    distances = np.array([distance_m(*home, *movement.wander(home, rng, radius_m=400.0))
                          for _ in range(20_000)])
    assert distances.max() <= 400.0 * 1.001
    assert (distances <= 200).mean() == pytest.approx(0.25, abs=0.015)    # uniform in the disc
    assert distances.mean() == pytest.approx(400 * 2 / 3, rel=0.02)


def test_an_unknown_vehicle_type_is_refused() -> None:
    with pytest.raises(ValueError, match="hovercraft"):
        movement.cruising_speed("hovercraft", random.Random(1))
