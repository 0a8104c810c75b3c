"""The catalogue against real Postgres and Redis: writes, cache-aside reads, isolation, views.

The pure parsing and cache-tag rules are tested without services in tests/unit/commerce/."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from dispatch.commerce.catalogue.reads import (
    SEARCH_SQL,
    get_inventory,
    get_product,
    list_products,
    search_products,
)
from dispatch.commerce.catalogue.views import (
    active_tenant_ids,
    refresh_views,
    run_view_refresher,
    warm_popular,
)
from dispatch.commerce.catalogue.writes import (
    adjust_stock,
    create_category,
    create_product,
    create_variant,
    update_product,
)
from dispatch.core.cache import Cache
from dispatch.core.cache_keys import inventory_key, product_key
from dispatch.core.errors import NotFound, Refusal
from schema.connect import connection
from schema.db import SET_TENANT_SQL, TenantDatabase
from schema.settings import PostgresSettings
from schema.tenants import Tenant, create_tenant
from tests.integration.shared_platform import shared_platform  # noqa: F401 - one platform for the module


@dataclass
class Shop:
    tenant: Tenant
    vendor_a: uuid.UUID
    vendor_b: uuid.UUID
    user: uuid.UUID
    customers: list[uuid.UUID]


@dataclass
class Env:
    settings: PostgresSettings
    db: TenantDatabase
    cache: Cache
    one: Shop
    two: Shop


async def _shop(db: TenantDatabase, tenant: Tenant) -> Shop:
    async with db.tenant_transaction(tenant.id) as tx:
        user = await tx.fetchval("INSERT INTO users (phone_number, name, role) "
                                 "VALUES ('+27710000200', 'Vendor Admin', 'vendor') RETURNING id")
        vendor_a = await tx.fetchval("INSERT INTO vendors (business_name, address) "
                                     "VALUES ('Spaza A', '{}') RETURNING id")
        vendor_b = await tx.fetchval("INSERT INTO vendors (business_name, address) "
                                     "VALUES ('Spaza B', '{}') RETURNING id")
        customers = [await tx.fetchval("INSERT INTO customers (first_name) VALUES ($1) RETURNING id", name)
                     for name in ("Thandi", "Sipho", "Lerato")]
    return Shop(tenant, vendor_a, vendor_b, user, customers)


@pytest.fixture
async def env(platform, redis_url):
    one = await create_tenant(platform, f"Catalogue One {uuid.uuid4().hex[:6]}")
    two = await create_tenant(platform, f"Catalogue Two {uuid.uuid4().hex[:6]}")
    redis = aioredis.from_url(redis_url)
    async with TenantDatabase(platform) as db:
        yield Env(platform, db, Cache(redis), await _shop(db, one), await _shop(db, two))
    await redis.aclose()


def _owner_dsn(settings: PostgresSettings, tenant: Tenant):
    return settings.control.with_database(settings.shard_databases[tenant.shard_id])


MAIZE = {"sku": "MM-5KG", "name": "Maize meal 5kg", "description": "White maize meal, super fine",
         "price": "65.99", "images": ["https://cdn.example.com/mm.jpg"], "tags": ["staples"]}
BREAD = {"sku": "BR-700", "name": "Brown bread", "description": "Loaf baked daily with maize flour",
         "price": 18.5}
COKE = {"sku": "CK-2L", "name": "Cola 2L", "description": "Fizzy soft drink", "price": "27.00",
        "initial_stock": 12}


async def _counts(env: Env, shop: Shop) -> dict[str, int]:
    async with env.db.tenant_transaction(shop.tenant.id, readonly=True) as tx:
        return {table: await tx.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608
                for table in ("categories", "products", "product_variants", "inventory",
                              "inventory_movements")}


# --------------------------------------------------------------------------- round trips


async def test_create_update_list_and_search_round_trip(env):
    db, cache, shop = env.db, env.cache, env.one
    tid = shop.tenant.id
    staples = await create_category(db, cache, tid, {"name": "Staples & Grains"}, actor=str(shop.user))
    assert staples["slug"] == "staples-grains"
    maize = await create_product(db, cache, tid, shop.vendor_a, {**MAIZE, "category_id": staples["id"]},
                                 actor=str(shop.user))
    bread = await create_product(db, cache, tid, shop.vendor_a, BREAD, actor=str(shop.user))
    coke = await create_product(db, cache, tid, shop.vendor_b, COKE, actor="system:import")
    assert maize["price"] == "65.99" and bread["price"] == "18.50" and coke["stock"]["quantity"] == 12
    variant = await create_variant(db, cache, tid, shop.vendor_a, maize["id"],
                                   {"sku": "MM-10KG", "name": "Maize meal 10kg", "price": "119.99",
                                    "options": {"size": "10kg"}, "initial_stock": 4}, actor=str(shop.user))

    page = await get_product(db, cache, tid, maize["id"])
    assert (page["name"], page["price"], page["category_id"]) == ("Maize meal 5kg", "65.99", staples["id"])
    assert page["stock"] == {"available": 0, "total_available": 4, "in_stock": True}
    assert [(v["id"], v["price"], v["available"], v["options"]) for v in page["variants"]] == [
        (variant["id"], "119.99", 4, {"size": "10kg"})]
    assert "cost" not in page

    updated = await update_product(db, cache, tid, shop.vendor_a, maize["id"],
                                   {"name": "Maize meal 5 kg", "description": "Super fine white maize"},
                                   actor=str(shop.user))
    assert updated["name"] == "Maize meal 5 kg"

    listing = await list_products(db, cache, tid)
    assert [p["name"] for p in listing["items"]] == ["Brown bread", "Cola 2L", "Maize meal 5 kg"]
    assert listing["total"] == 3 and all(isinstance(p["price"], str) for p in listing["items"])
    assert [p["sku"] for p in (await list_products(db, cache, tid, vendor_id=shop.vendor_b))["items"]] == ["CK-2L"]
    assert [p["sku"] for p in (await list_products(db, cache, tid, category_id=staples["id"]))["items"]] == ["MM-5KG"]
    assert (await list_products(db, cache, tid, page=2, page_size=2))["items"][0]["sku"] == "MM-5KG"

    found = await search_products(db, cache, tid, "maize")
    # the name match ranks above the bread whose description mentions maize
    assert [p["sku"] for p in found["items"]] == ["MM-5KG", "BR-700"] and found["total"] == 2
    assert found["items"][0]["rank"] > found["items"][1]["rank"]
    assert [p["sku"] for p in (await search_products(db, cache, tid, "fizzy"))["items"]] == ["CK-2L"]
    assert (await search_products(db, cache, tid, "maize", page=2, page_size=1))["items"][0]["sku"] == "BR-700"
    beyond = await search_products(db, cache, tid, "maize", page=5, page_size=1)
    assert beyond["items"] == [] and beyond["total"] == 2

    assert (await search_products(db, cache, tid, "the"))["items"] == []        # stop words only
    assert (await search_products(db, cache, tid, "x'); DROP TABLE products; --"))["items"] == []
    assert (await search_products(db, cache, tid, "maize -bread"))["total"] == 1  # web-search syntax

    assert (await get_inventory(db, cache, tid, coke["id"]))["total_available"] == 12
    hidden = await update_product(db, cache, tid, shop.vendor_b, coke["id"], {"status": "inactive"},
                                  actor=str(shop.user))
    assert hidden["status"] == "inactive"
    with pytest.raises(NotFound):
        await get_product(db, cache, tid, coke["id"])
    with pytest.raises(NotFound):   # its cached stock went with the status change
        await get_inventory(db, cache, tid, coke["id"])
    vendor_view = await get_product(db, cache, tid, coke["id"], include_inactive=True, vendor_id=shop.vendor_b)
    assert vendor_view["status"] == "inactive"
    assert (await search_products(db, cache, tid, "fizzy"))["items"] == []
    assert "CK-2L" not in [p["sku"] for p in (await list_products(db, cache, tid))["items"]]

    with pytest.raises(Refusal) as info:
        await create_product(db, cache, tid, shop.vendor_a, BREAD, actor=str(shop.user))
    assert (info.value.status, info.value.reason, info.value.field) == (409, "duplicate_sku", "sku")
    # another vendor may use the same SKU
    await create_product(db, cache, tid, shop.vendor_b, BREAD, actor=str(shop.user))


async def test_search_finds_by_description_through_the_full_text_index(env):
    db, cache, shop = env.db, env.cache, env.one
    tid = shop.tenant.id
    bread = await create_product(db, cache, tid, shop.vendor_a, BREAD, actor=str(shop.user))
    async with db.tenant_transaction(tid) as tx:   # a catalogue big enough for an index to pay
        await tx.execute(
            "INSERT INTO products (vendor_id, sku, name, description, price) "
            "SELECT $1, 'F-' || g, 'Filler item ' || g, 'ordinary goods number ' || g, 10 "
            "FROM generate_series(1, 2000) g", shop.vendor_b)
    async with connection(_owner_dsn(env.settings, shop.tenant)) as owner:
        await owner.execute(f'ANALYZE "{shop.tenant.schema_name}".products')

    found = await search_products(db, cache, tid, "flour")       # only in the description
    assert [p["id"] for p in found["items"]] == [bread["id"]]

    async with connection(_owner_dsn(env.settings, shop.tenant)) as conn:
        plans: list[str] = []
        conn.add_log_listener(lambda _c, message: plans.append(message.message))
        # auto_explain prints the plans of the statements inside search_product_ids(), run
        # exactly as the engine runs them: as the application role, in a tenant transaction.
        await conn.execute("LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; "
                           "SET auto_explain.log_nested_statements = on; "
                           "SET auto_explain.log_level = notice")
        await conn.execute(f'SET ROLE "{env.settings.app_role}"')
        async with conn.transaction(readonly=True):
            await conn.execute(SET_TENANT_SQL, f'"{shop.tenant.schema_name}", public', str(tid))
            rows = await conn.fetch(SEARCH_SQL, "flour", 20, 0)
            assert [str(r["id"]) for r in rows] == [bread["id"]]
            nested = [p for p in plans if "FROM products p" in p and "@@" in p]
            assert nested and "idx_product_search" in nested[-1], plans
            # Why the function exists: the same match written directly by the application
            # role is never index-assisted under RLS, even with sequential scans "disabled".
            await conn.execute("SET LOCAL enable_seqscan = off")
            direct = "\n".join(r[0] for r in await conn.fetch(
                "EXPLAIN SELECT id FROM products WHERE to_tsvector('english', name || ' ' || "
                "COALESCE(description, '')) @@ websearch_to_tsquery('english', 'flour')"))
            assert "idx_product_search" not in direct and "Seq Scan" in direct


# --------------------------------------------------------------------------- the cache


async def test_a_second_read_is_a_cache_hit(env):
    db, cache, shop = env.db, env.cache, env.one
    tid = shop.tenant.id
    maize = await create_product(db, cache, tid, shop.vendor_a, MAIZE, actor=str(shop.user))
    for read in (lambda: get_inventory(db, cache, tid, maize["id"]),
                 lambda: list_products(db, cache, tid),
                 lambda: search_products(db, cache, tid, "maize")):
        hits, misses = cache.hits, cache.misses
        first = await read()
        assert (cache.hits, cache.misses) == (hits, misses + 1)
        assert await read() == first
        assert (cache.hits, cache.misses) == (hits + 1, misses + 1)
    # a product page is two entries: the product (missing) and its inventory (read above)
    hits, misses = cache.hits, cache.misses
    first = await get_product(db, cache, tid, maize["id"])
    assert (cache.hits, cache.misses) == (hits + 1, misses + 1)
    assert await get_product(db, cache, tid, maize["id"]) == first
    assert (cache.hits, cache.misses) == (hits + 3, misses + 1)
    key = product_key(str(tid), maize["id"])
    assert 1700 < await cache.redis.ttl(key) <= 1800
    assert 0 < await cache.redis.ttl(inventory_key(str(tid), maize["id"])) <= 60


async def test_a_price_change_invalidates_the_product_and_the_lists_that_show_it(env):
    db, cache, shop = env.db, env.cache, env.one
    tid = shop.tenant.id
    maize = await create_product(db, cache, tid, shop.vendor_a, MAIZE, actor=str(shop.user))
    await get_product(db, cache, tid, maize["id"])
    await list_products(db, cache, tid)
    await list_products(db, cache, tid, vendor_id=shop.vendor_a)
    await search_products(db, cache, tid, "maize")
    inventory = await get_inventory(db, cache, tid, maize["id"])

    await update_product(db, cache, tid, shop.vendor_a, maize["id"], {"price": "59.99"}, actor=str(shop.user))
    hits, misses = cache.hits, cache.misses
    assert (await get_product(db, cache, tid, maize["id"]))["price"] == "59.99"
    assert (await list_products(db, cache, tid))["items"][0]["price"] == "59.99"
    assert (await list_products(db, cache, tid, vendor_id=shop.vendor_a))["items"][0]["price"] == "59.99"
    assert (await search_products(db, cache, tid, "maize"))["items"][0]["price"] == "59.99"
    # every view showing the price was recomputed; the inventory entry was not touched
    assert (cache.hits, cache.misses) == (hits + 1, misses + 4)
    assert await get_inventory(db, cache, tid, maize["id"]) == inventory
    assert cache.hits == hits + 2

    # cost shows nowhere: changing only it keeps every cached view
    await update_product(db, cache, tid, shop.vendor_a, maize["id"], {"cost": "40"}, actor=str(shop.user))
    misses = cache.misses
    await get_product(db, cache, tid, maize["id"])
    await list_products(db, cache, tid)
    assert cache.misses == misses


async def test_a_stock_change_invalidates_inventory_and_the_product_page_only(env):
    db, cache, shop = env.db, env.cache, env.one
    tid = shop.tenant.id
    maize = await create_product(db, cache, tid, shop.vendor_a, MAIZE, actor=str(shop.user))
    assert (await get_inventory(db, cache, tid, maize["id"]))["total_available"] == 0
    assert (await get_product(db, cache, tid, maize["id"]))["stock"]["available"] == 0
    await list_products(db, cache, tid)

    result = await adjust_stock(db, cache, tid, shop.vendor_a, maize["id"], delta=30, reason="restock",
                                actor=str(shop.user))
    assert result == {"product_id": maize["id"], "variant_id": None, "quantity": 30, "reserved": 0,
                      "available": 30}
    tenant = str(tid)
    assert await cache.redis.exists(inventory_key(tenant, maize["id"])) == 0
    assert await cache.redis.exists(product_key(tenant, maize["id"])) == 1   # holds no stock
    hits, misses = cache.hits, cache.misses
    inventory = await get_inventory(db, cache, tid, maize["id"])
    assert inventory["total_available"] == 30 and inventory["stock"][0]["last_restock_date"] is not None
    assert (await get_product(db, cache, tid, maize["id"]))["stock"] == {
        "available": 30, "total_available": 30, "in_stock": True}
    await list_products(db, cache, tid)   # lists show no stock: still cached
    assert (cache.hits, cache.misses) == (hits + 3, misses + 1)

    await adjust_stock(db, cache, tid, shop.vendor_a, maize["id"], delta=-4, reason="adjustment",
                       actor="system:stocktake")
    assert (await get_inventory(db, cache, tid, maize["id"]))["total_available"] == 26
    async with db.tenant_transaction(tid, readonly=True) as tx:
        moves = await tx.fetch("SELECT movement_type, quantity, performed_by, notes "
                               "FROM inventory_movements ORDER BY created_at, quantity DESC")
    assert [tuple(m) for m in moves] == [("restock", 30, shop.user, None),
                                         ("adjustment", -4, None, "actor: system:stocktake")]
    for delta, reason in ((-1, "restock"), (0, "adjustment"), (5, "sale"), (True, "restock")):
        with pytest.raises(Refusal) as info:
            await adjust_stock(db, cache, tid, shop.vendor_a, maize["id"], delta=delta, reason=reason,
                               actor=None)
        assert info.value.status == 422


async def test_concurrent_decreases_never_take_stock_below_what_is_reserved(env):
    db, cache, shop = env.db, env.cache, env.one
    tid = shop.tenant.id
    maize = await create_product(db, cache, tid, shop.vendor_a, {**MAIZE, "initial_stock": 20},
                                 actor=str(shop.user))
    async with db.tenant_transaction(tid) as tx:
        await tx.execute("UPDATE inventory SET reserved_quantity = 5 WHERE product_id = $1",
                         uuid.UUID(maize["id"]))

    async def take_one() -> str:
        try:
            await adjust_stock(db, cache, tid, shop.vendor_a, maize["id"], delta=-1,
                               reason="adjustment", actor=str(shop.user))
            return "applied"
        except Refusal as exc:
            assert (exc.status, exc.reason) == (409, "stock_reserved")
            return "refused"

    outcomes = await asyncio.gather(*(take_one() for _ in range(50)))
    assert outcomes.count("applied") == 15 and outcomes.count("refused") == 35
    async with db.tenant_transaction(tid, readonly=True) as tx:
        stock = await tx.fetchrow("SELECT quantity, reserved_quantity FROM inventory WHERE product_id = $1",
                                  uuid.UUID(maize["id"]))
        moves = await tx.fetch("SELECT movement_type, quantity FROM inventory_movements")
    assert tuple(stock) == (5, 5)
    assert sorted(tuple(m) for m in moves) == [("adjustment", -1)] * 15 + [("restock", 20)]
    assert (await get_inventory(db, cache, tid, maize["id"]))["stock"][0]["available"] == 0


async def test_variant_stock_is_its_own_row(env):
    db, cache, shop = env.db, env.cache, env.one
    tid = shop.tenant.id
    maize = await create_product(db, cache, tid, shop.vendor_a, MAIZE, actor=str(shop.user))
    await get_product(db, cache, tid, maize["id"])
    variant = await create_variant(db, cache, tid, shop.vendor_a, maize["id"],
                                   {"sku": "MM-1KG", "name": "Maize meal 1kg"}, actor=str(shop.user))
    page = await get_product(db, cache, tid, maize["id"])   # the new variant shows at once
    assert [v["price"] for v in page["variants"]] == ["65.99"]   # the product's price
    await adjust_stock(db, cache, tid, shop.vendor_a, maize["id"], variant_id=variant["id"], delta=7,
                       reason="restock", actor=str(shop.user))
    inventory = await get_inventory(db, cache, tid, maize["id"])
    assert [(s["variant_id"], s["quantity"]) for s in inventory["stock"]] == [(None, 0), (variant["id"], 7)]
    other = await create_product(db, cache, tid, shop.vendor_a, BREAD, actor=str(shop.user))
    with pytest.raises(NotFound):   # a variant of another product
        await adjust_stock(db, cache, tid, shop.vendor_a, other["id"], variant_id=variant["id"], delta=1,
                           reason="restock", actor=None)
    with pytest.raises(Refusal) as info:
        await create_variant(db, cache, tid, shop.vendor_a, maize["id"],
                             {"sku": "MM-1KG", "name": "Again"}, actor=None)
    assert info.value.reason == "duplicate_sku"


# --------------------------------------------------------------------------- isolation


async def test_one_tenant_can_neither_see_nor_change_anothers_products_even_through_the_cache(env):
    db, cache, one, two = env.db, env.cache, env.one, env.two
    maize = await create_product(db, cache, one.tenant.id, one.vendor_a, MAIZE, actor=str(one.user))
    await get_product(db, cache, one.tenant.id, maize["id"])     # cached under tenant one
    await get_inventory(db, cache, one.tenant.id, maize["id"])
    before = await _counts(env, one)

    hits, misses = cache.hits, cache.misses
    with pytest.raises(NotFound):
        await get_product(db, cache, two.tenant.id, maize["id"])
    with pytest.raises(NotFound):
        await get_inventory(db, cache, two.tenant.id, maize["id"])
    assert cache.hits == hits and cache.misses == misses + 2     # looked up, never served
    assert (await list_products(db, cache, two.tenant.id))["items"] == []
    assert (await search_products(db, cache, two.tenant.id, "maize"))["items"] == []
    for vendor in (two.vendor_a, two.vendor_b, one.vendor_a):    # only the last is the owner
        if vendor == one.vendor_a:
            continue
        with pytest.raises(NotFound):
            await update_product(db, cache, two.tenant.id, vendor, maize["id"], {"price": "1"}, actor=None)
        with pytest.raises(NotFound):
            await adjust_stock(db, cache, two.tenant.id, vendor, maize["id"], delta=5, reason="restock",
                               actor=None)
        with pytest.raises(NotFound):
            await create_variant(db, cache, two.tenant.id, vendor, maize["id"],
                                 {"sku": "X-1", "name": "Sneaky"}, actor=None)
    # tenant one's own vendor, named under tenant two, does not exist there
    with pytest.raises(NotFound):
        await update_product(db, cache, two.tenant.id, one.vendor_a, maize["id"], {"price": "1"}, actor=None)
    assert await _counts(env, one) == before
    assert (await get_product(db, cache, one.tenant.id, maize["id"]))["price"] == "65.99"


async def test_a_vendor_cannot_change_another_vendors_product(env):
    db, cache, shop = env.db, env.cache, env.one
    tid = shop.tenant.id
    maize = await create_product(db, cache, tid, shop.vendor_a, {**MAIZE, "initial_stock": 9},
                                 actor=str(shop.user))
    await get_product(db, cache, tid, maize["id"])
    before = await _counts(env, shop)
    attempts = [
        lambda: update_product(db, cache, tid, shop.vendor_b, maize["id"], {"price": "0.01"}, actor=None),
        lambda: update_product(db, cache, tid, shop.vendor_b, maize["id"], {"status": "inactive"}, actor=None),
        lambda: adjust_stock(db, cache, tid, shop.vendor_b, maize["id"], delta=-9, reason="adjustment",
                             actor=None),
        lambda: create_variant(db, cache, tid, shop.vendor_b, maize["id"], {"sku": "V-1", "name": "Mine"},
                               actor=None),
        lambda: get_product(db, cache, tid, maize["id"], include_inactive=True, vendor_id=shop.vendor_b),
        lambda: update_product(db, cache, tid, shop.vendor_b, "not-a-uuid", {"price": "1"}, actor=None),
        lambda: update_product(db, cache, tid, shop.vendor_b, uuid.uuid4(), {"price": "1"}, actor=None),
    ]
    for attempt in attempts:
        with pytest.raises(NotFound) as info:
            await attempt()
        assert (info.value.status, info.value.message) == (404, "no such product")
    assert await _counts(env, shop) == before
    page = await get_product(db, cache, tid, maize["id"])
    assert (page["price"], page["status"], page["stock"]["available"]) == ("65.99", "active", 9)


async def test_hostile_bodies_are_refused_and_write_nothing(env):
    db, cache, shop = env.db, env.cache, env.one
    tid = shop.tenant.id
    maize = await create_product(db, cache, tid, shop.vendor_a, MAIZE, actor=str(shop.user))
    before = await _counts(env, shop)
    hostile: list[dict[str, Any]] = [
        {**BREAD, "price": -1}, {**BREAD, "price": "NaN"}, {**BREAD, "price": float("inf")},
        {**BREAD, "price": True}, {**BREAD, "price": "1e9"}, {**BREAD, "price": 10**30},
        {**BREAD, "name": "x" * 10_000}, {**BREAD, "tenant_id": str(env.two.tenant.id)},
        {**BREAD, "vendor_id": str(shop.vendor_b)}, {**BREAD, "sku": ["BR"]},
        {**BREAD, "sku": "BR'; DELETE FROM products; --"}, {**BREAD, "name": "Robert'); DROP TABLE products;--"},
        {**BREAD, "category_id": str(uuid.uuid4())}, {**BREAD, "images": "https://x.example/a.png"},
        {**BREAD, "tags": [{"$ne": 1}]}, {**BREAD, "compare_at_price": "-5"}, "not a body",
    ]
    for body in hostile:
        with pytest.raises(Refusal) as info:
            await create_product(db, cache, tid, shop.vendor_a, body, actor=str(shop.user))
        assert info.value.status == 422, body
    for body in ({"price": "-0.01"}, {"price": float("nan")}, {"status": "deleted"}, {"vendor_id": "x"},
                 {"name": 42}, {"category_id": str(uuid.uuid4())}, {"sku": "bad sku"}, {}):
        with pytest.raises(Refusal) as info:
            await update_product(db, cache, tid, shop.vendor_a, maize["id"], body, actor=None)
        assert info.value.status == 422, body
    with pytest.raises(Refusal):
        await create_category(db, cache, tid, {"name": "Drinks", "slug": "drinks'--"}, actor=None)
    with pytest.raises(Refusal):
        await create_variant(db, cache, tid, shop.vendor_a, maize["id"],
                             {"sku": "V-2", "name": "Big", "price": "1000000"}, actor=None)
    assert await _counts(env, shop) == before
    assert (await get_product(db, cache, tid, maize["id"]))["price"] == "65.99"

    # free text is data: stored and returned as given, never run
    sqlish = "Great price'); DROP TABLE products; --"
    await update_product(db, cache, tid, shop.vendor_a, maize["id"], {"description": sqlish}, actor=None)
    assert (await get_product(db, cache, tid, maize["id"]))["description"] == sqlish
    assert (await _counts(env, shop))["products"] == before["products"]


# --------------------------------------------------------------------------- materialized views


async def _order(tx: asyncpg.Connection, number: str, customer: uuid.UUID, vendor: uuid.UUID,
                 status: str, total: str, lines: list[tuple[str, int, str]]) -> None:
    order_id = await tx.fetchval(
        "INSERT INTO orders (order_number, customer_id, vendor_id, status, subtotal, total_amount, "
        "delivery_address) VALUES ($1, $2, $3, $4, $5, $5, '{}') RETURNING id",
        number, customer, vendor, status, Decimal(total))
    for product_id, quantity, unit_price in lines:
        await tx.execute(
            "INSERT INTO order_items (order_id, product_id, quantity, unit_price, total_price) "
            "VALUES ($1, $2, $3::int, $4::numeric, $4::numeric * $3::int)", order_id, uuid.UUID(product_id), quantity, Decimal(unit_price))


async def test_views_count_delivered_sales_once_and_warm_the_product_cache(env):
    db, cache, shop = env.db, env.cache, env.one
    tid = shop.tenant.id
    maize = await create_product(db, cache, tid, shop.vendor_a, MAIZE, actor=None)
    bread = await create_product(db, cache, tid, shop.vendor_a, BREAD, actor=None)
    coke = await create_product(db, cache, tid, shop.vendor_b, COKE, actor=None)
    c1, c2, c3 = shop.customers
    async with db.tenant_transaction(tid) as tx:
        # three delivered orders of vendor A, two of them by the same customer; several lines each
        await _order(tx, "O-1", c1, shop.vendor_a, "delivered", "150.00",
                     [(maize["id"], 2, "65.99"), (bread["id"], 1, "18.02")])
        await _order(tx, "O-2", c1, shop.vendor_a, "delivered", "84.49",
                     [(maize["id"], 1, "65.99"), (bread["id"], 1, "18.50")])
        await _order(tx, "O-3", c2, shop.vendor_a, "delivered", "37.00",
                     [(bread["id"], 2, "18.50")])
        await _order(tx, "O-4", c3, shop.vendor_b, "delivered", "54.00", [(coke["id"], 2, "27.00")])
        # not sales: cancelled, in flight, failed
        await _order(tx, "O-5", c3, shop.vendor_a, "cancelled", "999.00", [(maize["id"], 9, "65.99")])
        await _order(tx, "O-6", c2, shop.vendor_a, "dispatched", "500.00", [(maize["id"], 5, "65.99")])
        await _order(tx, "O-7", c2, shop.vendor_b, "failed", "270.00", [(coke["id"], 10, "27.00")])
        day = await tx.fetchval("SELECT created_date FROM orders WHERE order_number = 'O-1'")

    assert await refresh_views(db, tid) is True
    assert await refresh_views(db, tid) is True     # CONCURRENTLY, over a populated view
    async with db.tenant_transaction(tid, readonly=True) as tx:
        daily = {r["vendor_id"]: dict(r) for r in await tx.fetch("SELECT * FROM v_daily_sales_summary")}
        popular = [(str(r["id"]), r["order_count"], r["total_sold"]) for r in await tx.fetch(
            "SELECT * FROM v_popular_products ORDER BY order_count DESC, total_sold DESC, id")]
    a = daily[shop.vendor_a]
    assert (a["sale_date"], a["order_count"], a["unique_customers"], a["items_sold"]) == (day, 3, 2, 7)
    assert a["total_revenue"] == Decimal("271.49")      # 150 + 84.49 + 37, each order once
    assert a["avg_order_value"] == Decimal("90.50")
    b = daily[shop.vendor_b]
    assert (b["order_count"], b["total_revenue"], b["items_sold"]) == (1, Decimal("54.00"), 2)
    assert popular == [(bread["id"], 3, 4), (maize["id"], 2, 3), (coke["id"], 1, 2)]

    # warm_popular loads the top products, so the next customer read is a hit
    assert await warm_popular(db, cache, tid, limit=2) == 2
    hits, misses = cache.hits, cache.misses
    assert (await get_product(db, cache, tid, bread["id"]))["name"] == "Brown bread"
    assert (await get_product(db, cache, tid, maize["id"]))["price"] == "65.99"
    assert (cache.hits, cache.misses) == (hits + 4, misses)   # product and inventory entries
    assert await cache.redis.exists(product_key(str(tid), coke["id"])) == 0   # beyond the limit

    # the other tenant's views hold none of this
    assert await refresh_views(db, env.two.tenant.id) is True
    async with db.tenant_transaction(env.two.tenant.id, readonly=True) as tx:
        assert await tx.fetchval("SELECT count(*) FROM v_daily_sales_summary") == 0
        assert await tx.fetchval("SELECT count(*) FROM v_popular_products") == 0


async def _neighbour(env: Env) -> Shop:
    """A tenant on the same shard as env.one, so SQL naming one's schema can reach it."""
    shop = env.two
    while shop.tenant.shard_id != env.one.tenant.shard_id:
        shop = await _shop(env.db, await create_tenant(env.settings, f"Neighbour {uuid.uuid4().hex[:6]}"))
    return shop


