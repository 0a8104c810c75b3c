"""Promotions: which codes apply to an order and what they take off; claiming their uses.

The rules are pure (``check_applicable``, ``apply_promotions``); the SQL that loads
promotions and claims and gives back their uses runs on the caller's transaction.

Rules, per promotion, in the order the codes were given:

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

Uses: ``usage_count`` is raised by a conditional UPDATE (``usage_count < usage_limit``),
which also locks the promotion row until commit; under that lock the customer's uses (their
orders with this promotion that were not cancelled or rejected) are counted against
``customer_usage_limit``. Both limits therefore hold under any concurrency. Promotions are
claimed in id order, before any stock row is locked, so two orders never wait on each other
in a cycle. A cancelled or rejected order gives its uses back (``release``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from dispatch.commerce.orders.lifecycle import OrderRejected
from dispatch.commerce.pricing import ZERO, allocate, money

__all__ = [
    "AppliedPromotion",
    "PricedLine",
    "Promotion",
    "apply_promotions",
    "category_paths",
    "check_applicable",
    "claim",
    "load",
    "record",
    "release",
]

PERCENTAGE, FIXED, BOGO = "percentage", "fixed", "bogo"

LOAD_SQL = """
SELECT id, code, type, value, minimum_order_value, maximum_discount, usage_limit,
       coalesce(usage_count, 0) AS usage_count, customer_usage_limit, applicable_products,
       applicable_categories, applicable_vendors, start_date, end_date, status
FROM promotions
WHERE upper(code) = ANY($1::text[])
"""
# A category and its ancestors (bounded: a cycle in parent_id must not loop forever).
CATEGORY_PATHS_SQL = """
WITH RECURSIVE up(start_id, id, parent_id, depth) AS (
    SELECT c.id, c.id, c.parent_id, 0 FROM categories c WHERE c.id = ANY($1::uuid[])
    UNION ALL
    SELECT up.start_id, c.id, c.parent_id, up.depth + 1
    FROM categories c JOIN up ON c.id = up.parent_id
    WHERE up.depth < 32
)
SELECT start_id, array_agg(id) AS path FROM up GROUP BY start_id
"""
CLAIM_SQL = """
UPDATE promotions SET usage_count = coalesce(usage_count, 0) + 1, updated_at = now()
WHERE id = $1 AND (usage_limit IS NULL OR coalesce(usage_count, 0) < usage_limit)
RETURNING usage_count
"""
CUSTOMER_USES_SQL = """
SELECT count(*) FROM order_promotions op JOIN orders o ON o.id = op.order_id
WHERE op.promotion_id = $1 AND o.customer_id = $2 AND o.status NOT IN ('cancelled', 'rejected')
"""
INSERT_SQL = """
INSERT INTO order_promotions (order_id, promotion_id, discount_amount)
SELECT $1, p.id, p.amount FROM unnest($2::uuid[], $3::numeric[]) AS p(id, amount)
"""
# Locked in id order first: two orders giving back the same promotions never deadlock.
LOCK_ORDER_PROMOTIONS_SQL = """
SELECT id FROM promotions
WHERE id IN (SELECT promotion_id FROM order_promotions WHERE order_id = $1)
ORDER BY id FOR UPDATE
"""
RELEASE_SQL = """
UPDATE promotions SET usage_count = greatest(coalesce(usage_count, 0) - 1, 0), updated_at = now()
WHERE id = ANY($1::uuid[])
"""


def _ids(raw: object) -> frozenset[str]:
    values = json.loads(raw) if isinstance(raw, str) else (raw or [])
    out = set()
    for value in values if isinstance(values, list) else []:
        try:
            out.add(str(uuid.UUID(str(value))))
        except ValueError:
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
    def from_row(cls, row: asyncpg.Record) -> Promotion:
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


def _refuse(promo: Promotion, field: str, why: str) -> OrderRejected:
    return OrderRejected(422, "invalid_promotion", f"promotion {promo.code}: {why}", field)


def check_applicable(
    promo: Promotion, *, vendor_id: str, subtotal: Decimal, now: datetime, field: str
) -> None:
    """Refuse (OrderRejected 422 invalid_promotion) a promotion this order cannot use."""
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


# -- on the caller's transaction -------------------------------------------------------------


async def load(tx: asyncpg.Connection, codes: Sequence[str], fields: Sequence[str]) -> list[Promotion]:
    """The promotions named by ``codes`` (upper-case), in that order; unknown code: 422."""
    if not codes:
        return []
    found: dict[str, list[Promotion]] = {}
    for row in await tx.fetch(LOAD_SQL, list(codes)):
        found.setdefault(row["code"].upper(), []).append(Promotion.from_row(row))
    out = []
    for code, field in zip(codes, fields, strict=True):
        matches = found.get(code, [])
        if len(matches) != 1:
            why = "no such promotion" if not matches else "matches several promotions"
            raise OrderRejected(422, "invalid_promotion", f"promotion {code}: {why}", field)
        out.append(matches[0])
    return out


async def category_paths(tx: asyncpg.Connection, category_ids: Iterable[str]) -> dict[str, frozenset[str]]:
    """Each category with its ancestors (for category-scoped promotions)."""
    ids = sorted({c for c in category_ids if c})
    if not ids:
        return {}
    rows = await tx.fetch(CATEGORY_PATHS_SQL, ids)
    return {str(r["start_id"]): frozenset(str(c) for c in r["path"]) for r in rows}


async def claim(tx: asyncpg.Connection, applied: Sequence[AppliedPromotion], fields: Sequence[str], *,
                customer_id: str) -> None:
    """Take one use of each promotion for ``customer_id``, or refuse (422) with nothing kept.

    Runs before any stock is locked; promotion rows are locked in id order.
    """
    for promo, field in sorted(((a.promotion, f) for a, f in zip(applied, fields, strict=True)),
                               key=lambda pair: pair[0].id):
        if await tx.fetchval(CLAIM_SQL, uuid.UUID(promo.id)) is None:
            raise _refuse(promo, field, "has been used up")
        if promo.customer_usage_limit is not None:
            # the row is locked until commit: every earlier use by this customer is visible
            used = await tx.fetchval(CUSTOMER_USES_SQL, uuid.UUID(promo.id), uuid.UUID(customer_id))
            if used >= promo.customer_usage_limit:
                raise _refuse(promo, field, f"can be used {promo.customer_usage_limit} time(s) "
                                            "per customer, and you have")


async def record(tx: asyncpg.Connection, order_id: uuid.UUID, applied: Sequence[AppliedPromotion]) -> None:
    if applied:
        await tx.execute(INSERT_SQL, order_id, [uuid.UUID(a.promotion.id) for a in applied],
                         [a.amount for a in applied])


async def release(tx: asyncpg.Connection, order_id: uuid.UUID) -> None:
    """Give back the uses an order took (it was cancelled or rejected)."""
    locked = [r["id"] for r in await tx.fetch(LOCK_ORDER_PROMOTIONS_SQL, order_id)]
    if locked:
        await tx.execute(RELEASE_SQL, locked)
