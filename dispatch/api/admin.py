"""Tenant admins' routes (``/v1/admin/...``, tag ``tenant admin``): vendors, users and their
tokens, categories, the payment-callback secret (reads of people's data are
``dispatch.api.support``). Each needs the ``tenant_admin`` role.
Creations take an ``Idempotency-Key`` (``dispatch.api.idempotency.once``); a token is a
secret shown once, so its key is only validated, and the tenant's payment-callback secret is
write-only (never answered back), so setting it again is the retry."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from dispatch.api.common import actor, body, call, caller, json_body_doc, path_id
from dispatch.api.idempotency import key_of, once
from dispatch.commerce import payment_secrets
from dispatch.commerce.catalogue import writes as catalogue_writes
from dispatch.core.errors import UNKNOWN_FIELD, WRONG_TYPE, Refusal
from dispatch.identity.users import create_user, create_vendor, issue_user_token

__all__ = ["router"]

router = APIRouter()


@router.post("/v1/admin/vendors", tags=["tenant admin"], status_code=201,
             openapi_extra=json_body_doc({"business_name": "Mama Thoko Spaza", "address": {"street": "1 Vilakazi St"},
                                          "lat": -26.236, "lng": 27.909, "delivery_radius_m": 5000,
                                          "minimum_order_value": "30.00"}))
async def admin_create_vendor(request: Request) -> Any:
    user = await caller(request, "tenant_admin")

    async def act() -> dict:
        return {"vendor_id": await call(create_vendor(request.app.state.db, user.tenant_id, await body(request)))}

    return await once(request, user.tenant_id, user.user_id, act)


@router.post("/v1/admin/users", tags=["tenant admin"], status_code=201,
             openapi_extra=json_body_doc({"phone": "+27821234567", "name": "Thandi", "role": "customer"}))
async def admin_create_user(request: Request) -> Any:
    user = await caller(request, "tenant_admin")

    async def act() -> dict:
        return await call(create_user(request.app.state.db, user.tenant_id, await body(request),
                                      granted_by=user.user_id))

    return await once(request, user.tenant_id, user.user_id, act)


@router.post("/v1/admin/users/{user_id}/tokens", tags=["tenant admin"], status_code=201,
             summary="Issue a bearer token for a user (shown once)")
async def admin_issue_token(request: Request, user_id: str) -> dict:
    user = await caller(request, "tenant_admin")
    key_of(request)   # validated only: the token is a secret shown once, never stored
    issued = await call(issue_user_token(request.app.state.db, user.tenant_id, path_id(user_id, "user_id")))
    return {"token": issued.token, "token_id": str(issued.token_id), "expires_at": issued.expires_at.isoformat()}


@router.post("/v1/admin/categories", tags=["tenant admin"], status_code=201,
             openapi_extra=json_body_doc({"name": "Groceries"}))
async def admin_create_category(request: Request) -> Any:
    user = await caller(request, "tenant_admin")
    state = request.app.state

    async def act() -> dict:
        return await call(catalogue_writes.create_category(state.db, state.cache, user.tenant_id,
                                                           await body(request), actor=actor(user)))

    return await once(request, user.tenant_id, user.user_id, act)


@router.put("/v1/admin/payment-secret", tags=["tenant admin"],
             summary="Set or rotate the tenant's payment-callback secret (generated and shown once if not given)",
             openapi_extra=json_body_doc({"secret": "64 hex characters, or leave out to have one generated"}))
async def admin_set_payment_secret(request: Request) -> dict:
    user = await caller(request, "tenant_admin")
    payload = await body(request)
    if not isinstance(payload, dict):
        raise Refusal(422, WRONG_TYPE, "the body must be a JSON object", "body")
    if set(payload) - {"secret"}:
        raise Refusal(422, UNKNOWN_FIELD, "the body takes only secret", "body")
    generated = "secret" not in payload
    secret = payment_secrets.new_secret() if generated else payment_secrets.check_secret(payload["secret"])
    updated = await call(payment_secrets.set_webhook_secret(request.app.state.db, user.tenant_id, secret))
    return {"updated_at": updated, **({"secret": secret} if generated else {})}
