"""Orders: the Python API the REST layer calls (issue 5). Every write is one tenant transaction.

``place_order`` reads products, variants and prices from the database (never from the
client), enforces the vendor's ``minimum_order_value`` (on the goods subtotal, before
discounts) and ``delivery_radius`` (PostGIS distance from the vendor to the delivery point),
applies promotions (``dispatch.promotions``), computes VAT and the distance-based delivery
fee (``dispatch.pricing``) and, in one transaction, claims the promotion uses, inserts the
order (number ``WK-000123`` from the tenant's sequence), its items, its promotions, its first
history row and its ``place`` event, and reserves its stock (``dispatch.reservations``).
A refusal at any step writes nothing.

Then (``dispatch.order_state`` has the table): ``record_payment`` (``dispatch.payments``),
``vendor_decision``, ``mark_ready`` (creates the delivery and its ``created`` event in the
same transaction, so the matcher hears of it), ``cancel_order``, ``return_order``; the
delivery side takes the order from ``ready`` to ``delivered``
(``dispatch.order_records.on_delivery_changed_order``). Reservations of orders still
``pending`` expire (default 15 minutes): ``release_expired_reservations`` cancels those
orders and gives their stock back; ``run_reservation_sweeper`` does it forever.

Every transition writes ``order_status_history`` (who) and an ``order_events_outbox`` row
that the outbox relay publishes to ``order-events``. With a ``cache``, the order's entry
(``order:{id}``) and the stock entries of the products it touched (``inventory:{product}``)
are invalidated after commit; ``get_order`` reads through the cache.

Errors: ``OrderRejected`` (``status``, ``reason``, ``field``, ``message``), ``OrderNotFound``
(404: absent, or not this customer's or vendor's), ``IllegalOrderTransition`` (409).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from dispatch.commerce import promotions, reservations
from dispatch.commerce.orders.input import (
    NewOrder,
    OrderLine,
    parse_lines,
    parse_new_order,
    parse_uuid,
    recheck,
)
from dispatch.commerce.orders.lifecycle import (
    CASH,
    IllegalOrderTransition,
    OrderAction,
    OrderNotFound,
    OrderRejected,
    OrderStatus,
    next_status,
)
from dispatch.commerce.orders.payments import record_payment
from dispatch.commerce.orders.records import (
    INSERT_ORDER_HISTORY_SQL,
    VIEW_SQL,
    LockedOrder,
    as_user_id,
    change_status,
    give_back,
    lock_order,
    order_view,
    owe_refund,
    refund_return,
    view_from_row,
    write_event,
)
from dispatch.commerce.pricing import (
    ZERO,
    PricingSettings,
    delivery_fee,
    money,
    order_totals,
    refund_share,
)
from dispatch.commerce.promotions import PricedLine
from dispatch.core.cache import TTL, Cache, order_key
from dispatch.deliveries.store import insert_delivery
from schema.db import TenantDatabase
from schema.tenants import parse_tenant_id

__all__ = [
    "COLD_CHAIN_TAG",
    "IllegalOrderTransition",
    "NewOrder",
    "OrderLine",
    "OrderNotFound",
    "OrderRejected",
    "OrderStatus",
    "cancel_order",
    "get_order",
    "list_orders",
    "mark_ready",
    "parse_lines",
    "parse_new_order",
    "place_order",
    "record_payment",
    "release_expired_reservations",
    "return_order",
    "run_reservation_sweeper",
    "vendor_decision",
]

log = logging.getLogger(__name__)

SWEEPER_ACTOR = "system:reservation-sweeper"
STATUSES = tuple(s.value for s in OrderStatus)
MAX_REASON = 500
MAX_LIST = 200

# The vendor, the distance to the delivery point and the customer, in one round trip.
VENDOR_SQL = """
SELECT v.status, v.minimum_order_value, coalesce(v.delivery_radius, 5000) AS radius_m,
       coalesce(v.payment_methods, '["cash"]'::jsonb) AS payment_methods,
       ST_Distance(v.location, ST_SetSRID(ST_MakePoint($3, $2), 4326)::geography) AS distance_m,
       (SELECT coalesce(c.status, 'active') FROM customers c WHERE c.id = $4) AS customer_status
