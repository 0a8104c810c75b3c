"""Looks at other people's personal data, the I/O: write ``data_access_log`` and read it back.

One row per subject and record seen: ``user_id`` is who looked, ``record_id`` whose data it was
(the subject: a customer, driver or user id), ``table_name`` and ``accessed_fields`` what, and
``purpose`` why; ``metadata`` holds the record that was read (an order id), the subject's type
and how (``api`` or ``cli``). A list read writes its rows in one statement. The table is
partitioned by month and old months are dropped by ``schema.retention.control``.

The write happens before the data is answered: a look that cannot be logged is not shown
(the control database away is a 503, like any outage).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from schema.db import TenantDatabase
from schema.ids import parse_uuid

__all__ = ["log_access", "read_profile", "subject_log"]

LOG_MANY_SQL = """
INSERT INTO data_access_log (tenant_id, user_id, action, table_name, record_id, purpose, accessed_fields,
                             ip_address, user_agent, metadata)
SELECT $1, $2, $3, t.table_name, t.record_id, $4, $5::text[], $6::inet, $7, t.metadata::jsonb
FROM unnest($8::text[], $9::uuid[], $10::text[]) AS t(table_name, record_id, metadata)
"""
READ_SQL = """
SELECT created_at, user_id, action, table_name, purpose, accessed_fields, metadata
FROM data_access_log WHERE tenant_id = $1 AND record_id = $2 ORDER BY created_at DESC LIMIT $3
"""
USER_AGENT_MAX = 300


async def log_access(db: TenantDatabase, tenant_id: object, viewer: object | None, *, action: str,
                     subject_type: str, seen: Sequence[tuple[str, str, str | None]], fields: Sequence[str],
                     purpose: str, via: str, ip_address: str | None = None, user_agent: str | None = None,
                     extra: dict[str, Any] | None = None) -> int:
    """Log that ``viewer`` saw ``fields`` of each ``(subject id, table, record id)`` in ``seen``;
    the number of rows written (nothing for an empty list)."""
    if not seen:
        return 0
    placement = await db.placement(tenant_id)
    tables, subjects, metadata = [], [], []
    for subject_id, table, record_id in seen:
        tables.append(table)
        subjects.append(parse_uuid(subject_id, "subject_id"))
        metadata.append(json.dumps({"subject_type": subject_type, "via": via,
                                    **({"record": record_id} if record_id is not None else {}), **(extra or {})}))
    await db.control_fetch(
        LOG_MANY_SQL, placement.tenant_id, viewer and parse_uuid(viewer, "viewer"), action, purpose,
        list(fields), ip_address, user_agent[:USER_AGENT_MAX] if user_agent else None, tables, subjects, metadata)
    return len(seen)


async def subject_log(db: TenantDatabase, tenant_id: object, subject_id: object, *,
                      limit: int = 100) -> list[dict[str, Any]]:
    """Who looked at the subject's data, newest first."""
    placement = await db.placement(tenant_id)
    rows = await db.control_fetch(READ_SQL, placement.tenant_id, parse_uuid(subject_id, "subject_id"), limit)
    return [{**{k: str(v) if k == "user_id" and v is not None else v for k, v in dict(r).items()},
             "metadata": json.loads(r["metadata"]) if isinstance(r["metadata"], str) else r["metadata"]}
            for r in rows]


PROFILE_SQL = {
    "customer": "SELECT to_jsonb(c) FROM customers c WHERE id = $1",
    "driver": "SELECT to_jsonb(d) - 'current_location' || jsonb_build_object('current_location', "
              "CASE WHEN d.current_location IS NULL THEN NULL ELSE jsonb_build_object("
              "'lat', ST_Y(d.current_location::geometry), 'lng', ST_X(d.current_location::geometry)) END) "
              "FROM drivers d WHERE id = $1",
}
USER_SQL = "SELECT id, phone_number, name, email, role, status, created_at FROM users WHERE id = $1"


async def read_profile(db: TenantDatabase, tenant_id: object, subject_type: str, subject_id: object) -> dict | None:
    """A customer's or driver's row with their user account's contact details (``user``), or
    None when the tenant has no such subject."""
    sid = parse_uuid(subject_id, "subject_id")
    async with db.tenant_transaction(tenant_id, readonly=True) as tx:
        raw = await tx.fetchval(PROFILE_SQL[subject_type], sid)
        if raw is None:
            return None
        profile = json.loads(raw) if isinstance(raw, str) else raw
        user = await tx.fetchrow(USER_SQL, parse_uuid(profile["user_id"], "user_id")) if profile.get("user_id") else None
    profile["user"] = None if user is None else {
        k: (str(v) if k == "id" else v.isoformat() if k == "created_at" else v) for k, v in dict(user).items()}
    return profile
