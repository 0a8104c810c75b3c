"""The WhatsApp outbox in Postgres: plan an event's notifications, claim due ones, record
what came of a send. Tables: ``notifications`` (the outbox, migration 0016) and
``whatsapp_messages`` (what was sent).

Each function is one tenant transaction, and each statement is one round trip:

* ``plan_event``: the order's facts (one read), then every planned row in one INSERT ...
  ON CONFLICT (dedupe_key) DO NOTHING. A message whose recipient has no account (so no
  number) is inserted already ``suppressed`` (``no_phone``), so that what did not go is
  visible next to what did.
* ``claim_due``: due rows (``pending`` past ``next_attempt_at``, or ``sending`` past their
  lease) locked with ``FOR UPDATE SKIP LOCKED`` and marked ``sending`` with ``attempts + 1``
  and a lease, committed before anything is posted: two senders never post the same row, and
  a sender that dies mid-send leaves a row that comes due again when its lease ends.
* ``record_sent`` and friends: the outcome, only for a row still ``sending`` (a row whose
  lease ran out and that another sender took is that sender's to record).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from dispatch.messaging.templates import Event, OrderContext, Planned, plan, preview, render_params
from schema.db import TenantDatabase

__all__ = ["ClaimedNotification", "claim_due", "order_context", "plan_event", "record_failed",
           "record_retry", "record_sent", "record_suppressed"]

CONTEXT_SQL = """
SELECT o.order_number, o.total_amount::text AS total, o.payment_method, o.customer_id, c.user_id AS customer_user_id,
       coalesce(c.preferred_language, 'en') AS language, o.vendor_id, v.user_id AS vendor_user_id, v.business_name
FROM orders o JOIN customers c ON c.id = o.customer_id JOIN vendors v ON v.id = o.vendor_id
WHERE o.id = $1
"""
INSERT_SQL = """
INSERT INTO notifications (user_id, type, channel, title, content, data, status, dedupe_key, template,
                           language, kind, recipient_type, recipient_id, event_id, order_id, last_error)
SELECT r.user_id, r.template, 'whatsapp', r.template, r.content, r.data, r.status, r.dedupe_key, r.template,
       r.language, r.kind, r.recipient_type, r.recipient_id, $1::uuid, $2::uuid, r.last_error
FROM unnest($3::uuid[], $4::text[], $5::text[], $6::jsonb[], $7::text[], $8::text[], $9::text[], $10::text[],
            $11::text[], $12::uuid[], $13::text[])
     AS r(user_id, template, content, data, status, dedupe_key, language, kind, recipient_type, recipient_id,
          last_error)
