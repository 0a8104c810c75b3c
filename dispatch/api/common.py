"""Request plumbing every REST router shares: who is calling, bodies, ids, and refusals.

A route handler reads as four steps: ``caller`` (token, rate limit, role), ``body`` (size
limit, JSON), the domain's own parse and write wrapped in ``check`` / ``call``, and the
answer. Anything the domain refuses becomes a ``dispatch.core.errors.Refusal``, which the
handlers ``install_handlers`` adds render in the REST envelope (``dispatch.web.http.
api_error_response``: ``{"error": {"status", "reason", "field", "message"}}``); FastAPI's
own query and path validation answers in the same envelope, with any text it quotes from the
request escaped, and an input holding a lone surrogate or a NUL refused as ``invalid_text``.
A domain error that is really an outage (``DatabaseUnavailable``, ``BrokerUnavailable``) is a
503 ``unavailable`` without its text (``dispatch.web.outages``), never a 400 naming the host.

Ids in paths go through the one UUID parser; a path id that is not a UUID names nothing the
caller could own, so it is a 404 like any other id that is not theirs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from dispatch.core.errors import (
    FORBIDDEN,
    INVALID_TEXT,
    INVALID_VALUE,
    MISSING_FIELD,
    RATE_LIMITED,
    WRONG_TYPE,
    NotFound,
    Refusal,
    as_refusal,
)
from dispatch.core.ids import InvalidId, canonical_uuid
from dispatch.identity.auth import TokenRejected
from dispatch.identity.users import AuthUser
from dispatch.web.failures import client_address
from dispatch.web.http import api_error_response, bearer, parse_json, read_body
from dispatch.web.outages import is_outage, unavailable
from dispatch.web.text import bad_text_path, is_valid_text, printable
from schema.errors import InvalidTenantId, TenantNotActive, UnknownTenant, WakalaError

__all__ = ["actor", "body", "call", "caller", "check", "check_limit", "customer_of", "install_handlers",
           "json_body_doc", "path_id", "raw_body", "reason_of", "refusal_of", "validation_refusal",
           "vendor_of"]

T = TypeVar("T")

log = logging.getLogger(__name__)


def install_handlers(app: FastAPI) -> None:
    """Render every ``Refusal`` and every request validation error in the REST envelope."""

    @app.exception_handler(Refusal)
    async def refusal(_request: Request, exc: Refusal) -> JSONResponse:
        return api_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return api_error_response(validation_refusal(exc.errors()))


def validation_refusal(errors: Any) -> Refusal:
    """FastAPI's validation errors as one refusal: the first error's field and message, text
    quoted from the request escaped; ``invalid_text`` when any error's input holds a lone
    surrogate or a NUL (which a model may also have accepted: those never reach a handler)."""
    for error in errors:
        loc = [str(p) for p in error.get("loc", ()) if p not in ("query", "path", "body")]
        bad = bad_text_path(error.get("input"))
        if bad is not None or not all(map(is_valid_text, loc)):
            where = [printable(p) for p in loc] + ([bad] if bad not in (None, "body") else [])
            return Refusal(422, INVALID_TEXT, "text must be valid Unicode without NUL characters",
                           ".".join(where) or None)
    first = errors[0] if errors else {}
    loc = [printable(str(p)) for p in first.get("loc", ()) if p not in ("query", "path", "body")]
    return Refusal(422, INVALID_VALUE, printable(str(first.get("msg", "invalid request"))), ".".join(loc) or None)


def refusal_of(exc: WakalaError) -> Refusal:
    """A domain error as the API answers it. A ``Refusal`` as it is; an unknown, malformed or
    inactive tenant is a 404 ``tenant_id`` (the caller learns nothing of other tenants); any
    other error with its ``status``, ``reason`` and ``field`` (404 for an error named
    ``...NotFound``, else 400 ``invalid_request``)."""
    if isinstance(exc, Refusal):
        return exc
    if is_outage(exc):
        log.warning("service unavailable: %s", exc, exc_info=exc)
        return unavailable()
    if isinstance(exc, UnknownTenant | InvalidTenantId | TenantNotActive):
        return NotFound("no such tenant", "tenant_id")
    return as_refusal(exc)


async def call(awaitable: Awaitable[T]) -> T:
    """Await a domain operation; its domain errors become refusals (``refusal_of``)."""
    try:
        return await awaitable
    except WakalaError as exc:
        raise refusal_of(exc) from None


def check(parse: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``call`` for the domain's (synchronous) parse functions."""
    try:
        return parse(*args, **kwargs)
    except WakalaError as exc:
        raise refusal_of(exc) from None