FROM vendors v WHERE v.id = $1
"""
# Each line's product, variant and stock row (unlocked: a pre-check; the authority is the
# locked check in reservations.reserve). Orders draw on the product's (variant's) stock row
# without a location first, else the oldest.
# A product tagged so (milk, frozen chicken) travels in a vehicle with cold storage: an order
# holding one gets ``metadata.needs_cold_storage``, which the matcher filters on.
COLD_CHAIN_TAG = "cold_chain"
LINES_SQL = """
SELECT l.idx, p.id AS product_id, p.vendor_id, p.status, p.name, p.price, p.category_id, p.tags,
       l.variant_id AS wanted_variant, v.id AS variant_id, v.status AS variant_status,
       v.name AS variant_name, v.price AS variant_price, s.id AS inventory_id, s.available
FROM unnest($1::uuid[], $2::uuid[]) WITH ORDINALITY AS l(product_id, variant_id, idx)
LEFT JOIN products p ON p.id = l.product_id
LEFT JOIN product_variants v ON v.id = l.variant_id AND v.product_id = l.product_id
LEFT JOIN LATERAL (
    SELECT i.id, i.quantity - i.reserved_quantity AS available
    FROM inventory i
    WHERE i.product_id = l.product_id AND i.variant_id IS NOT DISTINCT FROM l.variant_id
    ORDER BY i.location_id IS NOT NULL, i.id
    LIMIT 1
) s ON true
ORDER BY l.idx
"""
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
LIST_IDS_SQL = """
SELECT id FROM orders
WHERE ($1::uuid IS NULL OR vendor_id = $1) AND ($2::uuid IS NULL OR customer_id = $2)
  AND ($3::text IS NULL OR status = $3)
ORDER BY created_at DESC, id
LIMIT $4
"""
READY_SQL = """
SELECT ST_Y(v.location::geometry) AS vendor_lat, ST_X(v.location::geometry) AS vendor_lng,
       v.address AS vendor_address, ST_Y(o.delivery_location::geometry) AS lat,
       ST_X(o.delivery_location::geometry) AS lng, o.delivery_address,
       round(ST_Distance(v.location, o.delivery_location))::int AS distance_m
FROM orders o JOIN vendors v ON v.id = o.vendor_id
WHERE o.id = $1
"""
# Per item: what it cost, how much has come back already, and the stock row it was sold from.
RETURNABLE_SQL = """
SELECT oi.product_id, oi.variant_id, oi.quantity, oi.total_price, oi.discount_amount,
       oi.tax_amount,
       coalesce(
           (SELECT r.inventory_id FROM inventory_reservations r JOIN inventory i ON i.id = r.inventory_id
            WHERE r.order_id = oi.order_id AND r.status = 'converted' AND i.product_id = oi.product_id
              AND i.variant_id IS NOT DISTINCT FROM oi.variant_id
            LIMIT 1),
           (SELECT i.id FROM inventory i
            WHERE i.product_id = oi.product_id AND i.variant_id IS NOT DISTINCT FROM oi.variant_id
            ORDER BY i.location_id IS NOT NULL, i.id LIMIT 1)) AS inventory_id,
       coalesce((SELECT sum((item->>'quantity')::int)
                 FROM returns rt, jsonb_array_elements(rt.items) AS item
                 WHERE rt.order_id = oi.order_id AND item->>'product_id' = oi.product_id::text
                   AND (item->>'variant_id') IS NOT DISTINCT FROM oi.variant_id::text), 0)::int
           AS returned
FROM order_items oi
WHERE oi.order_id = $1
ORDER BY (oi.metadata->>'line')::int
"""
INSERT_RETURN_SQL = """
INSERT INTO returns (order_id, return_number, status, reason, description, refund_amount,
                     refund_method, items, processed_by, processed_at)
