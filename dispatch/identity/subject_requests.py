"""Data subject requests, the I/O: record a verified request, execute it, log who looked.

``submit`` is the one entry: it checks that the subject exists in the tenant (an unknown or
another tenant's subject is a 404 and nothing is recorded), refuses a second erasure (409),
records the request in the control plane's ``data_subject_requests`` (status ``pending``,
``due_at`` 30 days on), executes it, and marks it ``completed`` (or ``failed`` with the error,
to be retried within the due date). The rules (vocabularies, body validation, where a person's
rows are, what an erased value becomes) are ``dispatch.identity.subjects``.

- access: one JSON document (``export``): for every tenant table that holds rows about the
  person, those rows' ids, timestamps and every registered personal column that has a value;
  the subject's own row whole; their tokens (ids and dates, never hashes), the tracking links
  of their deliveries, the control plane's ``tenant_users`` row, and the Redis keys about them
  (a driver's live location and state; what the ``Hooks`` add). Every export writes
  ``data_access_log`` (who, whose, which columns, why).
- erase: in one tenant transaction every registered column of the person's rows is anonymised
  per the registry (placeholder / null / drop / delete) and the subject is marked erased;
  amounts, counts, statuses and ids are untouched, so orders, payments, the vendor's counters
  and ``mv_daily_sales_summary`` add up as before. Then, outside it: their live tokens are
  revoked through ``revoke_token`` (engines drop cached tokens), their deliveries' tracking
  links revoked (``Hooks.revoke_links``), their Redis keys and cached orders deleted, and the
  control plane's copy of their phone number replaced. A failure there leaves the request
  ``failed``; running the erasure again finishes it.
- correct: sets validated contact/identity fields (``subjects.CORRECTABLE``).
- restrict: sets ``metadata.processing_restricted`` (with ``restricted_at``) on the subject's
  row and their user account. Senders of marketing messages must skip such people; the engine
  itself sends none today, so the flag is the contract, not yet a filter.

The engine reads and writes the control plane through ``TenantDatabase``'s control pool (the
application role; 0008 grants what it needs).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from dispatch.core.cache_keys import order_key
from dispatch.core.errors import DUPLICATE, NotFound, Refusal
from dispatch.identity.access_log import log_access, subject_log
from dispatch.identity.auth import revoke_token
from dispatch.identity.consent_store import consent_history
from dispatch.identity.subjects import (
    SUBJECT_ROWS,
    USER_OF,
    USER_ROWS,
    Column,
    SubjectRequest,
    erase_sql,
    erased_value,
    quote_ident,
    subject_table,
)
from schema.db import TenantDatabase
from schema.ids import InvalidId, parse_uuid
from streams.keys import location_key, state_key, tracking_key

__all__ = ["Hooks", "get_request", "subject_export", "submit"]

REGISTRY_SQL = """
SELECT table_name, column_name, subject_type, anonymization_method
FROM personal_data_registry WHERE scope = 'tenant' ORDER BY table_name, column_name
"""
COLUMNS_SQL = """
SELECT table_name, column_name, udt_name, is_nullable = 'YES' AS nullable, character_maximum_length AS max_len,
       is_generated = 'ALWAYS' AS generated
FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = ANY($1::text[])
"""
RECORD_SQL = """
INSERT INTO data_subject_requests (tenant_id, request_type, subject_id, subject_type, status, requested_by,
                                   verification_method, verification_reference, reason, metadata)
VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7, $8, $9::jsonb)
RETURNING *
"""
FINISH_SQL = """
UPDATE data_subject_requests SET status = $3, processed_at = now(), processed_by = $4, response = $5::jsonb, error = $6
WHERE id = $1 AND tenant_id = $2 RETURNING *
"""
GET_SQL = "SELECT * FROM data_subject_requests WHERE id = $1 AND tenant_id = $2"
ERASED_SQL = """
SELECT id FROM data_subject_requests
WHERE tenant_id = $1 AND subject_id = $2 AND request_type = 'erasure' AND status = 'completed' LIMIT 1
"""
TENANT_USER_SQL = "SELECT user_id, phone_number, role, created_at FROM tenant_users WHERE tenant_id = $1 AND user_id = $2"
CONSENT_ERASE_SQL = """
UPDATE consent_records SET ip_address = NULL, metadata = metadata - 'note'
WHERE tenant_id = $1 AND subject_id = $2 AND (ip_address IS NOT NULL OR metadata ? 'note')
"""
TENANT_USER_ERASE_SQL = """
UPDATE tenant_users SET phone_number = 'erased-' || left(replace(user_id::text, '-', ''), 12)
WHERE tenant_id = $1 AND user_id = $2
"""
TOKENS_SQL = "SELECT id, token_type, created_at, expires_at, revoked_at FROM auth_tokens WHERE user_id = $1"
LINKS_SQL = """
SELECT tl.id, tl.delivery_id, tl.created_at, tl.revoked_at FROM tracking_links tl
WHERE tl.delivery_id IN (SELECT id FROM deliveries WHERE {condition})
"""
MARK_SQL = """
UPDATE {table} SET metadata = coalesce(metadata, '{{}}'::jsonb) || jsonb_build_object($2::text, now()){status}
WHERE id = $1
"""
RESTRICT_SQL = """
UPDATE {table} SET metadata = coalesce(metadata, '{{}}'::jsonb)
    || jsonb_build_object('processing_restricted', true, 'restricted_at', now())
WHERE id = $1
"""


def _driver_keys(driver_id: str) -> list[str]:
    return [location_key(driver_id), state_key(driver_id)]


@dataclass(frozen=True)
class Hooks:
    """What rooms above identity add (composed by the API and the CLI): more Redis keys about a
    driver (offers, sockets) and how a delivery's tracking links are revoked."""

    driver_keys: Callable[[str], list[str]] = _driver_keys
    revoke_links: Callable[[TenantDatabase, Redis | None, object, object], Awaitable[int]] | None = None


@dataclass
class _Found:
    subject: dict[str, Any]
    user_id: uuid.UUID | None
    order_ids: list[str] = field(default_factory=list)
    delivery_ids: list[str] = field(default_factory=list)
    live_tokens: list[tuple[str, str]] = field(default_factory=list)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _plain(record: Any) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, uuid.UUID) else _json(v) if k in ("response", "metadata") else v)
            for k, v in dict(record).items()}


async def _control(db: TenantDatabase, sql: str, *args: object) -> list:
    return await db.control_fetch(sql, *args)


async def _registry(db: TenantDatabase) -> dict[str, dict[str, tuple[str, str]]]:
    """table -> column -> (registry subject_type, anonymization_method)."""
    out: dict[str, dict[str, tuple[str, str]]] = {}
    for row in await _control(db, REGISTRY_SQL):
        out.setdefault(row["table_name"], {})[row["column_name"]] = (row["subject_type"],
                                                                       row["anonymization_method"])
    return out


def _targets(subject_type: str, user_id: uuid.UUID | None, subject_id: uuid.UUID):
    """(table, condition, parameter, registry subject types) of every table with the person's rows."""
    for table, condition, kinds in SUBJECT_ROWS[subject_type]:
        yield table, condition, subject_id, kinds
    if user_id is not None:
        for table, condition, kinds in USER_ROWS:
            yield table, condition, user_id, kinds


async def _columns(tx, tables: Sequence[str]) -> dict[str, dict[str, Column]]:
    out: dict[str, dict[str, Column]] = {}
    for r in await tx.fetch(COLUMNS_SQL, list(tables)):
        if not r["generated"]:
            out.setdefault(r["table_name"], {})[r["column_name"]] = Column(
                r["column_name"], r["udt_name"], r["nullable"], r["max_len"])
    return out


async def _find(tx, subject_type: str, sid: uuid.UUID, *, lock: bool) -> _Found:
    table = quote_ident(subject_table(subject_type))
    row = await tx.fetchval(f"SELECT to_jsonb(t) FROM {table} t WHERE id = $1"   # noqa: S608
                            + (" FOR UPDATE" if lock else ""), sid)
    if row is None:
        raise NotFound(f"no such {subject_type} in this tenant", "subject_id")
    return _Found(_json(row), await tx.fetchval(USER_OF[subject_type], sid))


def _registered(registry, table: str, kinds: tuple[str, ...], present: dict[str, Column]) -> dict[str, str]:
    """column -> anonymization method of the table's registered columns that are this person's."""
    return {c: method for c, (kind, method) in registry.get(table, {}).items() if kind in kinds and c in present}


