"""The vendor and the customer move an order: accept or reject, cancel.

Each verb is one tenant transaction: the order row locked (and checked to be the caller's),
the move checked against ``lifecycle.TRANSITIONS`` before anything is written
(``IllegalOrderTransition``, 409), then ``records.change_status`` (status, history, event)
and what the move implies: stock held until fulfilment (accept), stock and promotion uses
given back and a refund owed if paid (reject, cancel). The cache is told after commit.

Marking an order ready opens its delivery, so that verb is the deliveries room's
(``dispatch.deliveries.handoff.mark_ready``); returns have their own arithmetic
(``orders.returns``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from dispatch.commerce.orders.input import canonical_id, optional_id, parse_order_id, parse_reason
from dispatch.commerce.orders.lifecycle import OrderAction
from dispatch.commerce.orders.records import (
    change_status,
    forget_cached,
    give_back,
    lock_order,
    order_view,
    owe_refund,
)
from dispatch.core.cache import Cache
from dispatch.core.errors import WRONG_TYPE, Refusal
from schema.db import TenantDatabase
from schema.tenants import parse_tenant_id

__all__ = ["cancel_order", "vendor_decision"]


async def vendor_decision(db: TenantDatabase, tenant_id: object, vendor_id: object, order_id: object, *,
                          accept: bool, actor: str, reason: str | None = None,
                          cache: Cache | None = None) -> dict[str, Any]:
    """The vendor accepts (paid orders, or pending cash-on-delivery ones) or rejects (with a
    ``reason``; stock and promotion uses given back, a refund owed if paid) an order."""
    oid, vendor = parse_order_id(order_id), canonical_id(vendor_id, "vendor_id")
    if not isinstance(accept, bool):
        raise Refusal(422, WRONG_TYPE, "accept must be true or false", "accept")
    why = parse_reason(reason, required=not accept)
    tenant = str(parse_tenant_id(tenant_id))
    at = datetime.now(UTC)
    products: list[str] = []
    async with db.tenant_transaction(tenant) as tx:
        order = await lock_order(tx, oid, vendor_id=vendor)
        if accept:
            await change_status(tx, tenant, order, OrderAction.ACCEPT, actor=actor, reason=why, at=at,
                                hold_stock=True)
        else:
            await change_status(tx, tenant, order, OrderAction.REJECT, actor=actor, reason=why, at=at)
            products = await give_back(tx, order, at)
            await owe_refund(tx, order, f"rejected by the vendor: {why}")
        view = await order_view(tx, oid)
    await forget_cached(cache, tenant, oid, products)
    return view


async def cancel_order(db: TenantDatabase, tenant_id: object, order_id: object, *, actor: str,
                       reason: str, customer_id: object | None = None, vendor_id: object | None = None,
                       cache: Cache | None = None) -> dict[str, Any]:
    """Cancel before ``ready``, as the customer (``customer_id``), the vendor (``vendor_id``)
    or staff (neither): stock and promotion uses given back, a refund owed if paid."""
    oid = parse_order_id(order_id)
    customer, vendor = optional_id(customer_id, "customer_id"), optional_id(vendor_id, "vendor_id")
    why = parse_reason(reason, required=True)
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
    await forget_cached(cache, tenant, oid, products)
    return view