SELECT $1, $2 || '-R' || (count(*) + 1), 'restocked', $3, $4, $5, $6, $7::jsonb,
       (SELECT id FROM users WHERE id = $8::uuid), now()
FROM returns WHERE order_id = $1
RETURNING id, return_number
"""
# Only pending orders expire (paid and accepted ones hold their stock until fulfilment).
EXPIRED_ORDERS_SQL = """
SELECT DISTINCT r.order_id FROM inventory_reservations r JOIN orders o ON o.id = r.order_id
WHERE r.status = 'active' AND r.expires_at <= $1 AND o.status = 'pending'
LIMIT $2
"""
HELD_SQL = """
SELECT count(*) AS held, count(*) FILTER (WHERE expires_at <= $2) AS expired
FROM inventory_reservations WHERE order_id = $1 AND status = 'active'
"""

_pricing: PricingSettings | None = None


def _default_pricing() -> PricingSettings:
    global _pricing
    if _pricing is None:
        _pricing = PricingSettings.from_env()
    return _pricing


def _order_id(value: object) -> uuid.UUID:
    """An order id, or OrderNotFound: a malformed id names no order anyone has."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise OrderNotFound(value) from None


def _owner(value: object | None, field: str) -> str | None:
    return None if value is None else parse_uuid(value, field)


def _reason(reason: object, *, required: bool) -> str | None:
    if reason is None and not required:
        return None
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
        raise OrderRejected(422, "missing_field", f"reason (1-{MAX_REASON} characters) is required",
                            "reason")
    return reason.strip()


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now


async def _invalidate(cache: Cache | None, tenant: str, order_id: uuid.UUID | None,
                      products: Iterable[str]) -> None:
    if cache is not None:
        tags = [f"inventory:{p}" for p in products]
        if order_id is not None:
            tags.append(f"order:{order_id}")
        await cache.invalidate(tenant, tags)


# -- placing an order --------------------------------------------------------------------------


def _check_vendor(vendor: asyncpg.Record | None, order: NewOrder) -> None:
    if vendor is None:
        raise OrderRejected(422, "unknown_vendor", f"no vendor {order.vendor_id}", "vendor_id")
    if vendor["status"] not in (None, "active"):
        raise OrderRejected(422, "vendor_unavailable", "this vendor is not taking orders", "vendor_id")
    if vendor["distance_m"] is None:
        raise OrderRejected(422, "vendor_unavailable", "this vendor has no location set", "vendor_id")
    if vendor["customer_status"] is None:
        raise OrderRejected(422, "unknown_customer", f"no customer {order.customer_id}", "customer_id")
    if vendor["customer_status"] != "active":
        raise OrderRejected(422, "customer_unavailable", "this customer cannot order", "customer_id")
    if vendor["distance_m"] > vendor["radius_m"]:
        raise OrderRejected(
            422, "outside_delivery_radius",
            f"the delivery point is {vendor['distance_m'] / 1000:.1f} km from the vendor, who "
            f"delivers up to {vendor['radius_m'] / 1000:.1f} km", "delivery_lat")
    methods = json.loads(vendor["payment_methods"])
    accepted = [str(m) for m in methods] if isinstance(methods, list) else [CASH]
    if order.payment_method not in accepted:
        raise OrderRejected(422, "payment_method_not_accepted",
                            f"this vendor takes {', '.join(accepted)}", "payment_method")


