"""Payment callbacks: one ``payments`` row per attempt, idempotent on the gateway's key.

``record_payment`` locks the order, then looks the idempotency key up: a callback delivered
again (same key, order, amount and status) returns what the first one returned and writes
nothing; the same key with another order, amount or status is refused (409
``idempotency_conflict``). Otherwise it inserts the attempt and applies its effect on the
order in the same transaction (``payment_outcome``, pure):

==========================================  =================================================
order                                       effect of a successful / failed payment
==========================================  =================================================
pending                                     ``pay``: paid, stock held until fulfilment /
                                            ``fail_payment``: cancelled, stock and promotion
                                            uses given back
cancelled, rejected, failed                 the money is owed back: a refund of this payment /
                                            recorded, nothing else
already paid                                a double charge: a refund of this payment /
                                            recorded, nothing else
accepted and later, not yet paid            (cash on delivery paid online) payment status
                                            ``paid`` / recorded, nothing else
==========================================  =================================================

A successful payment must be for the order's total (422 ``amount_mismatch`` otherwise:
the gateway charged something we did not ask for, and an operator must look at it).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import asyncpg

from dispatch.commerce import idempotency as idem
from dispatch.commerce.orders.input import parse_order_id
from dispatch.commerce.orders.lifecycle import OrderAction, OrderNotFound, OrderStatus, next_status
from dispatch.commerce.orders.records import (
    SET_PAYMENT_STATUS_SQL,
    change_status,
    forget_cached,
    give_back,
    locked_order,
    write_event,
)
from dispatch.core.cache import Cache
from dispatch.core.errors import AMOUNT_MISMATCH, IDEMPOTENCY_CONFLICT, INVALID_VALUE, Refusal
from schema.db import TenantDatabase
from schema.tenants import parse_tenant_id

__all__ = ["PAYMENT_STATUSES", "PaymentOutcome", "payment_outcome", "record_payment", "record_payment_in"]

SUCCEEDED, FAILED = "succeeded", "failed"
PAYMENT_STATUSES = (SUCCEEDED, FAILED)
MAX_KEY = 255
MAX_AMOUNT = Decimal("99999999.99")   # DECIMAL(10,2)

# The order locked and the payment already recorded under this key, in one round trip. The
# payment is read with the statement's snapshot, taken before the order lock was granted, so
# a concurrent delivery of the same callback that held the lock can be missed here; its row
# then makes the INSERT below conflict, and the replay is answered from a fresh read.
LOCK_WITH_PAYMENT_SQL = """
SELECT o.id, o.order_number, o.status, o.customer_id, o.vendor_id, o.payment_method,
       o.payment_status, o.total_amount, o.metadata,
       p.id AS p_id, p.order_id AS p_order_id, p.idempotency_key AS p_idempotency_key,
       p.status AS p_status, p.amount AS p_amount, p.currency AS p_currency, p.gateway AS p_gateway,
       p.gateway_reference AS p_gateway_reference, p.metadata AS p_metadata,
       p.created_at AS p_created_at
FROM orders o LEFT JOIN payments p ON p.idempotency_key = $2
WHERE o.id = $1
FOR UPDATE OF o
"""
PAYMENT_BY_KEY_SQL = """
SELECT id, order_id, idempotency_key, status, amount, currency, gateway, gateway_reference,
       metadata, created_at
FROM payments WHERE idempotency_key = $1
"""
INSERT_PAYMENT_SQL = """
INSERT INTO payments (order_id, idempotency_key, gateway, gateway_reference, method, amount,
                      status, processed_at, metadata)
VALUES ($1, $2, $3, $4, $5, $6, $7, now(), $8::jsonb)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id, order_id, idempotency_key, status, amount, currency, gateway, gateway_reference,
          metadata, created_at
