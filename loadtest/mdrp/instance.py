"""An MDRP instance read from its four tab-separated files, every value checked.

The Grubhub instances (``/work/shared/data/mdrp/README.md``) are four small text files with a
header line. The reader trusts nothing in them: a file that is missing, too large, not UTF-8,
with the wrong header, a short or long line, a number that is not one (``nan``, ``1e999``,
``1_000``, ``0x10``), a time that is not a whole minute, an id that could not be written back
into the space-separated solution files, a duplicate id, an order of an unknown restaurant,
a ready time before the placement or a shift that ends before it starts, is refused with one
``InvalidInstance`` naming the file, the line and the field (``orders.txt:12:ready_time``).

Why some rules are stricter than the set's own evaluator:

* ids are ``[A-Za-z0-9_.-]{1,64}`` and unique across the three files, and never ``0``: the
  solution files are split on whitespace, the evaluator looks every id up in one table of
  locations, and ``0`` means "the courier's start" in the couriers' moves;
* service minutes are whole and at least 1: the evaluator places a courier "at" a stop only
  strictly after arriving there, so a pickup needs at least one minute after the arrival.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dispatch.core.errors import (
    BAD_FORMAT,
    DUPLICATE,
    EMPTY,
    INVALID_TEXT,
    MISSING_FIELD,
    NOT_FINITE,
    NOT_FOUND,
    OUT_OF_RANGE,
    TOO_LARGE,
    TOO_MANY,
    UNEXPECTED_FIELD,
    WRONG_TYPE,
    Refusal,
)

__all__ = [
    "FILES",
    "Courier",
    "Instance",
    "InvalidInstance",
    "Order",
    "Parameters",
    "Restaurant",
    "read_instance",
]

MAX_FILE_BYTES = 20 * 1024 * 1024
MAX_ROWS = 200_000
MAX_COORD_M = 10_000_000.0     # 10,000 km: a plane, not a planet
MAX_MINUTE = 7 * 1440          # a week of minutes
ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
INT_RE = re.compile(r"[+-]?[0-9]{1,12}")
FLOAT_RE = re.compile(r"[+-]?(?:[0-9]{1,15}(?:\.[0-9]{0,15})?|\.[0-9]{1,15})(?:[eE][+-]?[0-9]{1,3})?")

FILES = {
    "orders.txt": ("order", "x", "y", "placement_time", "restaurant", "ready_time"),
    "restaurants.txt": ("restaurant", "x", "y"),
    "couriers.txt": ("courier", "x", "y", "on_time", "off_time"),
    "instance_parameters.txt": ("meters_per_minute", "pickup service minutes", "dropoff service minutes",
                                "target click-to-door", "maximum click-to-door", "pay per order",
                                "guaranteed pay per hour"),
}


class InvalidInstance(Refusal):
    """An instance file that cannot be used; ``field`` is ``file:line:column``."""

    def __init__(self, reason: str, where: str, message: str) -> None:
        super().__init__(422, reason, f"{where}: {message}", where)


@dataclass(frozen=True, slots=True)
class Restaurant:
    id: str
    x: float
    y: float


@dataclass(frozen=True, slots=True)
class Order:
    id: str
    x: float
    y: float
    placed_at: int
    restaurant: str
    ready_at: int


@dataclass(frozen=True, slots=True)
class Courier:
    id: str
    x: float
    y: float
    on_at: int
    off_at: int


@dataclass(frozen=True, slots=True)
class Parameters:
    metres_per_minute: float
    pickup_service_min: int
    dropoff_service_min: int
    target_click_to_door_min: float
    max_click_to_door_min: float
    pay_per_order: float
    guaranteed_pay_per_hour: float


@dataclass(frozen=True)
class Instance:
    name: str
    orders: tuple[Order, ...]            # file order
    restaurants: dict[str, Restaurant]
    couriers: tuple[Courier, ...]        # file order
    params: Parameters

    def order(self, order_id: str) -> Order:
        return self._orders[order_id]

    def courier(self, courier_id: str) -> Courier:
        return self._couriers[courier_id]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_orders", {o.id: o for o in self.orders})
        object.__setattr__(self, "_couriers", {c.id: c for c in self.couriers})

    def location(self, place: str) -> tuple[float, float]:
        """Coordinates of an order (its customer), a restaurant or a courier (its start)."""
        for table in (self._orders, self.restaurants, self._couriers):
            found = table.get(place)
            if found is not None:
                return found.x, found.y
        raise KeyError(place)


class _Rows:
    """One file's data lines as (line number, fields), header checked."""

    def __init__(self, directory: Path, name: str) -> None:
        self.name = name
        path = directory / name
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise InvalidInstance(TOO_LARGE, name, f"larger than {MAX_FILE_BYTES} bytes")
            raw = path.read_bytes()
        except FileNotFoundError:
            raise InvalidInstance(NOT_FOUND, name, f"missing from {directory}") from None
        except IsADirectoryError:
            raise InvalidInstance(BAD_FORMAT, name, "is a directory, not a file") from None
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InvalidInstance(INVALID_TEXT, name, f"not UTF-8 text (byte {exc.start})") from None
        if "\x00" in text:
            raise InvalidInstance(INVALID_TEXT, name, "holds a NUL character")
        lines = text.splitlines()
        if not lines or not lines[0].strip():
            raise InvalidInstance(EMPTY, f"{name}:1", "no header line")
        header = tuple(h.strip() for h in lines[0].split("\t"))
        expected = FILES[name]
        if header != expected:
            raise InvalidInstance(BAD_FORMAT, f"{name}:1",
                                  f"header must be {' | '.join(expected)} (tab-separated), got {' | '.join(header)[:200]}")
        self.rows: list[tuple[int, list[str]]] = []
        for number, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            fields = [f.strip() for f in line.split("\t")]
            if len(fields) < len(expected):
                raise InvalidInstance(MISSING_FIELD, f"{name}:{number}:{expected[len(fields)]}",
                                      f"{len(fields)} fields, {len(expected)} expected")
            if len(fields) > len(expected):
                raise InvalidInstance(UNEXPECTED_FIELD, f"{name}:{number}",
                                      f"{len(fields)} fields, {len(expected)} expected")
            self.rows.append((number, fields))
            if len(self.rows) > MAX_ROWS:
                raise InvalidInstance(TOO_MANY, f"{name}:{number}", f"more than {MAX_ROWS} rows")
        if not self.rows:
            raise InvalidInstance(EMPTY, name, "no data lines")

    def where(self, number: int, column: int) -> str:
        return f"{self.name}:{number}:{FILES[self.name][column]}"

    def ident(self, number: int, fields: list[str], column: int) -> str:
        value = fields[column]
        if not ID_RE.fullmatch(value) or value == "0":
            raise InvalidInstance(BAD_FORMAT, self.where(number, column),
                                  f"id {value[:70]!r} must be 1-64 of A-Z a-z 0-9 _ . - and not 0")
        return value

    def number(self, number: int, fields: list[str], column: int, *, low: float, high: float) -> float:
        value = fields[column]
        where = self.where(number, column)
        if not value:
            raise InvalidInstance(MISSING_FIELD, where, "empty")
        if value.lower().lstrip("+-") in ("nan", "inf", "infinity"):
            raise InvalidInstance(NOT_FINITE, where, f"{value!r} is not a finite number")
        if not FLOAT_RE.fullmatch(value):
            raise InvalidInstance(WRONG_TYPE, where, f"{value[:40]!r} is not a decimal number")
        parsed = float(value)
        if not low <= parsed <= high:   # 1e999 is inf: out of range too
            raise InvalidInstance(OUT_OF_RANGE, where, f"{value[:40]} is outside {low:g}..{high:g}")
        return parsed

    def minute(self, number: int, fields: list[str], column: int, *, low: int = 0,
               high: int = MAX_MINUTE) -> int:
        value = fields[column]
        where = self.where(number, column)
        if not INT_RE.fullmatch(value):
            if value and FLOAT_RE.fullmatch(value):
                raise InvalidInstance(WRONG_TYPE, where, f"{value[:40]} is not a whole number of minutes")
            self.number(number, fields, column, low=low, high=high)   # the precise complaint
            raise InvalidInstance(WRONG_TYPE, where, f"{value[:40]!r} is not a whole number")
        parsed = int(value)
        if not low <= parsed <= high:
            raise InvalidInstance(OUT_OF_RANGE, where, f"{parsed} is outside {low}..{high}")
        return parsed


