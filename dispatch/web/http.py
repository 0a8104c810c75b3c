"""HTTP plumbing every request-facing room shares: bounded bodies, JSON, bearer tokens, and a
``Refusal`` rendered as a JSON error response.

Bodies are read with a limit *while streaming* (``read_body``): a declared length over the
limit is refused before a byte is read, and an undeclared one as soon as it outgrows it, so
an oversized body is never buffered whole. Size and JSON refusals are counted in
``wakala_pings_rejected_total`` under the caller's channel (``http``, ``ws``, ``api``), the
same labels the ping gateway has always used.

Two error envelopes exist on the wire, and both are kept exactly, rendered from the same
``Refusal``:

``api_error_response`` — the REST API's ``{"error": {"status", "reason", "field",
"message"}}`` (``field`` always present, null when no field is at fault). Used by every
``dispatch.api`` route of admins, vendors, customers, the catalogue and the payment
callback, and by FastAPI's request validation errors on any route.

``gateway_error_response`` / ``gateway_error`` — the driver gateway's ``{"error": {"reason",
"message", "field"?, "errors"?}}`` (``field`` and ``errors`` only when set). Used by the
driver routes: ``POST /v1/drivers/locations``, ``POST /v1/drivers/shift`` (its token
refusals), ``POST /v1/drivers/deliveries/{id}/events``, and, without the ``error`` wrapper,
by the driver websocket's ``{"type": "error", ...}`` frames. Driver apps parse this shape;
the two are not merged because clients on both sides key on them. Whatever answers for a
request without knowing its route (the body limit, the request-target limit, the outage and
crash handlers) picks the envelope by path: ``error_response`` (``/v1/drivers/...`` is the
gateway's).

Decoded JSON is checked for text that cannot travel on (a lone surrogate, a NUL:
``dispatch.web.text``) before any caller sees it: 422 ``invalid_text`` naming the field.
Error bodies are rendered so that no text in them can fail to encode: a field or message
that quotes such input is escaped rather than turned into a 500.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from dispatch.core.errors import BAD_JSON, INVALID_TEXT, TOO_LARGE, Refusal
from dispatch.core.metrics import PINGS_REJECTED
from dispatch.web.text import bad_text_path, may_hold_bad_text, printable
from streams import codec

__all__ = ["GATEWAY_PREFIX", "SUBPROTOCOL_PREFIX", "api_error_response", "bearer", "check_text", "error_response",
           "gateway_error", "gateway_error_response", "parse_json", "read_body"]

# Routes under this prefix answer in the driver gateway's envelope, every other in the REST one.
GATEWAY_PREFIX = "/v1/drivers/"

# Browsers cannot set headers on a websocket: they offer ``bearer.<token>`` as a subprotocol.
SUBPROTOCOL_PREFIX = "bearer."


async def read_body(request: Request, limit: int, channel: str) -> bytes:
    """The request body, refused (413) from its declared length or as soon as it outgrows
    ``limit``: an oversized body is never buffered whole."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        PINGS_REJECTED.labels(channel, TOO_LARGE).inc()
        raise Refusal(413, TOO_LARGE, f"body over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            PINGS_REJECTED.labels(channel, TOO_LARGE).inc()
            raise Refusal(413, TOO_LARGE, f"body over {limit} bytes")
    return bytes(body)


def parse_json(raw: str | bytes | bytearray | None, limit: int, channel: str, what: str) -> Any:
    """Size limit, then JSON: the same refusal, counted the same way, on every channel."""
    if raw is None or len(raw) > limit:
        PINGS_REJECTED.labels(channel, TOO_LARGE).inc()
        raise Refusal(413, TOO_LARGE, f"{what} over {limit} bytes")
    try:
        value = codec.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):   # RecursionError: nested too deep
        PINGS_REJECTED.labels(channel, BAD_JSON).inc()
        raise Refusal(400, BAD_JSON, f"the {what} is not valid JSON") from None
    if may_hold_bad_text(raw):
        check_text(value, channel)
    return value


def check_text(value: Any, channel: str) -> None:
    """422 ``invalid_text`` naming the first field of decoded ``value`` that holds a lone
    surrogate or a NUL (counted on ``channel``); nothing when all its text is valid."""
    field = bad_text_path(value)
    if field is not None:
        PINGS_REJECTED.labels(channel, INVALID_TEXT).inc()
        raise Refusal(422, INVALID_TEXT, "text must be valid Unicode without NUL characters", field)


def bearer(value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value (scheme case-insensitive), or None."""
    if value and value[:7].lower() == "bearer ":
        return value[7:].strip()
    return None


class _ErrorResponse(JSONResponse):
    """A JSON error body that always encodes: text quoting a caller's invalid input (a lone
    surrogate in a key a validator names) is escaped instead of failing the response."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(_printable(content), ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _printable(value: Any) -> Any:
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_printable(v) for v in value]
    return value


def api_error_response(refusal: Refusal) -> JSONResponse:
    """The REST API's envelope: ``{"error": {"status", "reason", "field", "message"}}``."""
    return _ErrorResponse({"error": {"status": refusal.status, "reason": refusal.reason, "field": refusal.field,
                                     "message": refusal.message}},
                          status_code=refusal.status, headers=refusal.headers)


def error_response(path: str, refusal: Refusal) -> JSONResponse:
    """``refusal`` in the envelope of the route at ``path``: the gateway's under
    ``/v1/drivers/``, the REST API's elsewhere."""
    if path.startswith(GATEWAY_PREFIX):
        return gateway_error_response(refusal)
    return api_error_response(refusal)


def gateway_error(refusal: Refusal) -> dict[str, Any]:
    """The driver gateway's error object: reason, message, and field / errors when set."""
    error: dict[str, Any] = {"reason": refusal.reason, "message": refusal.message}
    if refusal.field is not None:
        error["field"] = refusal.field
    if refusal.errors is not None:
        error["errors"] = refusal.errors
    return error


def gateway_error_response(refusal: Refusal) -> JSONResponse:
    """The driver gateway's envelope: ``{"error": gateway_error(refusal)}``."""
    return _ErrorResponse({"error": gateway_error(refusal)}, status_code=refusal.status, headers=refusal.headers)