async def subject_export(db: TenantDatabase, redis: Redis | None, tenant_id: object, subject_type: str,
                         subject_id: object, *, hooks: Hooks = Hooks()) -> dict[str, Any]:
    """Everything held about the subject, as one JSON-ready document (see the module doc)."""
    sid = parse_uuid(subject_id, "subject_id")
    registry = await _registry(db)
    doc: dict[str, Any] = {"subject_type": subject_type, "subject_id": str(sid), "tables": {}}
    async with db.tenant_transaction(tenant_id, readonly=True) as tx:
        found = await _find(tx, subject_type, sid, lock=False)
        doc["subject"] = found.subject
        targets = list(_targets(subject_type, found.user_id, sid))
        columns = await _columns(tx, [t[0] for t in targets])
        for table, condition, param, kinds in targets:
            present = columns.get(table, {})
            wanted = ["id", *_registered(registry, table, kinds, present),
                      *(c for c in ("created_at", "updated_at") if c in present)]
            pairs = ", ".join(f"'{c}', " + (f"ST_AsText(t.{quote_ident(c)})" if present[c].udt_name == "geography"
                                            else f"t.{quote_ident(c)}") for c in wanted)
            rows = await tx.fetch(f"SELECT jsonb_strip_nulls(jsonb_build_object({pairs})) AS row "   # noqa: S608
                                  f"FROM {quote_ident(table)} t WHERE {condition} ORDER BY t.id", param)
            if rows:
                doc["tables"].setdefault(table, []).extend(_json(r["row"]) for r in rows)
        if found.user_id is not None:
            doc["tables"]["auth_tokens"] = [_plain(r) for r in await tx.fetch(TOKENS_SQL, found.user_id)]
        deliveries = next((c for t, c, _, _ in targets if t == "deliveries"), None)
        if deliveries is not None:
            links = await tx.fetch(LINKS_SQL.format(condition=deliveries), sid)
            doc["tables"]["tracking_links"] = [_plain(r) for r in links]
    doc["control"] = {"tenant_users": [] if found.user_id is None else [
        _plain(r) for r in await _control(db, TENANT_USER_SQL, parse_uuid(tenant_id, "tenant_id"), found.user_id)],
        # their consents, and who among the tenant's staff looked at their data (POPIA lets a
        # person know who had access)
        "consent_records": await consent_history(db, tenant_id, subject_type, sid),
        "data_access_log": [{k: v for k, v in r.items() if k != "metadata"} | {"record": r["metadata"].get("record")}
                            for r in await subject_log(db, tenant_id, sid, limit=1000)]}
    doc["redis"] = {}
    keys = hooks.driver_keys(str(sid)) if subject_type == "driver" else []
    if subject_type == "customer":   # their deliveries' live positions and their cached orders
        keys += [tracking_key(r["id"]) for r in doc["tables"].get("deliveries", [])]
        keys += [order_key(str(parse_uuid(tenant_id, "tenant_id")), r["id"]) for r in doc["tables"].get("orders", [])]
    if redis is not None:
        for key in keys:
            value = await _redis_value(redis, key)
            if value is not None:
                doc["redis"][key] = value
    return doc


async def _redis_value(redis: Redis, key: str) -> Any:
    kind = await redis.type(key)
    kind = kind.decode() if isinstance(kind, bytes) else kind
    if kind == "string":
        raw = await redis.get(key)
        return raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    if kind == "hash":
        return {(k.decode() if isinstance(k, bytes) else k): (v.decode(errors="replace") if isinstance(v, bytes) else v)
                for k, v in (await redis.hgetall(key)).items()}
    if kind in ("set", "zset", "list"):
        return f"<{kind}>"
    return None


def _exported_fields(doc: dict[str, Any]) -> list[str]:
    return sorted({f"{t}.{c}" for t, rows in doc["tables"].items() for r in rows for c in r})


