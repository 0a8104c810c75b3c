"""The catalogue: categories, products, variants and their stock, for vendors and customers.

Three layers, as elsewhere in the engine:

* pure parse functions turn an API body (a decoded JSON object) into typed inputs, or raise
  ``CatalogueRejected`` naming the field and a reason from a fixed vocabulary;
* writes run in one ``TenantDatabase.tenant_transaction`` each (RLS forced) and, after it
  commits, invalidate exactly the cache tags their change makes stale;
* reads are cache-aside through ``dispatch.cache`` with the tenant in every key.

What each cached view shows decides what a write invalidates:

==========================  ==============================================  ====================
cached entry                shows                                           tags
==========================  ==============================================  ====================
product (30 min)            the product and its variants, no stock          ``product:{id}``
inventory (60 s)            every stock row of the product, its status      ``inventory:{id}``
product list (5 min)        name, price, images, unit… (no stock)           ``catalogue``
search (10 min)             as a list, plus the rank                        ``catalogue``
==========================  ==============================================  ====================

``get_product`` joins the product entry with the inventory entry, so the long-lived product
entry never holds stock, which every order changes. A price, name, description or status
change invalidates ``product:{id}`` and ``catalogue`` (status also ``inventory:{id}``); a
stock change only ``inventory:{id}`` (``stock_tags``; what dispatch/orders.py invalidates on
reservations); a new product, variant or category ``catalogue`` (a new variant also its
product's entry and inventory); a change of ``cost`` alone, which no view shows, nothing.

A vendor only ever touches its own products: another vendor's product, another tenant's, or a
malformed id all raise the same ``CatalogueNotFound`` and reveal nothing.

Full-text search goes through ``search_product_ids()`` (migration 0012), which runs as the
schema's owner so that ``idx_product_search`` can be used (RLS would forbid it to the
application role). The materialized views of 0012 are refreshed by ``refresh_views`` and
warm the product cache through ``warm_popular``; ``run_view_refresher`` loops both.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
import unicodedata
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from dispatch.core.cache import TTL, Cache, inventory_key, product_key, product_list_key, search_key
from dispatch.gateway.pings import (
    MISSING_FIELD,
    NOT_FINITE,
    OUT_OF_RANGE,
    UNKNOWN_FIELD,
    WRONG_TYPE,
)
from schema.db import TenantDatabase
from schema.errors import TenantNotActive, WakalaError
from schema.settings import PostgresSettings
from schema.tenants import list_tenants, parse_tenant_id

__all__ = [
    "CatalogueNotFound",
    "CatalogueRejected",
    "CategoryInput",
    "ProductInput",
    "VariantInput",
    "active_tenant_ids",
    "adjust_stock",
    "create_category",
    "create_product",
    "create_variant",
    "get_inventory",
    "get_product",
    "list_products",
    "parse_money",
    "parse_new_category",
    "parse_new_product",
    "parse_new_variant",
    "parse_page",
    "parse_product_update",
    "parse_search_query",
    "product_update_tags",
    "refresh_views",
    "run_view_refresher",
    "search_products",
    "stock_tags",
    "update_product",
    "warm_popular",
]

log = logging.getLogger(__name__)

# Reasons a request is refused. Stable strings: clients key on them. The first five are the
# ping vocabulary (dispatch.pings), so the API speaks one language.
TOO_LONG = "too_long"
TOO_MANY = "too_many"
EMPTY = "empty"
BAD_FORMAT = "bad_format"
NOT_FOUND = "not_found"
UNKNOWN_CATEGORY = "unknown_category"
DUPLICATE_SKU = "duplicate_sku"
DUPLICATE_SLUG = "duplicate_slug"
STOCK_RESERVED = "stock_reserved"

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
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_DECIMAL_TEXT = re.compile(r"^[+-]?(?:[0-9]{1,12}(?:\.[0-9]{0,12})?|\.[0-9]{1,12})$")
_DIGITS = re.compile(r"^[0-9]{1,4}$")
# Control characters (C0, DEL, C1) and lone surrogates: never in a name; in long text only
# tab and newlines are let through.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_CONTROL_MULTILINE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
# As for tenant names (schema.tenants): sequences that only appear in a name when someone is
# trying SQL on us. Descriptions are free text and stored as given (always as parameters).
_SQLISH = ("--", "/*", "*/", ";")


class CatalogueRejected(WakalaError, ValueError):
    """A catalogue request is refused: an HTTP status, a reason, the field, a message."""

    def __init__(self, status: int, reason: str, field: str | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.field = field
        self.message = message

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reason": self.reason, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        return out


class CatalogueNotFound(CatalogueRejected):
    """No such object for this caller: absent, another vendor's or another tenant's (404)."""

    def __init__(self, what: str = "product", field: str | None = None) -> None:
        super().__init__(404, NOT_FOUND, field, f"no such {what}")


# --------------------------------------------------------------------------- parsing (pure)


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


def _rejected(reason: str, field: str | None, message: str) -> CatalogueRejected:
    return CatalogueRejected(422, reason, field, message)


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


def _int(value: object, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _rejected(WRONG_TYPE, field, f"{field} must be a whole number, got {_type_name(value)}")
    if not lo <= value <= hi:
        raise _rejected(OUT_OF_RANGE, field, f"{field} must be between {lo} and {hi}")
    return value


def _bool(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise _rejected(WRONG_TYPE, field, f"{field} must be true or false, got {_type_name(value)}")
    return value


def _uuid(value: object, field: str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str):
        raise _rejected(WRONG_TYPE, field, f"{field} must be a UUID string, got {_type_name(value)}")
    if not _UUID.match(value):
        raise _rejected(BAD_FORMAT, field, f"{field} is not a UUID")
    return uuid.UUID(value)


def _optional_uuid(value: object, field: str) -> uuid.UUID | None:
    return None if value is None else _uuid(value, field)


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
_PRODUCT_FIELDS: dict[str, Callable[[object, str], Any]] = {
    "sku": _sku,
    "name": _name,
    "description": _description,
    "price": parse_money,
    "compare_at_price": _optional_money,
    "cost": _optional_money,
    "category_id": _optional_uuid,
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
        parent_id=_optional_uuid(obj.get("parent_id"), "parent_id"),
        description=_description(obj.get("description")),
        image_url=_optional_url(obj.get("image_url"), "image_url"),
        sort_order=_int(obj.get("sort_order", 0), "sort_order", 0, 100_000),
        is_active=_bool(obj.get("is_active", True), "is_active"),
    )


def parse_new_product(body: object) -> ProductInput:
    """A product from an API body: sku, name and price required; ``initial_stock`` optional."""
    obj = _object(body, (*_PRODUCT_FIELDS, "initial_stock"), ("sku", "name", "price"))
    values = {key: _PRODUCT_FIELDS[key](obj[key], key) for key in _PRODUCT_FIELDS if key in obj}
    stock = _int(obj.get("initial_stock", 0), "initial_stock", 0, STOCK_MAX)
    return ProductInput(**values, initial_stock=stock)


def parse_product_update(body: object) -> dict[str, Any]:
    """The fields an update changes, validated; at least one."""
    obj = _object(body, _PRODUCT_FIELDS)
    if not obj:
        raise _rejected(EMPTY, None, f"nothing to change; give one of {', '.join(_PRODUCT_FIELDS)}")
    return {key: _PRODUCT_FIELDS[key](value, key) for key, value in obj.items()}


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
        initial_stock=_int(obj.get("initial_stock", 0), "initial_stock", 0, STOCK_MAX),
    )


def _page_number(value: object, field: str, hi: int) -> int:
    if isinstance(value, str) and _DIGITS.match(value):   # straight from a query string
        value = int(value)
    return _int(value, field, 1, hi)


def parse_page(page: object, page_size: object) -> tuple[int, int]:
    """(page, page_size), each 1..100 (ints, or digit strings from a query string)."""
    return _page_number(page, "page", PAGE_MAX), _page_number(page_size, "page_size", PAGE_SIZE_MAX)


def parse_search_query(q: object) -> str:
    """A search query: 1..200 characters of text, whitespace collapsed."""
    text = _text(q, "q", QUERY_MAX)
    return " ".join(text.split())


def _stock_change(delta: object, reason: object) -> tuple[int, str]:
    if reason not in STOCK_REASONS:
        raise _rejected(BAD_FORMAT, "reason", f"reason must be one of {', '.join(STOCK_REASONS)}")
    change = _int(delta, "delta", -DELTA_MAX, DELTA_MAX)
    if change == 0:
        raise _rejected(OUT_OF_RANGE, "delta", "delta must not be 0")
    if reason == "restock" and change < 0:
        raise _rejected(OUT_OF_RANGE, "delta", "a restock adds stock; use reason 'adjustment' to remove")
    return change, str(reason)


# --------------------------------------------------------------------------- cache tags (pure)


CATALOGUE_TAG = "catalogue"
# Which cached entries show each product field: the product entry all but cost; lists and
# search results these (search also matches on the description); the inventory entry the
# status (it decides who may see the stock).
_LISTED_FIELDS = frozenset({"sku", "name", "description", "price", "compare_at_price", "category_id",
                            "unit", "images", "status"})
_PAGE_FIELDS = frozenset(_PRODUCT_FIELDS) - {"cost"}
_INVENTORY_FIELDS = frozenset({"status"})


def _product_tag(product_id: object) -> str:
    return f"product:{product_id}"


def stock_tags(product_id: object) -> list[str]:
    """What a stock change of the product makes stale: its inventory entry only (the product
    entry holds no stock; get_product reads stock from the inventory entry)."""
    return [f"inventory:{product_id}"]


def product_update_tags(product_id: object, changed: Iterable[str]) -> list[str]:
    """What changing these product fields makes stale; nothing when no view shows them."""
    changed = set(changed)
    tags = []
    if changed & _PAGE_FIELDS:
        tags.append(_product_tag(product_id))
    if changed & _LISTED_FIELDS:
        tags.append(CATALOGUE_TAG)
    if changed & _INVENTORY_FIELDS:
        tags.extend(stock_tags(product_id))
    return tags


# --------------------------------------------------------------------------- SQL

VENDOR_EXISTS_SQL = "SELECT 1 FROM vendors WHERE id = $1"
CATEGORY_EXISTS_SQL = "SELECT 1 FROM categories WHERE id = $1"

INSERT_CATEGORY_SQL = """
INSERT INTO categories (name, slug, parent_id, description, image_url, sort_order, is_active, metadata)
VALUES ($1, $2, $3, $4, $5, $6, $7, jsonb_build_object('created_by', $8::text))
ON CONFLICT (slug) DO NOTHING
RETURNING id, name, slug, parent_id, description, image_url, sort_order, is_active, created_at
"""

INSERT_PRODUCT_SQL = """
INSERT INTO products (vendor_id, category_id, sku, name, description, price, compare_at_price, cost,
                      unit, images, tags, status, metadata)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11::text[], $12,
        jsonb_build_object('created_by', $13::text))
