"""Reading orders for the API: one order (through the cache) and filtered lists.

Both answer with the same view ``place_order`` returns (``records.order_view``). An order
that is absent, another tenant's, or not the asking customer's or vendor's is the same
``OrderNotFound``: a caller learns nothing of orders that are not theirs. A list is read in
two round trips: the ids (filter, order and limit on ``orders`` alone), then the views of
those ids in one query.
"""

from __future__ import annotations

import uuid
from typing import Any

from dispatch.commerce.orders.input import optional_id, parse_order_id
from dispatch.commerce.orders.lifecycle import OrderNotFound, OrderStatus
from dispatch.commerce.orders.records import VIEW_SQL, order_view, view_from_row
from dispatch.core.cache import TTL, Cache
from dispatch.core.cache_keys import order_key
from dispatch.core.errors import INVALID_VALUE, OUT_OF_RANGE, Refusal
from schema.db import TenantDatabase
from schema.tenants import parse_tenant_id

__all__ = ["MAX_LIST", "get_order", "list_orders"]

STATUSES = tuple(s.value for s in OrderStatus)
MAX_LIST = 200

LIST_IDS_SQL = """
SELECT id FROM orders
WHERE ($1::uuid IS NULL OR vendor_id = $1) AND ($2::uuid IS NULL OR customer_id = $2)
  AND ($3::text IS NULL OR status = $3)
ORDER BY created_at DESC, id
LIMIT $4
"""


async def get_order(db: TenantDatabase, tenant_id: object, order_id: object, *,
                    customer_id: object | None = None, vendor_id: object | None = None,
                    cache: Cache | None = None) -> dict[str, Any]:
    """The order view (as ``place_order`` returns it); OrderNotFound when absent or not this
    customer's (``customer_id``) or vendor's (``vendor_id``)."""
    oid = parse_order_id(order_id)
    customer, vendor = optional_id(customer_id, "customer_id"), optional_id(vendor_id, "vendor_id")
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
    vendor, customer = optional_id(vendor_id, "vendor_id"), optional_id(customer_id, "customer_id")
    if status is not None and status not in STATUSES:
        raise Refusal(422, INVALID_VALUE,
                      f"status must be one of {', '.join(STATUSES)}, got {status!r}", "status")
    if type(limit) is not int or not 1 <= limit <= MAX_LIST:
        raise Refusal(422, OUT_OF_RANGE, f"limit must be from 1 to {MAX_LIST}", "limit")
    async with db.tenant_transaction(parse_tenant_id(tenant_id), readonly=True) as tx:
        ids = [r["id"] for r in await tx.fetch(
            LIST_IDS_SQL, vendor and uuid.UUID(vendor), customer and uuid.UUID(customer), status, limit)]
        rows = await tx.fetch(VIEW_SQL, ids) if ids else []
    return [view_from_row(r) for r in rows]
