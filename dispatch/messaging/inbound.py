"""Meta's webhook, the I/O: inbound messages into ``conversations`` / ``whatsapp_messages``,
status receipts onto the outbound rows, STOP and START into the marketing consent. The rules
(signature, payload, status order) are ``dispatch.messaging.webhook``.

**Whose message is it.** One business number serves every tenant, so a message says only who
sent it. The control plane's ``tenant_users`` directory answers which tenants know that phone
(one query for the whole batch, matched with and without the ``+``); in each of them the
tenant's own ``users`` row is the truth (a directory row whose user is gone records nothing).
A person known to several tenants whose message answers one of our messages (``context.id``)
goes to the tenant(s) that sent that message; otherwise to each tenant that knows them, since
none can be told apart. A sender no tenant knows is acknowledged, counted and recorded
nowhere (their number is not even logged).

**Recording.** Per tenant, one transaction: the message row (``direction = 'inbound'``,
``status = 'received'`` at Meta's timestamp; ``message_id`` is UNIQUE in the tenant's schema,
so Meta's redeliveries insert nothing), then, only for a new row, the conversation: one per
user, ``conversation_id = user:<user id>`` (``webhook.conversation_id_for``; the outbound
sender files its messages under the same id), created on the first inbound message,
``last_message_at`` only ever moved forward.

**Receipts.** The tenant comes from ``biz_opaque_callback_data`` (the sender puts the tenant
id there), else from the directory by the recipient's phone. The row is the tenant's outbound
message with that wamid; its status moves only up ``webhook.STATUS_ORDER`` (an older receipt
arriving late changes nothing but its own time, kept in ``metadata.receipts``); a ``failed``
one keeps Meta's errors in ``metadata.errors``. The notification the message was sent for
(``notification_id``) follows the same way (``delivered``, ``read`` with ``read_at``,
``failed`` with the error in ``last_error``), so the outbox shows what became of it. A wamid no tenant holds (a message sent
before the engine recorded it, or another system's) is acknowledged, logged and counted.

**STOP and START.** A new inbound text that is exactly ``STOP`` withdraws the person's
marketing consent (channel ``whatsapp``) in every tenant it was recorded in; ``START`` gives
it with the current wording, only where the message reached exactly one tenant (a reply to
that tenant's message that asked for it, typically): consent to one shop's specials is not
consent to every shop's. The subject is the user's customer record if they have one, else the
user, as ``/v1/me/consents`` decides. Consent is recorded *before* the message row (and only
when that row does not exist yet): if the engine fails in between, Meta's redelivery records
the consent again (the newest record wins, so a repeat means the same), whereas the other
order would leave a recorded STOP that is never honoured.

Outages, a tenant's move between shards included, propagate (the route answers 503 and Meta
redelivers later; what was committed already is not written twice). A tenant the directory
names that is unknown or inactive is skipped and logged.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dispatch.core.errors import NotFound
from dispatch.core.metrics import WHATSAPP_INBOUND, WHATSAPP_RECEIPTS
from dispatch.identity.consent import WORDING, ConsentChange
from dispatch.identity.consent_store import record_consent
from dispatch.messaging.webhook import (
    STATUS_ORDER,
    InboundMessage,
    Notification,
    StatusReceipt,
    conversation_id_for,
)
from schema.db import TenantDatabase
from schema.errors import InvalidTenantId, TenantNotActive, UnknownTenant

__all__ = ["Outcome", "WhatsAppInbox"]

log = logging.getLogger(__name__)

DIRECTORY_SQL = """
SELECT DISTINCT tu.tenant_id, ltrim(tu.phone_number, '+') AS wa_id
FROM tenant_users tu JOIN tenants t ON t.id = tu.tenant_id AND t.status = 'active'
WHERE tu.phone_number = ANY($1::text[])
ORDER BY tu.tenant_id
"""
USER_SQL = """
SELECT u.id, (SELECT c.id FROM customers c WHERE c.user_id = u.id ORDER BY c.created_at LIMIT 1) AS customer_id
FROM users u WHERE u.phone_number IN ($1, $2) ORDER BY u.created_at LIMIT 1
"""
HELD_SQL = "SELECT 1 FROM whatsapp_messages WHERE message_id = $1 AND direction = $2"
INSERT_MESSAGE_SQL = """
INSERT INTO whatsapp_messages (message_id, conversation_id, from_number, to_number, direction, type, content,
                               status, status_timestamp, metadata)
