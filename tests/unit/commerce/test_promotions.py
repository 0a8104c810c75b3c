"""Promotions' pure rules, with no service: eligibility, each type's discount, stacking, caps,
and the exact-cent allocation and refund arithmetic they rely on."""

from __future__ import annotations

import random
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from dispatch.commerce.pricing import allocate, money, refund_share
from dispatch.commerce.promotions import PricedLine, Promotion, apply_promotions
from dispatch.core.errors import Refusal

T0 = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
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
    with pytest.raises(Refusal) as caught:
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