async def _erase(db: TenantDatabase, redis: Redis | None, tenant_id: object, subject_type: str,
                 sid: uuid.UUID, hooks: Hooks) -> dict[str, Any]:
    registry = await _registry(db)
    changed: dict[str, int] = {}
    async with db.tenant_transaction(tenant_id) as tx:
        found = await _find(tx, subject_type, sid, lock=True)
        # Erased already by a request that failed after its commit (a token, a link or Redis
        # was left): the rows stay as they are and the rest is done again.
        finishing = "erased_at" in (found.subject.get("metadata") or {})
        targets = list(_targets(subject_type, found.user_id, sid))
        columns = await _columns(tx, [t[0] for t in targets])
        if subject_type == "customer":
            found.order_ids = [str(r["id"]) for r in await tx.fetch("SELECT id FROM orders WHERE customer_id = $1", sid)]
        deliveries = next((c for t, c, _, _ in targets if t == "deliveries"), None)
        if deliveries is not None and subject_type == "customer":
            found.delivery_ids = [str(r["id"]) for r in await tx.fetch(
                f"SELECT id FROM deliveries WHERE {deliveries}", sid)]   # noqa: S608 - fixed condition
        if found.user_id is not None:
            found.live_tokens = [(str(r["id"]), r["token_type"]) for r in await tx.fetch(TOKENS_SQL, found.user_id)
                                 if r["revoked_at"] is None]
        # whatsapp_messages are found by the user's phone number: erase them before the number goes.
        for table, condition, param, kinds in [] if finishing else sorted(targets, key=lambda t: t[0] == "users"):
            present = columns.get(table, {})
            methods = _registered(registry, table, kinds, present)
            if not methods:
                continue
            sets = {} if "delete" in methods.values() else {
                c: erased_value(present[c], m) for c, m in methods.items()}
            status = await tx.execute(erase_sql(table, condition, sets), param)
            changed[table] = changed.get(table, 0) + int(status.split()[-1])
        mark = ", status = 'erased'" if "status" in columns.get(subject_table(subject_type), {}) else ""
        if not finishing:
            await tx.execute(MARK_SQL.format(table=quote_ident(subject_table(subject_type)), status=mark), sid,
                             "erased_at")
        if found.user_id is not None and subject_type != "user" and not finishing:
            await tx.execute(MARK_SQL.format(table="users", status=", status = 'erased'"), found.user_id, "erased_at")
    revoked = 0
    for token_id, token_type in found.live_tokens:
        revoked += await revoke_token(db, redis, tenant_id, token_id, token_type=token_type)
    links = 0
    if hooks.revoke_links is not None:
        for delivery_id in found.delivery_ids:
            links += await hooks.revoke_links(db, redis, tenant_id, delivery_id)
    keys: list[str] = []
    if subject_type == "driver":
        keys += hooks.driver_keys(str(sid))
    keys += [tracking_key(d) for d in found.delivery_ids]
    keys += [order_key(str(parse_uuid(tenant_id, "tenant_id")), o) for o in found.order_ids]
    deleted = await redis.delete(*keys) if redis is not None and keys else 0
    if found.user_id is not None:
        await _control(db, TENANT_USER_ERASE_SQL, parse_uuid(tenant_id, "tenant_id"), found.user_id)
    # the consent history stays (what was agreed and withdrawn, and when), without the address
    # it came from or a staff note about the person
    await _control(db, CONSENT_ERASE_SQL, parse_uuid(tenant_id, "tenant_id"), sid)
    return {"rows_changed": changed, "tokens_revoked": revoked, "links_revoked": links, "redis_keys_deleted": deleted}


async def _correct(db: TenantDatabase, tenant_id: object, subject_type: str, sid: uuid.UUID,
                   changes: dict[str, str]) -> dict[str, Any]:
    names = sorted(changes)   # validated against subjects.CORRECTABLE: fixed identifiers
    sets = ", ".join(f"{quote_ident(c)} = ${i + 2}" for i, c in enumerate(names))
    async with db.tenant_transaction(tenant_id) as tx:
        await _find(tx, subject_type, sid, lock=True)
        await tx.execute(f"UPDATE {quote_ident(subject_table(subject_type))} SET {sets} WHERE id = $1",  # noqa: S608
                         sid, *(changes[c] for c in names))
    return {"corrected": names}


async def _restrict(db: TenantDatabase, tenant_id: object, subject_type: str, sid: uuid.UUID) -> dict[str, Any]:
    async with db.tenant_transaction(tenant_id) as tx:
        found = await _find(tx, subject_type, sid, lock=True)
        for table, rid in ((subject_table(subject_type), sid), ("users", found.user_id)):
            if rid is not None:
                await tx.execute(RESTRICT_SQL.format(table=quote_ident(table)), rid)
    return {"restricted": True}


