"""Promotions: the pure rules (no services), then their limits against real Postgres under concurrency."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import pytest

from dispatch.commerce.orders import cancel_order, get_order
from dispatch.commerce.orders.lifecycle import OrderRejected
from dispatch.commerce.pricing import allocate, money, refund_share
from dispatch.commerce.promotions import PricedLine, Promotion, apply_promotions
from tests.integration.commerce import test_orders
from tests.integration.commerce.test_orders import T0, place, snapshot, stock

shop = test_orders.shop   # the fixture: a tenant with a vendor, customers, products and stock

pytestmark = pytest.mark.timeout(180)

VENDOR = str(uuid.uuid4())
PARENT, CHILD = str(uuid.uuid4()), str(uuid.uuid4())
MAIZE = PricedLine("maize", frozenset({CHILD, PARENT}), 2, Decimal("89.99"))   # 179.98
BREAD = PricedLine("bread", frozenset(), 3, Decimal("15.50"))                  # 46.50
LINES = (MAIZE, BREAD)


def promo(**changes) -> Promotion:
    base = Promotion(
        id=str(uuid.uuid4()), code="SAVE", type="percentage", value=Decimal("10"),
        minimum_order_value=None, maximum_discount=None, usage_limit=None, usage_count=0,
        customer_usage_limit=1, products=frozenset(), categories=frozenset(), vendors=frozenset(),
        start=T0 - timedelta(days=1), end=T0 + timedelta(days=1), status="active")
    return replace(base, **changes)


def apply(*promos: Promotion, lines=LINES, vendor=VENDOR, now=T0):
    return apply_promotions(promos, [f"promo_codes[{i}]" for i in range(len(promos))], lines,
                            vendor_id=vendor, now=now)


def refused(*promos: Promotion, **kw) -> str:
    with pytest.raises(OrderRejected) as caught:
        apply(*promos, **kw)
    assert (caught.value.status, caught.value.reason) == (422, "invalid_promotion")
    return caught.value.message


# -- the rules -------------------------------------------------------------------------------------


def test_percentage_is_of_the_eligible_lines_split_in_exact_cents():
    [applied] = apply(promo())
    assert applied.amount == Decimal("22.65")                   # 10 % of 226.48, half up
    assert applied.line_discounts == (Decimal("18.00"), Decimal("4.65"))
    assert sum(applied.line_discounts) == applied.amount


def test_fixed_never_takes_more_than_the_eligible_lines_cost():
    assert apply(promo(type="fixed", value=Decimal("20")))[0].amount == Decimal("20.00")
    bread_only = promo(type="fixed", value=Decimal("100"), products=frozenset({"bread"}))
    [applied] = apply(bread_only)
    assert applied.line_discounts == (Decimal("0.00"), Decimal("46.50"))


def test_bogo_gives_every_second_unit_of_an_eligible_line():
    [applied] = apply(promo(type="bogo", value=Decimal("0")))
    assert applied.line_discounts == (Decimal("89.99"), Decimal("15.50"))   # 1 of 2 maize, 1 of 3 bread
    [capped] = apply(promo(type="bogo", value=Decimal("0"), maximum_discount=Decimal("50")))
    assert capped.amount == Decimal("50.00") and sum(capped.line_discounts) == Decimal("50.00")
    assert "two units" in refused(promo(type="bogo", value=Decimal("0")),
                                  lines=(replace(MAIZE, quantity=1), replace(BREAD, quantity=1)))


def test_maximum_discount_caps_each_promotion():
    assert apply(promo(value=Decimal("50"), maximum_discount=Decimal("30")))[0].amount == Decimal("30.00")


def test_minimum_order_value_is_on_the_goods_subtotal():
    assert apply(promo(minimum_order_value=Decimal("226.48")))[0].amount == Decimal("22.65")
    assert "at least R226.49" in refused(promo(minimum_order_value=Decimal("226.49")))


def test_the_date_window_and_status_are_enforced():
    assert "starts" in refused(promo(start=T0 + timedelta(seconds=1)))
    assert "ended" in refused(promo(end=T0))                    # the end is exclusive
    assert apply(promo(start=T0))[0].amount > 0                 # the start is inclusive
    assert "not active" in refused(promo(status="paused"))


def test_vendor_product_and_category_scopes():
    assert "vendor" in refused(promo(vendors=frozenset({str(uuid.uuid4())})))
    assert apply(promo(vendors=frozenset({VENDOR})))[0].amount == Decimal("22.65")
    assert apply(promo(products=frozenset({"bread"})))[0].line_discounts == (Decimal("0.00"), Decimal("4.65"))
    # a category applies to products in its subcategories too
    assert apply(promo(categories=frozenset({PARENT})))[0].line_discounts == (Decimal("18.00"), Decimal("0.00"))
    assert "does not apply" in refused(promo(products=frozenset({"milk"}), categories=frozenset({"x"})))


def test_stacked_promotions_each_work_on_what_is_left():
    first, second = apply(promo(value=Decimal("60")), promo(code="MORE", value=Decimal("60")))
    assert first.amount == Decimal("135.89")
    assert second.amount == money((Decimal("226.48") - first.amount) * Decimal("0.6"))
    left = [line.total - a - b for line, a, b in zip(LINES, first.line_discounts, second.line_discounts,
                                                     strict=True)]
    assert all(x >= 0 for x in left)
    everything = apply(promo(type="fixed", value=Decimal("500")), promo(code="MORE", value=Decimal("10")))
    assert [a.amount for a in everything] == [Decimal("226.48"), Decimal("0.00")]


def test_allocation_and_refunds_always_add_up():
    rng = random.Random(5)
    for _ in range(500):
        weights = [money(Decimal(rng.randint(1, 100_000)) / 100) for _ in range(rng.randint(1, 8))]
        total = money(sum(weights) * Decimal(rng.random()))
        shares = allocate(total, weights)
        assert sum(shares) == total and all(0 <= s <= w for s, w in zip(shares, weights, strict=True))
        paid, quantity = weights[0], rng.randint(1, 12)
        done, refunds = 0, []
        while done < quantity:
            step = rng.randint(1, quantity - done)
            refunds.append(refund_share(paid, quantity, done, step))
            done += step
        assert sum(refunds) == paid


# -- against the database --------------------------------------------------------------------------


async def create_promotion(shop, code: str, **columns) -> str:
    values = {"name": code.title(), "type": "percentage", "value": Decimal("10"),
              "start_date": T0 - timedelta(days=1), "end_date": T0 + timedelta(days=30), **columns}
    names = ", ".join(values)
    marks = ", ".join(f"${i}" for i in range(2, len(values) + 2))
    async with shop.db.tenant_transaction(shop.tenant_id) as tx:
        return str(await tx.fetchval(
            f"INSERT INTO promotions (code, {names}) VALUES ($1, {marks}) RETURNING id",  # noqa: S608
            code, *values.values()))


async def uses(shop, promotion_id: str) -> tuple[int, int]:
    async with shop.db.tenant_transaction(shop.tenant_id, readonly=True) as tx:
        return (await tx.fetchval("SELECT usage_count FROM promotions WHERE id = $1", uuid.UUID(promotion_id)),
                await tx.fetchval("SELECT count(*) FROM order_promotions WHERE promotion_id = $1",
                                  uuid.UUID(promotion_id)))


async def test_an_applied_promotion_is_recorded_and_priced_into_the_order(shop):
    pid = await create_promotion(shop, "Welcome10", applicable_categories=json.dumps([shop.categories["groceries"]]))
    view = await place(shop, ("maize", 2), ("bread", 2), promo_codes=("welcome10",), now=T0)
    # maize sits in Staples, a subcategory of Groceries; bread has no category
    assert view["promotions"] == [{"promotion_id": pid, "code": "Welcome10", "discount_amount": "18.00"}]
    assert [line["discount_amount"] for line in view["lines"]] == ["18.00", "0.00"]
    assert view["discount_amount"] == "18.00"
    assert Decimal(view["total_amount"]) == Decimal("179.98") + Decimal("31.00") - Decimal("18.00") + \
        Decimal(view["delivery_fee"])
    assert await uses(shop, pid) == (1, 1)
    assert await get_order(shop.db, shop.tenant_id, view["id"]) == view


async def test_bogo_and_fixed_in_the_database(shop):
    await create_promotion(shop, "BREAD2", type="bogo", value=Decimal("0"),
                           applicable_products=json.dumps([shop.products["bread"]]))
    await create_promotion(shop, "R5OFF", type="fixed", value=Decimal("5"), customer_usage_limit=None)
    view = await place(shop, ("bread", 5), ("maize", 1), promo_codes=("BREAD2", "R5OFF"), now=T0)
    assert sorted((p["code"], p["discount_amount"]) for p in view["promotions"]) == [
        ("BREAD2", "31.00"), ("R5OFF", "5.00")]
    assert view["discount_amount"] == "36.00"


@pytest.mark.parametrize(("case", "columns", "why"), [
    ("not started", {"start_date": T0 + timedelta(hours=1)}, "starts"),
    ("ended", {"end_date": T0}, "ended"),
    ("paused", {"status": "paused"}, "not active"),
    ("minimum", {"minimum_order_value": Decimal("500")}, "at least R500"),
    ("other vendor", {"applicable_vendors": None}, "vendor"),
    ("other product", {"applicable_products": None}, "does not apply"),
    ("used up", {"usage_limit": 3, "usage_count": 3}, "used up"),
])
async def test_a_promotion_outside_its_limits_refuses_the_order_and_writes_nothing(shop, case, columns, why):
    if "applicable_vendors" in columns:
        columns["applicable_vendors"] = json.dumps([shop.other_vendor])
    if "applicable_products" in columns:
        columns["applicable_products"] = json.dumps([shop.products["foreign"]])
    await create_promotion(shop, "LIMITED", **columns)
    before = await snapshot(shop)
    with pytest.raises(OrderRejected) as caught:
        await place(shop, ("maize", 1), promo_codes=("LIMITED",), now=T0)
    assert (caught.value.reason, caught.value.field) == ("invalid_promotion", "promo_codes[0]")
    assert why in caught.value.message
    assert await snapshot(shop) == before


async def test_the_usage_limit_holds_under_concurrency(shop):
    pid = await create_promotion(shop, "FIRST5", usage_limit=5, customer_usage_limit=None)
    results = await asyncio.gather(
        *(place(shop, ("bread", 2), customer=n % 3, promo_codes=("FIRST5",), now=T0) for n in range(60)),
        return_exceptions=True)
    placed = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, OrderRejected)]
    assert (len(placed), len(refused)) == (5, 55)
    assert all("used up" in r.message for r in refused)
    assert await uses(shop, pid) == (5, 5)
    assert await stock(shop, "bread") == (100, 10)


async def test_the_per_customer_limit_holds_under_concurrency_and_a_cancel_gives_the_use_back(shop):
    pid = await create_promotion(shop, "ONCE", customer_usage_limit=1)
    results = await asyncio.gather(
        *(place(shop, ("bread", 2), customer=0, promo_codes=("ONCE",), now=T0) for _ in range(20)),
        return_exceptions=True)
    placed = [r for r in results if isinstance(r, dict)]
    assert len(placed) == 1
    assert all(isinstance(r, OrderRejected) and "per customer" in r.message for r in results
               if not isinstance(r, dict))
    assert await uses(shop, pid) == (1, 1)
    other = await place(shop, ("bread", 2), customer=1, promo_codes=("ONCE",), now=T0)   # someone else may
    assert await uses(shop, pid) == (2, 2)
    await cancel_order(shop.db, shop.tenant_id, placed[0]["id"], actor=shop.customers[0], reason="oops",
                       customer_id=shop.customers[0])
    assert (await uses(shop, pid))[0] == 1
    again = await place(shop, ("bread", 2), customer=0, promo_codes=("ONCE",), now=T0)
    assert again["promotions"][0]["code"] == "ONCE" and other["discount_amount"] == "3.10"