ON CONFLICT (vendor_id, sku) DO NOTHING
RETURNING id, vendor_id, category_id, sku, name, description, price, compare_at_price, cost, currency, unit,
          images, tags, status, created_at, updated_at
"""
PRODUCT_FOR_UPDATE_SQL = """
SELECT id, vendor_id, category_id, sku, name, description, price, compare_at_price, cost, currency,
       unit, images, tags, status, created_at, updated_at
FROM products WHERE id = $1 AND vendor_id = $2
FOR UPDATE
"""
UPDATE_PRODUCT_SQL = """
UPDATE products
SET sku = $3, name = $4, description = $5, price = $6, compare_at_price = $7, cost = $8,
    category_id = $9, unit = $10, images = $11::jsonb, tags = $12::text[], status = $13,
    metadata = COALESCE(metadata, '{}'::jsonb) || jsonb_build_object('updated_by', $14::text),
    updated_at = now()
WHERE id = $1 AND vendor_id = $2
RETURNING id, vendor_id, category_id, sku, name, description, price, compare_at_price, cost, currency, unit,
          images, tags, status, created_at, updated_at
"""
VENDOR_PRODUCT_SQL = "SELECT 1 FROM products WHERE id = $1 AND vendor_id = $2"
INSERT_VARIANT_SQL = """
INSERT INTO product_variants (product_id, sku, name, options, price, compare_at_price, cost,
                              image_url, status, metadata)
VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8, $9, jsonb_build_object('created_by', $10::text))
ON CONFLICT (product_id, sku) DO NOTHING
RETURNING id, product_id, sku, name, options, price, compare_at_price, cost, image_url, status, created_at
"""
INSERT_STOCK_SQL = """
INSERT INTO inventory (product_id, variant_id, quantity, last_restock_date)
VALUES ($1, $2, $3::int, CASE WHEN $3::int > 0 THEN now() END)
ON CONFLICT ON CONSTRAINT inventory_stock_unit_key DO NOTHING
RETURNING id
"""
# The stock row of a vendor's product (or of one of its variants), with no location. NULL id
# when the product and variant are the vendor's but have no stock row yet.
STOCK_UNIT_SQL = """
SELECT p.id AS product_id, v.id AS variant_id, i.id AS inventory_id
FROM products p
LEFT JOIN product_variants v ON v.product_id = p.id AND v.id = $3
LEFT JOIN inventory i ON i.product_id = p.id AND i.location_id IS NULL
     AND (i.variant_id = $3 OR ($3::uuid IS NULL AND i.variant_id IS NULL))
WHERE p.id = $1 AND p.vendor_id = $2
"""
STOCK_ROW_SQL = """
SELECT id FROM inventory
WHERE product_id = $1 AND location_id IS NULL
  AND (variant_id = $2 OR ($2::uuid IS NULL AND variant_id IS NULL))
"""
# One statement: the row lock and the check on the value it locked, so concurrent changes
# apply one after another and none takes stock below what is reserved.
ADJUST_STOCK_SQL = """
UPDATE inventory
SET quantity = quantity + $2,
    last_restock_date = CASE WHEN $3 THEN now() ELSE last_restock_date END,
    updated_at = now()
WHERE id = $1 AND quantity::bigint + $2 >= reserved_quantity AND quantity::bigint + $2 <= $4
RETURNING quantity, reserved_quantity
"""
STOCK_LEVELS_SQL = "SELECT quantity, reserved_quantity FROM inventory WHERE id = $1"
# performed_by references users: an actor that is a user's id goes there; any other actor
# ("system:…", an API key) is kept in notes.
INSERT_MOVEMENT_SQL = """
WITH actor_user AS (SELECT id FROM users WHERE id = $4::uuid)
INSERT INTO inventory_movements (inventory_id, movement_type, quantity, notes, performed_by)
SELECT $1, $2, $3,
       CASE WHEN $5::text IS NOT NULL AND NOT EXISTS (SELECT 1 FROM actor_user)
            THEN 'actor: ' || $5::text END,
       (SELECT id FROM actor_user)
RETURNING id
"""

PRODUCT_VIEW_SQL = """
SELECT id, vendor_id, category_id, sku, name, description, price, compare_at_price, currency, unit,
       images, tags, status, created_at, updated_at
