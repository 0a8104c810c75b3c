"""A synthetic city for load tests: tenants, spaza shops, customers, a fleet and a day's orders.

``generate(CityConfig(seed=...))`` builds a ``Scenario`` deterministically from the seed; ``write``
stores it as JSONL (byte-identical for the same seed and config) and ``read`` loads and
validates it, so a scenario is generated once and replayed many times.

The model (every number an ASSUMPTION shaped after Johannesburg townships, not measured):

* **Geography.** A real bounding box (``CITIES``) with named hotspots: the dense parts of
  Soweto, Alexandra, Hillbrow and the CBD, each with a weight for how busy it is.
* **Vendors** cluster like spaza shops do: each sits at a hotspot (chosen by weight) with a
  gaussian spread of ~300 m. Four in five are spaza shops (6-12 groceries from a spaza
  catalogue: bread, milk, maize meal, paraffin...; airtime is not deliverable), the rest
  takeaways (kota, bunny chow, chips). Products flagged ``cold`` (frozen chicken) need a
  cold-storage vehicle (tagged ``cold_chain`` when provisioned); milk and cold drinks ride in a
  cooler box.
* **Customers** live where demand is: every H3 resolution-8 cell (~0.7 km²) of the box gets a
  weight, a background plus a gaussian bump (~1.2 km) around each hotspot, and cells no vendor
  delivers to get none. Homes are sampled by cell weight, uniformly inside the cell. Each
  customer belongs to one tenant among those with a vendor delivering to them (by tenant size).
* **Orders** arrive as a non-homogeneous Poisson process (thinning) with the daily curve of
  ``order_rate_per_s``: a night floor, a lunch peak at 12:30 and a bigger evening peak at 18:30.
  Each comes from a uniformly chosen customer, to a vendor of the same tenant within the
  vendor's delivery radius (nearer vendors preferred), with 1-3 lines of 1-3 units (popular
  products more often), topped up to the vendor's minimum order, paid cash or card (60/40).
* **Fleet.** Each tenant gets drivers in proportion to its orders; vehicles are 60% motorbikes,
  20% cars, 15% bakkies and 5% bicycles, ~15% of each tenant's cars and bakkies (at least one) with cold storage. Most shifts
  cover the whole window, some start late or end early. Each driver has a home near one of
  its tenant's hotspots, a cruising speed (``loadtest.movement``), a probability of accepting
  an offer, a reply delay and a seed for its own movement.

Times in the file are simulated seconds from the scenario start, except ``start_s`` (seconds
after local midnight). Pure: no I/O outside ``write``/``read``, no clock, no global random state.
"""

from __future__ import annotations

import math
import random
import re
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import cache

import h3

from geo import EARTH_RADIUS_M, distance_m
from loadtest.city_catalogue import (
    FIRST_NAMES,
    LAST_NAMES,
    MOBILE_PREFIXES,
    PLATE_LETTERS,
    POPULARITY,
    SPAZA_CATALOGUE,
    SPAZA_NAMES,
    TAKEAWAY_CATALOGUE,
    TAKEAWAY_NAMES,
    TENANT_NAMES,
    TITLES,
)
from loadtest.city_file import (
    FORMAT_VERSION,
    Scenario,
    ScenarioError,
    from_jsonl,
    read,
    to_jsonl,
    write,
)
from loadtest.movement import cruising_speed

__all__ = [
    "CITIES",
    "FORMAT_VERSION",
    "H3_RESOLUTION",
    "CityConfig",
    "Scenario",
    "ScenarioError",
    "expected_orders",
    "from_jsonl",
    "generate",
    "order_rate_per_s",
    "orders_between",
    "read",
    "to_jsonl",
    "write",
]

H3_RESOLUTION = 8
DAY_S = 86_400


@dataclass(frozen=True)
class CityConfig:
    seed: int = 7
    city: str = "johannesburg-soweto"
    start_s: int = 11 * 3600          # seconds after local midnight when the scenario starts
    duration_s: int = 2 * 3600
    tenants: int = 3
    vendors: int = 45                 # in total, split over tenants
    drivers: int = 120
    customers: int = 1500
    orders_per_day: float = 4000.0    # city total; the daily curve shapes it


