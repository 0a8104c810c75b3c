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

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from dispatch.core.errors import Refusal
from dispatch.gateway.ingest import Ingest, delivery_update
from dispatch.web.http import bearer, gateway_error_response, parse_json, read_body

__all__ = ["ShiftDoc", "router"]

router = APIRouter()


class ShiftDoc(BaseModel):
    action: str = Field(description="start (available for offers) or end (offline)", pattern="^(start|end)$")


# The shift body is parsed by FastAPI from ``ShiftDoc`` before the handler runs: a bad body is
# a 422 in the REST envelope (the RequestValidationError handler of dispatch.api.common), and
# it is answered before the token is checked. Every other driver route reads its body raw and
# checks the token first; this one is kept as it was until it is brought in line.
@router.post("/v1/drivers/shift", tags=["drivers"], summary="Start or end the authenticated driver's shift",
             responses={401: {"description": "unknown, revoked or expired token"},
                        422: {"description": "action is not start or end"}})
async def post_shift(request: Request, body: ShiftDoc) -> JSONResponse:
    ingest: Ingest = request.app.state.ingest
    try:
        driver = await ingest.authenticate(bearer(request.headers.get("authorization")), "http")
    except Refusal as exc:
        return gateway_error_response(exc)
    locations = request.app.state.locations
    if body.action == "start":
        await locations.start_shift(driver.tenant_id, driver.driver_id, driver.vehicle_type)
        dispatcher = getattr(request.app.state, "dispatcher", None)
        if dispatcher is not None:
            dispatcher.retry_soon(driver.tenant_id)   # a driver is free: waiting deliveries get a chance
    else:
        await locations.end_shift(driver.driver_id)
    return JSONResponse({"status": await locations.status(driver.driver_id)})


@router.post("/v1/drivers/deliveries/{delivery_id}/events", tags=["drivers"],
             summary="The authenticated driver reports pick-up, delivery (with proof) or failure",
             responses={401: {"description": "unknown, revoked or expired token"},
                        404: {"description": "no such delivery assigned to this driver"},
                        409: {"description": "the delivery is not in a state that allows this event"},
                        422: {"description": "malformed body; the error names the field"}})
async def post_delivery_event(request: Request, delivery_id: str) -> JSONResponse:
    ingest: Ingest = request.app.state.ingest
    try:
        driver = await ingest.authenticate(bearer(request.headers.get("authorization")), "http")
        body = parse_json(await read_body(request, ingest.engine.max_body_bytes, "http"),
                          ingest.engine.max_body_bytes, "http", "body")
        reply = await delivery_update(getattr(request.app.state, "dispatcher", None), driver, body, delivery_id)
    except Refusal as exc:
        return gateway_error_response(exc)
    return JSONResponse(reply)
