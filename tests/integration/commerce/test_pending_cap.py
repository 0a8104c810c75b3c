"""The pending cap: one customer holds at most N unpaid orders' stock at one vendor, even when
posting concurrently; paying, cancelling or expiry frees a place."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from dispatch.commerce.orders.expiry import release_expired_reservations
from dispatch.commerce.orders.placing import place_order
from dispatch.commerce.orders.transitions import cancel_order
from dispatch.core.errors import Refusal
from tests.integration.commerce.test_orders import T0, new_order, pay, shop, stock  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(180)


async def place(shop, *lines, customer: int = 0, cap: int | None = 2, now=None, **kw) -> dict:  # noqa: F811
    return await place_order(shop.db, shop.tenant_id, new_order(shop, *lines, customer=customer, **kw),
                             actor=shop.customers[customer], cache=shop.cache, now=now, max_pending=cap)


async def test_a_customer_cannot_hold_more_than_the_cap_of_unpaid_orders(shop):  # noqa: F811
    first = await place(shop, ("bread", 2), payment_method="card")
    await place(shop, ("bread", 2), payment_method="card")
    with pytest.raises(Refusal) as refused:
        await place(shop, ("bread", 2), payment_method="card")
    assert (refused.value.status, refused.value.reason, refused.value.field) == (409, "too_many_pending", "vendor_id")
    assert await stock(shop, "bread") == (100, 4)   # the refused order holds nothing

    # others are not affected: another customer, another vendor
    await place(shop, ("bread", 2), customer=1)
    await place(shop, ("foreign", 1), vendor=shop.other_vendor)

    # a paid order no longer counts
    await pay(shop, first, "pay-cap-0001")
    third = await place(shop, ("bread", 2), payment_method="card")
    with pytest.raises(Refusal):
        await place(shop, ("bread", 2))
    # nor a cancelled one
    await cancel_order(shop.db, shop.tenant_id, third["id"], customer_id=shop.customers[0],
                       actor=shop.customers[0], reason="changed my mind")
    await place(shop, ("bread", 2))


async def test_an_expired_reservation_frees_a_place(shop):  # noqa: F811
    await place(shop, ("bread", 2), cap=1, now=T0)
    with pytest.raises(Refusal):
        await place(shop, ("bread", 2), cap=1, now=T0 + timedelta(minutes=1))
    # past the reservation's expiry the order no longer holds stock, even before the sweeper runs
    await place(shop, ("bread", 2), cap=1, now=T0 + timedelta(minutes=16))
    await release_expired_reservations(shop.db, shop.tenant_id, now=T0 + timedelta(minutes=17))


async def test_concurrent_posts_of_one_customer_cannot_pass_the_cap(shop):  # noqa: F811
    results = await asyncio.gather(*(place(shop, ("bread", 2), cap=3) for _ in range(12)), return_exceptions=True)
    placed = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, Refusal)]
    assert len(placed) == 3 and len(refused) == 9, results
    assert {r.reason for r in refused} == {"too_many_pending"}
    assert await stock(shop, "bread") == (100, 6)


async def test_without_a_cap_nothing_is_counted(shop):  # noqa: F811
    for _ in range(4):
        await place(shop, ("bread", 2), cap=None)
    assert await stock(shop, "bread") == (100, 8)