# --- the city ---------------------------------------------------------------------------------

# Hotspot centres are the middles of the named townships and suburbs (to a few hundred metres);
# weights say how much trade each has relative to Orlando; streets are real ones nearby.
CITIES: dict[str, dict] = {
    "johannesburg-soweto": {
        "name": "Johannesburg–Soweto",
        # Soweto's western edge (Protea Glen, Dobsonville) to Alexandra, the mine dumps south of
        # the CBD to Alexandra's northern edge.
        "bbox": {"south": -26.30, "west": 27.80, "north": -26.08, "east": 28.12},
        "hotspots": {
            "Orlando West": {"lat": -26.2385, "lng": 27.9085, "weight": 1.0,
                             "streets": ("Vilakazi St", "Moema St", "Ngakane St", "Kumalo St")},
            "Orlando East": {"lat": -26.2330, "lng": 27.9250, "weight": 0.8,
                             "streets": ("Mooki St", "Sofasonke St", "Rathebe St")},
            "Diepkloof": {"lat": -26.2490, "lng": 27.9500, "weight": 0.9,
                          "streets": ("Immink Dr", "Ntsane St", "Molapo Rd")},
            "Meadowlands": {"lat": -26.2190, "lng": 27.8930, "weight": 0.8,
                            "streets": ("Mahalefele Rd", "Nhlapo St", "Masupha St")},
            "Dobsonville": {"lat": -26.2200, "lng": 27.8570, "weight": 0.6,
                            "streets": ("Elias Motsoaledi Rd", "Mashaba St", "Ndaba Dr")},
            "Protea Glen": {"lat": -26.2790, "lng": 27.8170, "weight": 0.7,
                            "streets": ("Protea Blvd", "Lily St", "Carnation St")},
            "Jabulani": {"lat": -26.2470, "lng": 27.8600, "weight": 0.6,
                         "streets": ("Bolani Rd", "Koma Rd", "Machaba Dr")},
            "Zola": {"lat": -26.2430, "lng": 27.8440, "weight": 0.5,
                     "streets": ("Majoeng St", "Ntuli St", "Mkhize St")},
            "Mofolo": {"lat": -26.2310, "lng": 27.8800, "weight": 0.5,
                       "streets": ("Mofolo Rd", "Tshabalala St", "Masilela St")},
            "Pimville": {"lat": -26.2680, "lng": 27.9000, "weight": 0.5,
                         "streets": ("Klipspruit Valley Rd", "Nicholas St", "Chris Hani Rd")},
            "Chiawelo": {"lat": -26.2760, "lng": 27.8640, "weight": 0.5,
                         "streets": ("Mahlangu St", "Baloyi St", "Maluleke St")},
            "Alexandra": {"lat": -26.1040, "lng": 28.0970, "weight": 1.0,
                          "streets": ("Vasco da Gama St", "Selbourne Rd", "Roosevelt St", "London Rd")},
            "Hillbrow": {"lat": -26.1895, "lng": 28.0475, "weight": 0.9,
                         "streets": ("Pretoria St", "Kotze St", "Claim St", "Twist St")},
            "Yeoville": {"lat": -26.1830, "lng": 28.0630, "weight": 0.5,
                         "streets": ("Rockey St", "Raleigh St", "Hunter St")},
            "Johannesburg CBD": {"lat": -26.2045, "lng": 28.0460, "weight": 0.6,
                                 "streets": ("Bree St", "Jeppe St", "Commissioner St", "Eloff St")},
        },
    },
}

# --- the daily order curve --------------------------------------------------------------------