def _check_lines(rows: Sequence[asyncpg.Record], order: NewOrder) -> list[reservations.StockNeed]:
    """Refuse a line that is not for sale here or (by the unlocked pre-check) not in stock."""
    needs = []
    for row, line in zip(rows, order.lines, strict=True):
        i = row["idx"] - 1
        where = f"lines[{i}]"
        if row["product_id"] is None:
            raise OrderRejected(422, "unknown_product", f"no product {line.product_id}",
                                f"{where}.product_id")
        if str(row["vendor_id"]) != order.vendor_id:
            raise OrderRejected(422, "product_of_another_vendor",
                                f"product {line.product_id} is not sold by this vendor",
                                f"{where}.product_id")
        if row["status"] != "active":
            raise OrderRejected(422, "product_unavailable", f"product {line.product_id} is not for sale",
                                f"{where}.product_id")
        if row["wanted_variant"] is not None:
            if row["variant_id"] is None:
                raise OrderRejected(422, "unknown_variant",
                                    f"product {line.product_id} has no variant {line.variant_id}",
                                    f"{where}.variant_id")
            if row["variant_status"] not in (None, "active"):
                raise OrderRejected(422, "product_unavailable",
                                    f"variant {line.variant_id} is not for sale", f"{where}.variant_id")
        if row["inventory_id"] is None or row["available"] < line.quantity:
            raise reservations.out_of_stock(i, row["available"] or 0, line.quantity)
        needs.append(reservations.StockNeed(row["inventory_id"], line.quantity, i))
    return needs


def _unit_price(row: asyncpg.Record) -> Decimal:
    return money(row["variant_price"] if row["variant_price"] is not None else row["price"])


def _name(row: asyncpg.Record) -> str:
    return row["name"] if row["variant_name"] is None else f"{row['name']} ({row['variant_name']})"


