"""Promotions: which codes apply to an order and what they take off.

``check_applicable`` says whether an order may use a promotion, ``apply_promotions`` what
each takes off which line. The rules, per promotion, in the order the codes were given:

* ``status`` is ``active`` and ``start_date <= now < end_date``;
* ``applicable_vendors`` (if not empty) names the order's vendor;
* the order's goods subtotal (catalogue prices, before any discount) is at least
  ``minimum_order_value``;
* a line is eligible when ``applicable_products`` and ``applicable_categories`` are both
  empty, or its product is listed, or its category or one of that category's ancestors is;
  a promotion with no eligible line is refused;
* ``percentage``: ``value`` % of the eligible lines; ``fixed``: ``value`` off the eligible
  lines (never more than they cost); ``bogo``: every second unit of an eligible line free
  (``value`` is not used); ``maximum_discount`` caps each one;
* each promotion works on what earlier ones left of each line, so stacked codes never take a
  line below zero; a discount is split over its lines in proportion, in exact cents.

Pure: plain data in, plain data out. Loading promotions, claiming their uses and giving them
back are ``dispatch.commerce.promotion_store``'s, on the caller's transaction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from dispatch.commerce.pricing import ZERO, allocate, money
from dispatch.core.errors import INVALID_PROMOTION, Refusal
from dispatch.core.ids import InvalidId, canonical_uuid

__all__ = [
    "AppliedPromotion",
    "PricedLine",
    "Promotion",
    "apply_promotions",
    "check_applicable",
    "invalid_promotion",
]

PERCENTAGE, FIXED, BOGO = "percentage", "fixed", "bogo"


def _ids(raw: object) -> frozenset[str]:
    values = json.loads(raw) if isinstance(raw, str) else (raw or [])
    out = set()
    for value in values if isinstance(values, list) else []:
        try:
            out.add(canonical_uuid(value))
        except InvalidId:
            continue   # not an id: matches nothing
    return frozenset(out)


@dataclass(frozen=True)
class Promotion:
    id: str
    code: str
    type: str
    value: Decimal
    minimum_order_value: Decimal | None
    maximum_discount: Decimal | None
    usage_limit: int | None
    usage_count: int
    customer_usage_limit: int | None
    products: frozenset[str]
    categories: frozenset[str]
    vendors: frozenset[str]
    start: datetime
    end: datetime
    status: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Promotion:
        """From a ``promotions`` row (or any mapping with its columns)."""
        return cls(
            id=str(row["id"]), code=row["code"], type=row["type"], value=row["value"],
            minimum_order_value=row["minimum_order_value"], maximum_discount=row["maximum_discount"],
            usage_limit=row["usage_limit"], usage_count=row["usage_count"],
            customer_usage_limit=row["customer_usage_limit"],
            products=_ids(row["applicable_products"]), categories=_ids(row["applicable_categories"]),
            vendors=_ids(row["applicable_vendors"]), start=row["start_date"], end=row["end_date"],
            status=row["status"],
        )


@dataclass(frozen=True)
class PricedLine:
    """An order line as promotions see it: catalogue price, quantity, where it sits."""

    product_id: str
    category_path: frozenset[str]   # the product's category and every ancestor
    quantity: int
    unit_price: Decimal

    @property
    def total(self) -> Decimal:
        return money(self.unit_price * self.quantity)


@dataclass(frozen=True)
class AppliedPromotion:
    promotion: Promotion
    amount: Decimal
    line_discounts: tuple[Decimal, ...]   # per order line, zeros where not eligible


def invalid_promotion(code: str, field: str, why: str) -> Refusal:
    """422 ``invalid_promotion``: the code named by ``field`` cannot be used, and ``why``."""
    return Refusal(422, INVALID_PROMOTION, f"promotion {code}: {why}", field)


def _refuse(promo: Promotion, field: str, why: str) -> Refusal:
    return invalid_promotion(promo.code, field, why)


def check_applicable(
    promo: Promotion, *, vendor_id: str, subtotal: Decimal, now: datetime, field: str
) -> None:
    """Refuse (422 ``invalid_promotion``) a promotion this order cannot use."""
    if promo.status != "active":
        raise _refuse(promo, field, "is not active")
    if now < promo.start:
        raise _refuse(promo, field, f"starts {promo.start.isoformat()}")
    if now >= promo.end:
        raise _refuse(promo, field, f"ended {promo.end.isoformat()}")
    if promo.vendors and vendor_id not in promo.vendors:
        raise _refuse(promo, field, "does not apply to this vendor")
    if promo.minimum_order_value is not None and subtotal < promo.minimum_order_value:
        raise _refuse(promo, field, f"needs an order of at least R{promo.minimum_order_value}")
    if promo.type not in (PERCENTAGE, FIXED, BOGO):
        raise _refuse(promo, field, f"has an unknown type {promo.type!r}")


def _eligible(promo: Promotion, line: PricedLine) -> bool:
    if not promo.products and not promo.categories:
        return True
    return line.product_id in promo.products or bool(promo.categories & line.category_path)


def _discounts(promo: Promotion, lines: Sequence[PricedLine], left: Sequence[Decimal],
               field: str) -> list[Decimal]:
    eligible = [i for i, line in enumerate(lines) if _eligible(promo, line)]
    if not eligible:
        raise _refuse(promo, field, "does not apply to anything in this order")
    base = [left[i] for i in eligible]
    if promo.type == BOGO:
        wanted = [min(money(lines[i].unit_price * (lines[i].quantity // 2)), left[i]) for i in eligible]
        if not any(lines[i].quantity >= 2 for i in eligible):
            raise _refuse(promo, field, "needs at least two units of an eligible item")
        total = sum(wanted, ZERO)
        base = wanted   # the cap below, if any, is shared in proportion to what each line earned
    elif promo.type == PERCENTAGE:
        total = money(sum(base, ZERO) * promo.value / 100)
    else:
        total = min(money(promo.value), sum(base, ZERO))
    if promo.maximum_discount is not None:
        total = min(total, promo.maximum_discount)
    shares = allocate(total, base)
    out = [ZERO] * len(lines)
    for i, share in zip(eligible, shares, strict=True):
        out[i] = share
    return out


def apply_promotions(
    promos: Sequence[Promotion], fields: Sequence[str], lines: Sequence[PricedLine], *,
    vendor_id: str, now: datetime,
) -> list[AppliedPromotion]:
    """Check and price every promotion in turn; each sees what the earlier ones left."""
    subtotal = sum((line.total for line in lines), ZERO)
    left = [line.total for line in lines]
    applied = []
    for promo, field in zip(promos, fields, strict=True):
        check_applicable(promo, vendor_id=vendor_id, subtotal=subtotal, now=now, field=field)
        discounts = _discounts(promo, lines, left, field)
        left = [remaining - d for remaining, d in zip(left, discounts, strict=True)]
        applied.append(AppliedPromotion(promo, sum(discounts, ZERO), tuple(discounts)))
    return applied
