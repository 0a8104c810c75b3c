"""Placing an order: everything priced and checked from the database, written in one transaction.

``place_order`` reads products, variants and prices from the database (never from the
client), enforces the vendor's ``minimum_order_value`` (on the goods subtotal, before
discounts) and ``delivery_radius`` (PostGIS distance from the vendor to the delivery point),
applies promotions (``dispatch.commerce.promotions``), computes VAT and the distance-based
delivery fee (``dispatch.commerce.pricing``) and, in one transaction, claims the promotion
uses, inserts the order (number ``WK-000123`` from the tenant's sequence), its items, its
promotions, its first history row and its ``place`` event, and reserves its stock
(``dispatch.commerce.reservations``). A refusal at any step writes nothing.

Checks run cheapest first and lock as late as possible: the input (pure,
``orders.input.recheck``), the vendor and customer and the lines with an *unlocked* stock
pre-check (a refusal here costs no lock), the promotion rows (locked in id order by the
claim), and last the stock rows themselves, so the hottest rows stay locked for the shortest
time. The pre-check can be wrong under concurrency; the locked check in
``reservations.reserve`` is the authority.

Two guards against a client that acts too often:

* **Pending cap.** One customer may hold at most ``max_pending`` unpaid orders with stock
  reserved at one vendor (``EngineSettings.max_pending_orders``, 5 by default); one more is
  409 ``too_many_pending``. The count runs under a transaction-scoped advisory lock on
  (customer, vendor), so concurrent posts of one customer queue there and cannot together
  pass the cap; other customers never wait on it. A paid or accepted order, or one whose
  reservation ran out, no longer counts. Without the cap one customer could hold a vendor's
  whole stock in checkouts they never pay (each holds for ``reservation_ttl_s``).
* **Idempotency key.** With ``idempotency`` (``dispatch.commerce.idempotency``), the key is
  locked and looked up first in the same transaction and the answer stored before the
  commit: a retry gets the first order back (``idempotency.ReplayedBody``), never a second order.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from dispatch.commerce import idempotency as idem
from dispatch.commerce import promotion_store, reservations
from dispatch.commerce.orders.input import NewOrder, recheck
from dispatch.commerce.orders.lifecycle import CASH, OrderStatus
from dispatch.commerce.orders.records import (
    LockedOrder,
    clock,
    forget_cached,
    order_view,
    record_placed,
)
from dispatch.commerce.pricing import ZERO, PricingSettings, delivery_fee, money, order_totals
from dispatch.commerce.promotions import PricedLine, apply_promotions
from dispatch.core.cache import Cache
from dispatch.core.errors import (
    BELOW_MINIMUM_ORDER,
    CUSTOMER_UNAVAILABLE,
    OUTSIDE_DELIVERY_RADIUS,
    PAYMENT_METHOD_NOT_ACCEPTED,
    PRODUCT_OF_ANOTHER_VENDOR,
    PRODUCT_UNAVAILABLE,
    TOO_MANY_PENDING,
    UNKNOWN_CUSTOMER,
    UNKNOWN_PRODUCT,
    UNKNOWN_VARIANT,
    UNKNOWN_VENDOR,
    VENDOR_UNAVAILABLE,
    Refusal,
)
from dispatch.core.metrics import ORDERS_PLACED
from schema.db import TenantDatabase
from schema.tenants import parse_tenant_id

__all__ = ["COLD_CHAIN_TAG", "place_order"]

# A product tagged so (milk, frozen chicken) travels in a vehicle with cold storage: an order
# holding one gets ``metadata.needs_cold_storage``, which the matcher filters on.
COLD_CHAIN_TAG = "cold_chain"

# The order number comes from the tenant's sequence: never handed out twice, even when this
# transaction rolls back. Six digits at least (WK-000123), more when it grows.
INSERT_ORDER_SQL = """
INSERT INTO orders (order_number, customer_id, vendor_id, status, subtotal, tax_amount,
                    delivery_fee, discount_amount, total_amount, currency, payment_method,
                    payment_status, delivery_address, delivery_location, notes, metadata)
SELECT 'WK-' || lpad(seq.n::text, greatest(6, length(seq.n::text)), '0'), $1, $2, 'pending',
       $3, $4, $5, $6, $7, 'ZAR', $8, 'pending', $9::jsonb,
       ST_SetSRID(ST_MakePoint($11, $10), 4326)::geography, $12, $13::jsonb
FROM (SELECT nextval('order_number_seq') AS n) AS seq
RETURNING id, order_number
"""
INSERT_ITEMS_SQL = """
INSERT INTO order_items (order_id, product_id, variant_id, quantity, unit_price, total_price,
                         discount_amount, tax_amount, metadata)