async def test_the_app_role_reads_the_views_only_for_the_tenant_it_declared(env):
    one, two = env.one, await _neighbour(env)
    await create_product(env.db, env.cache, one.tenant.id, one.vendor_a, MAIZE, actor=None)
    await refresh_views(env.db, one.tenant.id)
    schema = one.tenant.schema_name
    async with env.db.tenant_transaction(one.tenant.id, readonly=True) as tx:
        assert await tx.fetchval("SELECT count(*) FROM v_popular_products") == 1
    async with env.db.tenant_transaction(two.tenant.id, readonly=True) as tx:
        # tenant one's schema named outright, from tenant two's transaction
        assert await tx.fetchval(f'SELECT count(*) FROM "{schema}".v_popular_products') == 0  # noqa: S608
        assert await tx.fetch(f"SELECT * FROM \"{schema}\".search_product_ids("  # noqa: S608
                              "websearch_to_tsquery('english', 'maize'), 10, 0)") == []
    refused = (
        f'SELECT count(*) FROM "{schema}".mv_popular_products',  # noqa: S608
        f'SELECT count(*) FROM "{schema}".mv_daily_sales_summary',  # noqa: S608
        f'SELECT "{schema}".refresh_sales_views()',
        f'REFRESH MATERIALIZED VIEW "{schema}".mv_popular_products',
    )
    for sql in refused:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with env.db.tenant_transaction(two.tenant.id) as tx:
                await tx.fetchval(sql)
    async with connection(_owner_dsn(env.settings, one.tenant)) as conn:
        owners = await conn.fetch(
            "SELECT c.relname, pg_get_userbyid(c.relowner) AS owner, "
            "has_table_privilege($2, c.oid, 'SELECT') AS app_reads "
            "FROM pg_class c WHERE c.relnamespace = to_regnamespace($1) AND c.relkind = 'm' ORDER BY 1",
            schema, env.settings.app_role)
        assert [(r["relname"], r["app_reads"]) for r in owners] == [
            ("mv_daily_sales_summary", False), ("mv_popular_products", False)]
        assert all(r["owner"] != env.settings.app_role for r in owners)
        public_exec = await conn.fetchval(
            "SELECT bool_or(has_function_privilege('public', p.oid, 'EXECUTE')) FROM pg_proc p "
            "WHERE p.pronamespace = to_regnamespace($1) "
            "AND p.proname IN ('refresh_sales_views', 'search_product_ids')", schema)
        assert public_exec is False


