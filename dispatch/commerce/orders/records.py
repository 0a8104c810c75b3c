"""What an order transition writes, on the caller's tenant transaction.

One transition is: the order row locked (``FOR UPDATE``), the pure ``lifecycle.next_status``
checked, ``orders.status`` updated, one ``order_status_history`` row (who made it), one
``order_events_outbox`` row and a ``NOTIFY`` on ``wakala_order_outbox`` that wakes the outbox
relays when the transaction commits (``dispatch.deliveries.outbox``, topic ``order-events``).
The event exists if and only if the transition committed. After commit, ``forget_cached``
drops the order's cached view and the stock entries of the products it touched.

Lock order everywhere: (delivery row,) order row, promotion rows by id, inventory rows by id.

``on_delivery_changed_order`` is the hook ``dispatch.deliveries.store.transition`` calls in
its own transaction when a delivery moves the order (dispatched, picked up, delivered,
failed, cancelled): it settles the order's stock, gives back promotion uses and owes a
refund where that applies, and writes the order event.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from dispatch.commerce import promotion_store, reservations
from dispatch.commerce.orders.lifecycle import (
    DELIVERY_ACTIONS,
    RELEASING_STATUSES,
    OrderAction,
    OrderNotFound,
    OrderStatus,
    next_status,
)
from dispatch.core.cache import Cache
from dispatch.core.ids import InvalidId, parse_uuid

__all__ = [
    "INSERT_ORDER_HISTORY_SQL",
    "ORDER_OUTBOX_CHANNEL",
    "LockedOrder",
    "as_user_id",
    "change_status",
    "clock",
    "forget_cached",
    "give_back",
    "lock_order",
    "locked_order",
    "on_delivery_changed_order",
    "order_view",
    "owe_refund",
    "record_placed",
    "refund_return",
    "view_from_row",
    "write_event",
]

ORDER_OUTBOX_CHANNEL = "wakala_order_outbox"

LOCK_ORDER_SQL = """
SELECT id, order_number, status, customer_id, vendor_id, payment_method, payment_status,
       total_amount, metadata
FROM orders WHERE id = $1 FOR UPDATE
"""
SET_PAYMENT_STATUS_SQL = "UPDATE orders SET payment_status = $2, updated_at = now() WHERE id = $1"
# changed_by references users: an actor that is a user's id goes there; any other actor
# (a driver id, "system:matcher", ...) is kept as text in metadata instead.
_ACTOR_USER = "actor_user AS (SELECT id FROM users WHERE id = $5::uuid)"
_HISTORY_ROW = """
INSERT INTO order_status_history (order_id, from_status, to_status, reason, changed_by, metadata)
SELECT $1::uuid, $2::text, $3::text, $4::text, (SELECT id FROM actor_user),
       CASE WHEN $6::text IS NOT NULL AND NOT EXISTS (SELECT 1 FROM actor_user)
            THEN $7::jsonb || jsonb_build_object('actor', $6::text)
            ELSE $7::jsonb
       END