VALUES ($1, $2, $3, $4, 'inbound', $5, $6::jsonb, 'received', $7, $8::jsonb)
ON CONFLICT (message_id) DO NOTHING
RETURNING id
"""
CONVERSATION_SQL = """
INSERT INTO conversations (conversation_id, user_id, last_message_at, metadata)
VALUES ($1, $2, $3, '{"channel": "whatsapp"}'::jsonb)
ON CONFLICT (conversation_id) DO UPDATE
SET last_message_at = greatest(conversations.last_message_at, EXCLUDED.last_message_at), updated_at = now()
"""
# The status moves only rightwards along $5 (webhook.STATUS_ORDER; a status not in it, such as
# a row still queued by the sender, ranks 0); the receipt's own time is kept either way.
RECEIPT_SQL = """
WITH target AS (
    SELECT id, notification_id, coalesce(array_position($5::text[], status::text), 0) < $6 AS raised
    FROM whatsapp_messages
    WHERE message_id = $1 AND direction = 'outbound'
    FOR UPDATE
), changed AS (
    UPDATE whatsapp_messages m
    SET status = CASE WHEN target.raised THEN $2 ELSE m.status END,
        status_timestamp = CASE WHEN target.raised THEN $3 ELSE m.status_timestamp END,
        metadata = coalesce(m.metadata, '{}'::jsonb)
                   || jsonb_build_object('receipts', coalesce(m.metadata->'receipts', '{}'::jsonb) || $4::jsonb)
                   || $7::jsonb
    FROM target WHERE m.id = target.id
    RETURNING target.raised, target.notification_id
), mirrored AS (
    UPDATE notifications n
    SET status = $2,
        read_at = CASE WHEN $2 = 'read' THEN $3 ELSE n.read_at END,
        last_error = CASE WHEN $2 = 'failed' THEN left($8, 1000) ELSE n.last_error END
    FROM changed
    WHERE changed.raised AND n.id = changed.notification_id
      AND coalesce(array_position($5::text[], n.status::text), 0) < $6
    RETURNING n.id
)
SELECT raised FROM changed
"""
# A directory row naming a tenant that is gone or inactive. A tenant moving between shards is
# not skipped: TenantMoved / TenantPaused are outages (503), and Meta redelivers.
_SKIPPED_TENANT = (InvalidTenantId, UnknownTenant, TenantNotActive)
_MARKETING_VERSION = max(v for p, v in WORDING if p == "marketing")


@dataclass
class Outcome:
    """What one notification did (the route's answer; the metrics count the same)."""

    recorded: int = 0           # inbound message rows written (one per tenant it reached)
    duplicates: int = 0         # already recorded (Meta redelivered)
    unknown_senders: int = 0    # messages that reached no tenant
    receipts_applied: int = 0   # receipts that raised an outbound message's status
    receipts_kept: int = 0      # receipts older than the status already recorded (time kept only)
    receipts_unknown: int = 0   # receipts for a wamid no tenant holds
    consents: int = 0           # STOP / START recorded
    skipped_tenants: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"recorded": self.recorded, "duplicates": self.duplicates, "unknown_senders": self.unknown_senders,
                "receipts_applied": self.receipts_applied, "receipts_kept": self.receipts_kept,
                "receipts_unknown": self.receipts_unknown, "consents": self.consents}


def _at(timestamp: int) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def _error_text(receipt: StatusReceipt) -> str | None:
    """A failed receipt's first error as one line for ``notifications.last_error``."""
    if not receipt.errors:
        return "failed (Meta gave no reason)" if receipt.status == "failed" else None
    first = receipt.errors[0]
    words = [str(first[k]) for k in ("code", "title", "details") if first.get(k) is not None]
    return "meta: " + " ".join(words) if words else "failed (Meta gave no reason)"


def _phones(wa_ids: set[str]) -> list[str]:
    """The forms a phone may be stored in: E.164 with the + (what the engine writes) and bare."""
    return sorted({"+" + w for w in wa_ids} | wa_ids)