# Relative rate = floor + sum of gaussian bumps (centre, sigma, height), periodic over a day.
# ASSUMPTION: a quiet night, trade building through the day, lunch at 12:30, and the biggest
# peak at 18:30 when people are home from work (supper, paraffin, bread for the morning).
_NIGHT_FLOOR = 0.15
_BUMPS: tuple[tuple[float, float, float], ...] = (
    (14.0 * 3600, 4.0 * 3600, 0.6),        # daytime trade
    (12.5 * 3600, 50.0 * 60, 1.0),         # lunch
    (18.5 * 3600, 75.0 * 60, 1.6),         # evening
)
# Integral of the relative rate over one day, in relative-rate seconds (each bump integrates
# to height·sigma·sqrt(2π) over the real line, and the periodic sum over one day equals that).
_CURVE_INTEGRAL = _NIGHT_FLOOR * DAY_S + sum(h * s * math.sqrt(2 * math.pi) for _, s, h in _BUMPS)
# Upper bound on the relative rate (the periodic copies of a bump add < 1e-7 at its peak).
_CURVE_MAX = _NIGHT_FLOOR + 1.001 * sum(h for _, _, h in _BUMPS)


def order_rate_per_s(t_of_day_s: float, orders_per_day: float) -> float:
    """Orders per second at ``t_of_day_s`` seconds after local midnight (wrapping at 24 h),
    for a city that places ``orders_per_day`` orders over a whole day."""
    t = t_of_day_s % DAY_S
    shape = _NIGHT_FLOOR
    for centre, sigma, height in _BUMPS:
        for shift in (-DAY_S, 0, DAY_S):
            z = (t - centre - shift) / sigma
            shape += height * math.exp(-0.5 * z * z)
    return orders_per_day * shape / _CURVE_INTEGRAL


def orders_between(from_s: float, to_s: float, orders_per_day: float) -> float:
    """Expected orders between two times, in seconds after one local midnight (``to_s`` may run
    past 24 h into the next day): the integral of ``order_rate_per_s``, in closed form."""
    if to_s < from_s:
        raise ValueError(f"to_s ({to_s}) must not be before from_s ({from_s})")
    total = _NIGHT_FLOOR * (to_s - from_s)
    first_day, last_day = math.floor(from_s / DAY_S), math.floor(to_s / DAY_S)
    for centre, sigma, height in _BUMPS:
        scale = sigma * math.sqrt(2.0)
        for day in range(first_day - 1, last_day + 2):
            mu = centre + day * DAY_S
            total += height * sigma * math.sqrt(math.pi / 2) * (
                math.erf((to_s - mu) / scale) - math.erf((from_s - mu) / scale))
    return orders_per_day * total / _CURVE_INTEGRAL


def expected_orders(config: CityConfig) -> float:
    """Expected number of orders in the scenario window (the Poisson mean of its order count)."""
    return orders_between(config.start_s, config.start_s + config.duration_s, config.orders_per_day)


# --- generation constants (ASSUMPTIONS) --------------------------------------------------------

_VENDOR_SPREAD_M = 300.0
_TAKEAWAY_SHARE = 0.2
_CUSTOMER_BUMP_M = 1200.0
_BACKGROUND_WEIGHT = 0.03
# Farther than this from a cell's centre a point can still be in it (res-8 edge ~531 m, the
# circumradius of the largest cells ~1.1 edges); a cell counts as served only with this margin.
_CELL_MARGIN_M = 700.0
# Orders are only drawn within the radius minus this, so a rounding or libm difference in the
# last bit cannot move a customer outside a vendor's radius.
_RADIUS_SLACK_M = 5.0
_VENDOR_PREFERENCE_M = 1500.0      # vendor choice weight exp(-distance / this)
_WATCH_SHARE = 0.3
_CARD_SHARE = 0.4
_LINE_COUNTS = ((1, 2, 3), (0.5, 0.3, 0.2))
_QUANTITIES = ((1, 2, 3), (0.6, 0.3, 0.1))
_VEHICLE_MIX = (("motorbike", 0.60), ("car", 0.20), ("bakkie", 0.15), ("bicycle", 0.05))
_COLD_SHARE = 0.15                 # of cars and bakkies
_DRIVER_HOME_SPREAD_M = 800.0
_FULL_SHIFT_SHARE = 0.7
_LATE_START_SHARE = 0.15           # the rest end early
_PING_INTERVAL_S = 4.0
_COORD_DECIMALS = 6                # ~0.1 m


