"""uvicorn's HTTP and websocket protocols with the edge's target and header limits.

Why here and not only in ``EdgeLimits``: an ASGI layer sees a request only once the server
has parsed all of its head. uvicorn's httptools protocol puts no bound on the request target
or the headers, so a client could stream a head forever; and for a websocket upgrade it hands
the raw head to the ``websockets`` sans-I/O parser, whose own limits (8 KB a line, 128
headers) answer 414/431 into a buffer that uvicorn's protocol never writes: the client hears
nothing and the socket stays open until the peer gives up, minutes later.

``BoundedHttpTools`` counts the target and header bytes as the parser reports them and, past
``max_url_bytes`` or ``max_header_bytes``, answers 414 or 431 at once and closes, before the
head is complete, for plain requests and upgrades alike. ``BoundedWebSockets`` writes out
whatever rejection the websocket handshake parser produced and closes.

uvicorn builds protocols from its config alone, so the limits are read from the app it
loaded: the ``EdgeLimits`` layer (found through the ``app`` attributes of the middleware
around it). These classes are named in ``uvicorn_config`` by import path so that worker
processes can load them.
"""

from __future__ import annotations

import json
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from dispatch.core.errors import TOO_SLOW, URI_TOO_LONG
from dispatch.core.settings import EdgeSettings
from dispatch.web.limits import MAX_HEADER_BYTES

__all__ = ["HTTP_PROTOCOL", "WS_PROTOCOL", "BoundedHttpTools", "BoundedWebSockets", "edge_limits"]

HTTP_PROTOCOL = "dispatch.web.protocols:BoundedHttpTools"
WS_PROTOCOL = "dispatch.web.protocols:BoundedWebSockets"


def edge_limits(config: Any) -> tuple[int, int]:
    """(max target bytes, max header bytes) of the app uvicorn loaded, cached on its config."""
    cached = getattr(config, "_wakala_edge_limits", None)
    if cached is not None:
        return cached
    limits = (EdgeSettings.max_url_bytes, MAX_HEADER_BYTES)
    app = getattr(config, "loaded_app", None)
    for _ in range(16):
        if app is None:
            break
        if hasattr(app, "max_url_bytes") and hasattr(app, "max_header_bytes"):
            limits = (app.max_url_bytes, app.max_header_bytes)
            break
        app = getattr(app, "app", None)
    config._wakala_edge_limits = limits
    return limits


class _HeadTooLarge(Exception):
    def __init__(self, status: int, message: str, reason: str = URI_TOO_LONG) -> None:
        super().__init__(message)
        self.status, self.message, self.reason = status, message, reason


class BoundedHttpTools(HttpToolsProtocol):
    """httptools' protocol, refusing a request head over the edge's limits as it arrives, and
    a head that does not arrive within ``head_timeout_s``.

    The deadline runs from the connection's start (a client that connects and says nothing)
    and from the first byte of each further request on a kept connection, until the head is
    complete; a slowly sent body or a long-running request is not timed by it, and idle kept
    connections are uvicorn's keep-alive timeout's business. Without it a client dribbling a
    header line now and then (slowloris) held a connection, and a descriptor, for ever."""

    head_timeout_s = 10.0

    def __init__(self, config, server_state, app_state, _loop=None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._max_url, self._max_headers = edge_limits(config)
        self._head_bytes = 0
        self._head_deadline: Any = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._arm_head_deadline()

    def on_headers_complete(self) -> None:
        self._disarm_head_deadline()
        super().on_headers_complete()

    def _arm_head_deadline(self) -> None:
        if self._head_deadline is None:
            self._head_deadline = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if not self.transport.is_closing():
            self._refuse_head(_HeadTooLarge(408, f"the request head did not arrive within {self.head_timeout_s:g} s",
                                            TOO_SLOW))

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self._max_url:
            raise _HeadTooLarge(414, f"the request target is over {self._max_url} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self._max_headers:
            raise _HeadTooLarge(431, f"the request headers are over {self._max_headers} bytes")

    def data_received(self, data: bytes) -> None:
        # uvicorn's own data_received, with the head-size refusal told apart from a malformed
        # request (a callback's exception reaches us as the parser's error, cause attached).
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            cause = exc.__context__ or exc.__cause__
            if isinstance(cause, _HeadTooLarge):
                self._refuse_head(cause)
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)

    def _refuse_head(self, refusal: _HeadTooLarge) -> None:
        body = json.dumps({"error": {"status": refusal.status, "reason": refusal.reason, "field": None,
                                     "message": refusal.message}}).encode()
        content = [STATUS_LINE[refusal.status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([b"content-type: application/json\r\n",
                         b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                         b"connection: close\r\n", b"\r\n", body])
        self.transport.write(b"".join(content))
        self.transport.close()


class BoundedWebSockets(WebSocketsSansIOProtocol):
    """uvicorn's websockets sans-I/O protocol, answering a handshake the parser rejected."""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if (not self.handshake_initiated and self.conn.handshake_exc is not None
                and not self.transport.is_closing()):
            # The parser wrote 414/431/400 to its buffer and waits; send it and hang up.
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.handshake_complete = self.close_sent = True
            self.transport.close()
