"""Orders against real Postgres, Redis and the broker: placing, paying, deciding, delivering,
cancelling, returning; stock under 1,000 concurrent orders; hostile orders that write nothing.

The rules that need no service (the lifecycle table, parsing a client's body) are tested in
``tests/unit/commerce/test_order_rules.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

import dispatch.commerce.orders.placing as placing
from dispatch.commerce.orders.expiry import release_expired_reservations
from dispatch.commerce.orders.input import NewOrder, OrderLine
from dispatch.commerce.orders.lifecycle import IllegalOrderTransition, OrderNotFound
from dispatch.commerce.orders.payments import record_payment
from dispatch.commerce.orders.placing import COLD_CHAIN_TAG, place_order
from dispatch.commerce.orders.reads import get_order, list_orders
from dispatch.commerce.orders.returns import return_order
from dispatch.commerce.orders.transitions import cancel_order, vendor_decision
from dispatch.commerce.pricing import PricingSettings, delivery_fee, money
from dispatch.core.cache import Cache
from dispatch.core.errors import Refusal
from dispatch.deliveries.handoff import mark_ready
from dispatch.deliveries.outbox import OutboxRelay
from dispatch.deliveries.store import transition
from geo import destination
from schema.db import TenantDatabase
from schema.tenants import create_tenant
from tests.integration.deliveries.test_outbox import _events as consume
from tests.integration.shared_platform import shared_platform  # noqa: F401 - one platform for the module

pytestmark = pytest.mark.timeout(180)


VENDOR_AT = (-26.2360, 27.9090)                 # Orlando, Soweto
HOME = destination(*VENDOR_AT, 90.0, 1500)      # 1.5 km east
FAR = destination(*VENDOR_AT, 90.0, 8000)       # beyond the 5 km radius
T0 = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
PROOF = {"photo": "s3://pod/1.jpg"}
ADDRESS = {"street": "12 Mahalefele Rd", "suburb": "Dube"}


@dataclass
class Shop:
    db: TenantDatabase
    tenant_id: str
    staff: str                   # a users.id acting for the vendor
    vendor: str
    other_vendor: str
    customers: list[str]
    products: dict[str, str]
    variants: dict[str, str]
    categories: dict[str, str]
    inventory: dict[str, str]    # product or variant name -> inventory id
    driver: str
    cache: Cache


async def _insert(tx, sql: str, *args) -> str:
    return str(await tx.fetchval(sql, *args))


async def build_shop(db: TenantDatabase, tenant_id: str, cache: Cache) -> Shop:
    async with db.tenant_transaction(tenant_id) as tx:
        staff = await _insert(tx, "INSERT INTO users (phone_number, name, role) "
                                  "VALUES ('+27710000001', 'Mama Thoko', 'vendor') RETURNING id")
        vendor_sql = (
            "INSERT INTO vendors (business_name, address, location, delivery_radius, "
            "minimum_order_value, payment_methods) VALUES ($1, '{\"street\": \"1 Vilakazi St\"}', "
            "ST_SetSRID(ST_MakePoint($3, $2), 4326)::geography, 5000, 20.00, '[\"cash\", \"card\"]') "
            "RETURNING id")
        vendor = await _insert(tx, vendor_sql, "Mama Thoko Spaza", *VENDOR_AT)
        other = await _insert(tx, vendor_sql, "Bra Sipho Tuck Shop", *VENDOR_AT)
        customers = [await _insert(tx, "INSERT INTO customers (first_name) VALUES ($1) RETURNING id", n)
                     for n in ("Thandi", "Lerato", "Zanele")]
        groceries = await _insert(tx, "INSERT INTO categories (name, slug) VALUES ('Groceries', "
                                      "'groceries') RETURNING id")
        staples = await _insert(tx, "INSERT INTO categories (name, slug, parent_id) VALUES "
                                    "('Staples', 'staples', $1) RETURNING id", uuid.UUID(groceries))
        drinks = await _insert(tx, "INSERT INTO categories (name, slug) VALUES ('Drinks', 'drinks') "
                                   "RETURNING id")
        product_sql = ("INSERT INTO products (vendor_id, category_id, sku, name, price, status) "
                       "VALUES ($1, $2, $3, $4, $5, $6) RETURNING id")
        products = {}
        for name, owner, category, price, status in (
            ("maize", vendor, staples, "89.99", "active"),
            ("bread", vendor, None, "15.50", "active"),
            ("drink", vendor, drinks, "12.00", "active"),
            ("scarce", vendor, None, "30.00", "active"),
            ("hidden", vendor, None, "10.00", "inactive"),
            ("foreign", other, None, "40.00", "active"),
        ):
            products[name] = await _insert(tx, product_sql, uuid.UUID(owner),
                                           category and uuid.UUID(category), name.upper(),
                                           name.title(), Decimal(price), status)
        variant_sql = ("INSERT INTO product_variants (product_id, sku, name, price, status) "
                       "VALUES ($1, $2, $3, $4, $5) RETURNING id")
        variants = {
            "drink_2l": await _insert(tx, variant_sql, uuid.UUID(products["drink"]), "D-2L", "2 l",
                                      Decimal("25.00"), "active"),
            "drink_can": await _insert(tx, variant_sql, uuid.UUID(products["drink"]), "D-CAN", "can",
                                       None, "active"),
            "drink_old": await _insert(tx, variant_sql, uuid.UUID(products["drink"]), "D-OLD", "old",
                                       Decimal("9.00"), "discontinued"),
        }
        stock_sql = ("INSERT INTO inventory (product_id, variant_id, quantity) VALUES ($1, $2, $3) "
                     "RETURNING id")
        inventory = {}
        for name, product, variant, quantity in (
            ("maize", "maize", None, 50), ("bread", "bread", None, 100), ("scarce", "scarce", None, 10),
            ("hidden", "hidden", None, 10), ("foreign", "foreign", None, 10),
            ("drink_2l", "drink", "drink_2l", 30), ("drink_can", "drink", "drink_can", 40),
            ("drink_old", "drink", "drink_old", 5),
        ):
            inventory[name] = await _insert(tx, stock_sql, uuid.UUID(products[product]),
                                            variant and uuid.UUID(variants[variant]), quantity)
        driver = await _insert(tx, "INSERT INTO drivers (first_name, last_name, license_number, "
                                   "vehicle_type, vehicle_registration) VALUES ('Sipho', 'Dube', "
                                   "'L-1', 'motorbike', 'GP-1') RETURNING id")
    return Shop(db, tenant_id, staff, vendor, other, customers, products, variants,
                {"groceries": groceries, "staples": staples, "drinks": drinks}, inventory, driver, cache)


@pytest.fixture
async def shop(platform, redis_url):
    tenant = await create_tenant(platform, f"Orders Spaza {uuid.uuid4().hex[:6]}")
    redis = aioredis.from_url(redis_url)
    async with TenantDatabase(platform) as db:
        yield await build_shop(db, str(tenant.id), Cache(redis))
    await redis.aclose()


def new_order(shop: Shop, *lines: tuple[str, int] | tuple[str, str, int], customer: int = 0,
              at: tuple[float, float] = HOME, **kw) -> NewOrder:
    parsed = []
    for line in lines:
        product, variant, quantity = line if len(line) == 3 else (line[0], None, line[1])
        parsed.append(OrderLine(shop.products[product], variant and shop.variants[variant], quantity))
    return NewOrder(shop.customers[customer], kw.pop("vendor", shop.vendor), tuple(parsed), at[0], at[1],
                    dict(ADDRESS), **kw)


async def place(shop: Shop, *lines, customer: int = 0, now: datetime | None = None, **kw) -> dict:
    return await place_order(shop.db, shop.tenant_id, new_order(shop, *lines, customer=customer, **kw),
                             actor=shop.customers[customer], cache=shop.cache, now=now)


async def stock(shop: Shop, name: str) -> tuple[int, int]:
    async with shop.db.tenant_transaction(shop.tenant_id, readonly=True) as tx:
        row = await tx.fetchrow("SELECT quantity, reserved_quantity FROM inventory WHERE id = $1",
                                uuid.UUID(shop.inventory[name]))
    return row["quantity"], row["reserved_quantity"]


COUNTED = ("orders", "order_items", "inventory_reservations", "inventory_movements", "order_promotions",
           "order_status_history", "order_events_outbox", "payments", "refunds", "returns",
           "deliveries", "delivery_events_outbox")


async def snapshot(shop: Shop) -> dict:
    """Row counts of everything an order may write, stock levels and promotion uses."""
    async with shop.db.tenant_transaction(shop.tenant_id, readonly=True) as tx:
        out = {t: await tx.fetchval(f"SELECT count(*) FROM {t}") for t in COUNTED}  # noqa: S608
        out["stock"] = [tuple(r) for r in await tx.fetch(
            "SELECT id, quantity, reserved_quantity FROM inventory ORDER BY id")]
        out["promotions"] = [tuple(r) for r in await tx.fetch(
            "SELECT id, usage_count FROM promotions ORDER BY id")]
        out["order_rows"] = [dict(r) for r in await tx.fetch("SELECT * FROM orders ORDER BY id")]
    return out


async def events(shop: Shop, order_id: str) -> list[tuple[str, str | None, str]]:
    async with shop.db.tenant_transaction(shop.tenant_id, readonly=True) as tx:
        rows = await tx.fetch("SELECT event_type, payload FROM order_events_outbox WHERE order_id = $1 "
                              "ORDER BY seq", uuid.UUID(order_id))
    return [(r["event_type"], json.loads(r["payload"])["from_status"], json.loads(r["payload"])["to_status"])
            for r in rows]


async def history(shop: Shop, order_id: str) -> list[tuple]:
    async with shop.db.tenant_transaction(shop.tenant_id, readonly=True) as tx:
        rows = await tx.fetch("SELECT from_status, to_status, changed_by, metadata FROM order_status_history "
                              "WHERE order_id = $1 ORDER BY created_at, id", uuid.UUID(order_id))
    return [(r["from_status"], r["to_status"], r["changed_by"] and str(r["changed_by"]),
             json.loads(r["metadata"]).get("actor")) for r in rows]


DELIVERY_STEPS = (("offer", {}), ("accept", {}), ("arrive_pickup", {}), ("pick_up", {}),
                  ("deliver", {"proof_of_delivery": PROOF}))


async def deliver(shop: Shop, order_id: str, *, through: str = "deliver") -> str:
    """Accept (cash), mark ready, and drive the delivery up to and including ``through``."""
    view = await vendor_decision(shop.db, shop.tenant_id, shop.vendor, order_id, accept=True,
                                 actor=shop.staff)
    assert view["status"] == "accepted"
    view = await mark_ready(shop.db, shop.tenant_id, shop.vendor, order_id, actor=shop.staff)
    delivery = view["delivery_id"]
    for event, facts in DELIVERY_STEPS:
        if event == "offer":
            facts = {"driver_id": shop.driver}
        await transition(shop.db, shop.tenant_id, delivery, event, actor=shop.driver, cache=shop.cache,
                         **facts)
        if event == through:
            break
    return delivery


# -- placing -------------------------------------------------------------------------------------


async def test_an_order_is_priced_from_the_catalogue_and_holds_its_stock(shop):
    view = await place(shop, ("maize", 2), ("drink", "drink_2l", 3), ("drink", "drink_can", 1),
                       payment_method="card", notes="ring twice", now=T0)
    async with shop.db.tenant_transaction(shop.tenant_id, readonly=True) as tx:
        distance = await tx.fetchval(
            "SELECT ST_Distance(location, ST_SetSRID(ST_MakePoint($2, $1), 4326)::geography) "
            "FROM vendors WHERE id = $3", *HOME, uuid.UUID(shop.vendor))
        reservations = await tx.fetch("SELECT inventory_id, quantity, status, expires_at FROM "
                                      "inventory_reservations WHERE order_id = $1 ORDER BY quantity",
                                      uuid.UUID(view["id"]))
    fee = delivery_fee(distance, PricingSettings())
    assert fee == money(Decimal("10") + Decimal("4") * Decimal(round(distance)) / 1000)
    assert Decimal("15.90") <= fee <= Decimal("16.10")
    assert [(line["name"], line["quantity"], line["unit_price"], line["line_total"]) for line in view["lines"]] == [
        ("Maize", 2, "89.99", "179.98"), ("Drink (2 l)", 3, "25.00", "75.00"),
        ("Drink (can)", 1, "12.00", "12.00")]   # the can has no price of its own: the product's
    subtotal = Decimal("266.98")
    assert view["subtotal"] == str(subtotal) and view["discount_amount"] == "0.00"
    assert view["delivery_fee"] == str(fee)
    # VAT inclusive: the total is what the shelf says plus the fee; VAT is the part of it that is tax
    assert view["total_amount"] == str(subtotal + fee)
    line_vat = [money(Decimal(t) * 15 / 115) for t in ("179.98", "75.00", "12.00")]
    assert [line["tax_amount"] for line in view["lines"]] == [str(v) for v in line_vat]
    assert view["tax_amount"] == str(sum(line_vat) + money(fee * 15 / 115))
    assert (view["status"], view["payment_status"], view["payment_method"]) == ("pending", "pending", "card")
    assert view["order_number"].startswith("WK-") and len(view["order_number"]) == 9
    assert [(r["quantity"], r["status"], r["expires_at"]) for r in reservations] == [
        (1, "active", T0 + timedelta(minutes=15)), (2, "active", T0 + timedelta(minutes=15)),
        (3, "active", T0 + timedelta(minutes=15))]
    assert await stock(shop, "maize") == (50, 2)
    assert await stock(shop, "drink_2l") == (30, 3)
    assert await history(shop, view["id"]) == [(None, "pending", None, shop.customers[0])]
    assert await events(shop, view["id"]) == [("place", None, "pending")]
    # what place_order returned is what get_order reads back, with and without the cache
    assert await get_order(shop.db, shop.tenant_id, view["id"]) == view
    assert await get_order(shop.db, shop.tenant_id, view["id"], customer_id=shop.customers[0],
                           cache=shop.cache) == view
    assert await get_order(shop.db, shop.tenant_id, view["id"], cache=shop.cache) == view


async def test_an_order_holding_a_cold_chain_product_asks_the_matcher_for_cold_storage(shop):
    plain = await place(shop, ("maize", 1), ("drink", "drink_2l", 1))
    async with shop.db.tenant_transaction(shop.tenant_id) as tx:
        await tx.execute("UPDATE products SET tags = ARRAY['dairy', $2] WHERE id = $1",
                         uuid.UUID(shop.products["bread"]), COLD_CHAIN_TAG)
    cold = await place(shop, ("maize", 1), ("bread", 1))
    async with shop.db.tenant_transaction(shop.tenant_id, readonly=True) as tx:
        needs = {str(r["id"]): r["needs"] for r in await tx.fetch(
            "SELECT id, metadata->'needs_cold_storage' AS needs FROM orders WHERE id = ANY($1::uuid[])",
            [uuid.UUID(plain["id"]), uuid.UUID(cold["id"])])}
    assert needs == {plain["id"]: None, cold["id"]: "true"}


async def test_vat_exclusive_prices_get_vat_added_on_top(shop):
    exclusive = replace(PricingSettings(), prices_include_vat=False)
    order = new_order(shop, ("bread", 2))
    view = await place_order(shop.db, shop.tenant_id, order, actor="test", pricing=exclusive)
    fee = Decimal(view["delivery_fee"])
    vat = money(Decimal("31.00") * Decimal("0.15")) + money(fee * Decimal("0.15"))
    assert view["tax_amount"] == str(vat)
    assert view["total_amount"] == str(Decimal("31.00") + fee + vat)


async def test_order_numbers_are_unique_increasing_and_never_reused_after_a_rollback(shop, monkeypatch):
    first = [await place(shop, ("bread", 2)) for _ in range(3)]
    numbers = [int(v["order_number"][3:]) for v in first]
    assert numbers == sorted(numbers) and len(set(numbers)) == 3

    async def die(*_args, **_kw):
        raise RuntimeError("the process died between the order and its stock")

    before = await snapshot(shop)
    monkeypatch.setattr(placing.reservations, "reserve", die)
    with pytest.raises(RuntimeError):
        await place(shop, ("bread", 2))
    monkeypatch.undo()
    assert await snapshot(shop) == before   # no order, no event: the transaction rolled back

    after = await place(shop, ("bread", 2))
    assert int(after["order_number"][3:]) == numbers[-1] + 2   # the rolled-back number stays unused


async def test_1000_concurrent_orders_for_10_units_sell_exactly_10(shop):
    started = time.perf_counter()
    results = await asyncio.gather(
        *(place(shop, ("scarce", 1), customer=n % 3) for n in range(1000)), return_exceptions=True)
    elapsed = time.perf_counter() - started
    placed = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, Refusal)]
    assert len(placed) == 10 and len(refused) == 990, [r for r in results if isinstance(r, Exception)
                                                       and not isinstance(r, Refusal)][:3]
    assert {(r.status, r.reason, r.field) for r in refused} == {(409, "out_of_stock", "lines[0].quantity")}
    assert len({p["order_number"] for p in placed}) == 10
    assert await stock(shop, "scarce") == (10, 10)
    print(f"\n1000 concurrent orders for 10 units: {elapsed:.1f} s")

    for view in placed:
        await deliver(shop, view["id"])
    assert await stock(shop, "scarce") == (0, 0)
    async with shop.db.tenant_transaction(shop.tenant_id, readonly=True) as tx:
        moves = await tx.fetch("SELECT movement_type, quantity, reference_type FROM inventory_movements "
                               "WHERE inventory_id = $1", uuid.UUID(shop.inventory["scarce"]))
        held = await tx.fetch("SELECT status, settled_at FROM inventory_reservations WHERE inventory_id = $1",
                              uuid.UUID(shop.inventory["scarce"]))
        statuses = await tx.fetch("SELECT status FROM orders")
    assert [tuple(m) for m in moves] == [("sale", -1, "order")] * 10
    assert {r["status"] for r in held} == {"converted"} and all(r["settled_at"] for r in held)
    assert [r["status"] for r in statuses] == ["delivered"] * 10
    assert await events(shop, placed[0]["id"]) == [
        ("place", None, "pending"), ("accept", "pending", "accepted"), ("mark_ready", "accepted", "ready"),
        ("dispatch", "ready", "dispatched"), ("pick_up", "dispatched", "picked_up"),
        ("deliver", "picked_up", "delivered")]
    assert elapsed < 60


async def test_the_locked_stock_check_alone_holds_with_lines_in_any_order(shop, monkeypatch):
    # blind the unlocked pre-check: every order reaches the row locks and the conditional UPDATE
    monkeypatch.setattr(placing, "CHECK_SQL", placing.CHECK_SQL.replace(
        "i.quantity - i.reserved_quantity AS available", "1000000 AS available"))
    async with shop.db.tenant_transaction(shop.tenant_id) as tx:
        await tx.execute("UPDATE inventory SET quantity = 40 WHERE id = ANY($1::uuid[])",
                         [uuid.UUID(shop.inventory["maize"]), uuid.UUID(shop.inventory["bread"])])
    forward, backward = (("maize", 1), ("bread", 1)), (("bread", 1), ("maize", 1))
    results = await asyncio.gather(
        *(place(shop, *(forward if n % 2 else backward), customer=n % 3) for n in range(300)),
        return_exceptions=True)
    unexpected = [r for r in results if isinstance(r, Exception) and not isinstance(r, Refusal)]
    assert unexpected == []   # no deadlock, no check violation
    placed = [r for r in results if isinstance(r, dict)]
    assert len(placed) == 40
    assert {(r.status, r.reason) for r in results if isinstance(r, Refusal)} == {(409, "out_of_stock")}
    assert await stock(shop, "maize") == (40, 40) and await stock(shop, "bread") == (40, 40)
    async with shop.db.tenant_transaction(shop.tenant_id, readonly=True) as tx:
        assert await tx.fetchval("SELECT count(*) FROM orders") == 40
        assert await tx.fetchval("SELECT count(*) FROM order_events_outbox") == 40
        assert await tx.fetchval("SELECT sum(quantity) FROM inventory_reservations") == 80


async def test_a_line_short_at_the_lock_holds_none_of_the_order(shop, monkeypatch):
    # the pre-check blinded again: the locked statement holds the lines that fit and refuses the
    # order, and the refusal must take those held lines back with it
    monkeypatch.setattr(placing, "CHECK_SQL", placing.CHECK_SQL.replace(
        "i.quantity - i.reserved_quantity AS available", "1000000 AS available"))
    async with shop.db.tenant_transaction(shop.tenant_id) as tx:
        await tx.execute("UPDATE inventory SET quantity = 40 WHERE id = $1::uuid", uuid.UUID(shop.inventory["maize"]))
        await tx.execute("UPDATE inventory SET quantity = 5 WHERE id = $1::uuid", uuid.UUID(shop.inventory["bread"]))
    results = await asyncio.gather(*(place(shop, ("maize", 2), ("bread", 1), customer=n % 3) for n in range(30)),
                                   return_exceptions=True)
    assert [r for r in results if isinstance(r, Exception) and not isinstance(r, Refusal)] == []
    refused = [r for r in results if isinstance(r, Refusal)]
    assert len(refused) == 25 and {(r.reason, r.field) for r in refused} == {("out_of_stock", "lines[1].quantity")}
    assert await stock(shop, "bread") == (5, 5) and await stock(shop, "maize") == (40, 10)


# -- payments ------------------------------------------------------------------------------------


async def pay(shop: Shop, view: dict, key: str, *, status: str = "succeeded", amount: str | None = None):
    return await record_payment(shop.db, shop.tenant_id, view["id"], idempotency_key=key,
                                amount=Decimal(amount or view["total_amount"]), status=status,
                                gateway="ozow", gateway_reference=f"OZ-{key}", cache=shop.cache)


async def test_a_duplicated_payment_callback_changes_nothing(shop):
    view = await place(shop, ("maize", 1), payment_method="card")
    first = await pay(shop, view, "pay_0001")
    assert (first["status"], first["order_status"], first["payment_status"], first["replayed"]) == (
        "succeeded", "paid", "paid", False)
    before = await snapshot(shop)
    again = await pay(shop, view, "pay_0001")
    assert again == {**first, "replayed": True}
    assert await snapshot(shop) == before   # every count and the order row itself unchanged

    replays = await asyncio.gather(*(pay(shop, view, "pay_0001") for _ in range(20)))
    assert all(r == again for r in replays) and await snapshot(shop) == before

    with pytest.raises(Refusal) as conflict:
        await pay(shop, view, "pay_0001", amount="1.00")
    assert (conflict.value.status, conflict.value.reason) == (409, "idempotency_conflict")
    other = await place(shop, ("bread", 2), payment_method="card")
    with pytest.raises(Refusal) as conflict:
        await record_payment(shop.db, shop.tenant_id, other["id"], idempotency_key="pay_0001",
                             amount=Decimal(view["total_amount"]), status="succeeded", gateway="ozow",
                             gateway_reference=None)
    assert conflict.value.reason == "idempotency_conflict"
    got = await get_order(shop.db, shop.tenant_id, view["id"], cache=shop.cache)
    assert (got["status"], got["payment_status"]) == ("paid", "paid")
    assert await events(shop, view["id"]) == [("place", None, "pending"), ("pay", "pending", "paid")]


async def test_concurrent_deliveries_of_one_callback_record_one_payment(shop):
    view = await place(shop, ("maize", 1), payment_method="card")
    results = await asyncio.gather(*(pay(shop, view, "pay_race") for _ in range(10)))
    assert sorted(r["replayed"] for r in results) == [False] + [True] * 9
    assert (await snapshot(shop))["payments"] == 1


async def test_a_failed_payment_cancels_the_order_and_releases_its_stock(shop):
    view = await place(shop, ("maize", 3), payment_method="card")
    assert await stock(shop, "maize") == (50, 3)
    result = await pay(shop, view, "pay_fail", status="failed")
    assert (result["order_status"], result["payment_status"]) == ("cancelled", "failed")
    assert await stock(shop, "maize") == (50, 0)
    got = await get_order(shop.db, shop.tenant_id, view["id"])
    assert (got["status"], got["payment_status"]) == ("cancelled", "failed")
    assert await events(shop, view["id"]) == [("place", None, "pending"),
                                              ("fail_payment", "pending", "cancelled")]
    # the money of a success that arrives afterwards is owed back
    late = await pay(shop, view, "pay_late")
    assert (late["order_status"], late["payment_status"], late["refund_amount"]) == (
        "cancelled", "refund_pending", view["total_amount"])
    async with shop.db.tenant_transaction(shop.tenant_id, readonly=True) as tx:
        refunds = await tx.fetch("SELECT amount, status FROM refunds WHERE order_id = $1", uuid.UUID(view["id"]))
    assert [tuple(r) for r in refunds] == [(Decimal(view["total_amount"]), "pending")]


async def test_payment_input_is_checked_before_anything_is_written(shop):
    view = await place(shop, ("maize", 1), payment_method="card")
    before = await snapshot(shop)
    for kwargs, reason in (
        ({"amount": Decimal("1.00")}, "amount_mismatch"),
        ({"amount": 89.99}, "wrong_type"),
        ({"amount": Decimal("1.001")}, "invalid_value"),
        ({"amount": Decimal("-1")}, "invalid_value"),
        ({"status": "maybe"}, "invalid_value"),
        ({"idempotency_key": ""}, "invalid_value"),
    ):
        args = {"idempotency_key": "k-1", "amount": Decimal(view["total_amount"]), "status": "succeeded",
                "gateway": "ozow", "gateway_reference": None, **kwargs}
        with pytest.raises(Refusal) as refused:
            await record_payment(shop.db, shop.tenant_id, view["id"], **args)
        assert refused.value.reason == reason, kwargs
    with pytest.raises(OrderNotFound):
        await record_payment(shop.db, shop.tenant_id, str(uuid.uuid4()), idempotency_key="k-2",
                             amount=Decimal("1.00"), status="succeeded", gateway="ozow",
                             gateway_reference=None)
    assert await snapshot(shop) == before


# -- the vendor, the customer ----------------------------------------------------------------------


async def test_card_orders_are_accepted_once_paid_and_rejection_owes_a_refund(shop):
    view = await place(shop, ("maize", 2), payment_method="card")
    before = await snapshot(shop)
    with pytest.raises(IllegalOrderTransition, match="once it is paid"):
        await vendor_decision(shop.db, shop.tenant_id, shop.vendor, view["id"], accept=True, actor=shop.staff)
    with pytest.raises(Refusal) as refused:
        await vendor_decision(shop.db, shop.tenant_id, shop.vendor, view["id"], accept=False, actor=shop.staff)
    assert refused.value.field == "reason"
    assert await snapshot(shop) == before
    await pay(shop, view, "pay_r1")
    rejected = await vendor_decision(shop.db, shop.tenant_id, shop.vendor, view["id"], accept=False,
                                     actor=shop.staff, reason="out of maize", cache=shop.cache)
    assert (rejected["status"], rejected["payment_status"]) == ("rejected", "refund_pending")
    assert await stock(shop, "maize") == (50, 0)
    async with shop.db.tenant_transaction(shop.tenant_id, readonly=True) as tx:
        refund = await tx.fetchrow("SELECT amount, reason, payment_id FROM refunds WHERE order_id = $1",
                                   uuid.UUID(view["id"]))
    assert refund["amount"] == Decimal(view["total_amount"]) and "out of maize" in refund["reason"]
    assert refund["payment_id"] is not None
    assert await history(shop, view["id"]) == [
        (None, "pending", None, shop.customers[0]), ("pending", "paid", None, "gateway:ozow"),
        ("paid", "rejected", shop.staff, None)]


async def test_mark_ready_creates_the_delivery_in_the_same_transaction(shop):
    view = await place(shop, ("maize", 1))
    with pytest.raises(IllegalOrderTransition):
        await mark_ready(shop.db, shop.tenant_id, shop.vendor, view["id"], actor=shop.staff)
    await vendor_decision(shop.db, shop.tenant_id, shop.vendor, view["id"], accept=True, actor=shop.staff)
    ready = await mark_ready(shop.db, shop.tenant_id, shop.vendor, view["id"], actor=shop.staff,
                             cache=shop.cache)
    assert ready["status"] == "ready" and ready["delivery_id"]
    async with shop.db.tenant_transaction(shop.tenant_id, readonly=True) as tx:
        delivery = await tx.fetchrow(
            "SELECT status, order_id, ST_Y(pickup_location::geometry) AS plat, "
            "ST_X(pickup_location::geometry) AS plng, ST_Y(dropoff_location::geometry) AS dlat, "
            "ST_X(dropoff_location::geometry) AS dlng, distance_meters, dropoff_address "
            "FROM deliveries WHERE id = $1", uuid.UUID(ready["delivery_id"]))
        created = await tx.fetch("SELECT event_type FROM delivery_events_outbox WHERE delivery_id = $1",
                                 uuid.UUID(ready["delivery_id"]))
    assert (delivery["status"], str(delivery["order_id"])) == ("pending", view["id"])
    assert (delivery["plat"], delivery["plng"]) == pytest.approx(VENDOR_AT)
    assert (delivery["dlat"], delivery["dlng"]) == pytest.approx(HOME)
    assert 1450 < delivery["distance_meters"] < 1550
    assert json.loads(delivery["dropoff_address"]) == ADDRESS
    assert [r["event_type"] for r in created] == ["created"]
    assert (await events(shop, view["id"]))[-1] == ("mark_ready", "accepted", "ready")
    # the stock stays held while the delivery is on its way: the sweeper leaves it alone
    assert await release_expired_reservations(shop.db, shop.tenant_id,
                                              now=datetime.now(UTC) + timedelta(days=30)) == 0
    with pytest.raises(IllegalOrderTransition):
        await cancel_order(shop.db, shop.tenant_id, view["id"], actor=shop.customers[0],
                           reason="too slow", customer_id=shop.customers[0])


async def test_a_vendor_or_customer_cannot_touch_anothers_order(shop):
    view = await place(shop, ("maize", 1))
    before = await snapshot(shop)
    other, stranger = shop.other_vendor, shop.customers[1]
    attempts = [
        get_order(shop.db, shop.tenant_id, view["id"], vendor_id=other),
        get_order(shop.db, shop.tenant_id, view["id"], customer_id=stranger, cache=shop.cache),
        get_order(shop.db, shop.tenant_id, "not-an-id"),
        get_order(shop.db, shop.tenant_id, str(uuid.uuid4())),
        vendor_decision(shop.db, shop.tenant_id, other, view["id"], accept=True, actor=shop.staff),
        mark_ready(shop.db, shop.tenant_id, other, view["id"], actor=shop.staff),
        cancel_order(shop.db, shop.tenant_id, view["id"], actor=shop.staff, reason="x", vendor_id=other),
        cancel_order(shop.db, shop.tenant_id, view["id"], actor=stranger, reason="x", customer_id=stranger),
        return_order(shop.db, shop.tenant_id, view["id"], customer_id=stranger, lines=None, reason="x",
                     actor=stranger),
    ]
    for attempt in attempts:
        with pytest.raises(OrderNotFound) as missing:
            await attempt
        assert missing.value.status == 404
    assert await snapshot(shop) == before
    assert await list_orders(shop.db, shop.tenant_id, vendor_id=other) == []
    assert await list_orders(shop.db, shop.tenant_id, customer_id=stranger) == []


async def test_another_tenant_cannot_see_or_move_the_order(shop, platform):
    view = await place(shop, ("maize", 1), payment_method="card")
    other = str((await create_tenant(platform, f"Elsewhere Spaza {uuid.uuid4().hex[:6]}")).id)
    before = await snapshot(shop)
    for attempt in (
        get_order(shop.db, other, view["id"]),
        cancel_order(shop.db, other, view["id"], actor="intruder", reason="x"),
        record_payment(shop.db, other, view["id"], idempotency_key="pay_x", amount=Decimal(view["total_amount"]),
                       status="succeeded", gateway="ozow", gateway_reference=None),
    ):
        with pytest.raises(OrderNotFound):
            await attempt
    assert await list_orders(shop.db, other) == []
    assert await snapshot(shop) == before


async def test_cancelling_releases_stock_and_owes_back_what_was_paid(shop):
    cash = await place(shop, ("maize", 4))
    card = await place(shop, ("maize", 1), ("bread", 2), payment_method="card")
    await pay(shop, card, "pay_c1")
    await vendor_decision(shop.db, shop.tenant_id, shop.vendor, card["id"], accept=True, actor=shop.staff)
    assert await stock(shop, "maize") == (50, 5)
    # the customer reads their order through the cache, then cancels: the cache follows
    await get_order(shop.db, shop.tenant_id, cash["id"], customer_id=shop.customers[0], cache=shop.cache)
    cancelled = await cancel_order(shop.db, shop.tenant_id, cash["id"], actor=shop.customers[0],
                                   reason="ordered twice", customer_id=shop.customers[0], cache=shop.cache)
    assert cancelled["status"] == "cancelled"
    assert (await get_order(shop.db, shop.tenant_id, cash["id"], cache=shop.cache))["status"] == "cancelled"
    assert await stock(shop, "maize") == (50, 1)
    await cancel_order(shop.db, shop.tenant_id, card["id"], actor=shop.staff, reason="closed early",
                       vendor_id=shop.vendor, cache=shop.cache)
    assert await stock(shop, "maize") == (50, 0) and await stock(shop, "bread") == (100, 0)
    async with shop.db.tenant_transaction(shop.tenant_id, readonly=True) as tx:
        refunds = await tx.fetch("SELECT order_id, amount FROM refunds")
        held = await tx.fetch("SELECT status FROM inventory_reservations")
    assert [(str(r["order_id"]), r["amount"]) for r in refunds] == [(card["id"], Decimal(card["total_amount"]))]
    assert {r["status"] for r in held} == {"released"}
    assert (await events(shop, card["id"]))[-1] == ("cancel", "accepted", "cancelled")
    with pytest.raises(IllegalOrderTransition):
        await cancel_order(shop.db, shop.tenant_id, cash["id"], actor=shop.customers[0], reason="again")


async def test_the_sweeper_releases_expired_reservations_and_nothing_else(shop):
    stale = await place(shop, ("maize", 2), now=T0)
    paid = await place(shop, ("maize", 3), payment_method="card", now=T0)
    await pay(shop, paid, "pay_s1")
    fresh = await place(shop, ("maize", 5), now=T0 + timedelta(minutes=10))
    assert await stock(shop, "maize") == (50, 10)
    assert await release_expired_reservations(shop.db, shop.tenant_id, now=T0 + timedelta(minutes=14)) == 0
    assert await release_expired_reservations(shop.db, shop.tenant_id, now=T0 + timedelta(minutes=16),
                                              cache=shop.cache) == 1
    assert await stock(shop, "maize") == (50, 8)
    statuses = {v["id"]: (await get_order(shop.db, shop.tenant_id, v["id"]))["status"]
                for v in (stale, paid, fresh)}
    assert statuses == {stale["id"]: "cancelled", paid["id"]: "paid", fresh["id"]: "pending"}
    assert (await events(shop, stale["id"]))[-1] == ("expire", "pending", "cancelled")
    assert (await history(shop, stale["id"]))[-1] == ("pending", "cancelled", None,
                                                      "system:reservation-sweeper")
    async with shop.db.tenant_transaction(shop.tenant_id, readonly=True) as tx:
        held = {str(r["order_id"]): r["status"] for r in await tx.fetch(
            "SELECT order_id, status FROM inventory_reservations")}
    assert held == {stale["id"]: "expired", paid["id"]: "active", fresh["id"]: "active"}
    # a second pass finds nothing more; the fresh order expires in its own time
    assert await release_expired_reservations(shop.db, shop.tenant_id, now=T0 + timedelta(minutes=16)) == 0
    assert await release_expired_reservations(shop.db, shop.tenant_id, now=T0 + timedelta(minutes=26)) == 1
    assert await stock(shop, "maize") == (50, 3)


# -- the delivery side -----------------------------------------------------------------------------


async def test_a_failed_delivery_releases_before_pickup_and_writes_off_after(shop):
    early = await place(shop, ("bread", 2))
    late = await place(shop, ("bread", 3))
    # one driver of capacity 1 carries them one after the other (the database guards capacity)
    d_early = await deliver(shop, early["id"], through="arrive_pickup")   # at the pickup
    assert await stock(shop, "bread") == (100, 5)
    await transition(shop.db, shop.tenant_id, d_early, "fail", actor=shop.driver, reason="shop closed")
    assert await stock(shop, "bread") == (100, 3)
    d_late = await deliver(shop, late["id"], through="pick_up")           # on the road
    assert await stock(shop, "bread") == (100, 3)
    await transition(shop.db, shop.tenant_id, d_late, "fail", actor=shop.driver, reason="nobody home",
                     cache=shop.cache)
    assert await stock(shop, "bread") == (97, 0)
    async with shop.db.tenant_transaction(shop.tenant_id, readonly=True) as tx:
        moves = [tuple(r) for r in await tx.fetch(
            "SELECT movement_type, quantity, reference_id::text FROM inventory_movements")]
        held = {str(r["order_id"]): r["status"] for r in await tx.fetch(
            "SELECT order_id, status FROM inventory_reservations")}
    assert moves == [("delivery_failed", -3, late["id"])]
    assert held == {early["id"]: "released", late["id"]: "written_off"}
    assert (await events(shop, late["id"]))[-1] == ("fail_delivery", "picked_up", "failed")
    assert (await get_order(shop.db, shop.tenant_id, late["id"], cache=shop.cache))["status"] == "failed"


async def test_returns_restock_and_refund_exactly_what_was_paid(shop):
    view = await place(shop, ("bread", 3), ("maize", 1))
    with pytest.raises(IllegalOrderTransition):
        await return_order(shop.db, shop.tenant_id, view["id"], customer_id=shop.customers[0], lines=None,
                           reason="stale", actor=shop.customers[0])
    await deliver(shop, view["id"])
    assert await stock(shop, "bread") == (97, 0)
    one = await return_order(shop.db, shop.tenant_id, view["id"], customer_id=shop.customers[0],
                             lines=(OrderLine(shop.products["bread"], None, 1),), reason="stale",
                             actor=shop.customers[0], cache=shop.cache)
    assert one["status"] == "delivered" and one["return"]["refund_amount"] == "15.50"
    assert one["return"]["return_number"] == f"{view['order_number']}-R1"
    assert await stock(shop, "bread") == (98, 0)
    with pytest.raises(Refusal) as too_many:
        await return_order(shop.db, shop.tenant_id, view["id"], customer_id=shop.customers[0],
                           lines=(OrderLine(shop.products["bread"], None, 3),), reason="stale",
                           actor=shop.customers[0])
    assert (too_many.value.reason, too_many.value.field) == ("out_of_range", "lines[0].quantity")
    rest = await return_order(shop.db, shop.tenant_id, view["id"], customer_id=shop.customers[0], lines=None,
                              reason="changed my mind", actor=shop.customers[0], cache=shop.cache)
    assert rest["status"] == "returned" and rest["return"]["refund_amount"] == "120.99"
    assert rest["payment_status"] == "refund_pending"
    assert await stock(shop, "bread") == (100, 0) and await stock(shop, "maize") == (50, 0)
    async with shop.db.tenant_transaction(shop.tenant_id, readonly=True) as tx:
        moves = sorted(tuple(r) for r in await tx.fetch(
            "SELECT movement_type, quantity FROM inventory_movements WHERE movement_type = 'return'"))
        refunds = await tx.fetchval("SELECT sum(amount) FROM refunds WHERE order_id = $1", uuid.UUID(view["id"]))
        returns = await tx.fetchval("SELECT count(*) FROM returns WHERE order_id = $1", uuid.UUID(view["id"]))
    assert moves == [("return", 1), ("return", 1), ("return", 2)]
    assert refunds == Decimal(view["subtotal"]) and returns == 2   # the goods, not the delivery fee
    assert (await events(shop, view["id"]))[-2:] == [("return_partial", "delivered", "delivered"),
                                                      ("return", "delivered", "returned")]


# -- hostile orders -------------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "reason", "field"), [
    ("unknown product", "unknown_product", "lines[1].product_id"),
    ("unknown variant", "unknown_variant", "lines[1].variant_id"),
    ("variant of another product", "unknown_variant", "lines[1].variant_id"),
    ("discontinued variant", "product_unavailable", "lines[1].variant_id"),
    ("another vendor's product", "product_of_another_vendor", "lines[1].product_id"),
    ("inactive product", "product_unavailable", "lines[1].product_id"),
    ("no stock row", "out_of_stock", "lines[1].quantity"),
    ("more than in stock", "out_of_stock", "lines[1].quantity"),
    ("unknown vendor", "unknown_vendor", "vendor_id"),
    ("unknown customer", "unknown_customer", "customer_id"),
    ("outside the radius", "outside_delivery_radius", "delivery_lat"),
    ("below the minimum", "below_minimum_order", "lines"),
    ("payment method not taken", "payment_method_not_accepted", "payment_method"),
    ("unknown promotion", "invalid_promotion", "promo_codes[0]"),
])
async def test_hostile_orders_are_refused_and_write_nothing(shop, case, reason, field):
    maize = OrderLine(shop.products["maize"], None, 1)
    second = {
        "unknown product": OrderLine(str(uuid.uuid4()), None, 1),
        "unknown variant": OrderLine(shop.products["drink"], str(uuid.uuid4()), 1),
        "variant of another product": OrderLine(shop.products["bread"], shop.variants["drink_2l"], 1),
        "discontinued variant": OrderLine(shop.products["drink"], shop.variants["drink_old"], 1),
        "another vendor's product": OrderLine(shop.products["foreign"], None, 1),
        "inactive product": OrderLine(shop.products["hidden"], None, 1),
        "no stock row": OrderLine(shop.products["drink"], None, 1),
        "more than in stock": OrderLine(shop.products["bread"], None, 101),
    }.get(case, OrderLine(shop.products["bread"], None, 1))
    order = NewOrder(shop.customers[0], shop.vendor, (maize, second), *HOME, dict(ADDRESS))
    order = {
        "unknown vendor": replace(order, vendor_id=str(uuid.uuid4())),
        "unknown customer": replace(order, customer_id=str(uuid.uuid4())),
        "outside the radius": replace(order, delivery_lat=FAR[0], delivery_lng=FAR[1]),
        "below the minimum": replace(order, lines=(OrderLine(shop.products["bread"], None, 1),)),
        "payment method not taken": replace(order, payment_method="eft"),
        "unknown promotion": replace(order, promo_codes=("NOPE",)),
    }.get(case, order)
    before = await snapshot(shop)
    with pytest.raises(Refusal) as refused:
        await place_order(shop.db, shop.tenant_id, order, actor="test", cache=shop.cache)
    assert (refused.value.reason, refused.value.field) == (reason, field)
    assert refused.value.status == (409 if reason == "out_of_stock" else 422)
    assert await snapshot(shop) == before


async def test_place_order_rechecks_an_order_built_in_python(shop):
    order = new_order(shop, ("maize", 1))
    for bad, field in ((replace(order, lines=(OrderLine(shop.products["maize"], None, True),)),
                        "lines[0].quantity"),
                       (replace(order, lines=()), "lines"),
                       (replace(order, vendor_id="vendor-1"), "vendor_id")):
        with pytest.raises(Refusal) as refused:
            await place_order(shop.db, shop.tenant_id, bad, actor="test")
        assert refused.value.field == field


# -- reading and events ----------------------------------------------------------------------------


async def test_list_orders_filters_by_vendor_customer_and_status(shop):
    a = await place(shop, ("maize", 1), customer=0)
    b = await place(shop, ("bread", 2), customer=1)
    await cancel_order(shop.db, shop.tenant_id, b["id"], actor="test", reason="x")
    ids = lambda views: [v["id"] for v in views]  # noqa: E731
    assert ids(await list_orders(shop.db, shop.tenant_id, vendor_id=shop.vendor)) == [b["id"], a["id"]]
    assert ids(await list_orders(shop.db, shop.tenant_id, customer_id=shop.customers[0])) == [a["id"]]
    assert ids(await list_orders(shop.db, shop.tenant_id, status="cancelled")) == [b["id"]]
    assert ids(await list_orders(shop.db, shop.tenant_id, limit=1)) == [b["id"]]
    assert (await list_orders(shop.db, shop.tenant_id, customer_id=shop.customers[0]))[0] == \
        await get_order(shop.db, shop.tenant_id, a["id"])
    for kwargs, reason in (({"status": "lost"}, "invalid_value"), ({"limit": 0}, "out_of_range"),
                           ({"limit": 201}, "out_of_range")):
        with pytest.raises(Refusal) as refused:
            await list_orders(shop.db, shop.tenant_id, **kwargs)
        assert (refused.value.status, refused.value.reason) == (422, reason)


async def test_every_transition_reaches_order_events_through_the_relay(shop, stream_settings):
    topic = stream_settings.order_events_topic   # this test's own, deleted with the session's topics
    view = await place(shop, ("maize", 1), payment_method="card")
    await pay(shop, view, "pay_e1")
    await vendor_decision(shop.db, shop.tenant_id, shop.vendor, view["id"], accept=True, actor=shop.staff)
    await mark_ready(shop.db, shop.tenant_id, shop.vendor, view["id"], actor=shop.staff)
    producer = AIOKafkaProducer(bootstrap_servers=stream_settings.kafka_bootstrap, linger_ms=2)
    await producer.start()
    try:
        relay = OutboxRelay(shop.db, producer, topic, table="order_events_outbox", key_column="order_id")
        assert await relay.publish_all([shop.tenant_id]) == 4
        assert await relay.publish_all([shop.tenant_id]) == 0
        # the delivery's own relay is untouched by the order events
        deliveries = OutboxRelay(shop.db, producer, stream_settings.delivery_events_topic)
        assert await deliveries.publish_all([shop.tenant_id]) == 1
    finally:
        await producer.stop()
    received = await consume(stream_settings.kafka_bootstrap, topic, 4)
    assert [k for k, _ in received] == [view["id"]] * 4
    assert [e["type"] for _, e in received] == ["place", "pay", "accept", "mark_ready"]
    assert all(e["order_id"] == view["id"] and e["tenant_id"] == shop.tenant_id for _, e in received)
    assert [e["payload"]["to_status"] for _, e in received] == ["pending", "paid", "accepted", "ready"]
    assert received[3][1]["payload"]["delivery_id"] and received[0][1]["payload"]["order_number"]
    with pytest.raises(ValueError, match="unknown outbox"):
        OutboxRelay(shop.db, None, topic, table="orders")
    with pytest.raises(ValueError, match="unknown outbox"):
        OutboxRelay(shop.db, None, topic, table="order_events_outbox", key_column="delivery_id")
