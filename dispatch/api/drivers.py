"""Drivers' REST routes (tag ``drivers``): start or end a shift, report a delivery's events.

A driver authenticates with their driver token (``wkd_...``), not a user token, through the
gateway's ``Ingest.authenticate``, so every driver-token refusal is counted in
``wakala_pings_rejected_total`` under the ``http`` channel, as it was when these routes
lived with ingest. Refusals answer in the gateway's envelope (``dispatch.web.http.
gateway_error_response``), which driver apps already parse, not the REST API's one.

Ping ingest itself (``POST /v1/drivers/locations`` and the driver websocket) stays in
``dispatch.gateway.ingest``: it is the hot path and has its own framing.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from dispatch.core.errors import (
    CONSENT_WITHDRAWN,
    INVALID_VALUE,
    MISSING_FIELD,
    WRONG_TYPE,
    Refusal,
)
from dispatch.gateway.ingest import Ingest, delivery_update
from dispatch.identity.auth import AuthDriver
from dispatch.matching.recovery import end_shift, start_shift
from dispatch.web.failures import client_address
from dispatch.web.http import bearer, gateway_error_response, parse_json, read_body
from dispatch.web.outages import OUTAGES, unavailable

__all__ = ["SHIFT_ACTIONS", "driver_action", "driver_of", "parse_shift", "router"]

router = APIRouter()

SHIFT_ACTIONS = ("start", "end")
SHIFT_SCHEMA = {"type": "object", "required": ["action"], "properties": {"action": {
    "type": "string", "enum": list(SHIFT_ACTIONS),
    "description": "start (available for offers) or end (offline)"}}}


def parse_shift(body: Any) -> str:
    """The shift action of a decoded body, or a 422 naming the field. Other fields are ignored,
    as they always were."""
    if not isinstance(body, dict):
        raise Refusal(422, WRONG_TYPE, 'the body must be {"action": "start" | "end"}', "body")
    if "action" not in body:
        raise Refusal(422, MISSING_FIELD, "action is required", "action")
    action = body["action"]
    if not isinstance(action, str):
        raise Refusal(422, WRONG_TYPE, "action must be a string", "action")
    if action not in SHIFT_ACTIONS:
        raise Refusal(422, INVALID_VALUE, "action must be start or end", "action")
    return action


async def driver_of(request: Request) -> AuthDriver:
    """The driver whose token the request carries (counted on the gateway's ``http`` channel)."""
    ingest: Ingest = request.app.state.ingest
    return await ingest.authenticate(bearer(request.headers.get("authorization")), "http",
                                     client_address(request.scope))


async def driver_action(request: Request) -> tuple[AuthDriver, Any]:
    """The driver, their action counted, and the body as JSON.

    Every driver route that acts checks the token first, then the driver's action limit, and
    only then reads its body, through the bounded reader: a request without a valid token costs
    no body buffering at all, and a hostile body is a 413 or a 422 naming the field."""
    ingest: Ingest = request.app.state.ingest
    driver = await driver_of(request)
    await ingest.allow_action(driver, "http")
    limit = ingest.engine.max_body_bytes
    return driver, parse_json(await read_body(request, limit, "http"), limit, "http", "body")


@router.post("/v1/drivers/shift", tags=["drivers"], summary="Start or end the authenticated driver's shift",
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": SHIFT_SCHEMA}}}},
             responses={401: {"description": "unknown, revoked or expired token"},
                        413: {"description": "body too large"},
                        409: {"description": "a start by a driver who withdrew consent to location tracking"},
                        422: {"description": "action is not start or end; the error names the field"},
                        429: {"description": "over the driver's action limit (Retry-After)"},
                        503: {"description": "a service the engine needs is down (Retry-After)"}})
async def post_shift(request: Request) -> JSONResponse:
    state = request.app.state
    try:
        driver, body = await driver_action(request)
        action = parse_shift(body)
        try:
            # The shift is recorded in PostgreSQL and the status computed from the driver's
            # active deliveries there, not from Redis claims that a Redis restart may have lost.
            if action == "start":
                if driver.tracking_withdrawn:
                    raise Refusal(409, CONSENT_WITHDRAWN, "you withdrew consent to location tracking; give it "
                                  "again (PUT /v1/drivers/consents/location_tracking) to start a shift", "consent")
                status = await start_shift(state.db, state.offers.claims, driver.tenant_id, driver.driver_id)
                dispatcher = getattr(state, "dispatcher", None)
                if dispatcher is not None and status == "available":
                    dispatcher.retry_soon(driver.tenant_id)   # a driver is free: waiting deliveries get a chance
            else:
                status = await end_shift(state.db, state.locations, driver.tenant_id, driver.driver_id)
        except OUTAGES:
            raise unavailable() from None
    except Refusal as exc:
        return gateway_error_response(exc)
    return JSONResponse({"status": status})


@router.post("/v1/drivers/deliveries/{delivery_id}/events", tags=["drivers"],
             summary="The authenticated driver reports pick-up, delivery (with proof) or failure",
             responses={401: {"description": "unknown, revoked or expired token"},
                        404: {"description": "no such delivery assigned to this driver"},
                        409: {"description": "the delivery is not in a state that allows this event"},
                        422: {"description": "malformed body; the error names the field"},
                        429: {"description": "over the driver's action limit (Retry-After)"},
                        503: {"description": "a service the engine needs is down (Retry-After)"}})
async def post_delivery_event(request: Request, delivery_id: str) -> JSONResponse:
    try:
        driver, body = await driver_action(request)
        try:
            reply = await delivery_update(getattr(request.app.state, "dispatcher", None), driver, body,
                                          delivery_id)
        except OUTAGES:
            raise unavailable() from None
    except Refusal as exc:
        return gateway_error_response(exc)
    return JSONResponse(reply)
