"""Customers' routes (``/v1/orders...``, tag ``customers``): place an order, follow it,
cancel or return it, and get a link to watch its delivery. Each needs the ``customer`` role;
another customer's order answers 404. (Browsing the catalogue is ``dispatch.api.catalogue``.)

An order body is validated by the orders domain's own parser (``orders.parse_new_order``),
so a refusal names the field at fault (``lines[0].quantity``); prices come from the
database, never from the body. Placing takes an ``Idempotency-Key`` kept in the placing
transaction itself (``dispatch.api.idempotency``) and the pending cap
(``WAKALA_MAX_PENDING_ORDERS``); the other writes take the key by claim, act, record.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from dispatch.api.common import (
    actor,
    body,
    call,
    caller,
    check,
    customer_of,
    json_body_doc,
    path_id,
    raw_body,
    reason_of,
)
from dispatch.api.idempotency import answer, once, request_of
from dispatch.api.own_orders import (
    party_cancel,
    party_order,
    party_orders,
    revoke_tracking_links,
    tracking_link_for,
)
from dispatch.commerce.orders import input as order_input
from dispatch.commerce.orders import placing, returns
from dispatch.core.errors import UNKNOWN_FIELD, Refusal

__all__ = ["router"]

router = APIRouter()


@router.post("/v1/orders", tags=["customers"], status_code=201, openapi_extra=json_body_doc({
    "vendor_id": "3f2b8c1e-9a4d-4c1b-8e2f-0a1b2c3d4e5f",
    "lines": [{"product_id": "0b1c2d3e-4f50-4617-8283-949596979899", "quantity": 2}],
    "delivery_lat": -26.24, "delivery_lng": 27.92, "delivery_address": {"street": "12 Mahalefele Rd"},
    "promo_codes": ["WELCOME10"], "payment_method": "cash"}))
async def place(request: Request) -> Any:
    user = await caller(request, "customer")
    state = request.app.state
    raw = await raw_body(request)
    key = await request_of(request, user.user_id, raw)
    new = check(order_input.parse_new_order, await body(request, raw), customer_id=customer_of(user))
    return answer(await call(placing.place_order(
        state.db, user.tenant_id, new, actor=actor(user), cache=state.cache,
        max_pending=state.engine.max_pending_orders, idempotency=key)))


@router.get("/v1/orders", tags=["customers"])
async def my_orders(request: Request, status: str | None = None, limit: int = 50) -> dict:
    return await party_orders(request, "customer", status, limit)


@router.get("/v1/orders/{order_id}", tags=["customers"])
async def my_order(request: Request, order_id: str) -> dict:
    return await party_order(request, "customer", order_id)


@router.post("/v1/orders/{order_id}/cancel", tags=["customers"], openapi_extra=json_body_doc({"reason": "ordered twice"}))
async def cancel(request: Request, order_id: str) -> dict:
    return await party_cancel(request, "customer", order_id)


@router.post("/v1/orders/{order_id}/tracking-link", tags=["customers"], status_code=201,
             summary="A link to watch the order's delivery live (shown once; GET /t/{token})",
             responses={404: {"description": "not this customer's order"},
                        409: {"description": "no delivery yet (before ready), or it ended too long ago"}})
async def tracking_link(request: Request, order_id: str) -> dict:
    user = await caller(request, "customer")
    return await tracking_link_for(request, user, order_id, customer_id=customer_of(user))


@router.post("/v1/orders/{order_id}/tracking-link/revoke", tags=["customers"],
             summary="Revoke every tracking link of the order (its open tracking pages close at once)",
             responses={404: {"description": "not this customer's order"}})
async def revoke_tracking_link(request: Request, order_id: str) -> Any:
    return await revoke_tracking_links(request, "customer", order_id)


@router.post("/v1/orders/{order_id}/return", tags=["customers"], openapi_extra=json_body_doc({
    "reason": "damaged", "lines": [{"product_id": "0b1c2d3e-4f50-4617-8283-949596979899", "quantity": 1}]}))
async def return_(request: Request, order_id: str) -> Any:
    user = await caller(request, "customer")
    state = request.app.state

    async def act() -> dict:
        payload = await body(request)
        reason = reason_of(payload)
        if set(payload) - {"reason", "lines"}:
            raise Refusal(422, UNKNOWN_FIELD, "a return takes reason and lines", "body")
        lines = None if payload.get("lines") is None else check(order_input.parse_lines, payload["lines"])
        return await call(returns.return_order(state.db, user.tenant_id, path_id(order_id, "order_id"),
                                              customer_id=customer_of(user), lines=lines, reason=reason,
                                              actor=actor(user), cache=state.cache))

    return await once(request, user.tenant_id, user.user_id, act)
