"""Catalogue writes: categories, products, variants and stock adjustments.

Each runs in one ``TenantDatabase.tenant_transaction`` (RLS forced) and, after it commits,
invalidates exactly the cache tags its change makes stale (``tags.py``; the table is in the
package docstring). Invalidating after the commit, never inside, means a reader can at worst
cache the old value for the instant before the invalidation drops it; the cache's generation
check keeps a slow reader from putting it back.

A vendor only ever touches its own products: another vendor's product, another tenant's, or a
malformed id all raise the same ``NotFound`` and reveal nothing. Uniqueness (a vendor's SKU, a
product's variant SKU, a category slug) is left to the database's constraints
(``ON CONFLICT DO NOTHING``) and answered with 409, so two concurrent creates cannot both win.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg

from dispatch.commerce.catalogue.parse import (
    STOCK_MAX,
    parse_new_category,
    parse_new_product,
    parse_new_variant,
    parse_product_update,
    parse_stock_change,
    path_id,
)
from dispatch.commerce.catalogue.rows import iso, json_column, money, product_row
from dispatch.commerce.catalogue.tags import (
    CATALOGUE_TAG,
    product_tag,
    product_update_tags,
    stock_tags,
)
from dispatch.core.cache import Cache
from dispatch.core.errors import (
    DUPLICATE_SKU,
    DUPLICATE_SLUG,
    OUT_OF_RANGE,
    STOCK_RESERVED,
    UNKNOWN_CATEGORY,
    NotFound,
    Refusal,
)
from dispatch.core.ids import InvalidId, parse_uuid
from schema.db import TenantDatabase
from schema.tenants import parse_tenant_id

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


def _actor_text(actor: object) -> str | None:
    return None if actor is None else str(actor)[:200]


def _actor_user(actor: object) -> uuid.UUID | None:
    """The actor as a user id when it looks like one (the SQL then checks it is one)."""
    try:
        return parse_uuid(actor, "actor")
    except InvalidId:
        return None


def _unknown_category(field: str) -> Refusal:
    return Refusal(422, UNKNOWN_CATEGORY, f"{field} names no category", field)


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


async def create_category(db: TenantDatabase, cache: Cache, tenant_id: object, body: object, *,
                          actor: object) -> dict[str, Any]:
    """Create a category (tenant-wide). Invalidates ``catalogue``."""
    tid = parse_tenant_id(tenant_id)
    category = parse_new_category(body)
    async with db.tenant_transaction(tid) as tx:
        if category.parent_id is not None and await tx.fetchval(CATEGORY_EXISTS_SQL, category.parent_id) is None:
            raise _unknown_category("parent_id")
        row = await tx.fetchrow(
            INSERT_CATEGORY_SQL, category.name, category.slug, category.parent_id, category.description,
            category.image_url, category.sort_order, category.is_active, _actor_text(actor))
        if row is None:
            raise Refusal(409, DUPLICATE_SLUG, f"a category with slug {category.slug!r} exists", "slug")
    await cache.invalidate(str(tid), [CATALOGUE_TAG])
    return {
        "id": str(row["id"]), "name": row["name"], "slug": row["slug"],
        "parent_id": None if row["parent_id"] is None else str(row["parent_id"]),
        "description": row["description"], "image_url": row["image_url"],
        "sort_order": row["sort_order"], "is_active": row["is_active"],
        "created_at": iso(row["created_at"]),
    }


async def create_product(db: TenantDatabase, cache: Cache, tenant_id: object, vendor_id: object,
                         body: object, *, actor: object) -> dict[str, Any]:
    """Create a vendor's product and its stock row (``initial_stock``, default 0; a non-zero
    start is recorded as a restock movement). Invalidates ``catalogue``."""
    tid = parse_tenant_id(tenant_id)
    vid = path_id(vendor_id, "vendor")
    product = parse_new_product(body)
    async with db.tenant_transaction(tid) as tx:
        if await tx.fetchval(VENDOR_EXISTS_SQL, vid) is None:
            raise NotFound("no such vendor")
        if product.category_id is not None and await tx.fetchval(CATEGORY_EXISTS_SQL, product.category_id) is None:
            raise _unknown_category("category_id")
        row = await tx.fetchrow(
            INSERT_PRODUCT_SQL, vid, product.category_id, product.sku, product.name, product.description,
            product.price, product.compare_at_price, product.cost, product.unit,
            json.dumps(list(product.images)), list(product.tags), product.status, _actor_text(actor))
        if row is None:
            raise Refusal(409, DUPLICATE_SKU, f"this vendor already has sku {product.sku!r}", "sku")
        stock = await _initial_stock(tx, row["id"], None, product.initial_stock, actor)
    await cache.invalidate(str(tid), [CATALOGUE_TAG])
    return {**product_row(row, with_cost=True), "stock": {"quantity": stock, "reserved": 0, "available": stock}}


async def update_product(db: TenantDatabase, cache: Cache, tenant_id: object, vendor_id: object,
                         product_id: object, body: object, *, actor: object) -> dict[str, Any]:
    """Change a vendor's product (any of the create fields but ``initial_stock``; null clears
    description, compare_at_price, cost and category_id). Invalidates what the changed fields
    show: see ``product_update_tags``."""
    tid = parse_tenant_id(tenant_id)
    vid = path_id(vendor_id, "vendor")
    pid = path_id(product_id, "product")
    changes = parse_product_update(body)
    async with db.tenant_transaction(tid) as tx:
        old = await tx.fetchrow(PRODUCT_FOR_UPDATE_SQL, pid, vid)
        if old is None:
            raise NotFound("no such product")
        current = {
            "sku": old["sku"], "name": old["name"], "description": old["description"],
            "price": old["price"], "compare_at_price": old["compare_at_price"], "cost": old["cost"],
            "category_id": old["category_id"], "unit": old["unit"],
            "images": tuple(json_column(old["images"], [])), "tags": tuple(old["tags"] or ()),
            "status": old["status"],
        }
        changed = {key for key, value in changes.items() if current[key] != value}
        if not changed:
            return product_row(old, with_cost=True)
        new = {**current, **changes}
        if "category_id" in changed and new["category_id"] is not None \
                and await tx.fetchval(CATEGORY_EXISTS_SQL, new["category_id"]) is None:
            raise _unknown_category("category_id")
        try:
            row = await tx.fetchrow(
                UPDATE_PRODUCT_SQL, pid, vid, new["sku"], new["name"], new["description"], new["price"],
                new["compare_at_price"], new["cost"], new["category_id"], new["unit"],
                json.dumps(list(new["images"])), list(new["tags"]), new["status"], _actor_text(actor))
        except asyncpg.UniqueViolationError:
            raise Refusal(409, DUPLICATE_SKU, f"this vendor already has sku {new['sku']!r}", "sku") from None
    await cache.invalidate(str(tid), product_update_tags(pid, changed))
    return product_row(row, with_cost=True)


async def create_variant(db: TenantDatabase, cache: Cache, tenant_id: object, vendor_id: object,
                         product_id: object, body: object, *, actor: object) -> dict[str, Any]:
    """Add a variant to a vendor's product, with its own stock row. Invalidates ``catalogue``,
    the product entry (it lists variants) and its inventory entry (a new stock row)."""
    tid = parse_tenant_id(tenant_id)
    vid = path_id(vendor_id, "vendor")
    pid = path_id(product_id, "product")
    variant = parse_new_variant(body)
    async with db.tenant_transaction(tid) as tx:
        if await tx.fetchval(VENDOR_PRODUCT_SQL, pid, vid) is None:
            raise NotFound("no such product")
        row = await tx.fetchrow(
            INSERT_VARIANT_SQL, pid, variant.sku, variant.name, json.dumps(dict(variant.options)),
            variant.price, variant.compare_at_price, variant.cost, variant.image_url, variant.status,
            _actor_text(actor))
        if row is None:
            raise Refusal(409, DUPLICATE_SKU,
                          f"this product already has a variant with sku {variant.sku!r}", "sku")
        stock = await _initial_stock(tx, pid, row["id"], variant.initial_stock, actor)
    await cache.invalidate(str(tid), [CATALOGUE_TAG, product_tag(pid), *stock_tags(pid)])
    return {
        "id": str(row["id"]), "product_id": str(row["product_id"]), "sku": row["sku"], "name": row["name"],
        "options": json_column(row["options"], {}), "price": money(row["price"]),
        "compare_at_price": money(row["compare_at_price"]), "cost": money(row["cost"]),
        "image_url": row["image_url"], "status": row["status"], "created_at": iso(row["created_at"]),
        "stock": {"quantity": stock, "reserved": 0, "available": stock},
    }


async def adjust_stock(db: TenantDatabase, cache: Cache, tenant_id: object, vendor_id: object,
                       product_id: object, *, variant_id: object = None, delta: int, reason: str,
                       actor: object) -> dict[str, Any]:
    """Add (``delta`` > 0) or remove stock of a vendor's product or variant, with one
    ``inventory_movements`` row. Refuses, with 409 ``stock_reserved``, a decrease that would
    leave less than is reserved (so never below 0). Atomic under concurrency: the check and the
    change are one statement on the locked row. Invalidates ``stock_tags(product_id)``."""
    tid = parse_tenant_id(tenant_id)
    vid = path_id(vendor_id, "vendor")
    pid = path_id(product_id, "product")
    var = None if variant_id is None else path_id(variant_id, "variant")
    change, why = parse_stock_change(delta, reason)
    async with db.tenant_transaction(tid) as tx:
        unit = await tx.fetchrow(STOCK_UNIT_SQL, pid, vid, var)
        if unit is None:
            raise NotFound("no such product")
        if var is not None and unit["variant_id"] is None:
            raise NotFound("no such variant", "variant_id")
        inventory_id = unit["inventory_id"]
        if inventory_id is None:   # a product made by other code without a stock row
            inventory_id = await tx.fetchval(INSERT_STOCK_SQL, pid, var, 0) \
                or await tx.fetchval(STOCK_ROW_SQL, pid, var)
        levels = await tx.fetchrow(ADJUST_STOCK_SQL, inventory_id, change, why == "restock", STOCK_MAX)
        if levels is None:
            now = await tx.fetchrow(STOCK_LEVELS_SQL, inventory_id)
            if now["quantity"] + change > STOCK_MAX:
                raise Refusal(422, OUT_OF_RANGE, f"stock of one item is at most {STOCK_MAX}", "delta")
            free = now["quantity"] - now["reserved_quantity"]
            raise Refusal(
                409, STOCK_RESERVED,
                f"only {free} of {now['quantity']} in stock are not reserved; cannot remove {-change}",
                "delta")
        await _record_movement(tx, inventory_id, why, change, actor)
    await cache.invalidate(str(tid), stock_tags(pid))
    return {
        "product_id": str(pid), "variant_id": None if var is None else str(var),
        "quantity": levels["quantity"], "reserved": levels["reserved_quantity"],
        "available": levels["quantity"] - levels["reserved_quantity"],
    }
