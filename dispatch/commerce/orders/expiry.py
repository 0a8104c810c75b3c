"""The reservation sweeper: pending orders whose stock reservation ran out are cancelled.

Placing an order reserves its stock until an expiry (15 minutes by default); paying or
accepting it holds the stock until fulfilment (``reservations.HOLD_UPDATE`` moves the expiry to
infinity). An order still ``pending`` when its reservation runs out is cancelled (the
``expire`` action) and its stock and promotion uses are given back, so an abandoned checkout
never keeps goods off the shelf.

Each order is its own short transaction, rechecked under the order lock: an order paid or
accepted between the scan and the lock is left alone, and no transaction holds more than
one order's rows. ``run_reservation_sweeper`` does this for every tenant forever, and
forgets the tenant's expired idempotency keys (``dispatch.commerce.idempotency.prune``); a
failing tenant is logged and retried on the next round rather than stopping the sweep.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime

from dispatch.commerce import idempotency
from dispatch.commerce.orders.lifecycle import OrderAction, OrderStatus
from dispatch.commerce.orders.records import (
    change_status,
    clock,
    forget_cached,
    give_back,
    lock_order,
)
from dispatch.core.cache import Cache
from schema.db import TenantDatabase
from schema.tenants import parse_tenant_id

__all__ = ["SWEEPER_ACTOR", "release_expired_reservations", "run_reservation_sweeper"]

log = logging.getLogger(__name__)

SWEEPER_ACTOR = "system:reservation-sweeper"

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


async def release_expired_reservations(db: TenantDatabase, tenant_id: object, *,
                                       now: datetime | None = None, cache: Cache | None = None,
                                       batch: int = 500) -> int:
    """Cancel the ``pending`` orders whose reservations have run out (``expire``), giving back
    their stock and promotion uses; returns how many reservations were released. Each order
    is its own transaction; orders that moved on meanwhile (paid, accepted) are left alone.
    Reservations still in date are never touched."""
    when = clock(now)
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
        await forget_cached(cache, tenant, oid, products)
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
                    await idempotency.prune(db, tenant_id)
                except Exception:
                    log.exception("releasing expired reservations of tenant %s failed", tenant_id)
        except Exception:
            log.exception("listing tenants for the reservation sweeper failed")
        await asyncio.sleep(interval_s)
