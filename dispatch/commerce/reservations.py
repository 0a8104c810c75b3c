"""Stock held by orders: reserve, release, sell, write off, restock. SQL on the caller's transaction.

The CHECKs of 0002 hold at every commit: ``quantity >= 0`` and
``0 <= reserved_quantity <= quantity``. Placing an order raises ``reserved_quantity`` (one
``inventory_reservations`` row per line, with an expiry); what happens to it later:

=====================  ===================  =====================================  ============
what                   reservation becomes  inventory                              movement
=====================  ===================  =====================================  ============
cancel, reject,        ``released``         ``reserved_quantity -= q``             none
failed payment
reservation ran out    ``expired``          ``reserved_quantity -= q``             none
delivered              ``converted``        ``quantity -= q``, ``reserved -= q``   ``sale`` -q
delivery failed or     ``written_off``      ``quantity -= q``, ``reserved -= q``   ``delivery_failed`` -q
cancelled after pickup
return                 (stays converted)    ``quantity += q``                      ``return`` +q
=====================  ===================  =====================================  ============

A delivery that fails or is cancelled *before* pick-up releases the stock (the goods never
left the shop). After pick-up the goods are with the driver and may not come back whole, so
they leave the stock (``delivery_failed`` movement); when they are back on the shelf the
vendor restocks them. Stock is then at worst understated for a while, never oversold.

Movements are signed changes of ``quantity``. Rows are locked in inventory id order, after
the order row and any promotion rows, so concurrent orders never wait on each other in a
cycle.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from dispatch.core.errors import OUT_OF_STOCK, Refusal

__all__ = ["HOLD_UPDATE", "StockNeed", "out_of_stock", "release", "reserve", "restock", "sell",
           "write_off"]

LOCK_SQL = """
SELECT id, quantity, reserved_quantity FROM inventory WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE
"""
# ``reserve`` in one round trip: the stock rows locked in id order (the CTE's ORDER BY ... FOR
# UPDATE locks them as they come out of the sort, so in that order whatever plan joins it), then
# each line held only where its row, re-read after the lock, still has the units. The final
# SELECT answers every locked row's availability (for the refusal's message) and how many lines
# were held; fewer than asked means the caller refuses and its transaction rolls back.
LOCK_AND_RESERVE_SQL = """
WITH locked AS MATERIALIZED (
    SELECT id, quantity - reserved_quantity AS available
    FROM inventory WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE
), held AS (
    UPDATE inventory i SET reserved_quantity = i.reserved_quantity + n.q, updated_at = now()
    FROM unnest($1::uuid[], $2::int[]) AS n(id, q), locked l
    WHERE i.id = n.id AND l.id = n.id AND i.quantity - i.reserved_quantity >= n.q
    RETURNING i.id, n.q
), reserved AS (
    INSERT INTO inventory_reservations (inventory_id, order_id, quantity, expires_at)
    SELECT id, $3, q, $4 FROM held
    RETURNING inventory_id
)
SELECT l.id, l.available, (SELECT count(*) FROM reserved) AS held FROM locked l
"""
LOCK_HELD_SQL = """
SELECT id FROM inventory
WHERE id IN (SELECT inventory_id FROM inventory_reservations WHERE order_id = $1 AND status = 'active')
ORDER BY id FOR UPDATE
"""
# $2 the reservations' new status, $3 when, $4 whether the goods leave the stock, $5 the
# movement type when they do, $6 the acting user (NULL unless a users row).
SETTLE_SQL = """
WITH settled AS (
    UPDATE inventory_reservations SET status = $2, settled_at = $3
    WHERE order_id = $1 AND status = 'active'
    RETURNING inventory_id, quantity
), per_row AS (
    SELECT inventory_id, sum(quantity)::int AS q FROM settled GROUP BY inventory_id
), stock AS (
    UPDATE inventory i
    SET reserved_quantity = i.reserved_quantity - p.q,
        quantity = i.quantity - CASE WHEN $4 THEN p.q ELSE 0 END,
        updated_at = now()
    FROM per_row p WHERE i.id = p.inventory_id
    RETURNING i.product_id
), moved AS (
    INSERT INTO inventory_movements (inventory_id, movement_type, quantity, reference_type,
                                     reference_id, performed_by)
    SELECT inventory_id, $5, -quantity, 'order', $1, (SELECT id FROM users WHERE id = $6::uuid)
    FROM settled WHERE $4
)
SELECT DISTINCT product_id FROM stock
"""
# A paid or accepted order keeps its stock: the sweeper never sees its reservations expire.
# Paid or accepted: the order's stock is kept until it is fulfilled or cancelled (the sweeper
# skips it). A CTE beside the status change that decides it (``orders.records.change_status``
# with ``hold_stock``; ``$1`` the order), so it costs no round trip of its own.
HOLD_UPDATE = "UPDATE inventory_reservations SET expires_at = 'infinity' WHERE order_id = $1 AND status = 'active'"
RESTOCK_SQL = """
WITH back AS (
    SELECT * FROM unnest($2::uuid[], $3::int[]) AS b(inventory_id, q)
), stock AS (
    UPDATE inventory i SET quantity = i.quantity + b.q, updated_at = now()
    FROM back b WHERE i.id = b.inventory_id
    RETURNING i.product_id
), moved AS (
    INSERT INTO inventory_movements (inventory_id, movement_type, quantity, reference_type,
                                     reference_id, performed_by)
    SELECT inventory_id, 'return', q, 'return', $1, (SELECT id FROM users WHERE id = $4::uuid)
    FROM back
)
SELECT DISTINCT product_id FROM stock
"""


@dataclass(frozen=True)
class StockNeed:
    """``quantity`` units of the stock row ``inventory_id`` for order line ``line``."""

    inventory_id: uuid.UUID
    quantity: int
    line: int


def out_of_stock(line: int, available: int, wanted: int) -> Refusal:
    """409 ``out_of_stock`` naming the order line short of stock."""
    return Refusal(409, OUT_OF_STOCK,
                   f"line {line}: {max(available, 0)} in stock, {wanted} wanted",
                   f"lines[{line}].quantity")


async def reserve(tx: asyncpg.Connection, order_id: uuid.UUID, needs: Sequence[StockNeed],
                  expires_at: datetime) -> None:
    """Hold every line's stock until ``expires_at``, or refuse (409 ``out_of_stock``, naming
    the first line short of stock). Each stock row appears once in ``needs``. One statement
    locks and holds (``LOCK_AND_RESERVE_SQL``): the hottest rows stay locked one round trip
    less. A refusal may leave the other lines held in ``tx``, so the caller must roll back on
    it (raising out of ``tenant_transaction`` does); nothing is committed half held."""
    rows = await tx.fetch(LOCK_AND_RESERVE_SQL, [n.inventory_id for n in needs],
                          [n.quantity for n in needs], order_id, expires_at)
    if rows and rows[0]["held"] == len(needs):
        return
    # Refused: what the lines held here is rolled back with the caller's transaction.
    available = {r["id"]: r["available"] for r in rows}
    for need in sorted(needs, key=lambda n: n.line):
        if available.get(need.inventory_id, 0) < need.quantity:
            raise out_of_stock(need.line, available.get(need.inventory_id, 0), need.quantity)
    raise RuntimeError(f"reserved {rows[0]['held'] if rows else 0} of {len(needs)} lines of order {order_id}")


async def _settle(tx: asyncpg.Connection, order_id: uuid.UUID, status: str, at: datetime,
                  consume: bool, movement: str | None, actor_user: uuid.UUID | None) -> list[str]:
    await tx.fetch(LOCK_HELD_SQL, order_id)
    rows = await tx.fetch(SETTLE_SQL, order_id, status, at, consume, movement, actor_user)
    return [str(r["product_id"]) for r in rows]


async def release(tx: asyncpg.Connection, order_id: uuid.UUID, at: datetime, *,
                  expired: bool = False) -> list[str]:
    """Give the order's held stock back; returns the products whose stock changed."""
    return await _settle(tx, order_id, "expired" if expired else "released", at, False, None, None)


async def sell(tx: asyncpg.Connection, order_id: uuid.UUID, at: datetime,
               actor_user: uuid.UUID | None = None) -> list[str]:
    """The order was delivered: its held stock is sold (one ``sale`` movement per line)."""
    return await _settle(tx, order_id, "converted", at, True, "sale", actor_user)


async def write_off(tx: asyncpg.Connection, order_id: uuid.UUID, at: datetime,
                    actor_user: uuid.UUID | None = None) -> list[str]:
    """The goods left with a driver and the delivery did not complete: out of the stock."""
    return await _settle(tx, order_id, "written_off", at, True, "delivery_failed", actor_user)


async def restock(tx: asyncpg.Connection, return_id: uuid.UUID,
                  items: Sequence[tuple[uuid.UUID, int]], actor_user: uuid.UUID | None) -> list[str]:
    """Returned goods back on the shelf: ``quantity += q`` and a ``return`` movement each."""
    ordered = sorted(items)
    await tx.fetch(LOCK_SQL, [i for i, _ in ordered])
    rows = await tx.fetch(RESTOCK_SQL, return_id, [i for i, _ in ordered], [q for _, q in ordered],
                          actor_user)
    return [str(r["product_id"]) for r in rows]