"""
REFUND_PAYMENT_SQL = """
INSERT INTO refunds (order_id, payment_id, amount, method, reason) VALUES ($1, $2, $3, $4, $5)
"""
_LATE = frozenset({OrderStatus.CANCELLED, OrderStatus.REJECTED, OrderStatus.FAILED})


@dataclass(frozen=True)
class PaymentOutcome:
    action: OrderAction | None      # the order transition, if any
    payment_status: str | None      # orders.payment_status afterwards (None: unchanged)
    refund: bool                    # this payment is owed back


def payment_outcome(order_status: OrderStatus, payment_status: str | None,
                    status: str) -> PaymentOutcome:
    """What a payment attempt does to an order (see the module's table)."""
    if order_status is OrderStatus.PENDING:
        if status == SUCCEEDED:
            return PaymentOutcome(OrderAction.PAY, "paid", False)
        return PaymentOutcome(OrderAction.FAIL_PAYMENT, "failed", False)
    if status == FAILED:
        return PaymentOutcome(None, None, False)
    if order_status in _LATE:
        return PaymentOutcome(None, "refund_pending", True)
    if payment_status == "paid":
        return PaymentOutcome(None, None, True)
    return PaymentOutcome(None, "paid", False)


def _refuse(reason: str, message: str, field: str, status: int = 422) -> Refusal:
    return Refusal(status, reason, message, field)


def _amount(value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, Decimal | str | int):
        raise _refuse("wrong_type", "amount must be a Decimal (never a float)", "amount")
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise _refuse(INVALID_VALUE, "amount is not a decimal number", "amount") from None
    if not amount.is_finite() or not 0 <= amount <= MAX_AMOUNT or amount != amount.quantize(Decimal("0.01")):
        raise _refuse(INVALID_VALUE, "amount must be 0 or more, in cents", "amount")
    return amount.quantize(Decimal("0.01"))


def _result(row: asyncpg.Record, *, replayed: bool) -> dict[str, Any]:
    meta = json.loads(row["metadata"]) if isinstance(row["metadata"], str) else dict(row["metadata"])
    return {
        "payment_id": str(row["id"]), "order_id": str(row["order_id"]),
        "idempotency_key": row["idempotency_key"], "status": row["status"],
        "amount": str(row["amount"]), "currency": row["currency"], "gateway": row["gateway"],
        "gateway_reference": row["gateway_reference"], "order_status": meta.get("order_status"),
        "payment_status": meta.get("payment_status"), "refund_amount": meta.get("refund_amount"),
        "created_at": row["created_at"].isoformat(), "replayed": replayed,
    }


async def record_payment(
    db: TenantDatabase, tenant_id: object, order_id: uuid.UUID | str, *, idempotency_key: str,
    amount: Decimal, status: str, gateway: str, gateway_reference: str | None,
    cache: Cache | None = None, idempotency: idem.IdempotentRequest | None = None,
) -> dict[str, Any]:
    """Record one payment attempt of an order (a gateway callback); see the module's table.

    ``idempotency``: the request's ``Idempotency-Key``, looked up and stored in this
    transaction (``dispatch.commerce.idempotency``); a retry gets the first answer back.

    Returns ``payment_id, order_id, idempotency_key, status, amount, currency, gateway,
    gateway_reference, order_status, payment_status, refund_amount, created_at, replayed``
    (``replayed`` is the only difference between a first delivery and a replay).
    Raises OrderNotFound, Refusal (422 input; 422 ``amount_mismatch``; 409
    ``idempotency_conflict``), with nothing written.
    """
    tenant = str(parse_tenant_id(tenant_id))
    async with db.tenant_transaction(tenant) as tx:
        result, products = await record_payment_in(
            tx, tenant, order_id, idempotency_key=idempotency_key, amount=amount, status=status,
            gateway=gateway, gateway_reference=gateway_reference, idempotency=idempotency)
    await forget_cached(cache, tenant, parse_order_id(order_id), products)
    return result


async def record_payment_in(
    tx: asyncpg.Connection, tenant: str, order_id: uuid.UUID | str, *, idempotency_key: str,
    amount: Decimal, status: str, gateway: str, gateway_reference: str | None,
    idempotency: idem.IdempotentRequest | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """``record_payment`` in the caller's tenant transaction ``tx`` (the callback route reads
    the tenant's secret and checks the signature in the same transaction, so a callback
    costs one transaction, not two). Returns the answer and the products whose stock
    changed, for the caller to ``forget_cached`` once it has committed."""
    if not isinstance(idempotency_key, str) or not 1 <= len(idempotency_key) <= MAX_KEY:
        raise _refuse(INVALID_VALUE, f"idempotency_key must be 1-{MAX_KEY} characters", "idempotency_key")
    if status not in PAYMENT_STATUSES:
        raise _refuse(INVALID_VALUE, "status must be succeeded or failed", "status")
    if not isinstance(gateway, str) or not 1 <= len(gateway) <= 50:
        raise _refuse(INVALID_VALUE, "gateway must be 1-50 characters", "gateway")
    if gateway_reference is not None and (not isinstance(gateway_reference, str)
                                          or len(gateway_reference) > 255):
        raise _refuse(INVALID_VALUE, "gateway_reference must be at most 255 characters",
                      "gateway_reference")
    paid = _amount(amount)
    oid = parse_order_id(order_id)
    at = datetime.now(UTC)
    products: list[str] = []
    if idempotency is not None and (first := await idem.begin(tx, tenant, idempotency)) is not None:
        return idem.ReplayedBody(first), []
    locked = await tx.fetchrow(LOCK_WITH_PAYMENT_SQL, oid, idempotency_key)
    if locked is None:
        raise OrderNotFound(oid)
    order = locked_order(locked)
    existing = ({k[2:]: v for k, v in locked.items() if k.startswith("p_")}
                if locked["p_id"] is not None else None)
    if existing is not None:
        return await _answer(tx, idempotency, _replay(existing, oid, paid, status)), []
    if status == SUCCEEDED and paid != order.total_amount:
        raise _refuse(AMOUNT_MISMATCH, f"the order's total is {order.total_amount}, "
                      f"the payment {paid}", "amount")
    outcome = payment_outcome(order.status, order.payment_status, status)
    order_status = (order.status.value if outcome.action is None
                    else next_status(order.status, outcome.action,
                                    payment_method=order.payment_method).value)
    meta = {"order_status": order_status,
            "payment_status": outcome.payment_status or order.payment_status,
            "refund_amount": str(paid) if outcome.refund else None}
    row = await tx.fetchrow(INSERT_PAYMENT_SQL, oid, idempotency_key, gateway, gateway_reference,
                            order.payment_method or "unknown", paid, status, json.dumps(meta))
    if row is None:   # the key was taken for another order meanwhile
        return await _answer(tx, idempotency, _replay(await tx.fetchrow(PAYMENT_BY_KEY_SQL, idempotency_key),
                                                      oid, paid, status)), []
    details = {"payment_id": str(row["id"]), "payment_status": status, "amount": str(paid)}
    if outcome.action is OrderAction.PAY:
        await change_status(tx, tenant, order, outcome.action, actor=f"gateway:{gateway}",
                            reason=None, at=at, payment_status=outcome.payment_status,
                            extra=details, hold_stock=True)
    elif outcome.action is OrderAction.FAIL_PAYMENT:
        await change_status(tx, tenant, order, outcome.action, actor=f"gateway:{gateway}",
                            reason="payment failed", at=at,
                            payment_status=outcome.payment_status, extra=details)
        products = await give_back(tx, order, at)
    else:
        if outcome.refund:
            await tx.execute(REFUND_PAYMENT_SQL, oid, row["id"], paid, order.payment_method,
                             "payment for an order no longer wanted" if order.status in _LATE
                             else "duplicate payment")
        if outcome.payment_status is not None:
            await tx.execute(SET_PAYMENT_STATUS_SQL, oid, outcome.payment_status)
        await write_event(tx, tenant, order, "record_payment", from_status=order.status.value,
                          to_status=order.status.value, at=at, actor=f"gateway:{gateway}",
                          reason=None, extra={**details, "refund": outcome.refund})
    return await _answer(tx, idempotency, _result(row, replayed=False)), products


async def _answer(tx: asyncpg.Connection, idempotency: idem.IdempotentRequest | None,
                  result: dict[str, Any]) -> dict[str, Any]:
    if idempotency is not None:
        await idem.finish(tx, idempotency, result)
    return result


def _replay(existing: asyncpg.Record, oid: uuid.UUID, amount: Decimal, status: str) -> dict[str, Any]:
    if existing["order_id"] != oid or existing["amount"] != amount or existing["status"] != status:
        raise _refuse(IDEMPOTENCY_CONFLICT, "this idempotency_key was used for another payment "
                      "(order, amount or status differ)", "idempotency_key", 409)
    return _result(existing, replayed=True)
