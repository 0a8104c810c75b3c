"""Idempotency keys: a retried request answers what the first one answered and acts once.

A client sends ``Idempotency-Key`` with an unsafe request; the key is scoped to the caller
(a user id, or ``gateway`` for payment callbacks) in the caller's tenant, and remembered with
a fingerprint of the request (method, path, body) and, once done, its answer (status and
JSON body) in the tenant's ``idempotency_keys`` table (tenant migration 0015) for
``ttl_s`` (24 h); the reservation sweeper prunes expired rows (``prune``).

Two ways to keep the promise, by how much the route can afford to lose:

* **In the action's own transaction** (``begin`` / ``finish``: order placement, payment
  callbacks). ``begin`` takes a transaction-scoped advisory lock on the key without waiting
  (taken: 409 ``idempotency_conflict`` with ``Retry-After``, the first request is still
  running) and reads the stored answer; ``finish`` writes the answer before the commit. The
  answer is recorded if and only if the action committed, so a crash can never leave an
  order without its key or a key without its order.
* **Claim, act, record** (``claim`` / ``record`` / ``release``: every other unsafe route).
  The claim row is committed first (status NULL: in progress), the action runs in its own
  transactions, then the answer is recorded. A refused or failed action releases the claim.
  The gap: if the engine dies after the action committed and before the answer is recorded,
  the claim stays in progress for ``lease_s`` (60 s; a retry meanwhile gets 409 with
  ``Retry-After``) and a retry after that acts again. These routes (vendor and admin writes,
  cancels, stock changes) are either naturally repeatable or refuse a second try by their
  own state check (an order cannot be accepted twice).

Only answers of actions that took place (2xx) are stored. A refusal wrote nothing, so a retry
with the same key is simply tried again (stock may have come back meanwhile); the same key
with another request (another body, path or method) is 409 ``idempotency_conflict``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import asyncpg

from dispatch.core.errors import IDEMPOTENCY_CONFLICT, Refusal
from schema.db import TenantDatabase
from schema.tenants import parse_tenant_id

__all__ = ["HEADER", "IN_PROGRESS_RETRY_S", "IdempotentRequest", "ReplayedBody", "StoredResponse", "begin", "claim",
           "fingerprint", "finish", "prune", "record", "release"]

HEADER = "Idempotency-Key"
IN_PROGRESS_RETRY_S = 2   # Retry-After while the first request with the key runs
DEFAULT_TTL_S = 86_400
DEFAULT_LEASE_S = 60

LOCK_SQL = "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 7))"
FIND_SQL = """
SELECT request_hash, status_code, response::text AS response, created_at > now() - make_interval(secs => $3) AS fresh
FROM idempotency_keys WHERE caller = $1 AND key = $2 AND expires_at > now()
"""
# An expired row not yet pruned is taken over.
CLAIM_SQL = """
INSERT INTO idempotency_keys (caller, key, request_hash, expires_at)
VALUES ($1, $2, $3, now() + make_interval(secs => $4))
ON CONFLICT (tenant_id, caller, key) DO UPDATE
SET request_hash = EXCLUDED.request_hash, status_code = NULL, response = NULL, created_at = now(),
    expires_at = EXCLUDED.expires_at
"""
FINISH_SQL = """
INSERT INTO idempotency_keys (caller, key, request_hash, status_code, response, expires_at)
VALUES ($1, $2, $3, $4, $5::jsonb, now() + make_interval(secs => $6))
ON CONFLICT (tenant_id, caller, key) DO UPDATE
SET request_hash = EXCLUDED.request_hash, status_code = EXCLUDED.status_code,
    response = EXCLUDED.response, created_at = now(), expires_at = EXCLUDED.expires_at
"""
RECORD_SQL = """
UPDATE idempotency_keys SET status_code = $4, response = $5::jsonb
WHERE caller = $1 AND key = $2 AND request_hash = $3 AND status_code IS NULL
"""
RELEASE_SQL = """
DELETE FROM idempotency_keys WHERE caller = $1 AND key = $2 AND request_hash = $3 AND status_code IS NULL
"""
PRUNE_SQL = """
DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM idempotency_keys WHERE expires_at <= now() LIMIT $1))
"""


@dataclass(frozen=True)
class IdempotentRequest:
    """One request under an ``Idempotency-Key``: who sent it, the key, the request's fingerprint."""

    caller: str
    key: str
    fingerprint: str
    status: int = 200   # the answer's status when the action succeeds (201 for a creation)
    ttl_s: int = DEFAULT_TTL_S
    lease_s: int = DEFAULT_LEASE_S


@dataclass(frozen=True)
class StoredResponse:
    """The first answer to a key: what a retry gets back."""

    status: int
    body: Any