# --- generation -------------------------------------------------------------------------------


def _stream(config: CityConfig, stage: str) -> random.Random:
    # One generator per stage, so (say) more customers leaves the vendors unchanged.
    return random.Random(f"wakala-city:{config.seed}:{stage}")


def _check_config(config: CityConfig) -> None:
    if config.city not in CITIES:
        raise ValueError(f"unknown city {config.city!r}; known: {', '.join(CITIES)}")
    if not 0 <= config.start_s < DAY_S:
        raise ValueError(f"start_s must be in [0, {DAY_S}), got {config.start_s}")
    if not config.duration_s > 0:
        raise ValueError(f"duration_s must be positive, got {config.duration_s}")
    if not config.tenants >= 1:
        raise ValueError(f"tenants must be at least 1, got {config.tenants}")
    if not config.vendors >= config.tenants:
        raise ValueError(f"need at least one vendor per tenant: vendors={config.vendors}, "
                         f"tenants={config.tenants}")
    if not config.customers >= 1:
        raise ValueError(f"customers must be at least 1, got {config.customers}")
    if not config.drivers >= 0:
        raise ValueError(f"drivers must not be negative, got {config.drivers}")
    if not (config.orders_per_day >= 0 and math.isfinite(config.orders_per_day)):
        raise ValueError(f"orders_per_day must be a non-negative number, got {config.orders_per_day}")


