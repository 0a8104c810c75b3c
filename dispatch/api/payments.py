"""The payment gateway's callback (``POST /v1/payments/callback``, tag ``payments``).

The only route without a user's token: the gateway signs each callback with the tenant's
secret and a timestamp (``X-Wakala-Signature: t=<unix>,v1=<hex>``; the rules, the old form
and its transition window are in ``dispatch.commerce.payment_signatures``). The body names
its tenant, so the body is parsed (size-limited) to find whose secret to check, and
nothing else is read or written before the signature holds. An unknown tenant is refused
exactly like a wrong signature (401 ``bad_signature``), so the route tells an outsider
nothing about which tenants exist. Without any secret (the tenant has none and
``WAKALA_PAYMENT_WEBHOOK_SECRET`` is unset) it answers 503 ``not_configured``.

The payment is recorded in that tenant's schema; a replay of the same ``idempotency_key``
(body) changes nothing, and an ``Idempotency-Key`` header is kept in the same transaction.
The secret is read in that transaction too, as its first statement: a callback costs one
transaction, and a refused signature rolls it back before anything else is read.
"""

from __future__ import annotations

import logging
import time
from decimal import Decimal, InvalidOperation
from typing import Any

from fastapi import APIRouter, Request

from dispatch.api.common import body, call, json_body_doc, path_id, raw_body
from dispatch.api.idempotency import answer, request_of
from dispatch.commerce import payment_secrets
from dispatch.commerce import payment_signatures as signatures
from dispatch.commerce.orders import payments as order_payments
from dispatch.commerce.orders.records import forget_cached
from dispatch.core.errors import (
    INVALID_VALUE,
    NOT_CONFIGURED,
    UNKNOWN_FIELD,
    WRONG_TYPE,
    Refusal,
)
from dispatch.core.ids import InvalidId, canonical_uuid
from dispatch.core.metrics import PAYMENTS
from schema.errors import InvalidTenantId, TenantNotActive, UnknownTenant

__all__ = ["SIGNATURE_HEADER", "router", "sign", "sign_v1"]

log = logging.getLogger(__name__)

router = APIRouter()

SIGNATURE_HEADER = signatures.HEADER.lower()
GATEWAY_CALLER = "gateway"   # whose Idempotency-Keys a callback's are
_DEPRECATION_LOG_S = 3600
_deprecation_logged: dict[str, float] = {}   # tenant -> when its old-form warning was last logged


def sign(secret: str, raw: bytes, timestamp: int | None = None) -> str:
    """The signature header value for ``raw``: timestamped (now, or ``timestamp``)."""
    return signatures.sign_v1(secret, raw, int(time.time()) if timestamp is None else timestamp)


sign_v1 = signatures.sign_v1


def _tenant_of(payload: Any) -> str:
    """The tenant the body names; a body without a valid one cannot be verified: 401 like a
    bad signature."""
    tenant = payload.get("tenant_id") if isinstance(payload, dict) else None
    try:
        if not isinstance(tenant, str):
            raise InvalidId("tenant_id", tenant)
        return canonical_uuid(tenant, "tenant_id")
    except InvalidId:
        raise signatures.refused("the callback signature does not match") from None


def _check_signature(request: Request, raw: bytes, tenant: str, own: str | None) -> None:
    engine = request.app.state.engine
    signature = signatures.parse_signature(request.headers.get(SIGNATURE_HEADER))
    secret = own or engine.payment_webhook_secret
    if not secret:
        raise Refusal(503, NOT_CONFIGURED, "no secret signs this tenant's payment callbacks: set the "
                      "tenant's own (PUT /v1/admin/payment-secret) or WAKALA_PAYMENT_WEBHOOK_SECRET")
    if signature.legacy and own:
        raise signatures.refused("this tenant signs its callbacks with its own secret: send "
                                 "t=<unix>,v1=<hex>; the sha256= form is no longer accepted")
    signatures.verify(signature, raw, secret, now=time.time(), tolerance_s=engine.payment_signature_tolerance_s)
    if signature.legacy:
        now = time.monotonic()
        if now - _deprecation_logged.get(tenant, -_DEPRECATION_LOG_S) >= _DEPRECATION_LOG_S:
            if len(_deprecation_logged) > 10_000:
                _deprecation_logged.clear()
            _deprecation_logged[tenant] = now
            log.warning("tenant %s: payment callback signed in the deprecated sha256= form with the "
                        "platform secret; set the tenant's own secret and sign t=<unix>,v1=<hex>", tenant)