async def submit(db: TenantDatabase, redis: Redis | None, tenant_id: object, request: SubjectRequest, *,
                 requested_by: str | None, via: str, hooks: Hooks = Hooks()) -> dict[str, Any]:
    """Record and execute a verified request; ``{"request": row, "export": doc}`` (export for
    access only). NotFound (nothing recorded) for an unknown subject; 409 for a second erasure."""
    tid = parse_uuid(tenant_id, "tenant_id")
    sid = uuid.UUID(request.subject_id)
    async with db.tenant_transaction(tid, readonly=True) as tx:
        await _find(tx, request.subject_type, sid, lock=False)
    if request.kind == "erase" and await _control(db, ERASED_SQL, tid, sid):
        raise Refusal(409, DUPLICATE, f"this {request.subject_type} was erased already; nothing was changed",
                      "subject_id")
    by = None if requested_by is None else parse_uuid(requested_by, "requested_by")
    meta = json.dumps({"via": via, **({"changes": sorted(request.changes)} if request.changes else {})})
    row = (await _control(db, RECORD_SQL, tid, request.request_type, sid, request.subject_type, by,
                          request.verification_method, request.verification_reference, request.reason, meta))[0]
    export = None
    try:
        if request.kind == "access":
            export = await subject_export(db, redis, tid, request.subject_type, sid, hooks=hooks)
            await _log_access(db, tid, by, request, export, row["id"], via)
            result: dict[str, Any] = {"fields": len(_exported_fields(export))}
        elif request.kind == "erase":
            result = await _erase(db, redis, tid, request.subject_type, sid, hooks)
        elif request.kind == "correct":
            assert request.changes is not None
            result = await _correct(db, tid, request.subject_type, sid, request.changes)
        else:
            result = await _restrict(db, tid, request.subject_type, sid)
    except Refusal as exc:
        await _control(db, FINISH_SQL, row["id"], tid, "failed", by, None, exc.message)
        raise
    except Exception as exc:
        await _control(db, FINISH_SQL, row["id"], tid, "failed", by, None, f"{type(exc).__name__}: {exc}"[:2000])
        raise
    done = (await _control(db, FINISH_SQL, row["id"], tid, "completed", by, json.dumps(result), None))[0]
    return {"request": _plain(done), **({"export": export} if export is not None else {})}


async def _log_access(db: TenantDatabase, tid: uuid.UUID, by: uuid.UUID | None, request: SubjectRequest,
                      export: dict[str, Any], request_id: object, via: str) -> None:
    await log_access(db, tid, by, action="subject_access_export", subject_type=request.subject_type,
                     seen=[(request.subject_id, subject_table(request.subject_type), None)],
                     fields=_exported_fields(export), purpose=request.reason[:255], via=via,
                     extra={"request_id": str(request_id)})


async def get_request(db: TenantDatabase, tenant_id: object, request_id: object) -> dict[str, Any]:
    """One request of the tenant; NotFound for another tenant's or an unknown id."""
    try:
        rid = parse_uuid(request_id, "request_id")
    except InvalidId:
        raise NotFound("no such subject request (the id is not a UUID)", "request_id") from None
    rows = await _control(db, GET_SQL, rid, parse_uuid(tenant_id, "tenant_id"))
    if not rows:
        raise NotFound("no such subject request", "request_id")
    return _plain(rows[0])


async def export_again(db: TenantDatabase, redis: Redis | None, tenant_id: object, request_id: object, *,
                       viewer: str | None, via: str, hooks: Hooks = Hooks()) -> dict[str, Any]:
    """The access document of a completed access request, made afresh (it is never stored), and
    logged like the first."""
    row = await get_request(db, tenant_id, request_id)
    if row["request_type"] != "access" or row["status"] != "completed":
        raise NotFound("no completed access request with this id", "request_id")
    tid = parse_uuid(tenant_id, "tenant_id")
    export = await subject_export(db, redis, tid, row["subject_type"], row["subject_id"], hooks=hooks)
    request = SubjectRequest("access", row["subject_type"], str(row["subject_id"]), row["verification_method"],
                             row["verification_reference"], row["reason"])
    await _log_access(db, tid, None if viewer is None else parse_uuid(viewer, "viewer"), request, export,
                      row["id"], via)
    return export