async def place_order(
    db: TenantDatabase, tenant_id: object, order: NewOrder, *, actor: str,
    cache: Cache | None = None, reservation_ttl_s: int = 900, now: datetime | None = None,
    pricing: PricingSettings | None = None,
) -> dict[str, Any]:
    """Place ``order`` (see the module docstring); returns the order view.

    The view: ``id, order_number, status, customer_id, vendor_id, lines`` (``product_id,
    variant_id, name, quantity, unit_price, line_total, discount_amount, tax_amount``),
    ``subtotal, discount_amount, tax_amount, delivery_fee, total_amount`` (decimal strings),
    ``currency, payment_method, payment_status, promotions`` (``promotion_id, code,
    discount_amount``), ``delivery_address, delivery_location, notes, delivery_id,
    created_at, updated_at`` — the same as ``get_order``.

    Refusals (nothing written): OrderRejected 422 (the input: see
    ``dispatch.order_input``; ``unknown_vendor``, ``vendor_unavailable``, ``unknown_customer``,
    ``outside_delivery_radius``, ``payment_method_not_accepted``, ``unknown_product``,
    ``product_of_another_vendor``, ``product_unavailable``, ``unknown_variant``,
    ``below_minimum_order``, ``invalid_promotion``) or 409 ``out_of_stock`` naming the line.
    ``now`` (tests) is the clock for promotion windows and the reservation's expiry.
    """
    order = recheck(order)
    if type(reservation_ttl_s) is not int or not 1 <= reservation_ttl_s <= 86_400:
        raise ValueError("reservation_ttl_s must be an int from 1 to 86400")
    when = _now(now)
    settings = pricing or _default_pricing()
    tenant = str(parse_tenant_id(tenant_id))
    fields = [f"promo_codes[{i}]" for i in range(len(order.promo_codes))]
    async with db.tenant_transaction(tenant) as tx:
        vendor = await tx.fetchrow(VENDOR_SQL, uuid.UUID(order.vendor_id), order.delivery_lat,
                                   order.delivery_lng, uuid.UUID(order.customer_id))
        _check_vendor(vendor, order)
        rows = await tx.fetch(LINES_SQL, [line.product_id for line in order.lines],
                              [line.variant_id for line in order.lines])
        needs = _check_lines(rows, order)
        prices = [_unit_price(r) for r in rows]
        totals_before = [money(p * line.quantity) for p, line in zip(prices, order.lines, strict=True)]
        subtotal = sum(totals_before, ZERO)
        minimum = vendor["minimum_order_value"]
        if minimum is not None and subtotal < minimum:
            raise OrderRejected(422, "below_minimum_order",
                                f"this vendor's minimum order is R{minimum}; this one is R{subtotal}",
                                "lines")

        promos = await promotions.load(tx, order.promo_codes, fields)
        paths = {}
        if any(p.categories for p in promos):
            paths = await promotions.category_paths(tx, (str(r["category_id"]) for r in rows
                                                         if r["category_id"] is not None))
        priced = [PricedLine(str(r["product_id"]), paths.get(str(r["category_id"]), frozenset()),
                             line.quantity, price)
                  for r, line, price in zip(rows, order.lines, prices, strict=True)]
        applied = promotions.apply_promotions(promos, fields, priced, vendor_id=order.vendor_id,
                                              now=when)
        line_discounts = [sum((a.line_discounts[i] for a in applied), ZERO) for i in range(len(rows))]
        fee = delivery_fee(vendor["distance_m"], settings)
        totals = order_totals(totals_before, line_discounts, fee, settings)

        await promotions.claim(tx, applied, fields, customer_id=order.customer_id)
        metadata = {"distance_m": round(vendor["distance_m"]), "prices_include_vat": settings.prices_include_vat,
                    "vat_rate": str(settings.vat_rate), "placed_by": actor}
        if any(COLD_CHAIN_TAG in (r["tags"] or ()) for r in rows):
            metadata["needs_cold_storage"] = True   # the matcher offers it to cold-storage vehicles only
        placed = await tx.fetchrow(
            INSERT_ORDER_SQL, uuid.UUID(order.customer_id), uuid.UUID(order.vendor_id), totals.subtotal,
            totals.tax, totals.delivery_fee, totals.discount, totals.total, order.payment_method,
            json.dumps(order.delivery_address), order.delivery_lat, order.delivery_lng, order.notes,
            json.dumps(metadata))
        order_id = placed["id"]
        await tx.execute(
            INSERT_ITEMS_SQL, order_id, [r["product_id"] for r in rows],
            [r["variant_id"] for r in rows], [line.quantity for line in order.lines], prices,
            totals_before, line_discounts, list(totals.line_tax), [_name(r) for r in rows])
        await promotions.record(tx, order_id, applied)
        await tx.execute(INSERT_ORDER_HISTORY_SQL, order_id, None, OrderStatus.PENDING.value, None,
                         as_user_id(actor), actor, json.dumps({"event": "place"}))
        placed_order = LockedOrder(order_id, placed["order_number"], OrderStatus.PENDING,
                                   order.customer_id, order.vendor_id, order.payment_method,
                                   "pending", totals.total, metadata)
        await write_event(tx, tenant, placed_order, "place", from_status=None,
                          to_status=OrderStatus.PENDING.value, at=when, actor=actor, reason=None,
                          extra={"total_amount": str(totals.total),
                                 "payment_method": order.payment_method})
        view = await order_view(tx, order_id)
        # last, so the hot stock rows stay locked for as short a time as possible
        await reservations.reserve(tx, order_id, needs, when + timedelta(seconds=reservation_ttl_s))
    await _invalidate(cache, tenant, None, (str(r["product_id"]) for r in rows))
    return view


# -- reading -----------------------------------------------------------------------------------


async def get_order(db: TenantDatabase, tenant_id: object, order_id: object, *,
                    customer_id: object | None = None, vendor_id: object | None = None,
                    cache: Cache | None = None) -> dict[str, Any]:
    """The order view (as ``place_order`` returns it); OrderNotFound when absent or not this
    customer's (``customer_id``) or vendor's (``vendor_id``)."""
    oid = _order_id(order_id)
    customer, vendor = _owner(customer_id, "customer_id"), _owner(vendor_id, "vendor_id")
    tenant = str(parse_tenant_id(tenant_id))

    async def load() -> dict[str, Any] | None:
        async with db.tenant_transaction(tenant, readonly=True) as tx:
            return await order_view(tx, oid)

    if cache is None:
        view = await load()
    else:
        view = await cache.get_or_set(tenant, order_key(tenant, str(oid)), load, TTL["order"],
                                      tags=[f"order:{oid}"])
    if (view is None or (customer is not None and view["customer_id"] != customer)
            or (vendor is not None and view["vendor_id"] != vendor)):
        raise OrderNotFound(oid)
    return view


