"""Tenant admins' and support agents' reads of people's data (``/v1/admin/...``, tag ``tenant
admin``): orders, a customer, a driver, a person's consent records. Each needs the
``tenant_admin`` or ``support`` role and says why in ``X-Access-Purpose``
(``dispatch.identity.access``); each look is written to ``data_access_log`` before the data is
answered (``dispatch.identity.access_log``), one row per person seen, so ``wakala dsr log``
shows who looked at whom, at what and why. An unknown or another tenant's person is a 404
and logs nothing.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from dispatch.api.common import call, caller, check, check_limit, path_id
from dispatch.commerce.orders import reads as order_reads
from dispatch.core.errors import NotFound
from dispatch.identity.access import (
    ORDER_FIELDS,
    PURPOSE_HEADER,
    order_subjects,
    parse_access_purpose,
)
from dispatch.identity.access_log import log_access, read_profile
from dispatch.identity.consent_store import consent_history, consent_states
from dispatch.identity.users import AuthUser
from dispatch.web.failures import client_address

__all__ = ["READERS", "router"]

router = APIRouter()
READERS = ("tenant_admin", "support")
_PURPOSE_DOC = [{"name": PURPOSE_HEADER, "in": "header", "required": True, "schema": {"type": "string"},
                 "description": "why you read this person's data (3-255 characters, e.g. a ticket number); "
                                "written to the access log"}]


async def _look(request: Request, user: AuthUser, *, action: str, subject_type: str,
                seen: list[tuple[str, str, str | None]], fields: tuple[str, ...] | list[str], purpose: str) -> None:
    await call(log_access(request.app.state.db, user.tenant_id, user.user_id, action=action,
                          subject_type=subject_type, seen=seen, fields=list(fields), purpose=purpose, via="api",
                          ip_address=client_address(request.scope), user_agent=request.headers.get("user-agent")))


async def _reader(request: Request) -> tuple[AuthUser, str]:
    user = await caller(request, *READERS)
    return user, check(parse_access_purpose, request.headers.get(PURPOSE_HEADER))


@router.get("/v1/admin/orders", tags=["tenant admin"], openapi_extra={"parameters": _PURPOSE_DOC},
            summary="The tenant's orders, newest first (each customer seen is logged)")
async def admin_list_orders(request: Request, status: str | None = None, limit: int = 50) -> dict:
    user, purpose = await _reader(request)
    check_limit(limit)
    orders = await call(order_reads.list_orders(request.app.state.db, user.tenant_id, status=status, limit=limit))
    await _look(request, user, action="list_orders", subject_type="customer", seen=order_subjects(orders),
                fields=ORDER_FIELDS, purpose=purpose)
    return {"orders": orders}


@router.get("/v1/admin/orders/{order_id}", tags=["tenant admin"], openapi_extra={"parameters": _PURPOSE_DOC})
async def admin_order(request: Request, order_id: str) -> dict:
    user, purpose = await _reader(request)
    order = await call(order_reads.get_order(request.app.state.db, user.tenant_id, path_id(order_id, "order_id")))
    await _look(request, user, action="read_order", subject_type="customer", seen=order_subjects([order]),
                fields=ORDER_FIELDS, purpose=purpose)
    return order


async def _profile(request: Request, subject_type: str, subject_id: str) -> dict:
    user, purpose = await _reader(request)
    sid = path_id(subject_id, f"{subject_type}_id")
    profile = await call(read_profile(request.app.state.db, user.tenant_id, subject_type, sid))
    if profile is None:
        raise NotFound(f"no such {subject_type}", f"{subject_type}_id")
    states = await call(consent_states(request.app.state.db, user.tenant_id, subject_type, sid))
    fields = sorted(k for k, v in profile.items() if v not in (None, "", [], {}) and k != "user")
    fields += [f"user.{k}" for k, v in (profile.get("user") or {}).items() if v not in (None, "")]
    await _look(request, user, action=f"read_{subject_type}", subject_type=subject_type,
                seen=[(sid, f"{subject_type}s", sid)], fields=fields, purpose=purpose)
    return {subject_type: profile, "consents": {p: s.as_dict() for p, s in states.items()}}


@router.get("/v1/admin/customers/{customer_id}", tags=["tenant admin"], openapi_extra={"parameters": _PURPOSE_DOC},
            summary="A customer's profile, contact details and consents (logged)")
async def admin_customer(request: Request, customer_id: str) -> dict:
    return await _profile(request, "customer", customer_id)


@router.get("/v1/admin/drivers/{driver_id}", tags=["tenant admin"], openapi_extra={"parameters": _PURPOSE_DOC},
            summary="A driver's profile, contact details and consents (logged)")
async def admin_driver(request: Request, driver_id: str) -> dict:
    return await _profile(request, "driver", driver_id)


@router.get("/v1/admin/consents/{subject_type}/{subject_id}", tags=["tenant admin"],
            openapi_extra={"parameters": _PURPOSE_DOC}, summary="A person's consent records, newest first (logged)")
async def admin_consents(request: Request, subject_type: str, subject_id: str) -> dict[str, Any]:
    user, purpose = await _reader(request)
    if subject_type not in ("customer", "driver"):
        raise NotFound("subject_type must be customer or driver", "subject_type")
    sid = path_id(subject_id, "subject_id")
    if await call(read_profile(request.app.state.db, user.tenant_id, subject_type, sid)) is None:
        raise NotFound(f"no such {subject_type}", "subject_id")
    records = await call(consent_history(request.app.state.db, user.tenant_id, subject_type, sid))
    await _look(request, user, action="read_consents", subject_type=subject_type,
                seen=[(sid, "consent_records", sid)], fields=("purpose", "consent_given", "channel", "ip_address"),
                purpose=purpose)
    return {"subject_type": subject_type, "subject_id": sid, "records": records}