async def caller(request: Request, *roles: str) -> AuthUser:
    """The authenticated user, rate limited, holding one of ``roles`` (any role if none).

    401 (``field`` authorization, ``WWW-Authenticate: Bearer``) for a missing or refused
    token, 429 with ``Retry-After`` past the caller's sliding window, 403 without the role."""
    state = request.app.state
    try:
        user: AuthUser = await state.users.verify(bearer(request.headers.get("authorization")),
                                                  client=client_address(request.scope))
    except TokenRejected as exc:   # 401, or 429 with Retry-After for an address past its budget
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else dict(exc.headers or {})
        raise Refusal(exc.status, exc.reason, exc.message, "authorization", headers=headers) from None
    if not await state.api_limiter.allow(f"user:{user.user_id}"):
        window = state.engine.api_rate_window_s
        raise Refusal(429, RATE_LIMITED, f"more than {state.engine.api_rate_limit} requests in "
                      f"{window} s", headers={"Retry-After": str(window)})
    if roles and not user.roles & set(roles):
        raise Refusal(403, FORBIDDEN, f"this needs the role {' or '.join(roles)}")
    return user


async def raw_body(request: Request) -> bytes:
    """The body's bytes, 413 past ``WAKALA_MAX_BODY_BYTES`` (counted on the ``api`` channel)."""
    return await read_body(request, request.app.state.engine.max_body_bytes, "api")


async def body(request: Request, raw: bytes | None = None) -> Any:
    """The body as JSON (400 ``bad_json``, 413 ``too_large``); ``raw`` if already read."""
    limit = request.app.state.engine.max_body_bytes
    return parse_json(await raw_body(request) if raw is None else raw, limit, "api", "body")


def path_id(value: str, field: str) -> str:
    """A UUID from the path or a body reference, canonical; anything else is a 404 (``no such
    order``) naming ``field``."""
    try:
        return canonical_uuid(value, field)
    except InvalidId:
        raise NotFound(f"no such {field.removesuffix('_id')}", field) from None


def vendor_of(user: AuthUser) -> str:
    """The vendor the user acts for; 403 if none."""
    if user.vendor_id is None:
        raise Refusal(403, FORBIDDEN, "this user acts for no vendor")
    return user.vendor_id


def customer_of(user: AuthUser) -> str:
    """The user's customer record; 403 if they are not a customer."""
    if user.customer_id is None:
        raise Refusal(403, FORBIDDEN, "this user is not a customer")
    return user.customer_id


def actor(user: AuthUser) -> str:
    """Who the audit trail names for the user's actions."""
    return user.user_id


def reason_of(payload: Any, *, required: bool = True) -> str | None:
    """The ``reason`` of a reject, cancel or return body: 1-500 characters, stripped."""
    if not isinstance(payload, dict):
        raise Refusal(422, WRONG_TYPE, "the body must be a JSON object", "body")
    value = payload.get("reason")
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 500:
        raise Refusal(422, MISSING_FIELD, "reason (1-500 characters) is required", "reason")
    return value.strip()


def check_limit(limit: int) -> None:
    """A list's ``limit`` query parameter: 1 to 200."""
    if not 1 <= limit <= 200:
        raise Refusal(422, INVALID_VALUE, "limit must be from 1 to 200", "limit")


def json_body_doc(example: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI request body of a route that validates its JSON itself."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"type": "object"}, "example": example}}}}
