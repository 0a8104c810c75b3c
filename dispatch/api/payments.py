"""The payment gateway's callback (``POST /v1/payments/callback``, tag ``payments``).

The only route without a user's token: the gateway authenticates each callback by an
HMAC-SHA256 of the raw body with the shared secret ``WAKALA_PAYMENT_WEBHOOK_SECRET``
(header ``X-Wakala-Signature: sha256=<hex>``), checked in constant time before the body is
parsed; without a configured secret the endpoint refuses everything (503). The body names
its tenant, so the payment is recorded in that tenant's schema; a replay of the same
``idempotency_key`` changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
from decimal import Decimal, InvalidOperation

from fastapi import APIRouter, Request

from dispatch.api.common import body, call, json_body_doc, path_id, raw_body
from dispatch.commerce.orders import payments as order_payments
from dispatch.core.errors import (
    BAD_SIGNATURE,
    INVALID_VALUE,
    NOT_CONFIGURED,
    UNKNOWN_FIELD,
    WRONG_TYPE,
    Refusal,
)

__all__ = ["SIGNATURE_HEADER", "router", "sign"]

router = APIRouter()

SIGNATURE_HEADER = "x-wakala-signature"


def sign(secret: str, raw: bytes) -> str:
    """The signature header value the gateway sends for ``raw`` (used by tests and the demo)."""
    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


@router.post("/v1/payments/callback", tags=["payments"], summary="Payment gateway callback (HMAC-signed)",
             openapi_extra=json_body_doc({"tenant_id": "…", "order_id": "…", "idempotency_key": "pay_8f2…",
                                          "amount": "145.00", "status": "succeeded", "gateway": "ozow",
                                          "gateway_reference": "OZ-123"}))
async def payment_callback(request: Request) -> dict:
    state = request.app.state
    secret = state.engine.payment_webhook_secret
    raw = await raw_body(request)
    if not secret:
        raise Refusal(503, NOT_CONFIGURED, "set WAKALA_PAYMENT_WEBHOOK_SECRET to accept payment callbacks")
    given = request.headers.get(SIGNATURE_HEADER, "")
    if not hmac.compare_digest(given.encode(), sign(secret, raw).encode()):
        raise Refusal(401, BAD_SIGNATURE, "the callback signature does not match", SIGNATURE_HEADER)
    payload = await body(request, raw)
    if not isinstance(payload, dict):
        raise Refusal(422, WRONG_TYPE, "the body must be a JSON object", "body")
    allowed = {"tenant_id", "order_id", "idempotency_key", "amount", "status", "gateway", "gateway_reference"}
    if unknown := sorted(set(payload) - allowed):
        raise Refusal(422, UNKNOWN_FIELD, f"{unknown[0]} is not a field of a callback", unknown[0])
    key = payload.get("idempotency_key")
    if not isinstance(key, str) or not 8 <= len(key) <= 200:
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
    tenant = payload.get("tenant_id")
    if not isinstance(tenant, str):
        raise Refusal(422, WRONG_TYPE, "tenant_id must be a UUID", "tenant_id")
    order_id = payload.get("order_id")
    if not isinstance(order_id, str):
        raise Refusal(422, WRONG_TYPE, "order_id must be a UUID", "order_id")
    return await call(order_payments.record_payment(
        state.db, path_id(tenant, "tenant_id"), path_id(order_id, "order_id"), idempotency_key=key, amount=amount,
        status=payload["status"], gateway=gateway, gateway_reference=reference, cache=state.cache))


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
