"""Catalogue reads, cache-aside through ``dispatch.core.cache`` with the tenant in every key.

A product page is two entries: the product with its variants (30 min, tag ``product:{id}``)
and its stock (60 s, tag ``inventory:{id}``), joined at read time, so the long-lived entry
never holds stock, which every order changes. Lists and searches (tag ``catalogue``) show no
stock at all. Entries hold everything the product's vendor may see; who sees what (active
only, one vendor's own) is decided on each read, after the cache.
"""

from __future__ import annotations

import uuid
from typing import Any

from dispatch.commerce.catalogue.parse import (
    optional_uuid_field,
    parse_page,
    parse_search_query,
    path_id,
)
from dispatch.commerce.catalogue.rows import iso, json_column, listed, money, product_row
from dispatch.commerce.catalogue.tags import CATALOGUE_TAG, stock_tags
from dispatch.core.cache import TTL, Cache
from dispatch.core.cache_keys import (
    inventory_key,
    product_key,
    product_list_key,
    product_tag,
    search_key,
)
from dispatch.core.errors import NotFound
from schema.db import TenantDatabase
from schema.errors import TenantNotActive

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


async def cache_tenant(db: TenantDatabase, tenant_id: object) -> tuple[uuid.UUID, str]:
    """The tenant and its cache spelling; a suspended or unknown tenant is refused before the
    cache, so no entry of it is served after it stops being active."""
    placement = await db.placement(tenant_id)
    if placement.status != "active":
        raise TenantNotActive(f"tenant {placement.tenant_id} is {placement.status}, not active")
    return placement.tenant_id, str(placement.tenant_id)


async def _load_product(db: TenantDatabase, tid: uuid.UUID, pid: uuid.UUID) -> dict[str, Any] | None:
    async with db.tenant_transaction(tid, readonly=True) as tx:
        row = await tx.fetchrow(PRODUCT_VIEW_SQL, pid)
        if row is None:
            return None
        variants = await tx.fetch(VARIANTS_VIEW_SQL, pid)
    view = product_row(row)
    view["variants"] = [
        {
            "id": str(v["id"]), "sku": v["sku"], "name": v["name"], "options": json_column(v["options"], {}),
            "price": money(v["price"] if v["price"] is not None else row["price"]),
            "compare_at_price": money(v["compare_at_price"]), "image_url": v["image_url"],
            "status": v["status"],
        }
        for v in variants
    ]
    return view


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
            "last_restock_date": iso(r["last_restock_date"]), "updated_at": iso(r["updated_at"]),
        }
        for r in rows if r["quantity"] is not None
    ]
    return {
        "product_id": str(pid), "vendor_id": str(rows[0]["vendor_id"]), "status": rows[0]["status"],
        "stock": stock, "total_available": sum(s["available"] for s in stock),
    }


async def cached_product(db: TenantDatabase, cache: Cache, tid: uuid.UUID, tenant: str,
                         pid: uuid.UUID) -> dict[str, Any] | None:
    """The product entry (30 min, tag ``product:{id}``), loaded on a miss."""
    return await cache.get_or_set(tenant, product_key(tenant, str(pid)),
                                  lambda: _load_product(db, tid, pid), TTL["product"],
                                  tags=[product_tag(pid)])


async def cached_inventory(db: TenantDatabase, cache: Cache, tid: uuid.UUID, tenant: str,
                           pid: uuid.UUID) -> dict[str, Any] | None:
    """The inventory entry (60 s, tag ``inventory:{id}``), loaded on a miss."""
    return await cache.get_or_set(tenant, inventory_key(tenant, str(pid)),
                                  lambda: _load_inventory(db, tid, pid), TTL["inventory"],
                                  tags=stock_tags(pid))