FROM products WHERE id = $1
"""
VARIANTS_VIEW_SQL = """
SELECT id, sku, name, options, price, compare_at_price, image_url, status
FROM product_variants WHERE product_id = $1
ORDER BY created_at, id
"""
INVENTORY_VIEW_SQL = """
SELECT p.vendor_id, p.status, i.variant_id, i.location_id, i.quantity, i.reserved_quantity,
       i.reorder_point, i.last_restock_date, i.updated_at
FROM products p
LEFT JOIN inventory i ON i.product_id = p.id
WHERE p.id = $1
ORDER BY i.variant_id NULLS FIRST, i.location_id NULLS FIRST, i.id
"""

# ($n IS NULL OR ...): one statement for every combination of filters; a tenant's catalogue
# is small enough that the vendor/category index is a bonus, not a need.
COUNT_PRODUCTS_SQL = """
SELECT count(*)
FROM products p
WHERE p.status = 'active'
  AND ($1::uuid IS NULL OR p.category_id = $1::uuid)
  AND ($2::uuid IS NULL OR p.vendor_id = $2::uuid)
"""
LIST_PRODUCTS_SQL = """
SELECT p.id, p.vendor_id, p.category_id, p.sku, p.name, p.description, p.price, p.compare_at_price,
       p.currency, p.unit, p.images
FROM products p
WHERE p.status = 'active'
  AND ($1::uuid IS NULL OR p.category_id = $1::uuid)
  AND ($2::uuid IS NULL OR p.vendor_id = $2::uuid)
ORDER BY p.name, p.id
LIMIT $3 OFFSET $4
"""
# search_product_ids (0012) finds and ranks through idx_product_search; the rows themselves
# are read here, under the application role's RLS.
SEARCH_SQL = """
SELECT p.id, p.vendor_id, p.category_id, p.sku, p.name, p.description, p.price, p.compare_at_price,
       p.currency, p.unit, p.images, s.rank, s.total
FROM search_product_ids(websearch_to_tsquery('english', $1), $2, $3) s
JOIN products p ON p.id = s.product_id
ORDER BY s.rank DESC, p.id
"""
SEARCH_TOTAL_SQL = """
SELECT max(total) FROM search_product_ids(websearch_to_tsquery('english', $1), 1, 0)
"""

POPULAR_SQL = """
SELECT id FROM v_popular_products
WHERE order_count > 0
ORDER BY order_count DESC, total_sold DESC, id
LIMIT $1
"""
REFRESH_SQL = "SELECT refresh_sales_views()"
# One refresher per tenant at a time across engine processes; the others skip the tenant.
REFRESH_LOCK_SQL = "SELECT pg_try_advisory_xact_lock(hashtext('wakala.refresh_sales_views'), hashtext($1))"


# --------------------------------------------------------------------------- shared helpers


def _tenant(tenant_id: object) -> uuid.UUID:
    return parse_tenant_id(tenant_id)


async def _cache_tenant(db: TenantDatabase, tenant_id: object) -> tuple[uuid.UUID, str]:
    """The tenant and its cache spelling; a suspended or unknown tenant is refused before the
    cache, so no entry of it is served after it stops being active."""
    placement = await db.placement(tenant_id)
    if placement.status != "active":
        raise TenantNotActive(f"tenant {placement.tenant_id} is {placement.status}, not active")
    return placement.tenant_id, str(placement.tenant_id)


def _path_id(value: object, what: str) -> uuid.UUID:
    """An id from the URL or the caller's identity: malformed is simply not found."""
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str) and _UUID.match(value):
        return uuid.UUID(value)
    raise CatalogueNotFound(what)


def _actor_text(actor: object) -> str | None:
    return None if actor is None else str(actor)[:200]


def _actor_user(actor: object) -> uuid.UUID | None:
    if isinstance(actor, uuid.UUID):
        return actor
    if isinstance(actor, str) and _UUID.match(actor):
        return uuid.UUID(actor)
    return None


