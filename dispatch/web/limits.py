"""The edge's limits, as one pure ASGI layer in front of every route.

What it refuses, before any route, parser or token check runs:

- a request target (path and query) over ``max_url_bytes``: 414 ``uri_too_long``;
- request headers over ``max_header_bytes`` in all: 431 ``uri_too_long`` (the reason names
  "a request target or header over its limit");
- a body over ``max_body_bytes``, from its declared ``Content-Length`` before a byte is
  read, or, chunked, as soon as the bytes received outgrow it: 413 ``too_large``;
- a ``%00`` in the path or query: 422 ``invalid_text`` naming the parameter (a NUL reaches
  no store; PostgreSQL refuses it in text).

Every route is covered, whatever it does with its body later: a route that lets FastAPI
parse a model (which reads the whole body first) is bounded the same as one that reads it
raw. The body is read here, up to the limit, and handed on as one message; past the limit
the 413 goes out at once with ``Connection: close``, so the server drops the connection
instead of draining the rest of a 200 MB upload. Holding up to ``max_body_bytes`` before the
route runs is what the route would hold anyway.

Refusals answer in the route's envelope (``dispatch.web.http.error_response``); a websocket
upgrade is refused with the same status through the ASGI denial response when the server
offers it, else closed before accepting. Oversized targets that the HTTP parser would never
hand to an app are the server protocol's business (``dispatch.web.protocols``).

The layer also makes sure an HTTP request always gets an answer: an exception that escapes
the app before the response started becomes a 500 (503 for an outage) in the envelope,
logged once (``dispatch.web.outages``), never a reset connection.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import unquote_to_bytes

from dispatch.core.errors import INVALID_TEXT, RATE_LIMITED, TOO_LARGE, URI_TOO_LONG, Refusal
from dispatch.core.metrics import API_SECONDS, PINGS_REJECTED
from dispatch.web.failures import FailureLimiter, client_address
from dispatch.web.http import GATEWAY_PREFIX, error_response
from dispatch.web.outages import failure_response

__all__ = ["MAX_HEADER_BYTES", "EdgeLimits", "target_refusal"]

log = logging.getLogger(__name__)

# Browsers and proxies keep headers to a few KB; nginx's default allows 32 KB in 8 KB lines.
MAX_HEADER_BYTES = 16 * 1024
DRAIN_MIN_BYTES = 1 << 20   # a refused body declared up to this (or 4x the limit) is drained, not reset


def target_refusal(scope: dict[str, Any], max_url_bytes: int, max_header_bytes: int) -> Refusal | None:
    """The refusal a request's target and headers earn before anything else, or None. Pure."""
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
    query: bytes = scope.get("query_string", b"")
    if len(raw_path) + (len(query) + 1 if query else 0) > max_url_bytes:   # as on the request line
        return Refusal(414, URI_TOO_LONG, f"the request target is over {max_url_bytes} bytes")
    size = 0
    for name, value in scope.get("headers", ()):
        size += len(name) + len(value) + 4
    if size > max_header_bytes:
        return Refusal(431, URI_TOO_LONG, f"the request headers are over {max_header_bytes} bytes")
    if b"%00" in raw_path:
        return Refusal(422, INVALID_TEXT, "the path holds a NUL character", "path")
    if b"%00" in query:
        for pair in query.split(b"&"):
            if b"%00" in pair:
                name = unquote_to_bytes(pair.partition(b"=")[0].replace(b"+", b" "))
                field = name.decode("utf-8", "backslashreplace").replace("\x00", "\\x00") or "query"
                return Refusal(422, INVALID_TEXT, "a query parameter holds a NUL character", field)
    return None


