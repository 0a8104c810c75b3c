"""The city scenario's file: one JSON object per line (JSONL), read back with every field checked.

``write`` stores a ``Scenario`` byte-identically for the same scenario; ``read`` / ``from_jsonl``
load a file and validate every line (the header first, then tenants, vendors, drivers and
customers, then orders sorted by time), naming the line and the field of the first problem in
a ``ScenarioError``: a scenario file is an external input, so nothing in it is trusted - not its
JSON (no NaN, no duplicate keys, no nesting bombs), its types, its ranges or its references
between lines. ``loadtest.city`` generates the scenarios and re-exports these names.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from loadtest.movement import SPEED_BOUNDS_MPS

__all__ = ["FORMAT_VERSION", "Scenario", "ScenarioError", "from_jsonl", "read", "to_jsonl", "write"]

FORMAT_VERSION = 1


# --- the scenario -----------------------------------------------------------------------------


class ScenarioError(ValueError):
    """A scenario file that is not a valid version-1 scenario; ``line`` is 1-based."""

    def __init__(self, source: str, line: int, message: str) -> None:
        super().__init__(f"{source} line {line}: {message}")
        self.source = source
        self.line = line


@dataclass(frozen=True)
class Scenario:
    """A generated city: plain dicts exactly as in the file, plus lookups by key."""

    header: dict[str, Any]
    tenants: list[dict[str, Any]]
    vendors: list[dict[str, Any]]
    drivers: list[dict[str, Any]]
    customers: list[dict[str, Any]]
    orders: list[dict[str, Any]]
    _index: dict[str, dict[str, dict[str, Any]]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {kind: {e["key"]: e for e in entities}
                 for kind, entities in (("tenant", self.tenants), ("vendor", self.vendors),
                                        ("driver", self.drivers), ("customer", self.customers))}
        index["product"] = {f"{v['key']}/{p['key']}": p for v in self.vendors for p in v["products"]}
        object.__setattr__(self, "_index", index)

    def tenant(self, key: str) -> dict[str, Any]:
        return self._index["tenant"][key]

    def vendor(self, key: str) -> dict[str, Any]:
        return self._index["vendor"][key]

    def driver(self, key: str) -> dict[str, Any]:
        return self._index["driver"][key]

    def customer(self, key: str) -> dict[str, Any]:
        return self._index["customer"][key]

    def product(self, vendor_key: str, product_key: str) -> dict[str, Any]:
        return self._index["product"][f"{vendor_key}/{product_key}"]

    def entities(self) -> Iterable[dict[str, Any]]:
        """Every line of the file in order: the header, then entities, then orders."""
        yield self.header
        for group in (self.tenants, self.vendors, self.drivers, self.customers, self.orders):
            yield from group


# --- the file ---------------------------------------------------------------------------------


def to_jsonl(scenario: Scenario) -> str:
    """The scenario as JSONL text: one object per line, keys in the order they were built."""
    return "".join(json.dumps(obj, allow_nan=False) + "\n" for obj in scenario.entities())


def write(scenario: Scenario, path: str | os.PathLike[str]) -> None:
    """Write the scenario to ``path`` as JSONL (UTF-8, ``\\n`` line ends)."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(to_jsonl(scenario))