class ReplayedBody(dict):
    """The first answer to a key (a JSON object), returned again by an in-transaction route:
    nothing was done this time. ``status`` is the first answer's; the API marks the answer
    with ``Idempotent-Replayed: true``."""

    def __init__(self, stored: StoredResponse) -> None:
        super().__init__(stored.body)
        self.status = stored.status


def fingerprint(method: str, path: str, body: bytes) -> str:
    """The request's identity: method, path and body. A JSON body counts by its content (key
    order and spacing do not matter), anything else byte for byte."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    except (ValueError, UnicodeDecodeError, RecursionError):
        canonical = body
    digest = hashlib.sha256(f"{method.upper()} {path}\n".encode())
    digest.update(canonical)
    return digest.hexdigest()


def _in_progress() -> Refusal:
    return Refusal(409, IDEMPOTENCY_CONFLICT, "a request with this Idempotency-Key is still in progress; "
                   "retry later", HEADER, headers={"Retry-After": str(IN_PROGRESS_RETRY_S)})


def _conflict() -> Refusal:
    return Refusal(409, IDEMPOTENCY_CONFLICT, "this Idempotency-Key was used for another request "
                   "(another body, path or method)", HEADER)


async def _lookup(tx: asyncpg.Connection, tenant: str, req: IdempotentRequest) -> asyncpg.Record | None:
    """Lock the key for this transaction (or 409 in progress) and read its row."""
    if not await tx.fetchval(LOCK_SQL, f"{tenant}\x1f{req.caller}\x1f{req.key}"):
        raise _in_progress()
    row = await tx.fetchrow(FIND_SQL, req.caller, req.key, float(req.lease_s))
    if row is not None and row["request_hash"] != req.fingerprint:
        raise _conflict()
    return row


def _stored(row: asyncpg.Record) -> StoredResponse:
    return StoredResponse(row["status_code"], json.loads(row["response"]))


def _encode(body: Any) -> str:
    return json.dumps(body, separators=(",", ":"))


async def begin(tx: asyncpg.Connection, tenant: str, req: IdempotentRequest) -> StoredResponse | None:
    """In the action's transaction, before it acts: the first answer if the key is done, None
    to go ahead (the key is then locked until this transaction ends). 409 for another
    request under the key, or one still in progress."""
    row = await _lookup(tx, tenant, req)
    if row is None:
        return None
    if row["status_code"] is None:
        raise _in_progress()
    return _stored(row)


async def finish(tx: asyncpg.Connection, req: IdempotentRequest, body: Any) -> None:
    """In the action's transaction, after it acted: remember its answer (``req.status``,
    ``body``), committed with it."""
    await tx.execute(FINISH_SQL, req.caller, req.key, req.fingerprint, req.status, _encode(body),
                     float(req.ttl_s))


async def claim(db: TenantDatabase, tenant_id: object, req: IdempotentRequest) -> StoredResponse | None:
    """Before an action with transactions of its own: the first answer if the key is done, else
    the key is claimed (committed) and None says go ahead. 409 for another request under the
    key, or one in progress (a claim younger than ``lease_s``; an older one is taken over)."""
    tenant = str(parse_tenant_id(tenant_id))
    async with db.tenant_transaction(tenant) as tx:
        row = await _lookup(tx, tenant, req)
        if row is not None and row["status_code"] is not None:
            return _stored(row)
        if row is not None and row["fresh"]:
            raise _in_progress()
        await tx.execute(CLAIM_SQL, req.caller, req.key, req.fingerprint, float(req.ttl_s))
    return None


async def record(db: TenantDatabase, tenant_id: object, req: IdempotentRequest, body: Any) -> None:
    """The claimed action succeeded: store its answer (``req.status``, ``body``) for the retries."""
    async with db.tenant_transaction(str(parse_tenant_id(tenant_id))) as tx:
        await tx.execute(RECORD_SQL, req.caller, req.key, req.fingerprint, req.status, _encode(body))


async def release(db: TenantDatabase, tenant_id: object, req: IdempotentRequest) -> None:
    """The claimed action was refused or failed, having written nothing: a retry may try again."""
    async with db.tenant_transaction(str(parse_tenant_id(tenant_id))) as tx:
        await tx.execute(RELEASE_SQL, req.caller, req.key, req.fingerprint)


async def prune(db: TenantDatabase, tenant_id: object, *, batch: int = 5000) -> int:
    """Forget up to ``batch`` expired keys of the tenant; returns how many went."""
    async with db.tenant_transaction(str(parse_tenant_id(tenant_id))) as tx:
        done = await tx.execute(PRUNE_SQL, batch)
    return int(done.split()[-1])
