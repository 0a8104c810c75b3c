"""The ``Idempotency-Key`` header of the REST API's unsafe routes (the store and its guarantees:
``dispatch.commerce.idempotency``).

A client may send ``Idempotency-Key: <1-255 printable ASCII characters>`` with any POST or
PATCH. The same key from the same caller with the same request answers what the first one
answered (status and body, plus ``Idempotent-Replayed: true``) without acting again; the same
key with another request is 409 ``idempotency_conflict``; while the first is still running,
409 ``idempotency_conflict`` with ``Retry-After``. A malformed key is 422 naming
``Idempotency-Key``. Keys are remembered 24 hours.

``request_of`` turns the header into an ``IdempotentRequest`` for the routes that keep the key
in their own transaction (order placement, payment callbacks); ``once`` wraps every other
route's action in claim, act, record.

Not covered: routes whose answer holds a secret shown once (a user's bearer token, a
tracking link) never store it; their key is validated and then ignored, and a retry mints
another secret (each is separately revocable; nothing is sold or charged twice).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse

from dispatch.api.common import call, raw_body
from dispatch.commerce import idempotency as idem
from dispatch.core.errors import INVALID_VALUE, Refusal

__all__ = ["REPLAYED_HEADER", "answer", "key_of", "once", "request_of"]

log = logging.getLogger(__name__)

REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY = 255


def key_of(request: Request) -> str | None:
    """The request's ``Idempotency-Key``: None if absent; 422 if sent twice, empty, longer than
    255 characters or not printable ASCII (no control characters, nothing beyond ``~``)."""
    values = request.headers.getlist(idem.HEADER)
    if not values:
        return None
    key = values[0].strip()
    if len(values) > 1 or not 1 <= len(key) <= MAX_KEY or not all(" " <= c <= "~" for c in key):
        raise Refusal(422, INVALID_VALUE, f"{idem.HEADER} must be one value of 1-{MAX_KEY} printable "
                      "ASCII characters", idem.HEADER)
    return key


async def request_of(request: Request, caller_id: str, raw: bytes | None = None) -> idem.IdempotentRequest | None:
    """The request under its ``Idempotency-Key`` (None without one), fingerprinted by method,
    path and body (``raw``, or read here and kept for the route's own ``body``). The answer's
    status is the route's declared one."""
    key = key_of(request)
    if key is None:
        return None
    if raw is None:
        raw = await raw_body(request)
        # Starlette serves a body it has kept to every later reader of the stream; the route
        # reads it again through dispatch.api.common.body.
        request._body = raw
    route = request.scope.get("route")
    status = getattr(route, "status_code", None) or 200
    return idem.IdempotentRequest(caller_id, key, idem.fingerprint(request.method, request.url.path, raw),
                                  status=status)


def answer(result: Any) -> Any:
    """What a route returns for an in-transaction result: a replay with its header."""
    if isinstance(result, idem.ReplayedBody):
        return JSONResponse(dict(result), status_code=result.status, headers={REPLAYED_HEADER: "true"})
    return result


async def once(request: Request, tenant_id: object, caller_id: str, action: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``action`` at most once per ``Idempotency-Key`` (claim, act, record); without the
    header, just run it."""
    req = await request_of(request, caller_id)
    if req is None:
        return await action()
    db = request.app.state.db
    first = await call(idem.claim(db, tenant_id, req))
    if first is not None:
        return JSONResponse(first.body, status_code=first.status, headers={REPLAYED_HEADER: "true"})
    try:
        result = await action()
    except BaseException:
        # nothing was done: let a retry try again (if the database is what failed, the claim
        # stays until its lease runs out)
        try:
            await asyncio.shield(idem.release(db, tenant_id, req))
        except Exception:
            log.warning("releasing idempotency key of %s failed; it frees itself after %d s",
                        caller_id, req.lease_s, exc_info=True)
        raise
    try:
        await idem.record(db, tenant_id, req, jsonable_encoder(result))
    except Exception:   # the action committed: its answer stands; a retry after the lease acts again
        log.warning("recording the answer to an idempotency key of %s failed", caller_id, exc_info=True)
    return result