async def list_orders(db: TenantDatabase, tenant_id: object, *, vendor_id: object | None = None,
                      customer_id: object | None = None, status: str | None = None,
                      limit: int = 50) -> list[dict[str, Any]]:
    """Orders, newest first, filtered by vendor, customer and status; at most ``limit`` (1-200)."""
    vendor, customer = _owner(vendor_id, "vendor_id"), _owner(customer_id, "customer_id")
    if status is not None and status not in STATUSES:
        raise OrderRejected(422, "invalid_value",
                            f"status must be one of {', '.join(STATUSES)}, got {status!r}", "status")
    if type(limit) is not int or not 1 <= limit <= MAX_LIST:
        raise OrderRejected(422, "out_of_range", f"limit must be from 1 to {MAX_LIST}", "limit")
    async with db.tenant_transaction(parse_tenant_id(tenant_id), readonly=True) as tx:
        ids = [r["id"] for r in await tx.fetch(
            LIST_IDS_SQL, vendor and uuid.UUID(vendor), customer and uuid.UUID(customer), status, limit)]
        rows = await tx.fetch(VIEW_SQL, ids) if ids else []
    return [view_from_row(r) for r in rows]


# -- the vendor and the customer move the order ------------------------------------------------


async def vendor_decision(db: TenantDatabase, tenant_id: object, vendor_id: object, order_id: object, *,
                          accept: bool, actor: str, reason: str | None = None,
                          cache: Cache | None = None) -> dict[str, Any]:
    """The vendor accepts (paid orders, or pending cash-on-delivery ones) or rejects (with a
    ``reason``; stock and promotion uses given back, a refund owed if paid) an order."""
    oid, vendor = _order_id(order_id), parse_uuid(vendor_id, "vendor_id")
    if not isinstance(accept, bool):
        raise OrderRejected(422, "wrong_type", "accept must be true or false", "accept")
    why = _reason(reason, required=not accept)
    tenant = str(parse_tenant_id(tenant_id))
    at = datetime.now(UTC)
    products: list[str] = []
    async with db.tenant_transaction(tenant) as tx:
        order = await lock_order(tx, oid, vendor_id=vendor)
        if accept:
            await change_status(tx, tenant, order, OrderAction.ACCEPT, actor=actor, reason=why, at=at)
            await reservations.hold(tx, oid)
        else:
            await change_status(tx, tenant, order, OrderAction.REJECT, actor=actor, reason=why, at=at)
            products = await give_back(tx, order, at)
            await owe_refund(tx, order, f"rejected by the vendor: {why}")
        view = await order_view(tx, oid)
    await _invalidate(cache, tenant, oid, products)
    return view


async def mark_ready(db: TenantDatabase, tenant_id: object, vendor_id: object, order_id: object, *,
                     actor: str, cache: Cache | None = None) -> dict[str, Any]:
    """The vendor has packed an accepted order: it becomes ``ready`` and, in the same
    transaction, gets a delivery (pickup: the vendor; dropoff: the order's delivery point)
    whose ``created`` event hands it to the matcher. The view carries ``delivery_id``."""
    oid, vendor = _order_id(order_id), parse_uuid(vendor_id, "vendor_id")
    tenant = str(parse_tenant_id(tenant_id))
    at = datetime.now(UTC)
    async with db.tenant_transaction(tenant) as tx:
        order = await lock_order(tx, oid, vendor_id=vendor)
        next_status(order.status, OrderAction.MARK_READY, payment_method=order.payment_method)
        where = await tx.fetchrow(READY_SQL, oid)
        if where["vendor_lat"] is None or where["lat"] is None:
            raise OrderRejected(409, "vendor_unavailable", "the vendor or the order has no location",
                                "vendor_id")
        delivery_id = await insert_delivery(
            tx, tenant, oid, (where["vendor_lat"], where["vendor_lng"]), (where["lat"], where["lng"]),
            pickup_address=json.loads(where["vendor_address"]),
            dropoff_address=json.loads(where["delivery_address"]), distance_m=where["distance_m"])
        await change_status(tx, tenant, order, OrderAction.MARK_READY, actor=actor, reason=None, at=at,
                            extra={"delivery_id": str(delivery_id)})
        view = await order_view(tx, oid)
    await _invalidate(cache, tenant, oid, ())
    return view