@router.post("/v1/payments/callback", tags=["payments"], summary="Payment gateway callback (HMAC-signed)",
             openapi_extra=json_body_doc({"tenant_id": "…", "order_id": "…", "idempotency_key": "pay_8f2…",
                                          "amount": "145.00", "status": "succeeded", "gateway": "ozow",
                                          "gateway_reference": "OZ-123"}))
async def payment_callback(request: Request) -> Any:
    state = request.app.state
    raw = await raw_body(request)
    payload = await body(request, raw)
    tenant = _tenant_of(payload)
    # One transaction: the tenant's secret is read, the signature checked (a refusal rolls back
    # with nothing written), then the payment recorded.
    try:
        async with state.db.tenant_transaction(tenant) as tx:
            _check_signature(request, raw, tenant, await payment_secrets.read_webhook_secret(tx))
            key = await request_of(request, GATEWAY_CALLER, raw)
            fields = _callback_fields(payload)
            order_id = fields.pop("order_id")
            result, products = await call(order_payments.record_payment_in(
                tx, tenant, order_id, idempotency=key, **fields))
    except (InvalidTenantId, UnknownTenant, TenantNotActive):
        # an unknown tenant is refused exactly like a wrong signature
        raise signatures.refused("the callback signature does not match") from None
    PAYMENTS.labels(str(fields["status"])).inc()
    await forget_cached(state.cache, tenant, order_id, products)
    return answer(result)


def _callback_fields(payload: dict) -> dict[str, Any]:
    """The callback's fields, checked (422 naming the field), as ``record_payment_in`` takes them."""
    allowed = {"tenant_id", "order_id", "idempotency_key", "amount", "status", "gateway", "gateway_reference"}
    if unknown := sorted(set(payload) - allowed):
        raise Refusal(422, UNKNOWN_FIELD, f"{unknown[0]} is not a field of a callback", unknown[0])
    event_key = payload.get("idempotency_key")
    if not isinstance(event_key, str) or not 8 <= len(event_key) <= 200:
        raise Refusal(422, INVALID_VALUE, "idempotency_key must be 8-200 characters", "idempotency_key")
    if payload.get("status") not in ("succeeded", "failed"):
        raise Refusal(422, INVALID_VALUE, "status must be succeeded or failed", "status")
    gateway = payload.get("gateway")
    if not isinstance(gateway, str) or not 1 <= len(gateway) <= 50:
        raise Refusal(422, INVALID_VALUE, "gateway must be 1-50 characters", "gateway")
    reference = payload.get("gateway_reference")
    if reference is not None and (not isinstance(reference, str) or len(reference) > 255):
        raise Refusal(422, INVALID_VALUE, "gateway_reference must be at most 255 characters", "gateway_reference")
    amount = _amount(payload.get("amount"))
    order_id = payload.get("order_id")
    if not isinstance(order_id, str):
        raise Refusal(422, WRONG_TYPE, "order_id must be a UUID", "order_id")
    return {"order_id": path_id(order_id, "order_id"), "idempotency_key": event_key, "amount": amount,
            "status": payload["status"], "gateway": gateway, "gateway_reference": reference}


def _amount(value: object) -> Decimal:
    """A decimal string (or integer) from 0 to 999999.99 with at most 2 places; floats are refused."""
    try:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise InvalidOperation
        amount = Decimal(str(value))
        if not amount.is_finite() or not 0 <= amount < 1_000_000 or amount != amount.quantize(Decimal("0.01")):
            raise InvalidOperation
    except InvalidOperation:
        raise Refusal(422, INVALID_VALUE, "amount must be a decimal string with at most 2 places", "amount") from None
    return amount
