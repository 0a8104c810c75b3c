"""Returns: a customer sends back goods of a delivered order, whole or in part.

The goods go back into stock (``return`` movements, onto the stock row they were sold from,
else the product's usual row),
a ``returns`` row (number ``WK-000123-R1``, ``-R2``...) and its refund are recorded, and the
order becomes ``returned`` once every unit is back; a partial return leaves it ``delivered``
and writes a ``return_partial`` event instead.

The refund is what the units cost after discounts, VAT included whether prices included it
or had it added; the delivery fee is not refunded. Units of a line are refunded with
cumulative rounding (``pricing.refund_share``), so however a line comes back, one unit at a
time or all at once, its refunds add up to exactly what was paid for it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from dispatch.commerce import reservations
from dispatch.commerce.orders.input import (
    OrderLine,
    canonical_id,
    parse_lines,
    parse_order_id,
    parse_reason,
)
from dispatch.commerce.orders.lifecycle import IllegalOrderTransition, OrderAction, OrderStatus
from dispatch.commerce.orders.records import (
    as_user_id,
    change_status,
    forget_cached,
    lock_order,
    order_view,
    refund_return,
    write_event,
)
from dispatch.commerce.pricing import ZERO, refund_share
from dispatch.core.cache import Cache
from dispatch.core.errors import INVALID_RETURN_LINE, OUT_OF_RANGE, Refusal
from schema.db import TenantDatabase
from schema.tenants import parse_tenant_id

__all__ = ["return_order"]

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


async def return_order(db: TenantDatabase, tenant_id: object, order_id: object, *, customer_id: object,
                       lines: tuple[OrderLine, ...] | None, reason: str, actor: str,
                       cache: Cache | None = None) -> dict[str, Any]:
    """The customer returns goods of a delivered order (``lines``: which and how many; None:
    everything not yet returned). See the module docstring. The view carries ``return``
    (``id, return_number, refund_amount, items``)."""
    oid, customer = parse_order_id(order_id), canonical_id(customer_id, "customer_id")
    why = parse_reason(reason, required=True)
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
                    raise Refusal(422, INVALID_RETURN_LINE, "this order has no such line",
                                  f"lines[{n}]")
                if line.quantity > item["quantity"] - item["returned"]:
                    raise Refusal(422, OUT_OF_RANGE,
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
    await forget_cached(cache, tenant, oid, products)
    view["return"] = {"id": str(created["id"]), "return_number": created["return_number"],
                      "refund_amount": str(refund), "items": returned_items}
    return view
