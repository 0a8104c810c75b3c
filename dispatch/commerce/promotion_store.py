"""Promotions on the caller's transaction: load them by code, claim and give back their uses.

The rules that decide what a promotion takes off are pure and live in
``dispatch.commerce.promotions``; this shell feeds them rows and writes what they decided.

Uses: ``usage_count`` is raised by a conditional UPDATE (``usage_count < usage_limit``),
which also locks the promotion row until commit; under that lock the customer's uses (their
orders with this promotion that were not cancelled or rejected) are counted against
``customer_usage_limit``. Both limits therefore hold under any concurrency. Promotions are
claimed in id order, before any stock row is locked, so two orders never wait on each other
in a cycle. A cancelled or rejected order gives its uses back (``release``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence

import asyncpg

from dispatch.commerce.promotions import AppliedPromotion, Promotion, invalid_promotion

__all__ = ["category_paths", "claim", "load", "record", "release"]

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
            raise invalid_promotion(code, field, why)
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
            raise invalid_promotion(promo.code, field, "has been used up")
        if promo.customer_usage_limit is not None:
            # the row is locked until commit: every earlier use by this customer is visible
            used = await tx.fetchval(CUSTOMER_USES_SQL, uuid.UUID(promo.id), uuid.UUID(customer_id))
            if used >= promo.customer_usage_limit:
                raise invalid_promotion(promo.code, field, f"can be used {promo.customer_usage_limit} "
                                        "time(s) per customer, and you have")


async def record(tx: asyncpg.Connection, order_id: uuid.UUID, applied: Sequence[AppliedPromotion]) -> None:
    """Remember which promotions the order used and what each took off (``order_promotions``)."""
    if applied:
        await tx.execute(INSERT_SQL, order_id, [uuid.UUID(a.promotion.id) for a in applied],
                         [a.amount for a in applied])


async def release(tx: asyncpg.Connection, order_id: uuid.UUID) -> None:
    """Give back the uses an order took (it was cancelled or rejected)."""
    locked = [r["id"] for r in await tx.fetch(LOCK_ORDER_PROMOTIONS_SQL, order_id)]
    if locked:
        await tx.execute(RELEASE_SQL, locked)
