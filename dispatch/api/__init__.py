"""The REST API of issue 5: tenant admins, vendors, customers and the payment gateway.

Every request but the payment callback carries a user's bearer token (``dispatch.users``);
the token names the tenant, so every query runs on that tenant's shard, in its schema, under
RLS: another tenant's object is simply not there (404, the same answer as a missing one).
Roles decide the routes (403 otherwise); a vendor acts only for their vendor, a customer only
for themselves (another vendor's or customer's order: 404).

Bodies are read raw (size limit, JSON) and validated by the domain's own parse functions, so
an error names the field: ``{"error": {"status", "reason", "field", "message"}}``. Each caller
has a sliding-window rate limit (seed section 3.2; ``dispatch.ratelimit``): 429 with
``Retry-After`` beyond it.

The payment gateway's callback is authenticated by an HMAC-SHA256 of the raw body with the
shared secret ``WAKALA_PAYMENT_WEBHOOK_SECRET`` (header ``X-Wakala-Signature: sha256=<hex>``);
without a configured secret the endpoint refuses everything.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from dispatch.commerce import catalogue, orders
from dispatch.gateway.ingest import Refused, bearer, parse_json, read_body
from dispatch.identity.auth import TokenRejected
from dispatch.identity.users import AuthUser, create_user, create_vendor, issue_user_token
from dispatch.tracking import links as tracking_links
from schema.errors import InvalidTenantId, TenantNotActive, UnknownTenant, WakalaError

__all__ = ["ApiError", "install", "router"]

router = APIRouter()
T = TypeVar("T")


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.field = status, reason, message, field
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"status": self.status, "reason": self.reason, "field": self.field,
                                       "message": self.message}}, status_code=self.status, headers=self.headers)


def install(app: FastAPI) -> None:
    """Add the routes and the error handlers to the engine's app."""
    app.include_router(router)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body")]
        return ApiError(422, "invalid_value", first.get("msg", "invalid request"),
                        ".".join(loc) or None).response()


def _domain(exc: WakalaError) -> ApiError:
    """A domain refusal as an API error (the domain errors carry status, reason and field)."""
    if isinstance(exc, UnknownTenant | InvalidTenantId | TenantNotActive):
        return ApiError(404, "not_found", "no such tenant", "tenant_id")
    status = getattr(exc, "status", None) or (404 if type(exc).__name__.endswith("NotFound") else 400)
    reason = getattr(exc, "reason", None) or ("not_found" if status == 404 else "invalid_request")
    message = getattr(exc, "message", None) or str(exc)
    return ApiError(status, reason, message, getattr(exc, "field", None))


async def call(awaitable: Awaitable[T]) -> T:
    try:
        return await awaitable
    except ApiError:
        raise
    except WakalaError as exc:
        raise _domain(exc) from None