SELECT $1, i.product_id, i.variant_id, i.quantity, i.unit_price, i.total_price, i.discount,
       i.tax, jsonb_build_object('line', i.line - 1, 'name', i.name)
FROM unnest($2::uuid[], $3::uuid[], $4::int[], $5::numeric[], $6::numeric[], $7::numeric[],
            $8::numeric[], $9::text[])
     WITH ORDINALITY AS i(product_id, variant_id, quantity, unit_price, total_price, discount,
                          tax, name, line)
"""

# The vendor and its distance to the delivery point, the customer, every line and (with a key,
# $7; NULL takes no lock) the pending cap's lock, in one round trip: each row is one line with
# the vendor's columns beside it (vendor_found is NULL when there is no such vendor). Each
# line's product, variant and stock row are read unlocked: a pre-check, whose refusal costs no
# lock; the authority is the locked check in reservations.reserve. Orders draw on the
# product's (variant's) stock row without a location first, else the oldest. The cap's lock
# is taken by this statement and the count it guards is a later one, which sees every order
# committed by whoever held the lock before.
CHECK_SQL = """
WITH vendor AS (
    SELECT true AS vendor_found, v.status AS vendor_status, v.minimum_order_value,
           coalesce(v.delivery_radius, 5000) AS radius_m,
           coalesce(v.payment_methods, '["cash"]'::jsonb) AS payment_methods,
           ST_Distance(v.location, ST_SetSRID(ST_MakePoint($3, $2), 4326)::geography) AS distance_m,
           (SELECT coalesce(c.status, 'active') FROM customers c WHERE c.id = $4) AS customer_status
    FROM vendors v WHERE v.id = $1
), cap AS (
    SELECT pg_advisory_xact_lock(hashtextextended($7, 11))
)
SELECT l.idx, p.id AS product_id, p.vendor_id, p.status, p.name, p.price, p.category_id, p.tags,
       l.variant_id AS wanted_variant, v.id AS variant_id, v.status AS variant_status,
       v.name AS variant_name, v.price AS variant_price, s.id AS inventory_id, s.available,
       vendor.*
FROM unnest($5::uuid[], $6::uuid[]) WITH ORDINALITY AS l(product_id, variant_id, idx)
LEFT JOIN products p ON p.id = l.product_id
LEFT JOIN product_variants v ON v.id = l.variant_id AND v.product_id = l.product_id
LEFT JOIN LATERAL (
    SELECT i.id, i.quantity - i.reserved_quantity AS available
    FROM inventory i
    WHERE i.product_id = l.product_id AND i.variant_id IS NOT DISTINCT FROM l.variant_id
    ORDER BY i.location_id IS NOT NULL, i.id
    LIMIT 1
) s ON true
LEFT JOIN vendor ON true
CROSS JOIN cap
ORDER BY l.idx
"""
# The pending cap: one customer's posts at one vendor queue on the lock above, then count.
PENDING_SQL = """
SELECT count(*) FROM orders o
WHERE o.customer_id = $1 AND o.vendor_id = $2 AND o.status = 'pending'
  AND EXISTS (SELECT 1 FROM inventory_reservations r
              WHERE r.order_id = o.id AND r.status = 'active' AND r.expires_at > $3)
