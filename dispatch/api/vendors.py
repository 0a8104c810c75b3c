"""Vendors' routes (``/v1/vendor/...``, tag ``vendors``): the vendor's catalogue and stock,
and its orders from acceptance to ready. Each needs the ``vendor`` role and a user that acts
for a vendor; another vendor's product or order answers 404. Every write takes an
``Idempotency-Key`` (``dispatch.api.idempotency.once``: claim, act, record); a tracking link
is a secret shown once, so its key is only validated. Revoking an order's tracking links is
``dispatch.api.own_orders.revoke_tracking_links``, shared with the order's customer."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from dispatch.api.common import (
    actor,
    body,
    call,
    caller,
    json_body_doc,
    path_id,
    reason_of,
    vendor_of,
)
from dispatch.api.idempotency import once
from dispatch.api.own_orders import (
    party_cancel,
    party_order,
    party_orders,
    revoke_tracking_links,
    tracking_link_for,
)
from dispatch.commerce.catalogue import reads as catalogue_reads
from dispatch.commerce.catalogue import writes as catalogue_writes
from dispatch.commerce.orders import transitions as order_transitions
from dispatch.core.errors import INVALID_VALUE, UNKNOWN_FIELD, WRONG_TYPE, Refusal
from dispatch.deliveries import handoff

__all__ = ["router"]

router = APIRouter()


@router.post("/v1/vendor/products", tags=["vendors"], status_code=201,
             openapi_extra=json_body_doc({"sku": "MAIZE-10KG", "name": "Maize meal 10 kg", "price": "89.99",
                                          "description": "White star", "initial_stock": 20}))
async def vendor_create_product(request: Request) -> Any:
    user = await caller(request, "vendor")
    state = request.app.state

    async def act() -> dict:
        return await call(catalogue_writes.create_product(state.db, state.cache, user.tenant_id, vendor_of(user),
                                                          await body(request), actor=actor(user)))

    return await once(request, user.tenant_id, user.user_id, act)


@router.patch("/v1/vendor/products/{product_id}", tags=["vendors"], openapi_extra=json_body_doc({"price": "94.99"}))
async def vendor_update_product(request: Request, product_id: str) -> Any:
    user = await caller(request, "vendor")
    state = request.app.state

    async def act() -> dict:
        return await call(catalogue_writes.update_product(state.db, state.cache, user.tenant_id, vendor_of(user),
                                                          path_id(product_id, "product_id"), await body(request),
                                                          actor=actor(user)))

    return await once(request, user.tenant_id, user.user_id, act)


@router.get("/v1/vendor/products/{product_id}", tags=["vendors"], summary="One of the vendor's products, active or not")
async def vendor_product(request: Request, product_id: str) -> dict:
    user = await caller(request, "vendor")
    state = request.app.state
    return await call(catalogue_reads.get_product(state.db, state.cache, user.tenant_id, path_id(product_id, "product_id"),
                                            include_inactive=True, vendor_id=vendor_of(user)))


@router.post("/v1/vendor/products/{product_id}/variants", tags=["vendors"], status_code=201,
             openapi_extra=json_body_doc({"sku": "MAIZE-5KG", "name": "5 kg", "price": "49.99"}))
async def vendor_create_variant(request: Request, product_id: str) -> Any:
    user = await caller(request, "vendor")
    state = request.app.state

    async def act() -> dict:
        return await call(catalogue_writes.create_variant(state.db, state.cache, user.tenant_id, vendor_of(user),
                                                          path_id(product_id, "product_id"), await body(request),
                                                          actor=actor(user)))

    return await once(request, user.tenant_id, user.user_id, act)


@router.post("/v1/vendor/products/{product_id}/stock", tags=["vendors"],
             openapi_extra=json_body_doc({"delta": 12, "reason": "restock"}))
async def vendor_adjust_stock(request: Request, product_id: str) -> Any:
    user = await caller(request, "vendor")
    return await once(request, user.tenant_id, user.user_id, lambda: _adjust_stock(request, user, product_id))


async def _adjust_stock(request: Request, user: Any, product_id: str) -> dict:
    state = request.app.state
    payload = await body(request)
    if not isinstance(payload, dict) or set(payload) - {"delta", "reason", "variant_id"}:
        raise Refusal(422, UNKNOWN_FIELD, "the body takes delta, reason and variant_id", "body")
    delta = payload.get("delta")
    if isinstance(delta, bool) or not isinstance(delta, int) or not -100_000 <= delta <= 100_000 or delta == 0:
        raise Refusal(422, INVALID_VALUE, "delta must be a non-zero integer from -100000 to 100000", "delta")
    if payload.get("reason") not in ("restock", "adjustment"):
        raise Refusal(422, INVALID_VALUE, "reason must be restock or adjustment", "reason")
    variant = payload.get("variant_id")
    if variant is not None and not isinstance(variant, str):
        raise Refusal(422, WRONG_TYPE, "variant_id must be a UUID", "variant_id")
    return await call(catalogue_writes.adjust_stock(
        state.db, state.cache, user.tenant_id, vendor_of(user), path_id(product_id, "product_id"),
        variant_id=None if variant is None else path_id(variant, "variant_id"), delta=delta,
        reason=payload["reason"], actor=actor(user)))


@router.get("/v1/vendor/orders", tags=["vendors"], summary="The vendor's orders, newest first")
async def vendor_orders(request: Request, status: str | None = None, limit: int = 50) -> dict:
    return await party_orders(request, "vendor", status, limit)


@router.get("/v1/vendor/orders/{order_id}", tags=["vendors"])
async def vendor_order(request: Request, order_id: str) -> dict:
    return await party_order(request, "vendor", order_id)


@router.post("/v1/vendor/orders/{order_id}/accept", tags=["vendors"])
async def vendor_accept(request: Request, order_id: str) -> Any:
    return await _decide(request, order_id, accept=True)


@router.post("/v1/vendor/orders/{order_id}/reject", tags=["vendors"],
             openapi_extra=json_body_doc({"reason": "out of bread"}))
async def vendor_reject(request: Request, order_id: str) -> Any:
    return await _decide(request, order_id, accept=False)


async def _decide(request: Request, order_id: str, *, accept: bool) -> Any:
    user = await caller(request, "vendor")
    state = request.app.state

    async def act() -> dict:
        reason = None if accept else reason_of(await body(request))
        return await call(order_transitions.vendor_decision(
            state.db, user.tenant_id, vendor_of(user), path_id(order_id, "order_id"), accept=accept,
            actor=actor(user), reason=reason, cache=state.cache))

    return await once(request, user.tenant_id, user.user_id, act)


@router.post("/v1/vendor/orders/{order_id}/ready", tags=["vendors"],
             summary="The order is packed: a delivery is created and matched to a driver")
async def vendor_ready(request: Request, order_id: str) -> Any:
    user = await caller(request, "vendor")
    state = request.app.state
    return await once(request, user.tenant_id, user.user_id, lambda: call(handoff.mark_ready(
        state.db, user.tenant_id, vendor_of(user), path_id(order_id, "order_id"), actor=actor(user),
        cache=state.cache)))


@router.post("/v1/vendor/orders/{order_id}/cancel", tags=["vendors"],
             openapi_extra=json_body_doc({"reason": "closed early"}))
async def vendor_cancel(request: Request, order_id: str) -> Any:
    return await party_cancel(request, "vendor", order_id)


@router.post("/v1/vendor/orders/{order_id}/tracking-link", tags=["vendors"], status_code=201,
             summary="A tracking link for the order's customer (shown once), e.g. to send on WhatsApp",
             responses={404: {"description": "not this vendor's order"},
                        409: {"description": "no delivery yet (before ready), or it ended too long ago"}})
async def vendor_tracking_link(request: Request, order_id: str) -> dict:
    user = await caller(request, "vendor")
    return await tracking_link_for(request, user, order_id, vendor_id=vendor_of(user))


@router.post("/v1/vendor/orders/{order_id}/tracking-link/revoke", tags=["vendors"],
             summary="Revoke every tracking link of the order (its open tracking pages close at once)",
             responses={404: {"description": "not this vendor's order"}})
async def vendor_revoke_tracking_links(request: Request, order_id: str) -> Any:
    return await revoke_tracking_links(request, "vendor", order_id)