def check(parse: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``call`` for the domain's (synchronous) parse functions."""
    try:
        return parse(*args, **kwargs)
    except WakalaError as exc:
        raise _domain(exc) from None


async def caller(request: Request, *roles: str) -> AuthUser:
    """The authenticated user, rate limited, holding one of ``roles`` (any role if none)."""
    state = request.app.state
    try:
        user: AuthUser = await state.users.verify(bearer(request.headers.get("authorization")))
    except TokenRejected as exc:
        raise ApiError(401, exc.reason, exc.message, "authorization",
                       headers={"WWW-Authenticate": "Bearer"}) from None
    if not await state.api_limiter.allow(f"user:{user.user_id}"):
        window = state.engine.api_rate_window_s
        raise ApiError(429, "rate_limited", f"more than {state.engine.api_rate_limit} requests in "
                       f"{window} s", headers={"Retry-After": str(window)})
    if roles and not user.roles & set(roles):
        raise ApiError(403, "forbidden", f"this needs the role {' or '.join(roles)}")
    return user


async def raw_body(request: Request) -> bytes:
    try:
        return await read_body(request, request.app.state.engine.max_body_bytes, "api")
    except Refused as exc:
        raise ApiError(exc.status, exc.reason, exc.message, exc.field) from None


async def body(request: Request, raw: bytes | None = None) -> Any:
    limit = request.app.state.engine.max_body_bytes
    try:
        return parse_json(await raw_body(request) if raw is None else raw, limit, "api", "body")
    except Refused as exc:
        raise ApiError(exc.status, exc.reason, exc.message, exc.field) from None


def _uuid(value: str, field: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ApiError(404, "not_found", f"no such {field.removesuffix('_id')}", field) from None


def _vendor(user: AuthUser) -> str:
    if user.vendor_id is None:
        raise ApiError(403, "forbidden", "this user acts for no vendor")
    return user.vendor_id


def _customer(user: AuthUser) -> str:
    if user.customer_id is None:
        raise ApiError(403, "forbidden", "this user is not a customer")
    return user.customer_id


def _reason(payload: Any, *, required: bool = True) -> str | None:
    if not isinstance(payload, dict):
        raise ApiError(422, "wrong_type", "the body must be a JSON object", "body")
    value = payload.get("reason")
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 500:
        raise ApiError(422, "missing_field", "reason (1-500 characters) is required", "reason")
    return value.strip()


def _doc(example: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI request body of a route that validates its JSON itself."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"type": "object"}, "example": example}}}}


def _actor(user: AuthUser) -> str:
    return user.user_id


# -- tenant admin ------------------------------------------------------------------------------


@router.post("/v1/admin/vendors", tags=["tenant admin"], status_code=201,
             openapi_extra=_doc({"business_name": "Mama Thoko Spaza", "address": {"street": "1 Vilakazi St"},
                                 "lat": -26.236, "lng": 27.909, "delivery_radius_m": 5000,
                                 "minimum_order_value": "30.00"}))
async def admin_create_vendor(request: Request) -> dict:
    user = await caller(request, "tenant_admin")
    return {"vendor_id": await call(create_vendor(request.app.state.db, user.tenant_id, await body(request)))}


@router.post("/v1/admin/users", tags=["tenant admin"], status_code=201,
             openapi_extra=_doc({"phone": "+27821234567", "name": "Thandi", "role": "customer"}))
async def admin_create_user(request: Request) -> dict:
    user = await caller(request, "tenant_admin")
    return await call(create_user(request.app.state.db, user.tenant_id, await body(request),
                                  granted_by=user.user_id))


@router.post("/v1/admin/users/{user_id}/tokens", tags=["tenant admin"], status_code=201,
             summary="Issue a bearer token for a user (shown once)")
async def admin_issue_token(request: Request, user_id: str) -> dict:
    user = await caller(request, "tenant_admin")
    issued = await call(issue_user_token(request.app.state.db, user.tenant_id, _uuid(user_id, "user_id")))
    return {"token": issued.token, "token_id": str(issued.token_id), "expires_at": issued.expires_at.isoformat()}


@router.post("/v1/admin/categories", tags=["tenant admin"], status_code=201,
             openapi_extra=_doc({"name": "Groceries"}))
async def admin_create_category(request: Request) -> dict:
    user = await caller(request, "tenant_admin")
    state = request.app.state
    return await call(catalogue.create_category(state.db, state.cache, user.tenant_id, await body(request),
                                                actor=_actor(user)))


@router.get("/v1/admin/orders", tags=["tenant admin"])
async def admin_list_orders(request: Request, status: str | None = None, limit: int = 50) -> dict:
    user = await caller(request, "tenant_admin")
    _limit(limit)
    return {"orders": await call(orders.list_orders(request.app.state.db, user.tenant_id, status=status,
                                                     limit=limit))}


def _limit(limit: int) -> None:
    if not 1 <= limit <= 200:
        raise ApiError(422, "invalid_value", "limit must be from 1 to 200", "limit")


# -- vendors -----------------------------------------------------------------------------------


@router.post("/v1/vendor/products", tags=["vendors"], status_code=201,
             openapi_extra=_doc({"sku": "MAIZE-10KG", "name": "Maize meal 10 kg", "price": "89.99",
                                 "description": "White star", "initial_stock": 20}))
async def vendor_create_product(request: Request) -> dict:
    user = await caller(request, "vendor")
    state = request.app.state
    return await call(catalogue.create_product(state.db, state.cache, user.tenant_id, _vendor(user),
                                               await body(request), actor=_actor(user)))


@router.patch("/v1/vendor/products/{product_id}", tags=["vendors"], openapi_extra=_doc({"price": "94.99"}))
async def vendor_update_product(request: Request, product_id: str) -> dict:
    user = await caller(request, "vendor")
    state = request.app.state
    return await call(catalogue.update_product(state.db, state.cache, user.tenant_id, _vendor(user),
                                               _uuid(product_id, "product_id"), await body(request),
                                               actor=_actor(user)))


@router.get("/v1/vendor/products/{product_id}", tags=["vendors"], summary="One of the vendor's products, active or not")
async def vendor_product(request: Request, product_id: str) -> dict:
    user = await caller(request, "vendor")
    state = request.app.state
    return await call(catalogue.get_product(state.db, state.cache, user.tenant_id, _uuid(product_id, "product_id"),
                                            include_inactive=True, vendor_id=_vendor(user)))


@router.post("/v1/vendor/products/{product_id}/variants", tags=["vendors"], status_code=201,
             openapi_extra=_doc({"sku": "MAIZE-5KG", "name": "5 kg", "price": "49.99"}))
async def vendor_create_variant(request: Request, product_id: str) -> dict:
    user = await caller(request, "vendor")
    state = request.app.state
    return await call(catalogue.create_variant(state.db, state.cache, user.tenant_id, _vendor(user),
                                               _uuid(product_id, "product_id"), await body(request),
                                               actor=_actor(user)))


@router.post("/v1/vendor/products/{product_id}/stock", tags=["vendors"],
             openapi_extra=_doc({"delta": 12, "reason": "restock"}))
async def vendor_adjust_stock(request: Request, product_id: str) -> dict:
    user = await caller(request, "vendor")
    state = request.app.state
    payload = await body(request)
    if not isinstance(payload, dict) or set(payload) - {"delta", "reason", "variant_id"}:
        raise ApiError(422, "unknown_field", "the body takes delta, reason and variant_id", "body")
    delta = payload.get("delta")
    if isinstance(delta, bool) or not isinstance(delta, int) or not -100_000 <= delta <= 100_000 or delta == 0:
        raise ApiError(422, "invalid_value", "delta must be a non-zero integer from -100000 to 100000", "delta")
    if payload.get("reason") not in ("restock", "adjustment"):
        raise ApiError(422, "invalid_value", "reason must be restock or adjustment", "reason")
    variant = payload.get("variant_id")
    if variant is not None and not isinstance(variant, str):
        raise ApiError(422, "wrong_type", "variant_id must be a UUID", "variant_id")
    return await call(catalogue.adjust_stock(
        state.db, state.cache, user.tenant_id, _vendor(user), _uuid(product_id, "product_id"),
        variant_id=None if variant is None else _uuid(variant, "variant_id"), delta=delta,
        reason=payload["reason"], actor=_actor(user)))


async def _party_orders(request: Request, role: str, status: str | None, limit: int) -> dict:
    """The caller's orders: a vendor's, or a customer's own."""
    user = await caller(request, role)
    _limit(limit)
    party = {"vendor_id": _vendor(user)} if role == "vendor" else {"customer_id": _customer(user)}
    return {"orders": await call(orders.list_orders(request.app.state.db, user.tenant_id, status=status,
                                                     limit=limit, **party))}


async def _party_order(request: Request, role: str, order_id: str) -> dict:
    """One order of the caller (404 for anyone else's)."""
    user = await caller(request, role)
    state = request.app.state
    party = {"vendor_id": _vendor(user)} if role == "vendor" else {"customer_id": _customer(user)}
    return await call(orders.get_order(state.db, user.tenant_id, _uuid(order_id, "order_id"),
                                       cache=state.cache, **party))


@router.get("/v1/vendor/orders", tags=["vendors"], summary="The vendor's orders, newest first")
async def vendor_orders(request: Request, status: str | None = None, limit: int = 50) -> dict:
    return await _party_orders(request, "vendor", status, limit)


@router.get("/v1/vendor/orders/{order_id}", tags=["vendors"])
async def vendor_order(request: Request, order_id: str) -> dict:
    return await _party_order(request, "vendor", order_id)


@router.post("/v1/vendor/orders/{order_id}/accept", tags=["vendors"])
async def vendor_accept(request: Request, order_id: str) -> dict:
    return await _decide(request, order_id, accept=True)


@router.post("/v1/vendor/orders/{order_id}/reject", tags=["vendors"], openapi_extra=_doc({"reason": "out of bread"}))
async def vendor_reject(request: Request, order_id: str) -> dict:
    return await _decide(request, order_id, accept=False)


async def _decide(request: Request, order_id: str, *, accept: bool) -> dict:
    user = await caller(request, "vendor")
    state = request.app.state
    reason = None if accept else _reason(await body(request))
    return await call(orders.vendor_decision(state.db, user.tenant_id, _vendor(user), _uuid(order_id, "order_id"),
                                             accept=accept, actor=_actor(user), reason=reason, cache=state.cache))


@router.post("/v1/vendor/orders/{order_id}/ready", tags=["vendors"],
             summary="The order is packed: a delivery is created and matched to a driver")
async def vendor_ready(request: Request, order_id: str) -> dict:
    user = await caller(request, "vendor")
    state = request.app.state
    return await call(orders.mark_ready(state.db, user.tenant_id, _vendor(user), _uuid(order_id, "order_id"),
                                        actor=_actor(user), cache=state.cache))


@router.post("/v1/vendor/orders/{order_id}/cancel", tags=["vendors"], openapi_extra=_doc({"reason": "closed early"}))
async def vendor_cancel(request: Request, order_id: str) -> dict:
    return await _party_cancel(request, "vendor", order_id)


async def _party_cancel(request: Request, role: str, order_id: str) -> dict:
    """Cancel one of the caller's orders (a vendor's, or a customer's own)."""
    user = await caller(request, role)
    state = request.app.state
    party = {"vendor_id": _vendor(user)} if role == "vendor" else {"customer_id": _customer(user)}
    return await call(orders.cancel_order(state.db, user.tenant_id, _uuid(order_id, "order_id"), actor=_actor(user),
                                          reason=_reason(await body(request)), cache=state.cache, **party))


@router.post("/v1/vendor/orders/{order_id}/tracking-link", tags=["vendors"], status_code=201,
             summary="A tracking link for the order's customer (shown once), e.g. to send on WhatsApp",
             responses={404: {"description": "not this vendor's order"},
                        409: {"description": "no delivery yet (before ready), or it ended too long ago"}})
async def vendor_tracking_link(request: Request, order_id: str) -> dict:
    user = await caller(request, "vendor")
    return await _tracking_link(request, user, order_id, vendor_id=_vendor(user))


async def _tracking_link(request: Request, user: AuthUser, order_id: str, **owner: str) -> dict:
    state = request.app.state
    issued = await call(tracking_links.issue_link(state.db, user.tenant_id, _uuid(order_id, "order_id"),
                                                  grace_s=state.engine.tracking_link_grace_s, **owner))
    return {"token": issued.token, "url": issued.url, "delivery_id": issued.delivery_id}


# -- customers ---------------------------------------------------------------------------------


@router.get("/v1/catalogue/products", tags=["customers"], summary="Browse the catalogue (cached)")
async def browse(request: Request, category_id: str | None = None, vendor_id: str | None = None,
                 page: int = 1, page_size: int = 20) -> dict:
    user = await caller(request)
    state = request.app.state
    return await call(catalogue.list_products(
        state.db, state.cache, user.tenant_id,
        category_id=None if category_id is None else _uuid(category_id, "category_id"),
        vendor_id=None if vendor_id is None else _uuid(vendor_id, "vendor_id"), page=page, page_size=page_size))


@router.get("/v1/catalogue/products/{product_id}", tags=["customers"])
async def product(request: Request, product_id: str) -> dict:
    user = await caller(request)
    state = request.app.state
    return await call(catalogue.get_product(state.db, state.cache, user.tenant_id, _uuid(product_id, "product_id")))


@router.get("/v1/catalogue/search", tags=["customers"], summary="Search names and descriptions (cached)")
async def search(request: Request, q: str, page: int = 1, page_size: int = 20) -> dict:
    user = await caller(request)
    state = request.app.state
    return await call(catalogue.search_products(state.db, state.cache, user.tenant_id, q, page=page,
                                                page_size=page_size))


@router.post("/v1/orders", tags=["customers"], status_code=201, openapi_extra=_doc({
    "vendor_id": "3f2b8c1e-9a4d-4c1b-8e2f-0a1b2c3d4e5f",
    "lines": [{"product_id": "0b1c2d3e-4f50-4617-8283-949596979899", "quantity": 2}],
    "delivery_lat": -26.24, "delivery_lng": 27.92, "delivery_address": {"street": "12 Mahalefele Rd"},
    "promo_codes": ["WELCOME10"], "payment_method": "cash"}))
async def place(request: Request) -> dict:
    user = await caller(request, "customer")
    state = request.app.state
    new = check(orders.parse_new_order, await body(request), customer_id=_customer(user))
    return await call(orders.place_order(state.db, user.tenant_id, new, actor=_actor(user), cache=state.cache))


@router.get("/v1/orders", tags=["customers"])
async def my_orders(request: Request, status: str | None = None, limit: int = 50) -> dict:
    return await _party_orders(request, "customer", status, limit)


@router.get("/v1/orders/{order_id}", tags=["customers"])
async def my_order(request: Request, order_id: str) -> dict:
    return await _party_order(request, "customer", order_id)


@router.post("/v1/orders/{order_id}/cancel", tags=["customers"], openapi_extra=_doc({"reason": "ordered twice"}))
async def cancel(request: Request, order_id: str) -> dict:
    return await _party_cancel(request, "customer", order_id)


@router.post("/v1/orders/{order_id}/tracking-link", tags=["customers"], status_code=201,
             summary="A link to watch the order's delivery live (shown once; GET /t/{token})",
             responses={404: {"description": "not this customer's order"},
                        409: {"description": "no delivery yet (before ready), or it ended too long ago"}})
async def tracking_link(request: Request, order_id: str) -> dict:
    user = await caller(request, "customer")
    return await _tracking_link(request, user, order_id, customer_id=_customer(user))


@router.post("/v1/orders/{order_id}/return", tags=["customers"], openapi_extra=_doc({
    "reason": "damaged", "lines": [{"product_id": "0b1c2d3e-4f50-4617-8283-949596979899", "quantity": 1}]}))
async def return_(request: Request, order_id: str) -> dict:
    user = await caller(request, "customer")
    state = request.app.state
    payload = await body(request)
    reason = _reason(payload)
    if set(payload) - {"reason", "lines"}:
        raise ApiError(422, "unknown_field", "a return takes reason and lines", "body")
    lines = None if payload.get("lines") is None else check(orders.parse_lines, payload["lines"])
    return await call(orders.return_order(state.db, user.tenant_id, _uuid(order_id, "order_id"),
                                          customer_id=_customer(user), lines=lines, reason=reason,
                                          actor=_actor(user), cache=state.cache))


# -- the payment gateway -----------------------------------------------------------------------

SIGNATURE_HEADER = "x-wakala-signature"


def sign(secret: str, raw: bytes) -> str:
    """The signature header value the gateway sends for ``raw`` (used by tests and the demo)."""
    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


@router.post("/v1/payments/callback", tags=["payments"], summary="Payment gateway callback (HMAC-signed)",
             openapi_extra=_doc({"tenant_id": "…", "order_id": "…", "idempotency_key": "pay_8f2…",
                                 "amount": "145.00", "status": "succeeded", "gateway": "ozow",
                                 "gateway_reference": "OZ-123"}))
async def payment_callback(request: Request) -> dict:
    state = request.app.state
    secret = state.engine.payment_webhook_secret
    raw = await raw_body(request)
    if not secret:
        raise ApiError(503, "not_configured", "set WAKALA_PAYMENT_WEBHOOK_SECRET to accept payment callbacks")
    given = request.headers.get(SIGNATURE_HEADER, "")
    if not hmac.compare_digest(given.encode(), sign(secret, raw).encode()):
        raise ApiError(401, "bad_signature", "the callback signature does not match", SIGNATURE_HEADER)
    payload = await body(request, raw)
    if not isinstance(payload, dict):
        raise ApiError(422, "wrong_type", "the body must be a JSON object", "body")
    allowed = {"tenant_id", "order_id", "idempotency_key", "amount", "status", "gateway", "gateway_reference"}
    if unknown := sorted(set(payload) - allowed):
        raise ApiError(422, "unknown_field", f"{unknown[0]} is not a field of a callback", unknown[0])
    key = payload.get("idempotency_key")
    if not isinstance(key, str) or not 8 <= len(key) <= 200:
        raise ApiError(422, "invalid_value", "idempotency_key must be 8-200 characters", "idempotency_key")
    if payload.get("status") not in ("succeeded", "failed"):
        raise ApiError(422, "invalid_value", "status must be succeeded or failed", "status")
    gateway = payload.get("gateway")
    if not isinstance(gateway, str) or not 1 <= len(gateway) <= 50:
        raise ApiError(422, "invalid_value", "gateway must be 1-50 characters", "gateway")
    reference = payload.get("gateway_reference")
    if reference is not None and (not isinstance(reference, str) or len(reference) > 255):
        raise ApiError(422, "invalid_value", "gateway_reference must be at most 255 characters", "gateway_reference")
    try:
        raw_amount = payload.get("amount")
        if isinstance(raw_amount, bool) or not isinstance(raw_amount, str | int):
            raise InvalidOperation
        amount = Decimal(str(raw_amount))
        if not amount.is_finite() or not 0 <= amount < 1_000_000 or amount != amount.quantize(Decimal("0.01")):
            raise InvalidOperation
    except InvalidOperation:
        raise ApiError(422, "invalid_value", "amount must be a decimal string with at most 2 places", "amount") from None
    tenant = payload.get("tenant_id")
    if not isinstance(tenant, str):
        raise ApiError(422, "wrong_type", "tenant_id must be a UUID", "tenant_id")
    order_id = payload.get("order_id")
    if not isinstance(order_id, str):
        raise ApiError(422, "wrong_type", "order_id must be a UUID", "order_id")
    return await call(orders.record_payment(
        state.db, _uuid(tenant, "tenant_id"), _uuid(order_id, "order_id"), idempotency_key=key, amount=amount,
        status=payload["status"], gateway=gateway, gateway_reference=reference, cache=state.cache))