def _apportion(total: int, weights: Sequence[float], minimum: int = 0) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` (largest remainder), each at
    least ``minimum`` when there is enough to go round."""
    n = len(weights)
    floor_each = minimum if total >= minimum * n else 0
    rest = total - floor_each * n
    wsum = sum(weights)
    quotas = [rest * w / wsum if wsum > 0 else rest / n for w in weights]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(n), key=lambda i: (counts[i] - quotas[i], i))
    for i in by_remainder[: rest - sum(counts)]:
        counts[i] += 1
    return [c + floor_each for c in counts]


def _m_to_deg(lat: float, east_m: float, north_m: float) -> tuple[float, float]:
    m_per_deg = EARTH_RADIUS_M * math.pi / 180.0
    return north_m / m_per_deg, east_m / (m_per_deg * math.cos(math.radians(lat)))


def _inside(bbox: dict[str, float], lat: float, lng: float) -> bool:
    return bbox["south"] <= lat <= bbox["north"] and bbox["west"] <= lng <= bbox["east"]


def _near(rng: random.Random, centre: tuple[float, float], spread_m: float,
          bbox: dict[str, float]) -> tuple[float, float]:
    """A point with a gaussian offset of ``spread_m`` per axis from ``centre``, inside ``bbox``."""
    while True:
        dlat, dlng = _m_to_deg(centre[0], rng.gauss(0.0, spread_m), rng.gauss(0.0, spread_m))
        lat = round(centre[0] + dlat, _COORD_DECIMALS)
        lng = round(centre[1] + dlng, _COORD_DECIMALS)
        if _inside(bbox, lat, lng):
            return lat, lng


def _rand(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def _phone(rng: random.Random, used: set[str]) -> str:
    while True:
        phone = f"+27{rng.choice(MOBILE_PREFIXES)}{rng.randrange(10**7):07d}"
        if phone not in used:
            used.add(phone)
            return phone


def _unique(make: Callable[[], str], used: set[str]) -> str:
    while True:
        value = make()
        if value not in used:
            used.add(value)
            return value


def _tenants(config: CityConfig, rng: random.Random) -> tuple[list[dict], list[float]]:
    tenants, shares = [], []
    for i in range(config.tenants):
        base = TENANT_NAMES[i % len(TENANT_NAMES)]
        name = base if i < len(TENANT_NAMES) else f"{base} {i // len(TENANT_NAMES) + 1}"
        slug = "city-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        tenants.append({"kind": "tenant", "key": f"t{i}", "name": name, "slug": slug})
        shares.append(rng.uniform(0.6, 1.4))
    return tenants, shares


def _products(rng: random.Random, takeaway: bool) -> list[dict]:
    catalogue = TAKEAWAY_CATALOGUE if takeaway else SPAZA_CATALOGUE
    count = min(rng.randint(6, 12), len(catalogue))
    chosen = sorted(rng.sample(range(len(catalogue)), count))
    products = []
    for j, i in enumerate(chosen):
        item = catalogue[i]
        # Prices vary a little between shops, to the 50c, often ending in 49c or 99c.
        cents = max(50, round(item.price_cents * rng.uniform(0.92, 1.12) / 50) * 50)
        if rng.random() < 0.6:
            cents -= 1
        products.append({"key": f"p{j}", "sku": item.sku, "name": item.name,
                         "description": item.description, "price": _rand(cents),
                         "stock": 0, "cold": item.cold})
    return products


def _vendors(config: CityConfig, rng: random.Random, shares: Sequence[float]) -> list[dict]:
    city = CITIES[config.city]
    bbox, hotspots = city["bbox"], city["hotspots"]
    names = list(hotspots)
    weights = [hotspots[n]["weight"] for n in names]
    per_tenant = _apportion(config.vendors, shares, minimum=1)
    vendors: list[dict] = []
    used_names: set[str] = set()
    for t, count in enumerate(per_tenant):
        for _ in range(count):
            suburb = rng.choices(names, weights)[0]
            spot = hotspots[suburb]
            lat, lng = _near(rng, (spot["lat"], spot["lng"]), _VENDOR_SPREAD_M, bbox)
            takeaway = rng.random() < _TAKEAWAY_SHARE
            template = rng.choice(TAKEAWAY_NAMES if takeaway else SPAZA_NAMES)
            name = template.format(title=rng.choice(TITLES), first=rng.choice(FIRST_NAMES),
                                   last=rng.choice(LAST_NAMES), suburb=suburb)
            base, n = name, 2
            while name in used_names:
                name, n = f"{base} {n}", n + 1
            used_names.add(name)
            products = _products(rng, takeaway)
            if takeaway:
                radius = rng.randrange(4000, 8001, 500)
                minimum = rng.choice((0, 0, 3000))
                prep = rng.randrange(600, 1501, 30)
            else:
                radius = rng.randrange(3000, 6001, 500)
                minimum = rng.choice((0, 2000, 3000, 5000))
                prep = rng.randrange(180, 601, 30)
            vendors.append({
                "kind": "vendor", "key": f"v{len(vendors)}", "tenant": f"t{t}", "name": name,
                "lat": lat, "lng": lng,
                "street": f"{rng.randint(1, 2999)} {rng.choice(spot['streets'])}, {suburb}",
                "delivery_radius_m": radius, "minimum_order_value": _rand(minimum),
                "prep_s": prep, "accept_delay_s": rng.randrange(10, 91, 5), "products": products,
            })
    return vendors


@cache
def _city_cells(city_key: str) -> tuple[tuple[str, ...], tuple[tuple[float, float], ...],
                                        tuple[float, ...]]:
    """The res-8 cells whose centres are in the city's box, their centres and demand weights."""
    city = CITIES[city_key]
    b = city["bbox"]
    poly = h3.LatLngPoly([(b["south"], b["west"]), (b["south"], b["east"]),
                          (b["north"], b["east"]), (b["north"], b["west"])])
    cells = tuple(sorted(h3.h3shape_to_cells(poly, H3_RESOLUTION)))
    centres = tuple(h3.cell_to_latlng(c) for c in cells)
    weights = []
    for lat, lng in centres:
        w = _BACKGROUND_WEIGHT
        for spot in city["hotspots"].values():
            d = distance_m(lat, lng, spot["lat"], spot["lng"])
            w += spot["weight"] * math.exp(-0.5 * (d / _CUSTOMER_BUMP_M) ** 2)
        weights.append(w)
    return cells, centres, tuple(weights)


def _point_in_cell(rng: random.Random, cell: str) -> tuple[float, float] | None:
    boundary = h3.cell_to_boundary(cell)
    lats = [p[0] for p in boundary]
    lngs = [p[1] for p in boundary]
    for _ in range(50):
        lat = round(rng.uniform(min(lats), max(lats)), _COORD_DECIMALS)
        lng = round(rng.uniform(min(lngs), max(lngs)), _COORD_DECIMALS)
        if h3.latlng_to_cell(lat, lng, H3_RESOLUTION) == cell:
            return lat, lng
    return None


def _customers(config: CityConfig, rng: random.Random, vendors: Sequence[dict],
               shares: Sequence[float], phones: set[str]) -> tuple[list[dict], list[list[tuple[int, float]]]]:
    """Customers, and for each the same-tenant vendors that deliver to them with a preference."""
    city = CITIES[config.city]
    bbox, hotspots = city["bbox"], city["hotspots"]
    cells, centres, base_weights = _city_cells(config.city)
    weights = [w if any(distance_m(lat, lng, v["lat"], v["lng"])
                        <= v["delivery_radius_m"] - _CELL_MARGIN_M for v in vendors) else 0.0
               for (lat, lng), w in zip(centres, base_weights, strict=True)]
    cum = []
    acc = 0.0
    for w in weights:
        acc += w
        cum.append(acc)
    if acc == 0.0:
        raise ValueError("no cell of the city is served by a vendor; raise the vendor count")
    customers: list[dict] = []
    candidates: list[list[tuple[int, float]]] = []
    while len(customers) < config.customers:
        cell = cells[bisect_right(cum, rng.random() * acc)]
        point = _point_in_cell(rng, cell)
        if point is None or not _inside(bbox, *point):
            continue
        lat, lng = point
        serving: dict[int, list[tuple[int, float]]] = {}
        for i, v in enumerate(vendors):
            d = distance_m(lat, lng, v["lat"], v["lng"])
            if d <= v["delivery_radius_m"] - _RADIUS_SLACK_M:
                serving.setdefault(int(v["tenant"][1:]), []).append(
                    (i, math.exp(-d / _VENDOR_PREFERENCE_M)))
        if not serving:
            continue
        tenant_ids = sorted(serving)
        tenant = rng.choices(tenant_ids, [shares[t] for t in tenant_ids])[0]
        suburb = min(hotspots, key=lambda n: distance_m(lat, lng, hotspots[n]["lat"], hotspots[n]["lng"]))
        customers.append({
            "kind": "customer", "key": f"c{len(customers)}", "tenant": f"t{tenant}",
            "name": f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}",
            "phone": _phone(rng, phones), "lat": lat, "lng": lng, "cell": cell,
            "street": f"{rng.randint(1, 9999)} {rng.choice(hotspots[suburb]['streets'])}, {suburb}",
            "watches": rng.random() < _WATCH_SHARE,
        })
        candidates.append(serving[tenant])
    return customers, candidates


def _arrival_times(config: CityConfig, rng: random.Random) -> list[float]:
    """Order times (s from the start, ms-rounded, ascending): Poisson thinning under the curve."""
    peak = config.orders_per_day * _CURVE_MAX / _CURVE_INTEGRAL
    times: list[float] = []
    if peak <= 0:
        return times
    t = 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= config.duration_s:
            return times
        if rng.random() * peak < order_rate_per_s(config.start_s + t, config.orders_per_day):
            rounded = round(t, 3)
            if rounded < config.duration_s:
                times.append(rounded)


def _order_lines(rng: random.Random, vendor: dict) -> list[dict]:
    products = vendor["products"]
    popularity = [POPULARITY[p["sku"]] for p in products]
    prices = [int(Decimal(p["price"]) * 100) for p in products]
    count = rng.choices(*_LINE_COUNTS)[0]
    chosen: list[int] = []
    while len(chosen) < count:
        i = rng.choices(range(len(products)), [0.0 if j in chosen else w
                                               for j, w in enumerate(popularity)])[0]
        chosen.append(i)
    quantity = {i: rng.choices(*_QUANTITIES)[0] for i in chosen}
    minimum = int(Decimal(vendor["minimum_order_value"]) * 100)
    # Top up to the vendor's minimum the way a customer would: one more of the dearest line
    # first, then another product. Always possible: 3 products x 3 units of even the cheapest
    # spaza goods is more than any minimum _vendors sets.
    while sum(prices[i] * q for i, q in quantity.items()) < minimum:
        short = [i for i in quantity if quantity[i] < 3]
        if short:
            quantity[max(short, key=lambda i: (prices[i], -i))] += 1
        elif len(quantity) < 3:
            extra = max((i for i in range(len(products)) if i not in quantity),
                        key=lambda i: (prices[i], -i))
            quantity[extra] = 1
        else:
            raise AssertionError(f"vendor {vendor['key']}: minimum order out of reach")
    return [{"product": products[i]["key"], "quantity": q} for i, q in quantity.items()]


def _orders(config: CityConfig, rng: random.Random, vendors: Sequence[dict],
            customers: Sequence[dict], candidates: Sequence[Sequence[tuple[int, float]]]) -> list[dict]:
    orders = []
    for t in _arrival_times(config, rng):
        c = rng.randrange(len(customers))
        customer = customers[c]
        options = candidates[c]
        vendor = vendors[rng.choices([i for i, _ in options], [w for _, w in options])[0]]
        orders.append({
            "kind": "order", "t": t, "tenant": customer["tenant"], "vendor": vendor["key"],
            "customer": customer["key"], "lines": _order_lines(rng, vendor),
            "payment_method": "card" if rng.random() < _CARD_SHARE else "cash",
            "watch": customer["watches"],
        })
    return orders


def _stock(rng: random.Random, vendors: Sequence[dict], orders: Sequence[dict]) -> None:
    """Stock every product for the whole scenario: at least twice what its orders take."""
    used: Counter[tuple[str, str]] = Counter()
    for order in orders:
        for line in order["lines"]:
            used[order["vendor"], line["product"]] += line["quantity"]
    for vendor in vendors:
        for product in vendor["products"]:
            base = rng.randrange(100, 501, 10)
            product["stock"] = max(base, 2 * used[vendor["key"], product["key"]] + 20)


def _shift(rng: random.Random, duration_s: int) -> tuple[int, int]:
    def minute(s: float) -> int:
        s = int(s)
        return s - s % 60 if duration_s >= 600 else s
    r = rng.random()
    if r < _FULL_SHIFT_SHARE:
        return 0, duration_s
    if r < _FULL_SHIFT_SHARE + _LATE_START_SHARE:
        return min(minute(rng.uniform(0.1, 0.5) * duration_s), duration_s - 1), duration_s
    return 0, max(minute(rng.uniform(0.5, 0.9) * duration_s), 1)


def _drivers(config: CityConfig, rng: random.Random, vendors: Sequence[dict],
             orders: Sequence[dict], shares: Sequence[float], phones: set[str]) -> list[dict]:
    city = CITIES[config.city]
    bbox, hotspots = city["bbox"], city["hotspots"]
    demand = Counter(o["tenant"] for o in orders)
    weights = ([demand[f"t{t}"] for t in range(config.tenants)] if orders else list(shares))
    per_tenant = _apportion(config.drivers, weights, minimum=1)
    mix = _apportion(config.drivers, [w for _, w in _VEHICLE_MIX])
    vehicles = [v for (v, _), n in zip(_VEHICLE_MIX, mix, strict=True) for _ in range(n)]
    rng.shuffle(vehicles)
    # Every tenant gets cold-storage vehicles (its frozen goods go in nothing else): a share of
    # its cars and bakkies, at least one (a bakkie, if its fleet of three or more has none).
    cold: set[int] = set()
    first = 0
    for count in per_tenant:
        mine = range(first, first + count)
        coldable = [i for i in mine if vehicles[i] in ("car", "bakkie")]
        if not coldable and count >= 3:
            vehicles[first] = "bakkie"
            coldable = [first]
        if coldable:
            cold.update(rng.sample(coldable, max(1, round(_COLD_SHARE * len(coldable)))))
        first += count
    # Drivers wait where their tenant's work is: the hotspots of its vendors, weighted by the
    # orders those vendors get (by vendor count for a tenant without orders).
    suburb_of = {v["key"]: min(hotspots, key=lambda n: distance_m(
        v["lat"], v["lng"], hotspots[n]["lat"], hotspots[n]["lng"])) for v in vendors}
    licences: set[str] = set()
    plates: set[str] = set()
    drivers: list[dict] = []
    for t, count in enumerate(per_tenant):
        suburbs = (Counter(suburb_of[o["vendor"]] for o in orders if o["tenant"] == f"t{t}")
                   or Counter(suburb_of[v["key"]] for v in vendors if v["tenant"] == f"t{t}"))
        names = sorted(suburbs)
        busiest_first = sorted(names, key=lambda n: (-suburbs[n], n))
        for j in range(count):
            i = len(drivers)
            vehicle = vehicles[i]
            # one driver at each of the tenant's busy spots first (busiest first), then by weight
            name = busiest_first[j] if j < len(busiest_first) else rng.choices(names, [suburbs[n] for n in names])[0]
            spot = hotspots[name]
            home = _near(rng, (spot["lat"], spot["lng"]), _DRIVER_HOME_SPREAD_M, bbox)
            start, end = _shift(rng, config.duration_s)
            licence = _unique(lambda: f"{rng.randrange(10**9, 10**10)}"
                                      f"{rng.choice(PLATE_LETTERS)}{rng.choice(PLATE_LETTERS)}",
                              licences)
            plate = _unique(lambda: (f"{rng.choice(PLATE_LETTERS)}{rng.choice(PLATE_LETTERS)} "
                                     f"{rng.randrange(100):02d} "
                                     f"{rng.choice(PLATE_LETTERS)}{rng.choice(PLATE_LETTERS)} GP"),
                            plates)
            drivers.append({
                "kind": "driver", "key": f"d{i}", "tenant": f"t{t}",
                "first_name": rng.choice(FIRST_NAMES), "last_name": rng.choice(LAST_NAMES),
                "phone": _phone(rng, phones), "license_number": licence, "registration": plate,
                "vehicle_type": vehicle, "cold_storage": i in cold, "home": [home[0], home[1]],
                "shift_start_s": start, "shift_end_s": end,
                "speed_mps": round(cruising_speed(vehicle, rng), 2),
                "accept_probability": round(rng.uniform(0.7, 0.97), 3),
                "reply_delay_s": round(rng.uniform(3.0, 12.0), 1),
                "ping_interval_s": _PING_INTERVAL_S, "seed": rng.randrange(2**31),
            })
    return drivers


def generate(config: CityConfig) -> Scenario:
    """The scenario for ``config``: the same config always gives the same scenario."""
    _check_config(config)
    tenants, shares = _tenants(config, _stream(config, "tenants"))
    vendors = _vendors(config, _stream(config, "vendors"), shares)
    phones: set[str] = set()
    customers, candidates = _customers(config, _stream(config, "customers"), vendors, shares, phones)
    orders = _orders(config, _stream(config, "orders"), vendors, customers, candidates)
    _stock(_stream(config, "stock"), vendors, orders)
    drivers = _drivers(config, _stream(config, "drivers"), vendors, orders, shares, phones)
    header = {
        "kind": "scenario", "version": FORMAT_VERSION, "seed": config.seed, "city": config.city,
        "bbox": dict(CITIES[config.city]["bbox"]), "start_s": config.start_s,
        "duration_s": config.duration_s, "h3_resolution": H3_RESOLUTION,
        "expected_orders": round(expected_orders(config), 3),
        "counts": {"tenants": len(tenants), "vendors": len(vendors), "drivers": len(drivers),
                   "customers": len(customers), "orders": len(orders)},
    }
    return Scenario(header, tenants, vendors, drivers, customers, orders)