def read_instance(directory: str | Path) -> Instance:
    """Read and check the four files of one instance directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InvalidInstance(NOT_FOUND, str(directory), "not a directory of instance files")
    seen: dict[str, str] = {}   # id -> where it was first defined, across all files

    def unique(rows: _Rows, number: int, fields: list[str]) -> str:
        ident = rows.ident(number, fields, 0)
        if ident in seen:
            raise InvalidInstance(DUPLICATE, rows.where(number, 0), f"id {ident} already defined at {seen[ident]}")
        seen[ident] = f"{rows.name}:{number}"
        return ident

    c = MAX_COORD_M
    rows = _Rows(directory, "restaurants.txt")
    restaurants = {}
    for n, f in rows.rows:
        rid = unique(rows, n, f)
        restaurants[rid] = Restaurant(rid, rows.number(n, f, 1, low=-c, high=c), rows.number(n, f, 2, low=-c, high=c))

    rows = _Rows(directory, "couriers.txt")
    couriers = []
    for n, f in rows.rows:
        cid = unique(rows, n, f)
        on = rows.minute(n, f, 3)
        off = rows.minute(n, f, 4)
        if off <= on:
            raise InvalidInstance(OUT_OF_RANGE, rows.where(n, 4), f"off_time {off} is not after on_time {on}")
        couriers.append(Courier(cid, rows.number(n, f, 1, low=-c, high=c), rows.number(n, f, 2, low=-c, high=c),
                                on, off))

    rows = _Rows(directory, "orders.txt")
    orders = []
    for n, f in rows.rows:
        oid = unique(rows, n, f)
        restaurant = rows.ident(n, f, 4)
        if restaurant not in restaurants:
            raise InvalidInstance(NOT_FOUND, rows.where(n, 4), f"restaurant {restaurant} is not in restaurants.txt")
        placed = rows.minute(n, f, 3)
        ready = rows.minute(n, f, 5)
        if ready < placed:
            raise InvalidInstance(OUT_OF_RANGE, rows.where(n, 5), f"ready_time {ready} is before placement_time {placed}")
        orders.append(Order(oid, rows.number(n, f, 1, low=-c, high=c), rows.number(n, f, 2, low=-c, high=c),
                            placed, restaurant, ready))

    rows = _Rows(directory, "instance_parameters.txt")
    if len(rows.rows) != 1:
        raise InvalidInstance(TOO_MANY, f"{rows.name}:{rows.rows[1][0]}", "exactly one line of parameters expected")
    n, f = rows.rows[0]
    target = rows.number(n, f, 3, low=1, high=MAX_MINUTE)
    maximum = rows.number(n, f, 4, low=1, high=MAX_MINUTE)
    if maximum < target:
        raise InvalidInstance(OUT_OF_RANGE, rows.where(n, 4), f"{maximum:g} is below the target click-to-door {target:g}")
    params = Parameters(
        metres_per_minute=rows.number(n, f, 0, low=1e-3, high=1e6),
        pickup_service_min=rows.minute(n, f, 1, low=1, high=1440),
        dropoff_service_min=rows.minute(n, f, 2, low=1, high=1440),
        target_click_to_door_min=target, max_click_to_door_min=maximum,
        pay_per_order=rows.number(n, f, 5, low=0, high=1e6),
        guaranteed_pay_per_hour=rows.number(n, f, 6, low=0, high=1e6))
    return Instance(directory.name, tuple(orders), restaurants, tuple(couriers), params)