def _visible(view: dict[str, Any], vendor: uuid.UUID | None, include_inactive: bool) -> bool:
    if vendor is not None and view["vendor_id"] != str(vendor):
        return False
    return include_inactive or view["status"] == "active"


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

    Customers: active products and variants only; anything else is ``NotFound``.
    Vendors pass ``vendor_id`` (only their own products are found) and ``include_inactive``.
    """
    tid, tenant = await cache_tenant(db, tenant_id)
    pid = path_id(product_id, "product")
    vendor = None if vendor_id is None else path_id(vendor_id, "vendor")
    view = await cached_product(db, cache, tid, tenant, pid)
    if view is None or not _visible(view, vendor, include_inactive):
        raise NotFound("no such product")
    if not include_inactive:
        view["variants"] = [v for v in view["variants"] if v["status"] == "active"]
    return _with_stock(view, await cached_inventory(db, cache, tid, tenant, pid))


async def get_inventory(db: TenantDatabase, cache: Cache, tenant_id: object, product_id: object, *,
                        include_inactive: bool = False, vendor_id: object = None) -> dict[str, Any]:
    """Every stock row of a product (cached 60 s, tag ``inventory:{product_id}``); the same
    visibility rules as ``get_product``."""
    tid, tenant = await cache_tenant(db, tenant_id)
    pid = path_id(product_id, "product")
    vendor = None if vendor_id is None else path_id(vendor_id, "vendor")
    view = await cached_inventory(db, cache, tid, tenant, pid)
    if view is None or not _visible(view, vendor, include_inactive):
        raise NotFound("no such product")
    return view


async def list_products(db: TenantDatabase, cache: Cache, tenant_id: object, *,
                        category_id: object = None, vendor_id: object = None,
                        page: object = 1, page_size: object = 20) -> dict[str, Any]:
    """Active products by name, optionally of one category and/or vendor (cached 5 min,
    tag ``catalogue``). Shows no stock, so stock changes leave lists alone."""
    tid, tenant = await cache_tenant(db, tenant_id)
    page_n, size = parse_page(page, page_size)
    category = optional_uuid_field(category_id, "category_id")
    vendor = optional_uuid_field(vendor_id, "vendor_id")

    async def load() -> dict[str, Any]:
        async with db.tenant_transaction(tid, readonly=True) as tx:
            total = await tx.fetchval(COUNT_PRODUCTS_SQL, category, vendor)
            rows = await tx.fetch(LIST_PRODUCTS_SQL, category, vendor, size, (page_n - 1) * size)
        return {"items": [listed(r) for r in rows], "page": page_n, "page_size": size, "total": total}

    key = product_list_key(tenant, None if category is None else str(category),
                           None if vendor is None else str(vendor), page_n, size)
    return await cache.get_or_set(tenant, key, load, TTL["product_list"], tags=[CATALOGUE_TAG])


async def search_products(db: TenantDatabase, cache: Cache, tenant_id: object, q: object, *,
                          page: object = 1, page_size: object = 20) -> dict[str, Any]:
    """Active products whose name or description match ``q`` (web-search syntax: words,
    "quoted phrases", -excluded; English stemming), best first: name matches rank above
    description matches. Index-assisted (``idx_product_search``). Cached 10 min, tag
    ``catalogue``."""
    tid, tenant = await cache_tenant(db, tenant_id)
    query = parse_search_query(q)
    page_n, size = parse_page(page, page_size)

    async def load() -> dict[str, Any]:
        async with db.tenant_transaction(tid, readonly=True) as tx:
            rows = await tx.fetch(SEARCH_SQL, query, size, (page_n - 1) * size)
            if rows:
                total = rows[0]["total"]
            else:   # past the last page, or no match at all
                total = (await tx.fetchval(SEARCH_TOTAL_SQL, query) or 0) if page_n > 1 else 0
        items = [{**listed(r), "rank": round(float(r["rank"]), 6)} for r in rows]
        return {"query": query, "items": items, "page": page_n, "page_size": size, "total": total}

    key = search_key(tenant, query, page_n, size)
    return await cache.get_or_set(tenant, key, load, TTL["search"], tags=[CATALOGUE_TAG])