def _money(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def _json(value: str | None, default: Any) -> Any:
    return default if value is None else json.loads(value)


def _listed(row: asyncpg.Record) -> dict[str, Any]:
    """A product as lists and search results show it."""
    return {
        "id": str(row["id"]),
        "vendor_id": str(row["vendor_id"]),
        "category_id": None if row["category_id"] is None else str(row["category_id"]),
        "sku": row["sku"],
        "name": row["name"],
        "description": row["description"],
        "price": _money(row["price"]),
        "compare_at_price": _money(row["compare_at_price"]),
        "currency": row["currency"],
        "unit": row["unit"],
        "images": _json(row["images"], []),
    }


def _product_row(row: asyncpg.Record, *, with_cost: bool = False) -> dict[str, Any]:
    """A product as its page shows it; ``cost`` only for its vendor."""
    out = {
        **_listed(row),
        "tags": list(row["tags"] or []),
        "status": row["status"],
        "created_at": _iso(row["created_at"]),
        "updated_at": _iso(row["updated_at"]),
    }
    if with_cost:
        out["cost"] = _money(row["cost"])
    return out


# --------------------------------------------------------------------------- writes


async def create_category(db: TenantDatabase, cache: Cache, tenant_id: object, body: object, *,
                          actor: object) -> dict[str, Any]:
    """Create a category (tenant-wide). Invalidates ``catalogue``."""
    tid = _tenant(tenant_id)
    category = parse_new_category(body)
    async with db.tenant_transaction(tid) as tx:
        if category.parent_id is not None and await tx.fetchval(CATEGORY_EXISTS_SQL, category.parent_id) is None:
            raise CatalogueRejected(422, UNKNOWN_CATEGORY, "parent_id", "parent_id names no category")
        row = await tx.fetchrow(
            INSERT_CATEGORY_SQL, category.name, category.slug, category.parent_id, category.description,
            category.image_url, category.sort_order, category.is_active, _actor_text(actor))
        if row is None:
            raise CatalogueRejected(409, DUPLICATE_SLUG, "slug", f"a category with slug {category.slug!r} exists")
    await cache.invalidate(str(tid), [CATALOGUE_TAG])
    return {
        "id": str(row["id"]), "name": row["name"], "slug": row["slug"],
        "parent_id": None if row["parent_id"] is None else str(row["parent_id"]),
        "description": row["description"], "image_url": row["image_url"],
        "sort_order": row["sort_order"], "is_active": row["is_active"],
        "created_at": _iso(row["created_at"]),
    }


async def _record_movement(tx: asyncpg.Connection, inventory_id: uuid.UUID, reason: str, delta: int,
                           actor: object) -> None:
    await tx.fetchval(INSERT_MOVEMENT_SQL, inventory_id, reason, delta, _actor_user(actor),
                      _actor_text(actor))


async def _initial_stock(tx: asyncpg.Connection, product_id: uuid.UUID, variant_id: uuid.UUID | None,
                         quantity: int, actor: object) -> int:
    inventory_id = await tx.fetchval(INSERT_STOCK_SQL, product_id, variant_id, quantity)
    if inventory_id is None:   # written by someone else first; ours is a new product, so unlikely
        inventory_id = await tx.fetchval(STOCK_ROW_SQL, product_id, variant_id)
        quantity = 0
    if quantity > 0:
        await _record_movement(tx, inventory_id, "restock", quantity, actor)
    return quantity


async def create_product(db: TenantDatabase, cache: Cache, tenant_id: object, vendor_id: object,
                         body: object, *, actor: object) -> dict[str, Any]:
    """Create a vendor's product and its stock row (``initial_stock``, default 0; a non-zero
    start is recorded as a restock movement). Invalidates ``catalogue``."""
    tid = _tenant(tenant_id)
    vid = _path_id(vendor_id, "vendor")
    product = parse_new_product(body)
    async with db.tenant_transaction(tid) as tx:
        if await tx.fetchval(VENDOR_EXISTS_SQL, vid) is None:
            raise CatalogueNotFound("vendor")
        if product.category_id is not None and await tx.fetchval(CATEGORY_EXISTS_SQL, product.category_id) is None:
            raise CatalogueRejected(422, UNKNOWN_CATEGORY, "category_id", "category_id names no category")
        row = await tx.fetchrow(
            INSERT_PRODUCT_SQL, vid, product.category_id, product.sku, product.name, product.description,
            product.price, product.compare_at_price, product.cost, product.unit,
            json.dumps(list(product.images)), list(product.tags), product.status, _actor_text(actor))
        if row is None:
            raise CatalogueRejected(409, DUPLICATE_SKU, "sku", f"this vendor already has sku {product.sku!r}")
        stock = await _initial_stock(tx, row["id"], None, product.initial_stock, actor)
    await cache.invalidate(str(tid), [CATALOGUE_TAG])
    return {**_product_row(row, with_cost=True), "stock": {"quantity": stock, "reserved": 0, "available": stock}}


async def update_product(db: TenantDatabase, cache: Cache, tenant_id: object, vendor_id: object,
                         product_id: object, body: object, *, actor: object) -> dict[str, Any]:
    """Change a vendor's product (any of the create fields but ``initial_stock``; null clears
    description, compare_at_price, cost and category_id). Invalidates what the changed fields
    show: see ``product_update_tags``."""
    tid = _tenant(tenant_id)
    vid = _path_id(vendor_id, "vendor")
    pid = _path_id(product_id, "product")
    changes = parse_product_update(body)
    async with db.tenant_transaction(tid) as tx:
        old = await tx.fetchrow(PRODUCT_FOR_UPDATE_SQL, pid, vid)
        if old is None:
            raise CatalogueNotFound("product")
        current = {
            "sku": old["sku"], "name": old["name"], "description": old["description"],
            "price": old["price"], "compare_at_price": old["compare_at_price"], "cost": old["cost"],
            "category_id": old["category_id"], "unit": old["unit"],
            "images": tuple(_json(old["images"], [])), "tags": tuple(old["tags"] or ()),
            "status": old["status"],
        }
        changed = {key for key, value in changes.items() if current[key] != value}
        if not changed:
            return _product_row(old, with_cost=True)
        new = {**current, **changes}
        if "category_id" in changed and new["category_id"] is not None \
                and await tx.fetchval(CATEGORY_EXISTS_SQL, new["category_id"]) is None:
            raise CatalogueRejected(422, UNKNOWN_CATEGORY, "category_id", "category_id names no category")
        try:
            row = await tx.fetchrow(
                UPDATE_PRODUCT_SQL, pid, vid, new["sku"], new["name"], new["description"], new["price"],
                new["compare_at_price"], new["cost"], new["category_id"], new["unit"],
                json.dumps(list(new["images"])), list(new["tags"]), new["status"], _actor_text(actor))
        except asyncpg.UniqueViolationError:
            raise CatalogueRejected(409, DUPLICATE_SKU, "sku", f"this vendor already has sku {new['sku']!r}") from None
    await cache.invalidate(str(tid), product_update_tags(pid, changed))
    return _product_row(row, with_cost=True)


async def create_variant(db: TenantDatabase, cache: Cache, tenant_id: object, vendor_id: object,
                         product_id: object, body: object, *, actor: object) -> dict[str, Any]:
    """Add a variant to a vendor's product, with its own stock row. Invalidates ``catalogue``,
    the product entry (it lists variants) and its inventory entry (a new stock row)."""
    tid = _tenant(tenant_id)
    vid = _path_id(vendor_id, "vendor")
    pid = _path_id(product_id, "product")
    variant = parse_new_variant(body)
    async with db.tenant_transaction(tid) as tx:
        if await tx.fetchval(VENDOR_PRODUCT_SQL, pid, vid) is None:
            raise CatalogueNotFound("product")
        row = await tx.fetchrow(
            INSERT_VARIANT_SQL, pid, variant.sku, variant.name, json.dumps(dict(variant.options)),
            variant.price, variant.compare_at_price, variant.cost, variant.image_url, variant.status,
            _actor_text(actor))
        if row is None:
            raise CatalogueRejected(409, DUPLICATE_SKU, "sku", f"this product already has a variant with sku {variant.sku!r}")
        stock = await _initial_stock(tx, pid, row["id"], variant.initial_stock, actor)
    await cache.invalidate(str(tid), [CATALOGUE_TAG, _product_tag(pid), *stock_tags(pid)])
    return {
        "id": str(row["id"]), "product_id": str(row["product_id"]), "sku": row["sku"], "name": row["name"],
        "options": _json(row["options"], {}), "price": _money(row["price"]),
        "compare_at_price": _money(row["compare_at_price"]), "cost": _money(row["cost"]),
        "image_url": row["image_url"], "status": row["status"], "created_at": _iso(row["created_at"]),
        "stock": {"quantity": stock, "reserved": 0, "available": stock},
    }


async def adjust_stock(db: TenantDatabase, cache: Cache, tenant_id: object, vendor_id: object,
                       product_id: object, *, variant_id: object = None, delta: int, reason: str,
                       actor: object) -> dict[str, Any]:
    """Add (``delta`` > 0) or remove stock of a vendor's product or variant, with one
    ``inventory_movements`` row. Refuses, with 409 ``stock_reserved``, a decrease that would
    leave less than is reserved (so never below 0). Atomic under concurrency: the check and the
    change are one statement on the locked row. Invalidates ``stock_tags(product_id)``."""
    tid = _tenant(tenant_id)
    vid = _path_id(vendor_id, "vendor")
    pid = _path_id(product_id, "product")
    var = None if variant_id is None else _path_id(variant_id, "variant")
    change, why = _stock_change(delta, reason)
    async with db.tenant_transaction(tid) as tx:
        unit = await tx.fetchrow(STOCK_UNIT_SQL, pid, vid, var)
        if unit is None:
            raise CatalogueNotFound("product")
        if var is not None and unit["variant_id"] is None:
            raise CatalogueNotFound("variant", "variant_id")
        inventory_id = unit["inventory_id"]
        if inventory_id is None:   # a product made by other code without a stock row
            inventory_id = await tx.fetchval(INSERT_STOCK_SQL, pid, var, 0) \
                or await tx.fetchval(STOCK_ROW_SQL, pid, var)
        levels = await tx.fetchrow(ADJUST_STOCK_SQL, inventory_id, change, why == "restock", STOCK_MAX)
        if levels is None:
            now = await tx.fetchrow(STOCK_LEVELS_SQL, inventory_id)
            if now["quantity"] + change > STOCK_MAX:
                raise CatalogueRejected(422, OUT_OF_RANGE, "delta",
                                        f"stock of one item is at most {STOCK_MAX}")
            free = now["quantity"] - now["reserved_quantity"]
            raise CatalogueRejected(
                409, STOCK_RESERVED, "delta",
                f"only {free} of {now['quantity']} in stock are not reserved; cannot remove {-change}")
        await _record_movement(tx, inventory_id, why, change, actor)
    await cache.invalidate(str(tid), stock_tags(pid))
    return {
        "product_id": str(pid), "variant_id": None if var is None else str(var),
        "quantity": levels["quantity"], "reserved": levels["reserved_quantity"],
        "available": levels["quantity"] - levels["reserved_quantity"],
    }


# --------------------------------------------------------------------------- reads


async def _load_product(db: TenantDatabase, tid: uuid.UUID, pid: uuid.UUID) -> dict[str, Any] | None:
    async with db.tenant_transaction(tid, readonly=True) as tx:
        row = await tx.fetchrow(PRODUCT_VIEW_SQL, pid)
        if row is None:
            return None
        variants = await tx.fetch(VARIANTS_VIEW_SQL, pid)
    view = _product_row(row)
    view["variants"] = [
        {
            "id": str(v["id"]), "sku": v["sku"], "name": v["name"], "options": _json(v["options"], {}),
            "price": _money(v["price"] if v["price"] is not None else row["price"]),
            "compare_at_price": _money(v["compare_at_price"]), "image_url": v["image_url"],
            "status": v["status"],
        }
        for v in variants
    ]
    return view


def _visible(view: dict[str, Any], vendor: uuid.UUID | None, include_inactive: bool) -> bool:
    if vendor is not None and view["vendor_id"] != str(vendor):
        return False
    return include_inactive or view["status"] == "active"


async def _cached_product(db: TenantDatabase, cache: Cache, tid: uuid.UUID, tenant: str,
                          pid: uuid.UUID) -> dict[str, Any] | None:
    return await cache.get_or_set(tenant, product_key(tenant, str(pid)),
                                  lambda: _load_product(db, tid, pid), TTL["product"],
                                  tags=[_product_tag(pid)])


async def _cached_inventory(db: TenantDatabase, cache: Cache, tid: uuid.UUID, tenant: str,
                            pid: uuid.UUID) -> dict[str, Any] | None:
    return await cache.get_or_set(tenant, inventory_key(tenant, str(pid)),
                                  lambda: _load_inventory(db, tid, pid), TTL["inventory"],
                                  tags=stock_tags(pid))


def _with_stock(view: dict[str, Any], inventory: dict[str, Any] | None) -> dict[str, Any]:
    available: dict[str | None, int] = {}
    for row in inventory["stock"] if inventory else ():
        available[row["variant_id"]] = available.get(row["variant_id"], 0) + row["available"]
    for variant in view["variants"]:
        variant["available"] = available.get(variant["id"], 0)
    base = available.get(None, 0)
    total = base + sum(v["available"] for v in view["variants"])
    view["stock"] = {"available": base, "total_available": total, "in_stock": total > 0}
    return view


async def get_product(db: TenantDatabase, cache: Cache, tenant_id: object, product_id: object, *,
                      include_inactive: bool = False, vendor_id: object = None) -> dict[str, Any]:
    """A product with its variants and available stock: the product entry (30 min, tag
    ``product:{id}``) joined with the inventory entry (60 s, tag ``inventory:{id}``).

    Customers: active products and variants only; anything else is ``CatalogueNotFound``.
    Vendors pass ``vendor_id`` (only their own products are found) and ``include_inactive``.
    """
    tid, tenant = await _cache_tenant(db, tenant_id)
    pid = _path_id(product_id, "product")
    vendor = None if vendor_id is None else _path_id(vendor_id, "vendor")
    view = await _cached_product(db, cache, tid, tenant, pid)
    if view is None or not _visible(view, vendor, include_inactive):
        raise CatalogueNotFound("product")
    if not include_inactive:
        view["variants"] = [v for v in view["variants"] if v["status"] == "active"]
    return _with_stock(view, await _cached_inventory(db, cache, tid, tenant, pid))


async def _load_inventory(db: TenantDatabase, tid: uuid.UUID, pid: uuid.UUID) -> dict[str, Any] | None:
    async with db.tenant_transaction(tid, readonly=True) as tx:
        rows = await tx.fetch(INVENTORY_VIEW_SQL, pid)
    if not rows:
        return None
    stock = [
        {
            "variant_id": None if r["variant_id"] is None else str(r["variant_id"]),
            "location_id": None if r["location_id"] is None else str(r["location_id"]),
            "quantity": r["quantity"], "reserved": r["reserved_quantity"],
            "available": r["quantity"] - r["reserved_quantity"],
            "reorder_point": r["reorder_point"],
            "needs_reorder": r["reorder_point"] is not None
                             and r["quantity"] - r["reserved_quantity"] <= r["reorder_point"],
            "last_restock_date": _iso(r["last_restock_date"]), "updated_at": _iso(r["updated_at"]),
        }
        for r in rows if r["quantity"] is not None
    ]
    return {
        "product_id": str(pid), "vendor_id": str(rows[0]["vendor_id"]), "status": rows[0]["status"],
        "stock": stock, "total_available": sum(s["available"] for s in stock),
    }


async def get_inventory(db: TenantDatabase, cache: Cache, tenant_id: object, product_id: object, *,
                        include_inactive: bool = False, vendor_id: object = None) -> dict[str, Any]:
    """Every stock row of a product (cached 60 s, tag ``inventory:{product_id}``); the same
    visibility rules as ``get_product``."""
    tid, tenant = await _cache_tenant(db, tenant_id)
    pid = _path_id(product_id, "product")
    vendor = None if vendor_id is None else _path_id(vendor_id, "vendor")
    view = await _cached_inventory(db, cache, tid, tenant, pid)
    if view is None or not _visible(view, vendor, include_inactive):
        raise CatalogueNotFound("product")
    return view


async def list_products(db: TenantDatabase, cache: Cache, tenant_id: object, *,
                        category_id: object = None, vendor_id: object = None,
                        page: object = 1, page_size: object = 20) -> dict[str, Any]:
    """Active products by name, optionally of one category and/or vendor (cached 5 min,
    tag ``catalogue``). Shows no stock, so stock changes leave lists alone."""
    tid, tenant = await _cache_tenant(db, tenant_id)
    page_n, size = parse_page(page, page_size)
    category = _optional_uuid(category_id, "category_id")
    vendor = _optional_uuid(vendor_id, "vendor_id")

    async def load() -> dict[str, Any]:
        async with db.tenant_transaction(tid, readonly=True) as tx:
            total = await tx.fetchval(COUNT_PRODUCTS_SQL, category, vendor)
            rows = await tx.fetch(LIST_PRODUCTS_SQL, category, vendor, size, (page_n - 1) * size)
        return {"items": [_listed(r) for r in rows], "page": page_n, "page_size": size, "total": total}

    key = product_list_key(tenant, None if category is None else str(category),
                           None if vendor is None else str(vendor), page_n, size)
    return await cache.get_or_set(tenant, key, load, TTL["product_list"], tags=[CATALOGUE_TAG])


async def search_products(db: TenantDatabase, cache: Cache, tenant_id: object, q: object, *,
                          page: object = 1, page_size: object = 20) -> dict[str, Any]:
    """Active products whose name or description match ``q`` (web-search syntax: words,
    "quoted phrases", -excluded; English stemming), best first: name matches rank above
    description matches. Index-assisted (``idx_product_search``). Cached 10 min, tag
    ``catalogue``."""
    tid, tenant = await _cache_tenant(db, tenant_id)
    query = parse_search_query(q)
    page_n, size = parse_page(page, page_size)

    async def load() -> dict[str, Any]:
        async with db.tenant_transaction(tid, readonly=True) as tx:
            rows = await tx.fetch(SEARCH_SQL, query, size, (page_n - 1) * size)
            if rows:
                total = rows[0]["total"]
            else:   # past the last page, or no match at all
                total = (await tx.fetchval(SEARCH_TOTAL_SQL, query) or 0) if page_n > 1 else 0
        items = [{**_listed(r), "rank": round(float(r["rank"]), 6)} for r in rows]
        return {"query": query, "items": items, "page": page_n, "page_size": size, "total": total}

    key = search_key(tenant, query, page_n, size)
    return await cache.get_or_set(tenant, key, load, TTL["search"], tags=[CATALOGUE_TAG])


# --------------------------------------------------------------------------- materialized views


async def refresh_views(db: TenantDatabase, tenant_id: object) -> bool:
    """Refresh the tenant's mv_popular_products and mv_daily_sales_summary, CONCURRENTLY (reads
    go on meanwhile), through 0012's refresh_sales_views(). False when another process is
    refreshing this tenant right now (it was skipped)."""
    tid = _tenant(tenant_id)
    async with db.tenant_transaction(tid) as tx:
        if not await tx.fetchval(REFRESH_LOCK_SQL, str(tid)):
            return False
        await tx.execute(REFRESH_SQL)
    return True


async def warm_popular(db: TenantDatabase, cache: Cache, tenant_id: object, limit: int = 50) -> int:
    """Put the ``limit`` most ordered products (from the last refresh of mv_popular_products)
    in the cache, as the cache-aside entries ``get_product`` reads: the product entry (30 min)
    and, while it lasts (60 s), the inventory entry. Each is read fresh from the tables, not
    from the view, so it is as current as any other read. Returns how many products."""
    tid, tenant = await _cache_tenant(db, tenant_id)
    count = _int(limit, "limit", 1, 1000)
    async with db.tenant_transaction(tid, readonly=True) as tx:
        ids = [r["id"] for r in await tx.fetch(POPULAR_SQL, count)]
    for pid in ids:
        await _cached_product(db, cache, tid, tenant, pid)
        await _cached_inventory(db, cache, tid, tenant, pid)
    return len(ids)


async def run_view_refresher(db: TenantDatabase, cache: Cache,
                             tenant_ids_provider: Callable[[], Awaitable[Iterable[object]]],
                             interval_s: float = 900) -> None:
    """Every ``interval_s``: for each tenant the provider names, refresh its views and warm its
    popular products. A failing tenant (or provider) is logged and the loop goes on; it ends
    only when cancelled."""
    while True:
        started = time.monotonic()
        try:
            tenants = list(await tenant_ids_provider())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("view refresher: could not list tenants")
            tenants = []
        for tenant_id in tenants:
            try:
                if await refresh_views(db, tenant_id):
                    await warm_popular(db, cache, tenant_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("view refresher: tenant %s failed; next round in %.0f s", tenant_id, interval_s)
        await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - started)))


def active_tenant_ids(settings: PostgresSettings) -> Callable[[], Awaitable[list[uuid.UUID]]]:
    """A ``tenant_ids_provider`` for ``run_view_refresher``: the active tenants, read from the
    control plane at each round (so tenants provisioned meanwhile are included)."""
    async def provider() -> list[uuid.UUID]:
        return [t.id for t in await list_tenants(settings) if t.status == "active"]
    return provider
