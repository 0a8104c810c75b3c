"""Promotions against real Postgres: recorded and priced into orders, their limits under concurrency.

The pure rules are tested without services in ``tests/unit/commerce/test_promotions.py``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest

from dispatch.commerce.orders.reads import get_order
from dispatch.commerce.orders.transitions import cancel_order
from dispatch.core.errors import Refusal
from tests.integration.commerce import test_orders
from tests.integration.commerce.test_orders import T0, place, snapshot, stock
from tests.integration.shared_platform import shared_platform  # noqa: F401 - one platform for the module

shop = test_orders.shop   # the fixture: a tenant with a vendor, customers, products and stock

pytestmark = pytest.mark.timeout(180)


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
    with pytest.raises(Refusal) as caught:
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
    refused = [r for r in results if isinstance(r, Refusal)]
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
    assert all(isinstance(r, Refusal) and "per customer" in r.message for r in results
               if not isinstance(r, dict))
    assert await uses(shop, pid) == (1, 1)
    other = await place(shop, ("bread", 2), customer=1, promo_codes=("ONCE",), now=T0)   # someone else may
    assert await uses(shop, pid) == (2, 2)
    await cancel_order(shop.db, shop.tenant_id, placed[0]["id"], actor=shop.customers[0], reason="oops",
                       customer_id=shop.customers[0])
    assert (await uses(shop, pid))[0] == 1
    again = await place(shop, ("bread", 2), customer=0, promo_codes=("ONCE",), now=T0)
    assert again["promotions"][0]["code"] == "ONCE" and other["discount_amount"] == "3.10"
