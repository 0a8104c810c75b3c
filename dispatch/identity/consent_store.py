"""Consent, the I/O: record a change, read a person's records and state, and ask whether a
message may go. The rules are ``dispatch.identity.consent``.

The records live in the control plane's ``consent_records`` (one row per change; a
withdrawal stamps ``withdrawn_at`` on the consent it ends, in the same statement that inserts
it). What the hot path needs is mirrored on the subject's own tenant row: a driver's
``metadata.location_tracking`` (``given`` / ``withdrawn``), which the gateway reads with the
driver's token (``dispatch.identity.auth``), so a ping costs no consent lookup. The control
insert runs inside the tenant transaction that locks and updates the subject's row: a
failure on either side leaves neither (the tenant side rolls back; a control row whose tenant
commit then failed would only repeat the same change in the history, which the newest-record
rule reads the same way).

What a withdrawal of location tracking does beyond the records (the driver goes offline, their
live location is deleted, engines re-read the driver's tokens) is up to the caller, who knows
the matching and tracking rooms (``dispatch.api.consents``).
"""

from __future__ import annotations

import ipaddress
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from dispatch.core.errors import NotFound
from dispatch.identity.consent import PURPOSES, ConsentChange, ConsentState, current_state, may_send
from dispatch.identity.subjects import quote_ident, subject_table
from schema.db import TenantDatabase
from schema.ids import parse_uuid

__all__ = ["consent_history", "consent_states", "may_message", "record_consent"]

RECORD_SQL = """
WITH ended AS (
    UPDATE consent_records SET withdrawn_at = now()
    WHERE tenant_id = $1 AND subject_type = $2 AND subject_id = $3 AND purpose = $4
      AND consent_given AND withdrawn_at IS NULL AND NOT $5
    RETURNING id
)
INSERT INTO consent_records (tenant_id, subject_id, subject_type, purpose, lawful_basis, consent_given,
                             consent_text, version, channel, recorded_by, ip_address, metadata)
VALUES ($1, $3, $2, $4, $6, $5, $7, $8, $9, $10, $11::inet,
        jsonb_build_object('ended', (SELECT count(*) FROM ended)) || $12::jsonb)
RETURNING *
"""
HISTORY_SQL = """
SELECT id, purpose, lawful_basis, consent_given, consent_text, version, channel, recorded_by, ip_address, given_at,
       withdrawn_at, expires_at, metadata
FROM consent_records WHERE tenant_id = $1 AND subject_type = $2 AND subject_id = $3
ORDER BY given_at DESC, id LIMIT $4
"""
LATEST_SQL = """
SELECT DISTINCT ON (purpose) id, purpose, consent_given, version, channel, given_at, withdrawn_at, expires_at
FROM consent_records WHERE tenant_id = $1 AND subject_type = $2 AND subject_id = $3
ORDER BY purpose, given_at DESC, id DESC
"""
MIRROR_SQL = """
UPDATE drivers SET metadata = coalesce(metadata, '{}'::jsonb)
    || jsonb_build_object('location_tracking', $2::text, 'location_tracking_at', now())
WHERE id = $1
"""
HISTORY_MAX = 200


def _row(record: Any) -> dict[str, Any]:
    out = dict(record)
    for key, value in out.items():
        if isinstance(value, uuid.UUID | ipaddress.IPv4Address | ipaddress.IPv6Address):
            out[key] = str(value)
        elif isinstance(value, datetime):
            out[key] = value.isoformat()
        elif key == "metadata" and isinstance(value, str):
            out[key] = json.loads(value)
    return out


async def record_consent(db: TenantDatabase, tenant_id: object, subject_type: str, subject_id: object,
                         change: ConsentChange, *, recorded_by: object | None = None,
                         ip_address: str | None = None) -> dict[str, Any]:
    """Record one change for a subject of this tenant; the new record. 404 ``NotFound`` (field
    ``subject_id``) when the tenant has no such subject: nothing is written."""
    sid = parse_uuid(subject_id, "subject_id")
    placement = await db.placement(tenant_id)
    table = quote_ident(subject_table(subject_type))
    metadata = json.dumps({"note": change.note} if change.note else {})
    async with db.tenant_transaction(placement.tenant_id) as tx:
        if await tx.fetchval(f"SELECT 1 FROM {table} WHERE id = $1 FOR UPDATE", sid) is None:   # noqa: S608
            raise NotFound(f"no such {subject_type} in this tenant", "subject_id")
        if change.purpose == "location_tracking":
            await tx.execute(MIRROR_SQL, sid, "given" if change.given else "withdrawn")
        rows = await db.control_fetch(
            RECORD_SQL, placement.tenant_id, subject_type, sid, change.purpose, change.given,
            PURPOSES[change.purpose].lawful_basis, change.text, change.version, change.channel,
            recorded_by and parse_uuid(recorded_by, "recorded_by"), ip_address, metadata)
    return _row(rows[0])


async def consent_history(db: TenantDatabase, tenant_id: object, subject_type: str, subject_id: object,
                          *, limit: int = HISTORY_MAX) -> list[dict[str, Any]]:
    """The subject's records, newest first (at most ``limit``)."""
    placement = await db.placement(tenant_id)
    rows = await db.control_fetch(HISTORY_SQL, placement.tenant_id, subject_type,
                                  parse_uuid(subject_id, "subject_id"), limit)
    return [_row(r) for r in rows]


async def consent_states(db: TenantDatabase, tenant_id: object, subject_type: str,
                         subject_id: object) -> dict[str, ConsentState]:
    """purpose -> what the subject's records say now, for every purpose they can give."""
    placement = await db.placement(tenant_id)
    rows = [dict(r) for r in await db.control_fetch(LATEST_SQL, placement.tenant_id, subject_type,
                                                    parse_uuid(subject_id, "subject_id"))]
    now = datetime.now(UTC)
    return {purpose: current_state(purpose, rows, now)
            for purpose, spec in PURPOSES.items() if subject_type in spec.subject_types}


async def may_message(db: TenantDatabase, tenant_id: object, subject_type: str, subject_id: object,
                      kind: str) -> bool:
    """Whether a ``transactional`` or ``marketing`` message may go to this customer or user
    (``consent.may_send``): marketing needs consent given now and processing not restricted."""
    if kind == "transactional":
        return may_send(kind, None, False)
    states = await consent_states(db, tenant_id, subject_type, subject_id)
    table = quote_ident(subject_table(subject_type))
    async with db.tenant_transaction(tenant_id, readonly=True) as tx:
        restricted = await tx.fetchval(
            f"SELECT coalesce((metadata->>'processing_restricted')::boolean, false) FROM {table} "   # noqa: S608
            "WHERE id = $1", parse_uuid(subject_id, "subject_id"))
    if restricted is None:
        raise NotFound(f"no such {subject_type} in this tenant", "subject_id")
    return may_send(kind, states.get("marketing"), bool(restricted))