ON CONFLICT (dedupe_key) DO NOTHING
RETURNING status
"""
CLAIM_SQL = """
WITH due AS (
    SELECT id FROM notifications
    WHERE status IN ('pending', 'sending') AND next_attempt_at <= now() AND channel = 'whatsapp'
    ORDER BY next_attempt_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE notifications n
SET status = 'sending', attempts = n.attempts + 1, next_attempt_at = now() + make_interval(secs => $2)
FROM due WHERE n.id = due.id
RETURNING n.id, n.user_id, n.template, n.language, n.kind, n.data, n.attempts, n.recipient_type,
          n.recipient_id, n.event_id, n.order_id,
          (SELECT u.phone_number FROM users u WHERE u.id = n.user_id) AS phone
"""
# The notification sent and its message recorded, in one round trip.
SENT_SQL = """
WITH n AS (
    UPDATE notifications SET status = 'sent', sent_at = now(), last_error = NULL
    WHERE id = $1 AND status = 'sending'
    RETURNING id
)
INSERT INTO whatsapp_messages (message_id, conversation_id, from_number, to_number, direction, type, content,
                               status, status_timestamp, metadata, notification_id)
SELECT $2, $3, $4, $5, 'outbound', 'template', $6::jsonb, 'accepted', now(), $7::jsonb, n.id FROM n
ON CONFLICT (message_id) DO NOTHING
RETURNING id
"""
RETRY_SQL = """
UPDATE notifications SET status = 'pending', next_attempt_at = now() + make_interval(secs => $2), last_error = $3
WHERE id = $1 AND status = 'sending'
"""
END_SQL = """
UPDATE notifications SET status = $2, last_error = $3, next_attempt_at = now()
WHERE id = $1 AND status = 'sending'
"""


class ClaimedNotification:
    """A notification claimed for sending (a row of ``CLAIM_SQL``)."""

    __slots__ = ("attempts", "event_id", "id", "kind", "language", "order_id", "params", "phone",
                 "recipient_id", "recipient_type", "template", "user_id")

    def __init__(self, row: Any) -> None:
        data = row["data"]
        data = json.loads(data) if isinstance(data, str) else dict(data or {})
        self.id: uuid.UUID = row["id"]
        self.user_id = row["user_id"]
        self.template: str = row["template"]
        self.language: str = row["language"] or "en"
        self.kind: str = row["kind"]
        self.attempts: int = row["attempts"]
        self.recipient_type: str = row["recipient_type"]
        self.recipient_id = row["recipient_id"]
        self.event_id = row["event_id"]
        self.order_id = row["order_id"]
        self.phone: str | None = row["phone"]
        params = data.get("params")
        self.params: dict[str, str] = params if isinstance(params, dict) else {}


async def order_context(tx: Any, order_id: uuid.UUID) -> OrderContext | None:
    row = await tx.fetchrow(CONTEXT_SQL, order_id)
    if row is None:
        return None
    return OrderContext(
        order_number=row["order_number"], shop=row["business_name"], total=row["total"],
        payment_method=row["payment_method"] or "", customer_id=str(row["customer_id"]),
        customer_user_id=row["customer_user_id"] and str(row["customer_user_id"]),
        vendor_id=str(row["vendor_id"]), vendor_user_id=row["vendor_user_id"] and str(row["vendor_user_id"]),
        language=row["language"])


def _content(planned: Planned) -> str:
    values = {**planned.params, "tracking_url": "[tracking link]"}
    return preview(planned.template, render_params(planned.template, values))


async def plan_event(db: TenantDatabase, event: Event) -> tuple[int, int]:
    """Insert ``event``'s notifications; (inserted, of which pending). (0, 0) for an event
    already planned, or whose order is gone."""
    async with db.tenant_transaction(event.tenant_id) as tx:
        ctx = await order_context(tx, event.order_id)
        planned: Sequence[Planned] = plan(event, ctx) if ctx is not None else []
        if not planned:
            return 0, 0
        rows = await tx.fetch(
            INSERT_SQL, event.id, event.order_id,
            [p.user_id and uuid.UUID(p.user_id) for p in planned],
            [p.template.name for p in planned],
            [_content(p) for p in planned],
            [json.dumps({"params": dict(p.params), "event_type": event.type}) for p in planned],
            ["pending" if p.user_id else "suppressed" for p in planned],
            [p.dedupe_key for p in planned],
            [p.language for p in planned],
            [p.template.kind for p in planned],
            [p.recipient_type for p in planned],
            [uuid.UUID(p.recipient_id) for p in planned],
            [None if p.user_id else "no_phone" for p in planned])
    return len(rows), sum(1 for r in rows if r["status"] == "pending")


async def claim_due(db: TenantDatabase, tenant_id: object, limit: int, lease_s: float) -> list[ClaimedNotification]:
    async with db.tenant_transaction(tenant_id) as tx:
        rows = await tx.fetch(CLAIM_SQL, limit, float(lease_s))
    return [ClaimedNotification(r) for r in rows]


async def record_sent(db: TenantDatabase, tenant_id: object, n: ClaimedNotification, *, wamid: str,
                      from_id: str, to: str, content: dict[str, Any]) -> bool:
    """The row sent and its outbound message recorded; False if the row was no longer this
    sender's (its lease ran out and another sender took it)."""
    metadata = {"notification_id": str(n.id), "event_id": str(n.event_id), "attempts": n.attempts,
                "template": n.template}
    async with db.tenant_transaction(tenant_id) as tx:
        recorded = await tx.fetchval(SENT_SQL, n.id, wamid, f"user:{n.user_id}", from_id[:20], to[:20],
                                     json.dumps(content), json.dumps(metadata))
    return recorded is not None


async def record_retry(db: TenantDatabase, tenant_id: object, n: ClaimedNotification, delay_s: float,
                       error: str) -> None:
    async with db.tenant_transaction(tenant_id) as tx:
        await tx.execute(RETRY_SQL, n.id, float(delay_s), error)


async def _end(db: TenantDatabase, tenant_id: object, n: ClaimedNotification, status: str, error: str) -> None:
    async with db.tenant_transaction(tenant_id) as tx:
        await tx.execute(END_SQL, n.id, status, error)


async def record_failed(db: TenantDatabase, tenant_id: object, n: ClaimedNotification, error: str) -> None:
    await _end(db, tenant_id, n, "failed", error)


async def record_suppressed(db: TenantDatabase, tenant_id: object, n: ClaimedNotification, reason: str) -> None:
    await _end(db, tenant_id, n, "suppressed", reason)
