"""Proof of delivery over REST (tag ``proof of delivery``): the driver gives it, the order's
customer and vendor see it, the tenant admin decides what is required.

Driver (driver token ``wkd_...``, the gateway's error envelope like every ``/v1/drivers/``
route; each call counts against the driver's action limit):

- ``GET  /v1/drivers/deliveries/{id}/proof`` what is required and what is given (never the PIN)
- ``POST /v1/drivers/deliveries/{id}/pin`` ``{"pin": "0427"}``, the code the customer reads out
- ``PUT  /v1/drivers/deliveries/{id}/proof/photo`` raw JPEG or PNG body with its Content-Type
- ``PUT  /v1/drivers/deliveries/{id}/proof/signature`` raw PNG body

Images travel as the raw request body, not multipart: one part, no boundary parsing, and the
body limit of the edge (``WAKALA_MAX_BODY_BYTES``, 256 KiB by default) bounds it before the
route runs. A phone app scales the photo down before sending (1280 px at JPEG quality 75
is about 150 KB; the engine keeps at most 2048 px a side anyway). A precondition that
cannot hold (not the driver's delivery, not at the door) is answered before any decoding;
the decoding runs off the event loop.

Customer (``/v1/orders/{order_id}/proof...``) and vendor (``/v1/vendor/orders/{order_id}/
proof...``), user tokens and the REST envelope: the proof of the order's latest delivery and
its photo and signature bytes. Nobody else sees them: another customer, vendor, driver or
even a tenant admin gets 404, as for an order that does not exist. The customer's view holds
``delivery_pin`` while the PIN is still to be entered; the vendor's does not (the vendor
resets a locked PIN: ``POST /v1/vendor/orders/{order_id}/proof/pin/reset``). A tracking link
shows the PIN to whoever holds it, and a vendor may make links (to send the customer), so the
PIN keeps a driver from claiming a delivery without meeting the link's holder; it is not a
secret from the vendor.

Tenant admin: ``GET``/``PUT /v1/admin/proof-requirements`` (``{"pin", "photo", "signature",
"pin_digits"}``), applying to deliveries created from then on.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from dispatch.api.common import (
    actor,
    body,
    call,
    caller,
    customer_of,
    json_body_doc,
    path_id,
    vendor_of,
)
from dispatch.api.drivers import driver_action, driver_of
from dispatch.api.idempotency import once
from dispatch.core.errors import MISSING_FIELD, UNKNOWN_FIELD, WRONG_TYPE, Refusal
from dispatch.deliveries import proof_store
from dispatch.deliveries.proof import clean_image, parse_requirements
from dispatch.web.http import gateway_error_response, read_body
from dispatch.web.outages import OUTAGES, unavailable

__all__ = ["router"]

router = APIRouter()
TAG = "proof of delivery"
_DRIVER_ERRORS = {401: {"description": "unknown, revoked or expired driver token"},
                  404: {"description": "no such delivery assigned to this driver"},
                  409: {"description": "not at the door (the delivery is not picked_up) or already ended"},
                  422: {"description": "malformed input; the error names the field"},
                  429: {"description": "over the driver's action limit (Retry-After)"},
                  503: {"description": "a service the engine needs is down (Retry-After)"}}
_IMAGE_HEADERS = {"Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff",
                  "Content-Security-Policy": "default-src 'none'"}


def _image_body(kinds: tuple[str, ...]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {
        t: {"schema": {"type": "string", "format": "binary"}} for t in kinds}}}


async def _driver_acting(request: Request):
    """The driver, their action counted (token first: no valid token, no work)."""
    driver = await driver_of(request)
    await request.app.state.ingest.allow_action(driver, "http")
    return driver


# -- the driver -------------------------------------------------------------------------------------

@router.get("/v1/drivers/deliveries/{delivery_id}/proof", tags=[TAG],
            summary="The authenticated driver: which proofs the delivery needs and which are given",
            responses=_DRIVER_ERRORS)
async def driver_get_proof(request: Request, delivery_id: str) -> JSONResponse:
    try:
        driver = await driver_of(request)
        try:
            view = await proof_store.driver_view(request.app.state.db, driver.tenant_id, driver.driver_id,
                                                 delivery_id)
        except OUTAGES:
            raise unavailable() from None
    except Refusal as exc:
        return gateway_error_response(exc)
    return JSONResponse(view)


@router.post("/v1/drivers/deliveries/{delivery_id}/pin", tags=[TAG],
             summary="The authenticated driver enters the PIN the customer reads out",
             openapi_extra=json_body_doc({"pin": "0427"}),
             responses={**_DRIVER_ERRORS, 409: {"description": "no PIN, not at the door, or locked (pin_locked)"},
                        422: {"description": "wrong_pin (counted; attempts left in the message) or a "
                                             "malformed pin (not counted)"}})
async def driver_enter_pin(request: Request, delivery_id: str) -> JSONResponse:
    try:
        driver, payload = await driver_action(request)
        if not isinstance(payload, dict):
            raise Refusal(422, WRONG_TYPE, 'the body must be {"pin": "<digits>"}', "body")
        if set(payload) - {"pin"}:
            raise Refusal(422, UNKNOWN_FIELD, "the body takes only pin", sorted(set(payload) - {"pin"})[0])
        if "pin" not in payload:
            raise Refusal(422, MISSING_FIELD, "pin is required", "pin")
        try:
            answer = await proof_store.check_pin(request.app.state.db, driver.tenant_id, driver.driver_id,
                                                 delivery_id, payload["pin"])
        except OUTAGES:
            raise unavailable() from None
    except Refusal as exc:
        return gateway_error_response(exc)
    return JSONResponse(answer)


async def _put_image(request: Request, delivery_id: str, kind: str) -> JSONResponse:
    state = request.app.state
    try:
        driver = await _driver_acting(request)
        limit = state.engine.max_body_bytes
        raw = await read_body(request, limit, "http")
        try:
            # cheap refusals first: a delivery the driver cannot prove costs no decoding
            await proof_store.driver_at_the_door(state.db, driver.tenant_id, driver.driver_id, delivery_id)
            image = await asyncio.to_thread(clean_image, kind, raw, request.headers.get("content-type"), limit)
            stored = await proof_store.store_image(state.db, driver.tenant_id, driver.driver_id, delivery_id,
                                                   kind, image)
        except OUTAGES:
            raise unavailable() from None
    except Refusal as exc:
        return gateway_error_response(exc)
    return JSONResponse(stored)


@router.put("/v1/drivers/deliveries/{delivery_id}/proof/photo", tags=[TAG],
            summary="The authenticated driver uploads the delivery photo (JPEG or PNG; stored re-encoded, "
                    "without metadata)",
            openapi_extra=_image_body(("image/jpeg", "image/png")),
            responses={**_DRIVER_ERRORS, 413: {"description": "over the byte or pixel limit"},
                       415: {"description": "Content-Type is not image/jpeg or image/png"},
                       422: {"description": "not a whole JPEG/PNG of the declared type (invalid_image)"}})
async def driver_put_photo(request: Request, delivery_id: str) -> JSONResponse:
    return await _put_image(request, delivery_id, "photo")


@router.put("/v1/drivers/deliveries/{delivery_id}/proof/signature", tags=[TAG],
            summary="The authenticated driver uploads the customer's signature (PNG)",
            openapi_extra=_image_body(("image/png",)),
            responses={**_DRIVER_ERRORS, 413: {"description": "over the byte or pixel limit"},
                       415: {"description": "Content-Type is not image/png"},
                       422: {"description": "not a whole PNG (invalid_image)"}})
async def driver_put_signature(request: Request, delivery_id: str) -> JSONResponse:
    return await _put_image(request, delivery_id, "signature")


# -- the order's customer and vendor ------------------------------------------------------------------

async def _party(request: Request, role: str) -> tuple[Any, dict[str, str]]:
    user = await caller(request, role)
    return user, ({"customer_id": customer_of(user)} if role == "customer" else {"vendor_id": vendor_of(user)})


async def _view(request: Request, role: str, order_id: str) -> dict:
    user, party = await _party(request, role)
    return await call(proof_store.party_view(request.app.state.db, user.tenant_id, path_id(order_id, "order_id"),
                                             **party))


async def _image(request: Request, role: str, order_id: str, kind: str) -> Response:
    user, party = await _party(request, role)
    data, content_type, sha256 = await call(proof_store.party_image(
        request.app.state.db, user.tenant_id, path_id(order_id, "order_id"), kind, **party))
    return Response(data, media_type=content_type, headers={**_IMAGE_HEADERS, "ETag": f'"{sha256}"'})


_IMAGE_RESPONSES = {200: {"content": {"image/jpeg": {}, "image/png": {}}, "description": "the image as stored"},
                    404: {"description": "not the caller's order, no delivery yet, or no such image"}}


@router.get("/v1/orders/{order_id}/proof", tags=[TAG],
            summary="The customer: the proof of delivery of their order (with delivery_pin until it is entered)")
async def customer_get_proof(request: Request, order_id: str) -> dict:
    return await _view(request, "customer", order_id)


@router.get("/v1/orders/{order_id}/proof/photo", tags=[TAG], summary="The customer: the delivery photo",
            response_class=Response, responses=_IMAGE_RESPONSES)
async def customer_get_photo(request: Request, order_id: str) -> Response:
    return await _image(request, "customer", order_id, "photo")


@router.get("/v1/orders/{order_id}/proof/signature", tags=[TAG], summary="The customer: the signature",
            response_class=Response, responses=_IMAGE_RESPONSES)
async def customer_get_signature(request: Request, order_id: str) -> Response:
    return await _image(request, "customer", order_id, "signature")


@router.get("/v1/vendor/orders/{order_id}/proof", tags=[TAG],
            summary="The vendor: the proof of delivery of its order (never the PIN)")
async def vendor_get_proof(request: Request, order_id: str) -> dict:
    return await _view(request, "vendor", order_id)


@router.get("/v1/vendor/orders/{order_id}/proof/photo", tags=[TAG], summary="The vendor: the delivery photo",
            response_class=Response, responses=_IMAGE_RESPONSES)
async def vendor_get_photo(request: Request, order_id: str) -> Response:
    return await _image(request, "vendor", order_id, "photo")


@router.get("/v1/vendor/orders/{order_id}/proof/signature", tags=[TAG], summary="The vendor: the signature",
            response_class=Response, responses=_IMAGE_RESPONSES)
async def vendor_get_signature(request: Request, order_id: str) -> Response:
    return await _image(request, "vendor", order_id, "signature")


@router.post("/v1/vendor/orders/{order_id}/proof/pin/reset", tags=[TAG],
             summary="The vendor gives the order's delivery a new PIN (after too many wrong entries)",
             responses={409: {"description": "no PIN, already entered, or the delivery has ended"}})
async def vendor_reset_pin(request: Request, order_id: str) -> Any:
    user, party = await _party(request, "vendor")

    async def act() -> dict:
        return await call(proof_store.reset_pin(request.app.state.db, user.tenant_id,
                                                path_id(order_id, "order_id"), **party))

    return await once(request, user.tenant_id, user.user_id, act)


# -- the tenant admin ---------------------------------------------------------------------------------

@router.get("/v1/admin/proof-requirements", tags=[TAG],
            summary="The proofs the tenant requires before a delivery may be reported delivered")
async def admin_get_requirements(request: Request) -> dict:
    user = await caller(request, "tenant_admin")
    return await call(proof_store.get_requirements(request.app.state.db, user.tenant_id))


@router.put("/v1/admin/proof-requirements", tags=[TAG],
            summary="Set the proofs the tenant requires (for deliveries created from now on)",
            openapi_extra=json_body_doc({"pin": True, "photo": True, "signature": False, "pin_digits": 4}))
async def admin_put_requirements(request: Request) -> dict:
    user = await caller(request, "tenant_admin")
    wanted = parse_requirements(await body(request))
    return await call(proof_store.set_requirements(request.app.state.db, user.tenant_id, wanted,
                                                   actor=actor(user)))