"""


_pricing: PricingSettings | None = None


def _default_pricing() -> PricingSettings:
    global _pricing
    if _pricing is None:
        _pricing = PricingSettings.from_env()
    return _pricing


def _check_vendor(vendor: asyncpg.Record, order: NewOrder) -> None:
    if vendor["vendor_found"] is None:
        raise Refusal(422, UNKNOWN_VENDOR, f"no vendor {order.vendor_id}", "vendor_id")
    if vendor["vendor_status"] not in (None, "active"):
        raise Refusal(422, VENDOR_UNAVAILABLE, "this vendor is not taking orders", "vendor_id")
    if vendor["distance_m"] is None:
        raise Refusal(422, VENDOR_UNAVAILABLE, "this vendor has no location set", "vendor_id")
    if vendor["customer_status"] is None:
        raise Refusal(422, UNKNOWN_CUSTOMER, f"no customer {order.customer_id}", "customer_id")
    if vendor["customer_status"] != "active":
        raise Refusal(422, CUSTOMER_UNAVAILABLE, "this customer cannot order", "customer_id")
    if vendor["distance_m"] > vendor["radius_m"]:
        raise Refusal(
            422, OUTSIDE_DELIVERY_RADIUS,
            f"the delivery point is {vendor['distance_m'] / 1000:.1f} km from the vendor, who "
            f"delivers up to {vendor['radius_m'] / 1000:.1f} km", "delivery_lat")
    methods = json.loads(vendor["payment_methods"])
    accepted = [str(m) for m in methods] if isinstance(methods, list) else [CASH]
    if order.payment_method not in accepted:
        raise Refusal(422, PAYMENT_METHOD_NOT_ACCEPTED,
                      f"this vendor takes {', '.join(accepted)}", "payment_method")


def _check_lines(rows: Sequence[asyncpg.Record], order: NewOrder) -> list[reservations.StockNeed]:
    """Refuse a line that is not for sale here or (by the unlocked pre-check) not in stock."""
    needs = []
    for row, line in zip(rows, order.lines, strict=True):
        i = row["idx"] - 1
        where = f"lines[{i}]"
        if row["product_id"] is None:
            raise Refusal(422, UNKNOWN_PRODUCT, f"no product {line.product_id}",
                          f"{where}.product_id")
        if str(row["vendor_id"]) != order.vendor_id:
            raise Refusal(422, PRODUCT_OF_ANOTHER_VENDOR,
                          f"product {line.product_id} is not sold by this vendor",
                          f"{where}.product_id")
        if row["status"] != "active":
            raise Refusal(422, PRODUCT_UNAVAILABLE, f"product {line.product_id} is not for sale",
                          f"{where}.product_id")
        if row["wanted_variant"] is not None:
            if row["variant_id"] is None:
                raise Refusal(422, UNKNOWN_VARIANT,
                              f"product {line.product_id} has no variant {line.variant_id}",
                              f"{where}.variant_id")
            if row["variant_status"] not in (None, "active"):
                raise Refusal(422, PRODUCT_UNAVAILABLE,
                              f"variant {line.variant_id} is not for sale", f"{where}.variant_id")
        if row["inventory_id"] is None or row["available"] < line.quantity:
            raise reservations.out_of_stock(i, row["available"] or 0, line.quantity)
        needs.append(reservations.StockNeed(row["inventory_id"], line.quantity, i))
    return needs


async def _check_pending(tx: asyncpg.Connection, customer: uuid.UUID, vendor: uuid.UUID,
                         cap: int, when: datetime) -> None:
    """409 ``too_many_pending`` if the customer already holds ``cap`` unpaid orders' stock here
    (under the lock ``CHECK_SQL`` took)."""
    if await tx.fetchval(PENDING_SQL, customer, vendor, when) >= cap:
        raise Refusal(409, TOO_MANY_PENDING,
                      f"you have {cap} unpaid orders holding this vendor's stock; pay or cancel one "
                      "first (or wait for one to expire)", "vendor_id")


def _unit_price(row: asyncpg.Record) -> Decimal:
    return money(row["variant_price"] if row["variant_price"] is not None else row["price"])


def _name(row: asyncpg.Record) -> str:
    return row["name"] if row["variant_name"] is None else f"{row['name']} ({row['variant_name']})"


async def place_order(
    db: TenantDatabase, tenant_id: object, order: NewOrder, *, actor: str,
    cache: Cache | None = None, reservation_ttl_s: int = 900, now: datetime | None = None,
    pricing: PricingSettings | None = None, max_pending: int | None = None,
    idempotency: idem.IdempotentRequest | None = None,
) -> dict[str, Any]:
    """Place ``order`` (see the module docstring); returns the order view.

    The view: ``id, order_number, status, customer_id, vendor_id, lines`` (``product_id,
    variant_id, name, quantity, unit_price, line_total, discount_amount, tax_amount``),
    ``subtotal, discount_amount, tax_amount, delivery_fee, total_amount`` (decimal strings),
    ``currency, payment_method, payment_status, promotions`` (``promotion_id, code,
    discount_amount``), ``delivery_address, delivery_location, notes, delivery_id,
    created_at, updated_at`` — the same as ``get_order``.

    Refusals (nothing written): 422 (the input: see ``orders.input``; ``unknown_vendor``,
    ``vendor_unavailable``, ``unknown_customer``, ``outside_delivery_radius``,
    ``payment_method_not_accepted``, ``unknown_product``, ``product_of_another_vendor``,
    ``product_unavailable``, ``unknown_variant``, ``below_minimum_order``,
    ``invalid_promotion``) or 409 ``out_of_stock`` naming the line, ``too_many_pending``
    (``max_pending``; None: no cap), ``idempotency_conflict`` (the key: another request, or
    one in progress).
    ``now`` (tests) is the clock for promotion windows and the reservation's expiry.
    """
    order = recheck(order)
    if type(reservation_ttl_s) is not int or not 1 <= reservation_ttl_s <= 86_400:
        raise ValueError("reservation_ttl_s must be an int from 1 to 86400")
    when = clock(now)
    settings = pricing or _default_pricing()
    tenant = str(parse_tenant_id(tenant_id))
    fields = [f"promo_codes[{i}]" for i in range(len(order.promo_codes))]
    customer_uuid, vendor_uuid = uuid.UUID(order.customer_id), uuid.UUID(order.vendor_id)
    async with db.tenant_transaction(tenant) as tx:
        if idempotency is not None and (first := await idem.begin(tx, tenant, idempotency)) is not None:
            return idem.ReplayedBody(first)
        rows = await tx.fetch(CHECK_SQL, vendor_uuid, order.delivery_lat, order.delivery_lng, customer_uuid,
                              [line.product_id for line in order.lines],
                              [line.variant_id for line in order.lines],
                              None if max_pending is None else f"{tenant}:{customer_uuid}:{vendor_uuid}")
        vendor = rows[0]
        _check_vendor(vendor, order)
        needs = _check_lines(rows, order)
        if max_pending is not None:
            await _check_pending(tx, customer_uuid, vendor_uuid, max_pending, when)
        prices = [_unit_price(r) for r in rows]
        totals_before = [money(p * line.quantity) for p, line in zip(prices, order.lines, strict=True)]
        subtotal = sum(totals_before, ZERO)
        minimum = vendor["minimum_order_value"]
        if minimum is not None and subtotal < minimum:
            raise Refusal(422, BELOW_MINIMUM_ORDER,
                          f"this vendor's minimum order is R{minimum}; this one is R{subtotal}",
                          "lines")

        promos = await promotion_store.load(tx, order.promo_codes, fields)
        paths = {}
        if any(p.categories for p in promos):
            paths = await promotion_store.category_paths(
                tx, (str(r["category_id"]) for r in rows if r["category_id"] is not None))
        priced = [PricedLine(str(r["product_id"]), paths.get(str(r["category_id"]), frozenset()),
                             line.quantity, price)
                  for r, line, price in zip(rows, order.lines, prices, strict=True)]
        applied = apply_promotions(promos, fields, priced, vendor_id=order.vendor_id, now=when)
        line_discounts = [sum((a.line_discounts[i] for a in applied), ZERO) for i in range(len(rows))]
        fee = delivery_fee(vendor["distance_m"], settings)
        totals = order_totals(totals_before, line_discounts, fee, settings)

        await promotion_store.claim(tx, applied, fields, customer_id=order.customer_id)
        metadata = {"distance_m": round(vendor["distance_m"]), "prices_include_vat": settings.prices_include_vat,
                    "vat_rate": str(settings.vat_rate), "placed_by": actor}
        if any(COLD_CHAIN_TAG in (r["tags"] or ()) for r in rows):
            metadata["needs_cold_storage"] = True   # the matcher offers it to cold-storage vehicles only
        placed = await tx.fetchrow(
            INSERT_ORDER_SQL, customer_uuid, vendor_uuid, totals.subtotal,
            totals.tax, totals.delivery_fee, totals.discount, totals.total, order.payment_method,
            json.dumps(order.delivery_address), order.delivery_lat, order.delivery_lng, order.notes,
            json.dumps(metadata))
        order_id = placed["id"]
        await tx.execute(
            INSERT_ITEMS_SQL, order_id, [r["product_id"] for r in rows],
            [r["variant_id"] for r in rows], [line.quantity for line in order.lines], prices,
            totals_before, line_discounts, list(totals.line_tax), [_name(r) for r in rows])
        await promotion_store.record(tx, order_id, applied)
        placed_order = LockedOrder(order_id, placed["order_number"], OrderStatus.PENDING,
                                   order.customer_id, order.vendor_id, order.payment_method,
                                   "pending", totals.total, metadata)
        await record_placed(tx, tenant, placed_order, at=when, actor=actor,
                            extra={"total_amount": str(totals.total),
                                   "payment_method": order.payment_method})
        view = await order_view(tx, order_id)
        # last, so the hot stock rows stay locked for as short a time as possible
        await reservations.reserve(tx, order_id, needs, when + timedelta(seconds=reservation_ttl_s))
        if idempotency is not None:
            await idem.finish(tx, idempotency, view)
    ORDERS_PLACED.inc()
    await forget_cached(cache, tenant, None, (str(r["product_id"]) for r in rows))
    return view