class EdgeLimits:
    """ASGI middleware: the limits above, then ``app``; ``state`` is the app's."""

    def __init__(self, app: Any, *, max_body_bytes: int, max_url_bytes: int,
                 max_header_bytes: int = MAX_HEADER_BYTES, failures: FailureLimiter | None = None) -> None:
        self.app = app
        # An address past its budget of made-up tokens: a request carrying a token is refused
        # here, before the body is read or a route runs. The verifier would refuse it the same
        # way (before any lookup); answering it this early is what keeps a flood from one
        # address cheap enough that the other callers' requests are not queued behind it.
        self.failures = failures
        self.state = app.state
        self.max_body_bytes, self.max_url_bytes, self.max_header_bytes = max_body_bytes, max_url_bytes, max_header_bytes

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            refusal = target_refusal(scope, self.max_url_bytes, self.max_header_bytes)
            if refusal is None:
                await self.app(scope, receive, send)
            else:
                await _deny_websocket(scope, send, refusal)
        else:
            await self.app(scope, receive, send)

    def _throttled(self, scope) -> Refusal | None:
        """The 429 for a request with a token from an address past its budget, else None."""
        client = client_address(scope)
        if client is None or not _has_authorization(scope):
            return None
        retry_after = self.failures.retry_after(client)
        if retry_after is None:
            return None
        return Refusal(429, RATE_LIMITED, f"too many refused tokens from this address; retry in {retry_after} s",
                       "authorization", headers={"Retry-After": str(retry_after)})

    async def _http(self, scope, receive, send) -> None:
        path = scope["path"]
        refusal = target_refusal(scope, self.max_url_bytes, self.max_header_bytes)
        if refusal is not None:
            await _respond(scope, send, refusal, close=refusal.status != 422)
            return
        limit = self.max_body_bytes
        channel = "http" if path.startswith(GATEWAY_PREFIX) else "api"
        if self.failures is not None and (throttled := self._throttled(scope)) is not None:
            PINGS_REJECTED.labels(channel, RATE_LIMITED).inc()
            await _respond(scope, send, throttled, close=False)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > limit):
                PINGS_REJECTED.labels(channel, TOO_LARGE).inc()
                await _respond(scope, send, Refusal(413, TOO_LARGE, f"body over {limit} bytes"),
                               close=_close_after_413(value, limit))
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":   # the client left: nothing to answer
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                PINGS_REJECTED.labels(channel, TOO_LARGE).inc()
                await _respond(scope, send, Refusal(413, TOO_LARGE, f"body over {limit} bytes"), close=True)
                return
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        pending: list[dict[str, Any]] = [{"type": "http.request", "body": body, "more_body": False}]

        async def replay() -> dict[str, Any]:
            if pending:
                return pending.pop()
            return await receive()   # only http.disconnect is left to come

        started = False
        status = 500
        began = time.perf_counter()

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
            await send(message)

        try:
            await self.app(scope, replay, tracked)
        except Exception as exc:
            if getattr(exc, "_wakala_answered", False):
                return   # answered and logged by the app's handler; do not log it twice
            if started:
                log.error("%s %s: failed after the response started", scope.get("method"), path, exc_info=exc)
                return
            response = failure_response(path, scope.get("method", ""), exc)
            await response(scope, replay, send)
            status = response.status_code
        finally:
            _observe(scope, status, began)


def _observe(scope, status: int, began: float) -> None:
    """API latency by route template (set on the scope by the router; requests that matched
    no route count as one ``unmatched`` series, whatever their path)."""
    route = scope.get("route")
    API_SECONDS.labels(scope.get("method", ""), getattr(route, "path", "unmatched"), str(status)).observe(
        time.perf_counter() - began)


def _close_after_413(declared: bytes, limit: int) -> bool:
    """Whether a 413 for a body declared ``declared`` bytes long also closes the connection.

    Closing a socket with unread bytes in its receive buffer makes the kernel send a reset,
    and a client still sending (most HTTP clients send the whole body before reading) then
    loses the answer to "connection reset". A moderately oversized body (up to 4x the limit or
    ``DRAIN_MIN_BYTES``) is therefore answered on a kept connection, whose server reads and
    throws away the rest (nothing is kept: memory stays flat); a huge or unmeasured one is cut
    off, and its sender may see the reset instead of the 413."""
    return not declared.isdigit() or int(declared) > max(4 * limit, DRAIN_MIN_BYTES)


def _has_authorization(scope) -> bool:
    return any(name == b"authorization" for name, _ in scope["headers"])


async def _respond(scope, send, refusal: Refusal, *, close: bool) -> None:
    response = error_response(scope["path"], refusal)
    if close:
        response.headers["connection"] = "close"
    await response(scope, _no_body, send)


async def _no_body() -> dict[str, Any]:
    return {"type": "http.disconnect"}


async def _deny_websocket(scope, send, refusal: Refusal) -> None:
    """Refuse an upgrade with ``refusal``'s status and body when the server supports the
    denial response; close before accepting otherwise (the server answers 403)."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    response = error_response(scope["path"], refusal)
    await send({"type": "websocket.http.response.start", "status": response.status_code,
                "headers": response.raw_headers})
    await send({"type": "websocket.http.response.body", "body": response.body})
