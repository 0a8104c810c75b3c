"""Catalogue input, parsed and checked: pure functions from a decoded API body to typed inputs.

Every refusal is a ``Refusal`` (422 unless said otherwise) naming the field at fault and a
reason from a small fixed vocabulary: the shape reasons of ``dispatch.core.errors``
(``missing_field``, ``wrong_type``, ``not_finite``, ``out_of_range``, ``unknown_field``) plus
the catalogue's own below, which say more precisely what is wrong with a piece of text.

Nothing here does I/O: the writers and readers beside it call these before they open a
transaction, so a refused body costs no connection.
"""

from __future__ import annotations

import math
import re
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from urllib.parse import urlsplit

from dispatch.core.errors import (
    BAD_FORMAT,
    EMPTY,
    MISSING_FIELD,
    NOT_FINITE,
    OUT_OF_RANGE,
    TOO_LONG,
    TOO_MANY,
    UNKNOWN_FIELD,
    WRONG_TYPE,
    NotFound,
    Refusal,
)
from dispatch.core.ids import InvalidId, parse_uuid

NAME_MAX = 255
CATEGORY_NAME_MAX = 100          # categories.name is VARCHAR(100)
DESCRIPTION_MAX = 5000
UNIT_MAX = 50
TAG_MAX = 50
TAGS_MAX = 20
IMAGES_MAX = 10
URL_MAX = 2048
OPTIONS_MAX = 10
MONEY_MAX = Decimal("1000000")   # exclusive: a spaza price is far below R1m
CENT = Decimal("0.01")
STOCK_MAX = 10_000_000           # per stock row; far from INTEGER's limit
DELTA_MAX = 1_000_000
PAGE_MAX = 100
PAGE_SIZE_MAX = 100
QUERY_MAX = 200
STATUSES = ("active", "inactive")
STOCK_REASONS = ("restock", "adjustment")

_SKU = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,99}$")
_DECIMAL_TEXT = re.compile(r"^[+-]?(?:[0-9]{1,12}(?:\.[0-9]{0,12})?|\.[0-9]{1,12})$")
_DIGITS = re.compile(r"^[0-9]{1,4}$")
# Control characters (C0, DEL, C1) and lone surrogates: never in a name; in long text only
# tab and newlines are let through.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_CONTROL_MULTILINE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
# As for tenant names (schema.tenants): sequences that only appear in a name when someone is
# trying SQL on us. Descriptions are free text and stored as given (always as parameters).
_SQLISH = ("--", "/*", "*/", ";")


@dataclass(frozen=True, slots=True)
class CategoryInput:
    name: str
    slug: str
    parent_id: uuid.UUID | None = None
    description: str | None = None
    image_url: str | None = None
    sort_order: int = 0
    is_active: bool = True


@dataclass(frozen=True, slots=True)
class ProductInput:
    sku: str
    name: str
    price: Decimal
    description: str | None = None
    compare_at_price: Decimal | None = None
    cost: Decimal | None = None
    category_id: uuid.UUID | None = None
    unit: str = "each"
    images: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    status: str = "active"
    initial_stock: int = 0


@dataclass(frozen=True, slots=True)
class VariantInput:
    sku: str
    name: str
    options: Mapping[str, str]
    price: Decimal | None = None     # None: the product's price
    compare_at_price: Decimal | None = None
    cost: Decimal | None = None
    image_url: str | None = None
    status: str = "active"
    initial_stock: int = 0


def _rejected(reason: str, field: str | None, message: str) -> Refusal:
    return Refusal(422, reason, message, field)


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _text(value: object, field: str, max_len: int, *, multiline: bool = False,
          sqlish: bool = False) -> str:
    if not isinstance(value, str):
        raise _rejected(WRONG_TYPE, field, f"{field} must be text, got {_type_name(value)}")
    if len(value) > max_len * 4:   # refuse before normalising a huge string
        raise _rejected(TOO_LONG, field, f"{field} is longer than {max_len} characters")
    text = unicodedata.normalize("NFC", value).strip()
    if not text:
        raise _rejected(EMPTY, field, f"{field} is empty")
    if len(text) > max_len:
        raise _rejected(TOO_LONG, field, f"{field} is {len(text)} characters; the limit is {max_len}")
    if (_CONTROL_MULTILINE if multiline else _CONTROL).search(text):
        raise _rejected(BAD_FORMAT, field, f"{field} contains control characters")
    if sqlish:
        for bad in _SQLISH:
            if bad in text:
                raise _rejected(BAD_FORMAT, field, f"{field} may not contain {bad!r}")
    return text


