"""The hand-off from an order to its delivery: the vendor marks an order ready, a delivery opens.

``mark_ready`` is one tenant transaction: the order row locked (and checked to be this
vendor's), ``accepted -> ready`` checked against the order lifecycle before anything is
written, the delivery inserted with its ``created`` event (``open_delivery``), then the
order's status, history and ``mark_ready`` event (which carries the ``delivery_id``). The
order's status, its delivery and the event that tells the matcher about the delivery commit
together or not at all: the matcher never sees a delivery whose order is not ready, nor a
ready order without a delivery.

It lives in the deliveries room, not beside the other order verbs, because it writes a
delivery: the orders room sits below this one and never imports it, while this module uses
the order records (lock, status change, view) the way ``store.transition`` already does.

Pickup is the vendor's location and address; dropoff the order's delivery point and address;
the distance the straight line between them (PostGIS), in whole metres. An order whose
vendor has no location cannot be handed off: 409 ``vendor_unavailable`` on ``vendor_id``,
since the vendor is the one who can fix it (set the shop's location).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

from dispatch.commerce.orders.input import canonical_id, parse_order_id
from dispatch.commerce.orders.lifecycle import OrderAction, next_status
from dispatch.commerce.orders.records import change_status, forget_cached, lock_order, order_view
from dispatch.core.cache import Cache
from dispatch.core.errors import VENDOR_UNAVAILABLE, Refusal
from dispatch.deliveries.store import insert_delivery
from schema.db import TenantDatabase
from schema.tenants import parse_tenant_id

__all__ = ["READY_SQL", "mark_ready", "open_delivery"]

# Where the goods are and where they go, in one round trip.
READY_SQL = """
SELECT ST_Y(v.location::geometry) AS vendor_lat, ST_X(v.location::geometry) AS vendor_lng,
       v.address AS vendor_address, ST_Y(o.delivery_location::geometry) AS lat,
       ST_X(o.delivery_location::geometry) AS lng, o.delivery_address,
       round(ST_Distance(v.location, o.delivery_location))::int AS distance_m
FROM orders o JOIN vendors v ON v.id = o.vendor_id
WHERE o.id = $1
"""


async def open_delivery(tx: asyncpg.Connection, tenant_id: str, order_id: uuid.UUID) -> uuid.UUID:
    """Insert the delivery of the (locked) order ``order_id`` and its ``created`` event on
    ``tx``; returns the delivery's id. Refusal 409 ``vendor_unavailable`` with nothing written
    when the vendor or the order has no location."""
    where = await tx.fetchrow(READY_SQL, order_id)
    if where["vendor_lat"] is None or where["lat"] is None:
        raise Refusal(409, VENDOR_UNAVAILABLE, "the vendor or the order has no location",
                      "vendor_id")
    return await insert_delivery(
        tx, tenant_id, order_id, (where["vendor_lat"], where["vendor_lng"]),
        (where["lat"], where["lng"]), pickup_address=json.loads(where["vendor_address"]),
        dropoff_address=json.loads(where["delivery_address"]), distance_m=where["distance_m"])


async def mark_ready(db: TenantDatabase, tenant_id: object, vendor_id: object, order_id: object, *,
                     actor: str, cache: Cache | None = None) -> dict[str, Any]:
    """The vendor has packed an accepted order: it becomes ``ready`` and, in the same
    transaction, gets a delivery (pickup: the vendor; dropoff: the order's delivery point)
    whose ``created`` event hands it to the matcher. Returns the order view, which carries
    ``delivery_id``. OrderNotFound unless it is this vendor's; IllegalOrderTransition (409)
    unless it is ``accepted``."""
    oid, vendor = parse_order_id(order_id), canonical_id(vendor_id, "vendor_id")
    tenant = str(parse_tenant_id(tenant_id))
    at = datetime.now(UTC)
    async with db.tenant_transaction(tenant) as tx:
        order = await lock_order(tx, oid, vendor_id=vendor)
        # checked before the delivery is written: an order that cannot be ready opens nothing
        next_status(order.status, OrderAction.MARK_READY, payment_method=order.payment_method)
        delivery_id = await open_delivery(tx, tenant, oid)
        await change_status(tx, tenant, order, OrderAction.MARK_READY, actor=actor, reason=None, at=at,
                            extra={"delivery_id": str(delivery_id)})
        view = await order_view(tx, oid)
    await forget_cached(cache, tenant, oid, ())
    return view