async def test_the_refresher_survives_a_failing_tenant_and_refreshes_the_others(env, caplog):
    db, cache, shop = env.db, env.cache, env.one
    maize = await create_product(db, cache, shop.tenant.id, shop.vendor_a, MAIZE, actor=None)
    async with db.tenant_transaction(shop.tenant.id) as tx:
        await _order(tx, "O-1", shop.customers[0], shop.vendor_a, "delivered", "65.99",
                     [(maize["id"], 1, "65.99")])
    rounds = 0

    async def tenants() -> list[object]:
        nonlocal rounds
        rounds += 1
        if rounds == 1:
            raise ConnectionError("control plane restarting")
        return ["not-a-tenant", uuid.uuid4(), shop.tenant.id]

    caplog.set_level(logging.ERROR, logger="dispatch.commerce.catalogue.views")
    task = asyncio.create_task(run_view_refresher(db, cache, tenants, interval_s=0.05))
    # both entries: warming writes the product, then its inventory (CI once cancelled the
    # refresher between the two, and the read below missed the inventory)
    warmed = (product_key(str(shop.tenant.id), maize["id"]), inventory_key(str(shop.tenant.id), maize["id"]))
    try:
        for _ in range(200):
            if await cache.redis.exists(*warmed) == 2:
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert rounds >= 2
    hits, misses = cache.hits, cache.misses
    await get_product(db, cache, shop.tenant.id, maize["id"])
    assert (cache.hits, cache.misses) == (hits + 2, misses)
    messages = [r.getMessage() for r in caplog.records]
    assert any("could not list tenants" in m for m in messages)
    assert any("not-a-tenant" in m for m in messages)
    assert json.dumps(messages).count(str(shop.tenant.id)) == 0   # the good tenant never failed


async def test_the_refresher_provider_names_the_active_tenants(env):
    provider = active_tenant_ids(env.db)
    assert {env.one.tenant.id, env.two.tenant.id} <= set(await provider())   # and the module's other tests'
    admin = await asyncpg.connect(env.db.settings.control.url())
    try:
        active = {r["id"] for r in await admin.fetch("SELECT id FROM tenants WHERE status = 'active'")}
    finally:
        await admin.close()
    assert set(await provider()) == active