def _name(value: object, field: str = "name", max_len: int = NAME_MAX) -> str:
    return _text(value, field, max_len, sqlish=True)


def _description(value: object, field: str = "description") -> str | None:
    return None if value is None else _text(value, field, DESCRIPTION_MAX, multiline=True)


def _sku(value: object, field: str = "sku") -> str:
    if not isinstance(value, str):
        raise _rejected(WRONG_TYPE, field, f"{field} must be text, got {_type_name(value)}")
    if not _SKU.match(value):
        raise _rejected(BAD_FORMAT, field,
                        f"{field} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return value


def _slug(value: object, field: str = "slug") -> str:
    if not isinstance(value, str):
        raise _rejected(WRONG_TYPE, field, f"{field} must be text, got {_type_name(value)}")
    if not _SLUG.match(value):
        raise _rejected(BAD_FORMAT, field, f"{field} must be 1-100 of a-z, 0-9 and '-', not starting with '-'")
    return value


def _slug_from(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:100].strip("-")


def parse_money(value: object, field: str = "price") -> Decimal:
    """A price from a decimal string or a JSON number, in cents: 0 <= amount < 1,000,000."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _rejected(WRONG_TYPE, field, f"{field} must be a decimal string or a number, got {_type_name(value)}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _rejected(NOT_FINITE, field, f"{field} must be finite")
        amount = Decimal(repr(value))   # the shortest decimal that round-trips, not the binary expansion
    elif isinstance(value, int):
        if not -10**12 < value < 10**12:
            raise _rejected(OUT_OF_RANGE, field, f"{field} must be at least 0 and below {MONEY_MAX}")
        amount = Decimal(value)
    else:
        text = value.strip()
        if text.lower().lstrip("+-") in ("nan", "snan", "inf", "infinity"):
            raise _rejected(NOT_FINITE, field, f"{field} must be finite")
        if not _DECIMAL_TEXT.match(text):
            raise _rejected(BAD_FORMAT, field, f"{field} must be a decimal like '12.50'")
        amount = Decimal(text)
    if amount < 0 or amount >= MONEY_MAX:
        raise _rejected(OUT_OF_RANGE, field, f"{field} must be at least 0 and below {MONEY_MAX}")
    cents = amount.quantize(CENT, rounding=ROUND_HALF_UP)
    if cents >= MONEY_MAX:
        raise _rejected(OUT_OF_RANGE, field, f"{field} must be at least 0 and below {MONEY_MAX}")
    return abs(cents)   # never -0.00


def _optional_money(value: object, field: str) -> Decimal | None:
    return None if value is None else parse_money(value, field)


def bounded_int(value: object, field: str, lo: int, hi: int) -> int:
    """A whole number (never a bool or a float) in ``lo..hi``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _rejected(WRONG_TYPE, field, f"{field} must be a whole number, got {_type_name(value)}")
    if not lo <= value <= hi:
        raise _rejected(OUT_OF_RANGE, field, f"{field} must be between {lo} and {hi}")
    return value


def _bool(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise _rejected(WRONG_TYPE, field, f"{field} must be true or false, got {_type_name(value)}")
    return value


def uuid_field(value: object, field: str) -> uuid.UUID:
    """A reference in a body or a filter (``category_id``): anything but text is ``wrong_type``,
    text that is no UUID ``bad_format`` (the catalogue's words for the two, kept for clients)."""
    if isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str):
        raise _rejected(WRONG_TYPE, field, f"{field} must be a UUID string, got {_type_name(value)}")
    try:
        return parse_uuid(value, field)
    except InvalidId:
        raise _rejected(BAD_FORMAT, field, f"{field} is not a UUID") from None


def optional_uuid_field(value: object, field: str) -> uuid.UUID | None:
    """``uuid_field`` that lets None through (no filter, or a cleared reference)."""
    return None if value is None else uuid_field(value, field)


def path_id(value: object, what: str) -> uuid.UUID:
    """An id from the URL or the caller's identity: malformed is simply not found, the same
    answer as another vendor's or another tenant's object, so nothing is revealed."""
    try:
        return parse_uuid(value, what)
    except InvalidId:
        raise NotFound(f"no such {what}") from None


def _url(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise _rejected(WRONG_TYPE, field, f"{field} must be a URL string, got {_type_name(value)}")
    if len(value) > URL_MAX:
        raise _rejected(TOO_LONG, field, f"{field} is longer than {URL_MAX} characters")
    if _CONTROL.search(value) or any(ch.isspace() for ch in value):
        raise _rejected(BAD_FORMAT, field, f"{field} contains spaces or control characters")
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        raise _rejected(BAD_FORMAT, field, f"{field} is not a URL") from None
    if parts.scheme not in ("https", "http") or not host:
        raise _rejected(BAD_FORMAT, field, f"{field} must be an http(s) URL with a host")
    if parts.username is not None or parts.password is not None:
        raise _rejected(BAD_FORMAT, field, f"{field} may not carry credentials")
    return value


def _optional_url(value: object, field: str) -> str | None:
    return None if value is None else _url(value, field)


def _list(value: object, field: str, max_items: int) -> list[Any]:
    if not isinstance(value, list):
        raise _rejected(WRONG_TYPE, field, f"{field} must be a list, got {_type_name(value)}")
    if len(value) > max_items:
        raise _rejected(TOO_MANY, field, f"{field} has {len(value)} items; the limit is {max_items}")
    return value


def _images(value: object, field: str = "images") -> tuple[str, ...]:
    items = _list(value, field, IMAGES_MAX)
    return tuple(_url(item, f"{field}[{i}]") for i, item in enumerate(items))


def _tags(value: object, field: str = "tags") -> tuple[str, ...]:
    items = _list(value, field, TAGS_MAX)
    tags = (_text(item, f"{field}[{i}]", TAG_MAX, sqlish=True) for i, item in enumerate(items))
    return tuple(dict.fromkeys(tags))


def _status(value: object, field: str = "status") -> str:
    if value not in STATUSES:
        raise _rejected(BAD_FORMAT, field, f"{field} must be one of {', '.join(STATUSES)}")
    return str(value)


def _unit(value: object, field: str = "unit") -> str:
    return _text(value, field, UNIT_MAX, sqlish=True)


def _options(value: object, field: str = "options") -> dict[str, str]:
    if not isinstance(value, dict):
        raise _rejected(WRONG_TYPE, field, f"{field} must be an object, got {_type_name(value)}")
    if len(value) > OPTIONS_MAX:
        raise _rejected(TOO_MANY, field, f"{field} has {len(value)} entries; the limit is {OPTIONS_MAX}")
    out: dict[str, str] = {}
    for key, item in value.items():
        name = _text(key, f"{field} key", 50, sqlish=True)
        out[name] = _text(item, f"{field}.{name}", 100, sqlish=True)
    return out


def _object(body: object, allowed: Iterable[str], required: Iterable[str] = ()) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _rejected(WRONG_TYPE, None, f"the body must be a JSON object, got {_type_name(body)}")
    allowed = set(allowed)
    for key in body:
        if not isinstance(key, str) or key not in allowed:
            shown = str(key) if len(str(key)) <= 40 else str(key)[:40] + "…"
            raise _rejected(UNKNOWN_FIELD, shown, f"unknown field {shown!r}")
    for key in required:
        if key not in body:
            raise _rejected(MISSING_FIELD, key, f"{key} is required")
    return body


# One parser per product field, shared by create and update. The nullable ones clear a value.
PRODUCT_FIELDS: dict[str, Callable[[object, str], Any]] = {
    "sku": _sku,
    "name": _name,
    "description": _description,
    "price": parse_money,
    "compare_at_price": _optional_money,
    "cost": _optional_money,
    "category_id": optional_uuid_field,
    "unit": _unit,
    "images": _images,
    "tags": _tags,
    "status": _status,
}


def parse_new_category(body: object) -> CategoryInput:
    """A category from ``{name, slug?, parent_id?, description?, image_url?, sort_order?, is_active?}``.

    Without a slug, one is made from the name (ASCII letters and digits joined by '-').
    """
    fields = ("name", "slug", "parent_id", "description", "image_url", "sort_order", "is_active")
    obj = _object(body, fields, ("name",))
    name = _name(obj["name"], "name", CATEGORY_NAME_MAX)
    if "slug" in obj:
        slug = _slug(obj["slug"])
    else:
        slug = _slug_from(name)
        if not _SLUG.match(slug):
            raise _rejected(MISSING_FIELD, "slug", "slug is required: the name gives none (use a-z, 0-9 and '-')")
    return CategoryInput(
        name=name,
        slug=slug,
        parent_id=optional_uuid_field(obj.get("parent_id"), "parent_id"),
        description=_description(obj.get("description")),
        image_url=_optional_url(obj.get("image_url"), "image_url"),
        sort_order=bounded_int(obj.get("sort_order", 0), "sort_order", 0, 100_000),
        is_active=_bool(obj.get("is_active", True), "is_active"),
    )


def parse_new_product(body: object) -> ProductInput:
    """A product from an API body: sku, name and price required; ``initial_stock`` optional."""
    obj = _object(body, (*PRODUCT_FIELDS, "initial_stock"), ("sku", "name", "price"))
    values = {key: PRODUCT_FIELDS[key](obj[key], key) for key in PRODUCT_FIELDS if key in obj}
    stock = bounded_int(obj.get("initial_stock", 0), "initial_stock", 0, STOCK_MAX)
    return ProductInput(**values, initial_stock=stock)


def parse_product_update(body: object) -> dict[str, Any]:
    """The fields an update changes, validated; at least one."""
    obj = _object(body, PRODUCT_FIELDS)
    if not obj:
        raise _rejected(EMPTY, None, f"nothing to change; give one of {', '.join(PRODUCT_FIELDS)}")
    return {key: PRODUCT_FIELDS[key](value, key) for key, value in obj.items()}


def parse_new_variant(body: object) -> VariantInput:
    """A variant: sku and name required; options, price (default: the product's), stock optional."""
    fields = ("sku", "name", "options", "price", "compare_at_price", "cost", "image_url", "status",
              "initial_stock")
    obj = _object(body, fields, ("sku", "name"))
    return VariantInput(
        sku=_sku(obj["sku"]),
        name=_name(obj["name"]),
        options=_options(obj.get("options", {})),
        price=_optional_money(obj.get("price"), "price"),
        compare_at_price=_optional_money(obj.get("compare_at_price"), "compare_at_price"),
        cost=_optional_money(obj.get("cost"), "cost"),
        image_url=_optional_url(obj.get("image_url"), "image_url"),
        status=_status(obj.get("status", "active")),
        initial_stock=bounded_int(obj.get("initial_stock", 0), "initial_stock", 0, STOCK_MAX),
    )


def _page_number(value: object, field: str, hi: int) -> int:
    if isinstance(value, str) and _DIGITS.match(value):   # straight from a query string
        value = int(value)
    return bounded_int(value, field, 1, hi)


def parse_page(page: object, page_size: object) -> tuple[int, int]:
    """(page, page_size), each 1..100 (ints, or digit strings from a query string)."""
    return _page_number(page, "page", PAGE_MAX), _page_number(page_size, "page_size", PAGE_SIZE_MAX)


def parse_search_query(q: object) -> str:
    """A search query: 1..200 characters of text, whitespace collapsed."""
    text = _text(q, "q", QUERY_MAX)
    return " ".join(text.split())


def parse_stock_change(delta: object, reason: object) -> tuple[int, str]:
    """(delta, reason) of a stock adjustment: a restock adds, an adjustment adds or removes;
    never 0, at most ``DELTA_MAX`` either way."""
    if reason not in STOCK_REASONS:
        raise _rejected(BAD_FORMAT, "reason", f"reason must be one of {', '.join(STOCK_REASONS)}")
    change = bounded_int(delta, "delta", -DELTA_MAX, DELTA_MAX)
    if change == 0:
        raise _rejected(OUT_OF_RANGE, "delta", "delta must not be 0")
    if reason == "restock" and change < 0:
        raise _rejected(OUT_OF_RANGE, "delta", "a restock adds stock; use reason 'adjustment' to remove")
    return change, str(reason)