class WhatsAppInbox:
    """Records what Meta's webhook tells: messages in, receipts of messages out."""

    def __init__(self, db: TenantDatabase) -> None:
        self.db = db

    async def handle(self, note: Notification) -> Outcome:
        out = Outcome()
        if note.messages:
            await self._messages(note.messages, out)
        if note.statuses:
            await self._receipts(note.statuses, out)
        return out

    async def _directory(self, wa_ids: set[str]) -> dict[str, list[str]]:
        """wa_id -> the active tenants whose directory lists that phone."""
        found: dict[str, list[str]] = defaultdict(list)
        if wa_ids:
            for row in await self.db.control_fetch(DIRECTORY_SQL, _phones(wa_ids)):
                if str(row["tenant_id"]) not in found[row["wa_id"]]:
                    found[row["wa_id"]].append(str(row["tenant_id"]))
        return found

    # --- inbound messages ------------------------------------------------------------------

    async def _messages(self, messages: tuple[InboundMessage, ...], out: Outcome) -> None:
        directory = await self._directory({m.wa_id for m in messages})
        routed: dict[str, list[InboundMessage]] = defaultdict(list)
        reach: dict[str, int] = {}
        held: dict[tuple, list[str]] = {}    # (reply_to, candidates) -> those holding it, asked once per batch
        for message in messages:
            tenants = directory.get(message.wa_id, [])
            if len(tenants) > 1 and message.reply_to:
                key = (message.reply_to, *tenants)
                if key not in held:
                    held[key] = await self._holding(tenants, message.reply_to)
                tenants = held[key] or tenants
            reach[message.message_id] = len(tenants)
            for tenant in tenants:
                routed[tenant].append(message)
        placed: set[str] = set()
        for tenant, batch in routed.items():
            try:
                out.consents += await self._commands(tenant, [m for m in batch if m.command], reach)
                placed |= await self._record(tenant, batch, out)
            except _SKIPPED_TENANT as exc:
                out.skipped_tenants.append(tenant)
                log.warning("whatsapp webhook: tenant %s skipped (%s)", tenant, type(exc).__name__)
        unknown = sum(1 for m in messages if m.message_id not in placed)
        out.unknown_senders += unknown
        if unknown:
            log.info("whatsapp webhook: %d inbound message(s) from senders no tenant knows", unknown)
        WHATSAPP_INBOUND.labels("recorded").inc(out.recorded)
        WHATSAPP_INBOUND.labels("duplicate").inc(out.duplicates)
        WHATSAPP_INBOUND.labels("unknown_sender").inc(unknown)

    async def _holding(self, tenants: list[str], wamid: str) -> list[str]:
        """The tenants among ``tenants`` that sent the message ``wamid`` answers."""
        holding = []
        for tenant in tenants:
            try:
                async with self.db.tenant_transaction(tenant, readonly=True) as tx:
                    if await tx.fetchval(HELD_SQL, wamid, "outbound"):
                        holding.append(tenant)
            except _SKIPPED_TENANT:
                continue
        return holding

    async def _record(self, tenant: str, batch: list[InboundMessage], out: Outcome) -> set[str]:
        """Write the tenant's share of the batch; the message ids it holds afterwards. Counted
        into ``out`` only once committed."""
        placed: set[str] = set()
        users: dict[str, Any] = {}
        recorded = duplicates = 0
        async with self.db.tenant_transaction(tenant) as tx:
            for message in batch:
                if message.wa_id not in users:
                    users[message.wa_id] = await tx.fetchrow(USER_SQL, message.sender, message.wa_id)
                user = users[message.wa_id]
                if user is None:   # the directory lists a user this tenant no longer has
                    continue
                conversation = conversation_id_for(str(user["id"]))
                metadata = {"phone_number_id": message.phone_number_id}
                if message.reply_to:
                    metadata["reply_to"] = message.reply_to
                inserted = await tx.fetchval(
                    INSERT_MESSAGE_SQL, message.message_id, conversation, message.sender,
                    "+" + message.business_number, message.type, json.dumps(message.content),
                    _at(message.timestamp), json.dumps(metadata))
                placed.add(message.message_id)
                if inserted is None:
                    duplicates += 1
                    continue
                await tx.execute(CONVERSATION_SQL, conversation, user["id"], _at(message.timestamp))
                recorded += 1
        out.recorded += recorded
        out.duplicates += duplicates
        return placed

    async def _commands(self, tenant: str, commands: list[InboundMessage], reach: dict[str, int]) -> int:
        """Record STOP / START of messages this tenant has not recorded yet; how many."""
        if not commands:
            return 0
        todo = []
        recorded = 0
        async with self.db.tenant_transaction(tenant, readonly=True) as tx:
            for message in commands:
                if message.command == "start" and reach[message.message_id] != 1:
                    log.info("whatsapp webhook: START from a person several tenants know; consent not given")
                    continue
                if await tx.fetchval(HELD_SQL, message.message_id, "inbound"):
                    continue   # a redelivery: recorded the first time
                user = await tx.fetchrow(USER_SQL, message.sender, message.wa_id)
                if user is not None:
                    subject = ("customer", user["customer_id"]) if user["customer_id"] else ("user", user["id"])
                    todo.append((message, *subject))
        for message, subject_type, subject_id in todo:
            given = message.command == "start"
            change = ConsentChange("marketing", given, "whatsapp", _MARKETING_VERSION if given else None,
                                   WORDING[("marketing", _MARKETING_VERSION)] if given else None,
                                   f"replied {message.command.upper()} on WhatsApp")   # type: ignore[union-attr]
            try:
                await record_consent(self.db, tenant, subject_type, subject_id, change)
            except NotFound:   # the user went between the two transactions
                continue
            recorded += 1
        return recorded

    # --- status receipts -------------------------------------------------------------------

    async def _receipts(self, receipts: tuple[StatusReceipt, ...], out: Outcome) -> None:
        hinted: dict[str, list[StatusReceipt]] = defaultdict(list)
        missing: list[StatusReceipt] = []
        for receipt in receipts:
            if receipt.tenant:
                hinted[receipt.tenant].append(receipt)
            else:
                missing.append(receipt)
        tried: dict[int, str] = {}
        for tenant, batch in hinted.items():
            missing += await self._apply(tenant, batch, out)
            tried.update({id(r): tenant for r in batch})
        if missing:
            directory = await self._directory({r.recipient for r in missing})
            by_tenant: dict[str, list[StatusReceipt]] = defaultdict(list)
            for receipt in missing:
                for tenant in directory.get(receipt.recipient, []):
                    if tried.get(id(receipt)) != tenant:
                        by_tenant[tenant].append(receipt)
            found: set[int] = {id(r) for r in missing}
            for tenant, batch in by_tenant.items():
                left = {id(r) for r in await self._apply(tenant, batch, out)}
                found -= {id(r) for r in batch} - left
            unknown = [r for r in missing if id(r) in found]
            for receipt in unknown:
                out.receipts_unknown += 1
                WHATSAPP_RECEIPTS.labels(receipt.status, "unknown").inc()
                log.info("whatsapp webhook: %s receipt for %s, a message no tenant holds; ignored",
                         receipt.status, receipt.message_id)

    async def _apply(self, tenant: str, batch: list[StatusReceipt], out: Outcome) -> list[StatusReceipt]:
        """Apply the receipts in this tenant; those whose wamid it does not hold. Counted into
        ``out`` only once committed."""
        left: list[StatusReceipt] = []
        done: list[tuple[StatusReceipt, bool]] = []
        try:
            async with self.db.tenant_transaction(tenant) as tx:
                for receipt in batch:
                    extra = {"errors": list(receipt.errors)} if receipt.errors else {}
                    raised = await tx.fetchval(
                        RECEIPT_SQL, receipt.message_id, receipt.status, _at(receipt.timestamp),
                        json.dumps({receipt.status: _at(receipt.timestamp).isoformat()}), list(STATUS_ORDER),
                        receipt.rank, json.dumps(extra), _error_text(receipt))
                    if raised is None:
                        left.append(receipt)
                    else:
                        done.append((receipt, raised))
        except _SKIPPED_TENANT as exc:
            out.skipped_tenants.append(tenant)
            log.warning("whatsapp webhook: tenant %s skipped for receipts (%s)", tenant, type(exc).__name__)
            return list(batch)
        for receipt, raised in done:
            out.receipts_applied += raised
            out.receipts_kept += not raised
            WHATSAPP_RECEIPTS.labels(receipt.status, "applied" if raised else "kept").inc()
        return left