async def cancel_order(db: TenantDatabase, tenant_id: object, order_id: object, *, actor: str,
                       reason: str, customer_id: object | None = None, vendor_id: object | None = None,
                       cache: Cache | None = None) -> dict[str, Any]:
    """Cancel before ``ready``, as the customer (``customer_id``), the vendor (``vendor_id``)
    or staff (neither): stock and promotion uses given back, a refund owed if paid."""
    oid = _order_id(order_id)
    customer, vendor = _owner(customer_id, "customer_id"), _owner(vendor_id, "vendor_id")
    why = _reason(reason, required=True)
    tenant = str(parse_tenant_id(tenant_id))
    at = datetime.now(UTC)
    by = "customer" if customer else "vendor" if vendor else "staff"
    async with db.tenant_transaction(tenant) as tx:
        order = await lock_order(tx, oid, customer_id=customer, vendor_id=vendor)
        await change_status(tx, tenant, order, OrderAction.CANCEL, actor=actor, reason=why, at=at,
                            extra={"by": by})
        products = await give_back(tx, order, at)
        await owe_refund(tx, order, f"cancelled by the {by}: {why}")
        view = await order_view(tx, oid)
    await _invalidate(cache, tenant, oid, products)
    return view


async def return_order(db: TenantDatabase, tenant_id: object, order_id: object, *, customer_id: object,
                       lines: tuple[OrderLine, ...] | None, reason: str, actor: str,
                       cache: Cache | None = None) -> dict[str, Any]:
    """The customer returns goods of a delivered order (``lines``: which and how many; None:
    everything not yet returned). The goods go back into stock (``return`` movements), a
    ``returns`` row and a refund are recorded; the order becomes ``returned`` once every unit
    is back. The refund is what the units cost after discounts (the delivery fee is not
    refunded). The view carries ``return`` (``id, return_number, refund_amount, items``)."""
    oid, customer = _order_id(order_id), parse_uuid(customer_id, "customer_id")
    why = _reason(reason, required=True)
    wanted = None if lines is None else parse_lines(
        [{"product_id": line.product_id, "variant_id": line.variant_id, "quantity": line.quantity}
         if isinstance(line, OrderLine) else line for line in lines]
        if isinstance(lines, list | tuple) else lines)
    tenant = str(parse_tenant_id(tenant_id))
    at = datetime.now(UTC)
    async with db.tenant_transaction(tenant) as tx:
        order = await lock_order(tx, oid, customer_id=customer)
        if order.status is not OrderStatus.DELIVERED:
            raise IllegalOrderTransition(order.status, OrderAction.RETURN)
        items = await tx.fetch(RETURNABLE_SQL, oid)
        by_line = {(str(i["product_id"]), None if i["variant_id"] is None else str(i["variant_id"])): i
                   for i in items}
        if wanted is None:
            back = [(i, i["quantity"] - i["returned"]) for i in items if i["quantity"] > i["returned"]]
        else:
            back = []
            for n, line in enumerate(wanted):
                item = by_line.get((line.product_id, line.variant_id))
                if item is None:
                    raise OrderRejected(422, "invalid_return_line", "this order has no such line",
                                        f"lines[{n}]")
                if line.quantity > item["quantity"] - item["returned"]:
                    raise OrderRejected(422, "out_of_range",
                                        f"{item['quantity'] - item['returned']} of this line can "
                                        "still be returned", f"lines[{n}].quantity")
                back.append((item, line.quantity))
        inclusive = order.metadata.get("prices_include_vat", True)
        refunds = [refund_share(i["total_price"] - i["discount_amount"]
                                + (ZERO if inclusive else i["tax_amount"]),
                                i["quantity"], i["returned"], q) for i, q in back]
        refund = sum(refunds, ZERO)
        returned_items = [{"product_id": str(i["product_id"]),
                           "variant_id": None if i["variant_id"] is None else str(i["variant_id"]),
                           "quantity": q, "refund_amount": str(r)}
                          for (i, q), r in zip(back, refunds, strict=True)]
        created = await tx.fetchrow(INSERT_RETURN_SQL, oid, order.number, why[:255], why, refund,
                                    order.payment_method, json.dumps(returned_items), as_user_id(actor))
        products = await reservations.restock(
            tx, created["id"], [(i["inventory_id"], q) for i, q in back if i["inventory_id"] is not None],
            as_user_id(actor))
        await refund_return(tx, order, created["id"], refund, f"return {created['return_number']}: {why}")
        now_back = {(i["product_id"], i["variant_id"]): q for i, q in back}
        everything_back = all(i["returned"] + now_back.get((i["product_id"], i["variant_id"]), 0)
                              >= i["quantity"] for i in items)
        extra = {"return_id": str(created["id"]), "return_number": created["return_number"],
                 "refund_amount": str(refund)}
        if everything_back:
            await change_status(tx, tenant, order, OrderAction.RETURN, actor=actor, reason=why, at=at,
                                extra=extra)
        else:
            await write_event(tx, tenant, order, "return_partial", from_status=order.status.value,
                              to_status=order.status.value, at=at, actor=actor, reason=why, extra=extra)
        view = await order_view(tx, oid)
    await _invalidate(cache, tenant, oid, products)
    view["return"] = {"id": str(created["id"]), "return_number": created["return_number"],
                      "refund_amount": str(refund), "items": returned_items}
    return view