def read(path: str | os.PathLike[str]) -> Scenario:
    """Load and validate a scenario file; ``ScenarioError`` (a ValueError) names the bad line."""
    with open(path, "rb") as f:
        data = f.read()
    source = os.fspath(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(source, data.count(b"\n", 0, exc.start) + 1, "not UTF-8 text") from None
    return from_jsonl(text, source=source)


class _Bad(Exception):
    """A problem with the current line; from_jsonl adds the line number."""


def _no_constants(name: str) -> None:
    raise _Bad(f"{name} is not a number JSON allows")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        dupes = sorted(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
        raise _Bad(f"duplicate key(s) {', '.join(map(repr, dupes))}")
    return obj


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: object) -> bool:
    return (isinstance(x, int | float) and not isinstance(x, bool)) and math.isfinite(x)


def _is_money(x: object) -> bool:
    if not isinstance(x, str) or not re.fullmatch(r"\d{1,7}\.\d{2}", x):
        return False
    try:
        return Decimal(x) >= 0
    except InvalidOperation:
        return False


_CHECKS: dict[str, Callable[[object], bool]] = {
    "str": lambda x: isinstance(x, str) and x != "",
    "text": lambda x: isinstance(x, str),
    "int": _is_int,
    "number": _is_number,
    "bool": lambda x: isinstance(x, bool),
    "money": _is_money,
    "list": lambda x: isinstance(x, list),
    "object": lambda x: isinstance(x, dict),
    "latlng": lambda x: (isinstance(x, list) and len(x) == 2 and all(map(_is_number, x))
                         and -90 <= x[0] <= 90 and -180 <= x[1] <= 180),
    "lat": lambda x: _is_number(x) and -90 <= x <= 90,
    "lng": lambda x: _is_number(x) and -180 <= x <= 180,
}

_MEANING = {"str": "a non-empty string", "text": "a string", "int": "an integer",
            "number": "a finite number", "bool": "true or false",
            "money": "an amount as a string such as \"17.50\"", "list": "a list",
            "object": "an object", "latlng": "[lat, lng]", "lat": "a latitude", "lng": "a longitude"}

_SCHEMAS: dict[str, dict[str, str]] = {
    "scenario": {"kind": "str", "version": "int", "seed": "int", "city": "str", "bbox": "object",
                 "start_s": "int", "duration_s": "int", "h3_resolution": "int",
                 "expected_orders": "number", "counts": "object"},
    "tenant": {"kind": "str", "key": "str", "name": "str", "slug": "str"},
    "vendor": {"kind": "str", "key": "str", "tenant": "str", "name": "str", "lat": "lat",
               "lng": "lng", "street": "text", "delivery_radius_m": "number",
               "minimum_order_value": "money", "prep_s": "number", "accept_delay_s": "number",
               "products": "list"},
    "driver": {"kind": "str", "key": "str", "tenant": "str", "first_name": "str",
               "last_name": "str", "phone": "str", "license_number": "str", "registration": "str",
               "vehicle_type": "str", "cold_storage": "bool", "home": "latlng",
               "shift_start_s": "number", "shift_end_s": "number", "speed_mps": "number",
               "accept_probability": "number", "reply_delay_s": "number",
               "ping_interval_s": "number", "seed": "int"},
    "customer": {"kind": "str", "key": "str", "tenant": "str", "name": "str", "phone": "str",
                 "lat": "lat", "lng": "lng", "cell": "str", "street": "text", "watches": "bool"},
    "order": {"kind": "str", "t": "number", "tenant": "str", "vendor": "str", "customer": "str",
              "lines": "list", "payment_method": "str", "watch": "bool"},
}
_PRODUCT_SCHEMA = {"key": "str", "sku": "str", "name": "str", "description": "text",
                   "price": "money", "stock": "int", "cold": "bool"}
_LINE_SCHEMA = {"product": "str", "quantity": "int"}
_BBOX_SCHEMA = {"south": "lat", "west": "lng", "north": "lat", "east": "lng"}
_COUNTS_SCHEMA = {"tenants": "int", "vendors": "int", "drivers": "int", "customers": "int",
                  "orders": "int"}
_GROUPS = {"tenant": "tenants", "vendor": "vendors", "driver": "drivers", "customer": "customers",
           "order": "orders"}


def _check_fields(obj: object, schema: dict[str, str], what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise _Bad(f"{what} must be a JSON object")
    missing = [k for k in schema if k not in obj]
    if missing:
        raise _Bad(f"{what} is missing {', '.join(missing)}")
    unknown = [k for k in obj if k not in schema]
    if unknown:
        raise _Bad(f"{what} has unknown field(s) {', '.join(unknown)}")
    for key, check in schema.items():
        if not _CHECKS[check](obj[key]):
            raise _Bad(f"{what}: {key} must be {_MEANING[check]}, got {obj[key]!r}")
    return obj


def _check_header(obj: dict[str, Any]) -> None:
    if obj.get("kind") != "scenario":
        raise _Bad(f"the first line must be the scenario header (kind 'scenario'), "
                   f"got kind {obj.get('kind')!r}")
    if obj.get("version") != FORMAT_VERSION or not _is_int(obj.get("version")):
        raise _Bad(f"unsupported scenario version {obj.get('version')!r}; this reader reads "
                   f"version {FORMAT_VERSION}")
    _check_fields(obj, _SCHEMAS["scenario"], "the header")
    _check_fields(obj["bbox"], _BBOX_SCHEMA, "bbox")
    _check_fields(obj["counts"], _COUNTS_SCHEMA, "counts")
    if obj["duration_s"] <= 0:
        raise _Bad(f"duration_s must be positive, got {obj['duration_s']}")


class _Reader:
    """Checks the lines after the header one by one, keeping what later lines may refer to."""

    def __init__(self, header: dict[str, Any]) -> None:
        self.header = header
        self.groups: dict[str, list[dict[str, Any]]] = {g: [] for g in _GROUPS.values()}
        self.keys: dict[str, dict[str, dict[str, Any]]] = {k: {} for k in _GROUPS if k != "order"}
        self.products: dict[str, set[str]] = {}
        self.last_t = 0.0

    def _tenant(self, obj: dict[str, Any]) -> None:
        if obj["tenant"] not in self.keys["tenant"]:
            what = f"{obj['kind']} {obj['key']}" if "key" in obj else obj["kind"]
            raise _Bad(f"{what} references unknown tenant {obj['tenant']!r} "
                       "(tenant lines must come first)")

    def add(self, obj: dict[str, Any]) -> None:
        kind = obj.get("kind")
        if kind == "scenario":
            raise _Bad("a second scenario header")
        if kind not in _GROUPS:
            raise _Bad(f"unknown kind {kind!r}; expected one of {', '.join(_GROUPS)}")
        _check_fields(obj, _SCHEMAS[kind], kind)
        if kind == "order":
            self._order(obj)
        else:
            if self.groups["orders"]:
                raise _Bad(f"{kind} line after an order line: entities must come before orders")
            if obj["key"] in self.keys[kind]:
                raise _Bad(f"duplicate {kind} key {obj['key']!r}")
            if kind != "tenant":
                self._tenant(obj)
            if kind == "vendor":
                self._vendor(obj)
            elif kind == "driver":
                self._driver(obj)
            self.keys[kind][obj["key"]] = obj
        self.groups[_GROUPS[kind]].append(obj)

    def _vendor(self, obj: dict[str, Any]) -> None:
        if obj["delivery_radius_m"] <= 0 or obj["prep_s"] < 0 or obj["accept_delay_s"] < 0:
            raise _Bad(f"vendor {obj['key']}: delivery_radius_m must be positive and "
                       "prep_s, accept_delay_s not negative")
        keys = set()
        for i, product in enumerate(obj["products"]):
            _check_fields(product, _PRODUCT_SCHEMA, f"vendor {obj['key']} product {i}")
            if product["key"] in keys:
                raise _Bad(f"vendor {obj['key']}: duplicate product key {product['key']!r}")
            keys.add(product["key"])
            if product["stock"] < 0:
                raise _Bad(f"vendor {obj['key']} product {product['key']}: negative stock")
        self.products[obj["key"]] = keys

    def _driver(self, obj: dict[str, Any]) -> None:
        who = f"driver {obj['key']}"
        if obj["vehicle_type"] not in SPEED_BOUNDS_MPS:
            raise _Bad(f"{who}: vehicle_type must be one of {', '.join(SPEED_BOUNDS_MPS)}, "
                       f"got {obj['vehicle_type']!r}")
        if not 0 <= obj["shift_start_s"] < obj["shift_end_s"] <= self.header["duration_s"]:
            raise _Bad(f"{who}: the shift must satisfy 0 <= shift_start_s < shift_end_s <= "
                       f"duration_s ({self.header['duration_s']})")
        if obj["speed_mps"] <= 0 or obj["ping_interval_s"] <= 0 or obj["reply_delay_s"] < 0:
            raise _Bad(f"{who}: speed_mps and ping_interval_s must be positive, reply_delay_s "
                       "not negative")
        if not 0 <= obj["accept_probability"] <= 1:
            raise _Bad(f"{who}: accept_probability must be from 0 to 1")

    def _order(self, obj: dict[str, Any]) -> None:
        t = obj["t"]
        if not 0 <= t <= self.header["duration_s"]:
            raise _Bad(f"order time {t} is outside the scenario (0 to {self.header['duration_s']} s)")
        if t < self.last_t:
            raise _Bad(f"order time {t} is before the previous order's ({self.last_t}): "
                       "orders must be sorted by t")
        self.last_t = t
        self._tenant(obj)
        for kind in ("vendor", "customer"):
            entity = self.keys[kind].get(obj[kind])
            if entity is None:
                raise _Bad(f"order references unknown {kind} {obj[kind]!r}")
            if entity["tenant"] != obj["tenant"]:
                raise _Bad(f"order of tenant {obj['tenant']} references {kind} {obj[kind]} of "
                           f"tenant {entity['tenant']}")
        if obj["payment_method"] not in ("cash", "card"):
            raise _Bad(f"payment_method must be 'cash' or 'card', got {obj['payment_method']!r}")
        if not obj["lines"]:
            raise _Bad("an order needs at least one line")
        seen = set()
        for i, line in enumerate(obj["lines"]):
            _check_fields(line, _LINE_SCHEMA, f"order line {i}")
            if line["product"] not in self.products[obj["vendor"]]:
                raise _Bad(f"order line {i}: vendor {obj['vendor']} has no product {line['product']!r}")
            if line["product"] in seen:
                raise _Bad(f"order line {i}: product {line['product']!r} is on two lines")
            seen.add(line["product"])
            if line["quantity"] < 1:
                raise _Bad(f"order line {i}: quantity must be at least 1, got {line['quantity']}")


def from_jsonl(text: str, source: str = "<scenario>") -> Scenario:
    """Parse and validate scenario JSONL; ``ScenarioError`` (a ValueError) names the bad line."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise ScenarioError(source, 1, "empty file; expected the scenario header")
    reader: _Reader | None = None
    for n, raw in enumerate(lines, start=1):
        try:
            if not raw.strip():
                raise _Bad("empty line")
            try:
                obj = json.loads(raw, parse_constant=_no_constants, object_pairs_hook=_no_duplicates)
            except json.JSONDecodeError as exc:
                raise _Bad(f"not JSON ({exc.msg} at column {exc.colno})") from None
            except ValueError as exc:      # e.g. an integer beyond Python's digit limit
                raise _Bad(f"not JSON ({exc})") from None
            except RecursionError:
                raise _Bad("JSON nested too deeply") from None
            if not isinstance(obj, dict):
                raise _Bad(f"expected a JSON object, got {type(obj).__name__}")
            if reader is None:
                _check_header(obj)
                reader = _Reader(obj)
            else:
                reader.add(obj)
        except _Bad as exc:
            raise ScenarioError(source, n, str(exc)) from None
    assert reader is not None
    counts = reader.header["counts"]
    for group, entities in reader.groups.items():
        if counts[group] != len(entities):
            raise ScenarioError(source, 1, f"counts.{group} says {counts[group]} but the file "
                                           f"has {len(entities)}")
    g = reader.groups
    return Scenario(reader.header, g["tenants"], g["vendors"], g["drivers"], g["customers"],
                    g["orders"])