"""
INSERT_ORDER_HISTORY_SQL = f"WITH {_ACTOR_USER}{_HISTORY_ROW}"
# The event and the wake-up of the relays in one round trip; NOTIFY is delivered on commit.
INSERT_EVENT_SQL = """
WITH event AS (
    INSERT INTO order_events_outbox (order_id, event_type, payload) VALUES ($1, $2, $3::jsonb)
    RETURNING id
)
SELECT pg_notify('wakala_order_outbox', $4::text) FROM event
"""
# A status change, its history row, its event and the relays' wake-up in one round trip (the
# statements above, as data-modifying CTEs: they run once each, whether or not the final
# SELECT reads them). Without the UPDATE (``PLACED_SQL``) it records an order's first status;
# with the stock hold too (``reservations.HOLD_UPDATE``) it records a payment or an acceptance.
_HISTORY_AND_EVENT = f"""
{_ACTOR_USER},
history AS ({_HISTORY_ROW}),
event AS (
    INSERT INTO order_events_outbox (order_id, event_type, payload) VALUES ($1, $8, $9::jsonb)
    RETURNING id
)
SELECT pg_notify('wakala_order_outbox', $10::text) FROM event
"""  # noqa: S608 - constant text, no input
_MOVED = """
moved AS (
    UPDATE orders SET status = $3, payment_status = coalesce($11, payment_status), updated_at = now()
    WHERE id = $1
),"""
PLACED_SQL = "WITH" + _HISTORY_AND_EVENT
CHANGE_STATUS_SQL = "WITH" + _MOVED + _HISTORY_AND_EVENT
CHANGE_STATUS_AND_HOLD_SQL = f"WITH held AS ({reservations.HOLD_UPDATE})," + _MOVED + _HISTORY_AND_EVENT
# What was paid and not yet refunded is owed back, against the latest successful payment.
REFUND_BALANCE_SQL = """
WITH paid AS (
    SELECT coalesce(sum(amount), 0) AS amount,
           (array_agg(id ORDER BY created_at DESC, id))[1] AS payment_id
    FROM payments WHERE order_id = $1 AND status = 'succeeded'
), refunded AS (
    SELECT coalesce(sum(amount), 0) AS amount FROM refunds WHERE order_id = $1
)
INSERT INTO refunds (order_id, payment_id, amount, method, reason)
SELECT $1, paid.payment_id, paid.amount - refunded.amount, $2, $3 FROM paid, refunded
WHERE paid.amount > refunded.amount
RETURNING amount
"""
INSERT_REFUND_SQL = """
INSERT INTO refunds (order_id, payment_id, return_id, amount, method, reason)
SELECT $1, (SELECT id FROM payments WHERE order_id = $1 AND status = 'succeeded'
            ORDER BY created_at DESC, id LIMIT 1),
       $2, $3, $4, $5
"""
# The order as the API shows it, in one round trip; money leaves Postgres as text so it
# never passes through a float.
VIEW_SQL = """
SELECT o.id, o.order_number, o.status, o.customer_id, o.vendor_id, o.payment_method,
       o.payment_status, o.currency, o.subtotal, o.discount_amount, o.tax_amount, o.delivery_fee,
       o.total_amount, o.delivery_address, ST_Y(o.delivery_location::geometry) AS lat,
       ST_X(o.delivery_location::geometry) AS lng, o.notes, o.created_at, o.updated_at,
       (SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'product_id', oi.product_id, 'variant_id', oi.variant_id,
                   'name', oi.metadata->>'name', 'quantity', oi.quantity,
                   'unit_price', oi.unit_price::text, 'line_total', oi.total_price::text,
                   'discount_amount', oi.discount_amount::text, 'tax_amount', oi.tax_amount::text)
               ORDER BY (oi.metadata->>'line')::int), '[]'::jsonb)
        FROM order_items oi WHERE oi.order_id = o.id) AS lines,
       (SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'promotion_id', p.id, 'code', p.code,
                   'discount_amount', op.discount_amount::text) ORDER BY p.code), '[]'::jsonb)
        FROM order_promotions op JOIN promotions p ON p.id = op.promotion_id
        WHERE op.order_id = o.id) AS promotions,
       (SELECT d.id FROM deliveries d WHERE d.order_id = o.id
        ORDER BY d.created_at DESC, d.id LIMIT 1) AS delivery_id
