"""Data subject requests for tenant admins (``/v1/admin/subject-requests``, tag ``tenant admin``).

A request is recorded and executed in one call, and only for a verified requester: the body
names the type (access, correct, erase, restrict), the subject (customer, driver or user, by
id), how the requester was verified (``verification.method`` from the vocabulary in
``dispatch.identity.subjects``, and a reference) and why. The answer is the request's row
(status, due date, who recorded it) and, for access, the export document. The export is never
stored (a copy would outlive an erasure): ``GET .../{id}/export`` makes it afresh and logs the
look again; ``GET .../{id}/export.zip`` does the same and answers the document as a zip, a CSV
per table beside the JSON (``dispatch.identity.subject_archive``), for people who open it in a
spreadsheet. Another tenant's subject or request is a 404 like an unknown one; nothing is
recorded for a refused request.

``HOOKS`` composes what sits above identity (matching's per-driver keys, tracking's link
revocation); the CLI uses the same.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from redis.asyncio import Redis

from dispatch.api.common import body, call, caller, check, json_body_doc
from dispatch.identity.subject_archive import access_archive, archive_name
from dispatch.identity.subject_requests import Hooks, export_again, get_request, submit
from dispatch.identity.subjects import parse_request
from dispatch.matching.keys import deliveries_key, offer_key, socket_key
from dispatch.tracking.links import revoke_links
from schema.db import TenantDatabase
from streams.keys import location_key, state_key

__all__ = ["HOOKS", "export_zip", "router"]

router = APIRouter()


def driver_keys(driver_id: str) -> list[str]:
    """Every Redis key named for one driver: live location and state, offer, deliveries, socket."""
    return [location_key(driver_id), state_key(driver_id), offer_key(driver_id), deliveries_key(driver_id),
            socket_key(driver_id)]


HOOKS = Hooks(driver_keys=driver_keys, revoke_links=revoke_links)


async def export_zip(db: TenantDatabase, redis: Redis | None, tenant_id: object, request_id: object, *,
                     viewer: str | None, via: str) -> tuple[dict[str, Any], bytes]:
    """The request's row and its access document as zip bytes. The document is ``export_again``'s:
    made afresh, only for a completed access request of this tenant (else NotFound), and the look
    logged exactly as for the JSON export. Used by the route below and ``wakala dsr export``."""
    row = await get_request(db, tenant_id, request_id)
    export = await export_again(db, redis, tenant_id, row["id"], viewer=viewer, via=via, hooks=HOOKS)
    return row, access_archive(export, row, made_at=datetime.now(UTC))


@router.post("/v1/admin/subject-requests", tags=["tenant admin"], status_code=201,
             summary="Record and execute a data subject request (access, correct, erase, restrict)",
             openapi_extra=json_body_doc({"type": "access", "subject_type": "customer",
                                          "subject_id": "5b0c7f3e-8d5e-4c5a-9b1e-0d6f1f2a3b4c",
                                          "verification": {"method": "otp_registered_phone",
                                                           "reference": "SMS id 88213"},
                                          "reason": "the customer asked by phone for a copy of their data"}))
async def create_subject_request(request: Request) -> Any:
    user = await caller(request, "tenant_admin")
    parsed = check(parse_request, await body(request))
    state = request.app.state
    return await call(submit(state.db, state.redis, user.tenant_id, parsed, requested_by=user.user_id,
                             via="api", hooks=HOOKS))


@router.get("/v1/admin/subject-requests/{request_id}", tags=["tenant admin"])
async def read_subject_request(request: Request, request_id: str) -> dict:
    user = await caller(request, "tenant_admin")
    return await call(get_request(request.app.state.db, user.tenant_id, request_id))


@router.get("/v1/admin/subject-requests/{request_id}/export", tags=["tenant admin"],
            summary="The access document of a completed access request, made afresh and logged")
async def read_subject_export(request: Request, request_id: str) -> dict:
    user = await caller(request, "tenant_admin")
    state = request.app.state
    return await call(export_again(state.db, state.redis, user.tenant_id, request_id, viewer=user.user_id,
                                   via="api", hooks=HOOKS))


@router.get("/v1/admin/subject-requests/{request_id}/export.zip", tags=["tenant admin"], response_class=Response,
            summary="The access export as a zip: a CSV per table, the JSON document and a README; logged",
            responses={200: {"description": "the archive (an attachment)", "content": {"application/zip": {}}}})
async def read_subject_export_zip(request: Request, request_id: str) -> Response:
    user = await caller(request, "tenant_admin")
    state = request.app.state
    row, data = await call(export_zip(state.db, state.redis, user.tenant_id, request_id, viewer=user.user_id,
                                      via="api"))
    return Response(data, media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{archive_name(row)}"',
                             "Cache-Control": "no-store"})