# -- expiry --------------------------------------------------------------------------------------


async def release_expired_reservations(db: TenantDatabase, tenant_id: object, *,
                                       now: datetime | None = None, cache: Cache | None = None,
                                       batch: int = 500) -> int:
    """Cancel the ``pending`` orders whose reservations have run out (``expire``), giving back
    their stock and promotion uses; returns how many reservations were released. Each order
    is its own transaction; orders that moved on meanwhile (paid, accepted) are left alone.
    Reservations still in date are never touched."""
    when = _now(now)
    tenant = str(parse_tenant_id(tenant_id))
    async with db.tenant_transaction(tenant, readonly=True) as tx:
        due = [r["order_id"] for r in await tx.fetch(EXPIRED_ORDERS_SQL, when, batch)]
    released = 0
    for oid in due:
        async with db.tenant_transaction(tenant) as tx:
            order = await lock_order(tx, oid)
            held = await tx.fetchrow(HELD_SQL, oid, when)
            if order.status is not OrderStatus.PENDING or not held["expired"]:
                continue
            await change_status(tx, tenant, order, OrderAction.EXPIRE, actor=SWEEPER_ACTOR,
                                reason="the reservation expired before payment or acceptance", at=when)
            products = await give_back(tx, order, when, expired=True)
            released += held["held"]
        await _invalidate(cache, tenant, oid, products)
    return released


async def run_reservation_sweeper(
    db: TenantDatabase, tenant_ids_provider: Callable[[], Awaitable[Iterable[object]]],
    interval_s: float = 30, *, cache: Cache | None = None,
) -> None:
    """Release expired reservations of every tenant ``tenant_ids_provider()`` names, every
    ``interval_s``, until cancelled. A failing tenant is logged and retried next time."""
    while True:
        try:
            for tenant_id in await tenant_ids_provider():
                try:
                    released = await release_expired_reservations(db, tenant_id, cache=cache)
                    if released:
                        log.info("released %d expired reservations of tenant %s", released, tenant_id)
                except Exception:
                    log.exception("releasing expired reservations of tenant %s failed", tenant_id)
        except Exception:
            log.exception("listing tenants for the reservation sweeper failed")
        await asyncio.sleep(interval_s)
