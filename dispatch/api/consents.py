"""Consent routes: people give and withdraw their own consents; tenant admins record one given
on paper or by phone (tag ``consents``). The rules are ``dispatch.identity.consent``.

* Drivers, with their driver token: ``GET /v1/drivers/consents`` (state and the wording to
  show) and ``PUT /v1/drivers/consents/location_tracking``. Answers in the gateway's envelope,
  like the other driver routes.
* Customers and other users, with their user token: ``GET /v1/me/consents`` and
  ``PUT /v1/me/consents/marketing``.
* Tenant admins: ``POST /v1/admin/consents`` (``recorded_by`` is the admin; the channel says
  where the person consented).

A driver's withdrawal of location tracking takes effect at once, beyond the record: the shift
ends (recorded, offline in Redis, out of the matching index), their live location key is
deleted, and every engine process forgets the driver's cached tokens and closes their sockets,
so the next ping is refused ``consent_withdrawn`` (``dispatch.gateway.ingest``). A delivery
the driver already carries stays theirs (delivery events need no location), but customers'
pages show no position for it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from dispatch.api.common import body, call, caller, check, json_body_doc, path_id
from dispatch.api.drivers import driver_action, driver_of
from dispatch.core.errors import INVALID_VALUE, MISSING_FIELD, WRONG_TYPE, Refusal
from dispatch.identity.auth import refresh_driver_tokens
from dispatch.identity.consent import PURPOSES, WORDING, ConsentChange, parse_change, parse_purpose
from dispatch.identity.consent_store import consent_states, record_consent
from dispatch.matching.recovery import end_shift
from dispatch.web.failures import client_address
from dispatch.web.http import gateway_error_response
from dispatch.web.outages import OUTAGES, unavailable
from streams.keys import location_key

__all__ = ["router", "wording"]

router = APIRouter()


def wording(subject_type: str) -> dict[str, dict[str, str]]:
    """purpose -> version -> text, for the purposes this kind of person can consent to."""
    out: dict[str, dict[str, str]] = {}
    for (purpose, version), text in sorted(WORDING.items()):
        if subject_type in PURPOSES[purpose].subject_types:
            out.setdefault(purpose, {})[version] = text
    return out


async def _states(state, tenant_id: str, subject_type: str, subject_id: str) -> dict[str, Any]:
    states = await consent_states(state.db, tenant_id, subject_type, subject_id)
    return {"consents": {p: s.as_dict() for p, s in states.items()}, "wording": wording(subject_type)}


async def apply_tracking_change(state, tenant_id: str, driver_id: str, given: bool) -> None:
    """What a change of a driver's tracking consent does beyond the record (module docstring)."""
    if not given:
        await end_shift(state.db, state.locations, tenant_id, driver_id)
        await state.redis.delete(location_key(driver_id))
    await refresh_driver_tokens(state.db, state.redis, tenant_id, driver_id)


async def _record(request: Request, tenant_id: str, subject_type: str, subject_id: str, change: ConsentChange,
                  recorded_by: str | None) -> dict[str, Any]:
    state = request.app.state
    record = await record_consent(state.db, tenant_id, subject_type, subject_id, change, recorded_by=recorded_by,
                                  ip_address=client_address(request.scope))
    if change.purpose == "location_tracking":
        await apply_tracking_change(state, tenant_id, subject_id, change.given)
    return {"record": record, **await _states(state, tenant_id, subject_type, subject_id)}


@router.get("/v1/drivers/consents", tags=["consents"], summary="The driver's consents and the wording to show")
async def driver_consents(request: Request) -> JSONResponse:
    try:
        driver = await driver_of(request)
        try:
            answer = await _states(request.app.state, driver.tenant_id, "driver", driver.driver_id)
        except OUTAGES:
            raise unavailable() from None
    except Refusal as exc:
        return gateway_error_response(exc)
    return JSONResponse(answer)


@router.put("/v1/drivers/consents/{purpose}", tags=["consents"],
            summary="Give or withdraw the driver's consent (location_tracking)",
            openapi_extra=json_body_doc({"given": True, "version": "2026-12", "channel": "app"}))
async def driver_consent(request: Request, purpose: str) -> JSONResponse:
    try:
        driver, body = await driver_action(request)
        change = parse_change(parse_purpose(purpose, "driver"), body)
        try:
            answer = await _record(request, driver.tenant_id, "driver", driver.driver_id, change, None)
        except OUTAGES:
            raise unavailable() from None
    except Refusal as exc:
        return gateway_error_response(exc)
    return JSONResponse(answer)


def _me(user) -> tuple[str, str]:
    return ("customer", user.customer_id) if user.customer_id else ("user", user.user_id)


@router.get("/v1/me/consents", tags=["consents"], summary="The caller's consents and the wording to show")
async def my_consents(request: Request) -> dict:
    user = await caller(request)
    return await call(_states(request.app.state, user.tenant_id, *_me(user)))


@router.put("/v1/me/consents/{purpose}", tags=["consents"], summary="Give or withdraw the caller's consent (marketing)",
            openapi_extra=json_body_doc({"given": True, "version": "2026-12", "channel": "app"}))
async def my_consent(request: Request, purpose: str) -> dict:
    user = await caller(request)
    subject_type, subject_id = _me(user)
    change = check(parse_change, check(parse_purpose, purpose, subject_type), await body(request))
    return await call(_record(request, user.tenant_id, subject_type, subject_id, change, None))


@router.post("/v1/admin/consents", tags=["consents"], status_code=201,
             summary="Record a consent a person gave or withdrew outside the apps (paper, phone, in person)",
             openapi_extra=json_body_doc({"subject_type": "customer",
                                          "subject_id": "5b0c7f3e-8d5e-4c5a-9b1e-0d6f1f2a3b4c",
                                          "purpose": "marketing", "given": True, "version": "2026-12",
                                          "channel": "paper", "note": "signed form 2026-12-01 at the counter"}))
async def admin_record_consent(request: Request) -> dict:
    user = await caller(request, "tenant_admin")
    payload = await body(request)
    if not isinstance(payload, dict):
        raise Refusal(422, WRONG_TYPE, "the body must be a JSON object", "body")
    subject_type = payload.get("subject_type")
    if subject_type not in ("customer", "driver"):
        raise Refusal(422, MISSING_FIELD if subject_type is None else INVALID_VALUE,
                      "subject_type must be customer or driver", "subject_type")
    subject_id = path_id(str(payload.get("subject_id")), "subject_id")
    purpose = check(parse_purpose, payload.get("purpose"), subject_type)
    change = check(parse_change, purpose, {k: v for k, v in payload.items()
                                           if k not in ("subject_type", "subject_id", "purpose")})
    return await call(_record(request, user.tenant_id, subject_type, subject_id, change, user.user_id))