FROM orders o
WHERE o.id = ANY($1::uuid[])
ORDER BY o.created_at DESC, o.id
"""


def as_user_id(actor: str | None) -> uuid.UUID | None:
    """The actor as a users.id candidate (a UUID), or None: an actor that is not an id
    (``system:reservation-sweeper``, ``gateway:ozow``) is kept as text, never refused."""
    if actor is None:
        return None
    try:
        return parse_uuid(actor, "actor")
    except InvalidId:
        return None


def clock(now: datetime | None) -> datetime:
    """``now`` (a caller's clock, in tests) or the wall clock; a naive datetime is refused."""
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now


async def forget_cached(cache: Cache | None, tenant: str, order_id: uuid.UUID | None,
                        products: Iterable[str]) -> None:
    """After commit: drop the order's cached view (``order:{id}``) and the stock entries of
    the products whose stock changed (``inventory:{product}``)."""
    if cache is not None:
        tags = [f"inventory:{p}" for p in products]
        if order_id is not None:
            tags.append(f"order:{order_id}")
        await cache.invalidate(tenant, tags)


@dataclass(frozen=True)
class LockedOrder:
    id: uuid.UUID
    number: str
    status: OrderStatus
    customer_id: str
    vendor_id: str
    payment_method: str | None
    payment_status: str | None
    total_amount: Decimal
    metadata: dict[str, Any]


async def lock_order(tx: asyncpg.Connection, order_id: uuid.UUID, *, customer_id: str | None = None,
                     vendor_id: str | None = None) -> LockedOrder:
    """Lock the order row; OrderNotFound unless it exists and is this customer's/vendor's."""
    row = await tx.fetchrow(LOCK_ORDER_SQL, order_id)
    if (row is None or (customer_id is not None and str(row["customer_id"]) != customer_id)
            or (vendor_id is not None and str(row["vendor_id"]) != vendor_id)):
        raise OrderNotFound(order_id)
    return locked_order(row)


def locked_order(row: asyncpg.Record) -> LockedOrder:
    """A ``LockedOrder`` from a row with ``LOCK_ORDER_SQL``'s columns."""
    meta = row["metadata"]
    return LockedOrder(
        id=row["id"], number=row["order_number"], status=OrderStatus(row["status"]),
        customer_id=str(row["customer_id"]), vendor_id=str(row["vendor_id"]),
        payment_method=row["payment_method"], payment_status=row["payment_status"],
        total_amount=row["total_amount"],
        metadata=json.loads(meta) if isinstance(meta, str) else dict(meta or {}),
    )


def _event_payload(order: LockedOrder, event: str, from_status: str | None, to_status: str,
                   at: datetime, actor: str | None, reason: str | None,
                   extra: dict[str, Any] | None) -> str:
    return json.dumps({
        "order_id": str(order.id), "order_number": order.number, "event": event,
        "from_status": from_status, "to_status": to_status, "customer_id": order.customer_id,
        "vendor_id": order.vendor_id, "at": at.isoformat(), "actor": actor, "reason": reason,
        **(extra or {}),
    })


async def write_event(tx: asyncpg.Connection, tenant_id: object, order: LockedOrder, event: str, *,
                      from_status: str | None, to_status: str, at: datetime, actor: str | None,
                      reason: str | None, extra: dict[str, Any] | None = None) -> None:
    """One ``order_events_outbox`` row (published to ``order-events`` after commit)."""
    await tx.execute(INSERT_EVENT_SQL, order.id, event,
                     _event_payload(order, event, from_status, to_status, at, actor, reason, extra),
                     str(tenant_id))


async def record_placed(tx: asyncpg.Connection, tenant_id: object, order: LockedOrder, *, at: datetime,
                        actor: str | None, extra: dict[str, Any] | None = None) -> None:
    """A new order's first history row and its ``place`` event, in one round trip."""
    status = order.status.value
    await tx.execute(PLACED_SQL, order.id, None, status, None, as_user_id(actor), actor,
                     json.dumps({"event": "place"}), "place",
                     _event_payload(order, "place", None, status, at, actor, None, extra), str(tenant_id))


async def change_status(tx: asyncpg.Connection, tenant_id: object, order: LockedOrder,
                        action: OrderAction, *, actor: str | None, reason: str | None, at: datetime,
                        payment_status: str | None = None,
                        extra: dict[str, Any] | None = None, hold_stock: bool = False) -> OrderStatus:
    """Move a locked order by ``action``: status, history, event (and, with ``hold_stock``,
    ``reservations.HOLD_UPDATE``), in one round trip. IllegalOrderTransition (with nothing written)
    when the table does not allow it."""
    target = next_status(order.status, action, payment_method=order.payment_method)
    await tx.execute(CHANGE_STATUS_AND_HOLD_SQL if hold_stock else CHANGE_STATUS_SQL,
                     order.id, order.status.value, target.value, reason,
                     as_user_id(actor), actor, json.dumps({"event": action.value, **(extra or {})}),
                     action.value,
                     _event_payload(order, action.value, order.status.value, target.value, at, actor,
                                    reason, extra),
                     str(tenant_id), payment_status)
    return target


async def owe_refund(tx: asyncpg.Connection, order: LockedOrder, reason: str) -> Decimal | None:
    """Record a refund of whatever was paid and not yet refunded; the amount, or None."""
    amount = await tx.fetchval(REFUND_BALANCE_SQL, order.id, order.payment_method, reason)
    if amount is not None:
        await tx.execute(SET_PAYMENT_STATUS_SQL, order.id, "refund_pending")
    return amount


async def refund_return(tx: asyncpg.Connection, order: LockedOrder, return_id: uuid.UUID,
                        amount: Decimal, reason: str) -> None:
    """Record the refund of returned goods (nothing for a zero amount)."""
    if amount > 0:
        await tx.execute(INSERT_REFUND_SQL, order.id, return_id, amount, order.payment_method, reason)
        await tx.execute(SET_PAYMENT_STATUS_SQL, order.id, "refund_pending")


async def give_back(tx: asyncpg.Connection, order: LockedOrder, at: datetime, *,
                    expired: bool = False) -> list[str]:
    """Release what an order held (promotion uses, then stock, in lock order); the products
    whose stock changed."""
    await promotion_store.release(tx, order.id)
    return await reservations.release(tx, order.id, at, expired=expired)


async def on_delivery_changed_order(
    tx: asyncpg.Connection, tenant_id: object, order_id: uuid.UUID, *, from_status: str,
    to_status: str, delivery_id: uuid.UUID, picked_up: bool, at: datetime, actor: str | None,
    reason: str | None,
) -> list[str]:
    """The delivery side moved the order (in ``tx``, order row already locked); settle its
    stock and write its event. Returns the products whose stock changed.

    delivered: held stock sold. Failed or cancelled before pick-up: released; after pick-up:
    written off (see ``dispatch.commerce.reservations``). Cancelled: promotion uses given
    back. Failed or cancelled: whatever was paid is owed back.
    """
    order = await lock_order(tx, order_id)
    user = as_user_id(actor)
    products: list[str] = []
    if to_status == OrderStatus.DELIVERED:
        products = await reservations.sell(tx, order_id, at, user)
    elif to_status in (OrderStatus.FAILED, OrderStatus.CANCELLED):
        if picked_up:
            products = await reservations.write_off(tx, order_id, at, user)
        else:
            products = await reservations.release(tx, order_id, at)
        if to_status in RELEASING_STATUSES:
            await promotion_store.release(tx, order_id)
        await owe_refund(tx, order, f"delivery {to_status}")
    action = DELIVERY_ACTIONS.get(to_status)
    await write_event(tx, tenant_id, order, action.value if action else to_status,
                      from_status=from_status, to_status=to_status, at=at, actor=actor, reason=reason,
                      extra={"delivery_id": str(delivery_id)})
    return products


def view_from_row(row: asyncpg.Record) -> dict[str, Any]:
    """The order as the API returns it; money as decimal strings."""
    return {
        "id": str(row["id"]),
        "order_number": row["order_number"],
        "status": row["status"],
        "customer_id": str(row["customer_id"]),
        "vendor_id": str(row["vendor_id"]),
        "lines": json.loads(row["lines"]),
        "subtotal": str(row["subtotal"]),
        "discount_amount": str(row["discount_amount"]),
        "tax_amount": str(row["tax_amount"]),
        "delivery_fee": str(row["delivery_fee"]),
        "total_amount": str(row["total_amount"]),
        "currency": row["currency"],
        "payment_method": row["payment_method"],
        "payment_status": row["payment_status"],
        "promotions": json.loads(row["promotions"]),
        "delivery_address": json.loads(row["delivery_address"]),
        "delivery_location": {"lat": row["lat"], "lng": row["lng"]},
        "notes": row["notes"],
        "delivery_id": None if row["delivery_id"] is None else str(row["delivery_id"]),
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }


async def order_view(tx: asyncpg.Connection, order_id: uuid.UUID) -> dict[str, Any] | None:
    row = await tx.fetchrow(VIEW_SQL, [order_id])
    return None if row is None else view_from_row(row)
