"""The hub's websockets: ``GET /v1/track/{token}`` (customers) and ``GET /v1/vendors/stream``.

Both are raw ASGI handlers routed in front of FastAPI (``HubRoute``), like the driver
socket (``dispatch.gateway.ingest.DriverStreamRoute``): every frame to every watcher would
otherwise cross FastAPI's middleware layers, and the hub sends thousands a second.
``dispatch.tracking.hub`` does the fan-out; here is the handshake and the socket's life.

Tracking socket (``/v1/track/{token}``)
    The token is in the path. A malformed, unknown or revoked token: accepted, then closed
    ``4401 invalid_token``; an expired one ``4410 expired_token``; nothing else is sent
    first. A valid one gets the snapshot, then ``position`` (while the delivery is active),
    ``status``, ``arrived`` and ``heartbeat`` frames (see ``dispatch.tracking.hub``).
    Messages from the page are read and ignored.

Vendor screen (``/v1/vendors/stream``)
    A user token (``wku_...``) in the Authorization header, as a ``bearer.<token>``
    subprotocol, or as a first message ``{"type": "auth", "token": ...}``. Refused:
    ``4401 <reason>`` (unknown, revoked, expired token), ``4403 forbidden`` (not a vendor
    user), ``4408 auth_timeout`` (no token in time). Accepted: ``{"type": "ready",
    "vendor_id"}``, then an ``order`` frame for every event of this vendor's orders, and
    heartbeats.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

from dispatch.core.errors import FORBIDDEN
from dispatch.identity.auth import TokenRejected
from dispatch.tracking.hub import TrackingHub
from dispatch.tracking.links import LinkRefused, resolve_link
from dispatch.web.failures import client_address
from dispatch.web.http import SUBPROTOCOL_PREFIX, bearer

__all__ = ["CLOSE_AUTH_TIMEOUT", "CLOSE_FORBIDDEN", "HubRoute", "TRACK_PREFIX", "VENDOR_STREAM_PATH"]

log = logging.getLogger(__name__)

TRACK_PREFIX = "/v1/track/"
VENDOR_STREAM_PATH = "/v1/vendors/stream"
CLOSE_UNAUTHORISED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_AUTH_TIMEOUT = 4408
CLOSE_UNAVAILABLE = 1011
# Kernel send buffer of a hub socket (Linux doubles it). Autotuning would let one socket that
# stopped reading hold up to tcp_wmem's maximum (4 MB here) before the send blocks and the hub
# notices; a feed of ~200-byte frames a second never needs more than this.
SEND_BUFFER_BYTES = 64 * 1024


class HubRoute:
    """ASGI front door for the hub's websockets; everything else goes to ``app`` untouched."""

    def __init__(self, app) -> None:
        self.app = app
        self.state = app.state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "websocket":
            path = scope["path"]
            if path.startswith(TRACK_PREFIX):
                await track_socket(scope, receive, send, self.state)
                return
            if path == VENDOR_STREAM_PATH:
                await vendor_socket(scope, receive, send, self.state)
                return
        await self.app(scope, receive, send)


def _cap_send_buffer(receive) -> None:
    """Best effort: cap the socket's kernel send buffer (``SEND_BUFFER_BYTES``), so a client
    that stops reading stalls its send, and is found out, after ~200 KB rather than megabytes.
    ASGI does not expose the socket; uvicorn's ``receive`` is a method of its protocol object,
    which holds the transport. Under another server this does nothing."""
    transport = getattr(getattr(receive, "__self__", None), "transport", None)
    try:
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    except (OSError, AttributeError):
        return


async def _close(send, code: int, reason: str) -> None:
    try:
        await send({"type": "websocket.close", "code": code, "reason": reason})
    except Exception:   # the peer is already gone
        return


async def _drain(receive) -> None:
    """Read (and ignore) what the peer sends until it leaves."""
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def track_socket(scope, receive, send, state) -> None:
    hub: TrackingHub = state.hub
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    _cap_send_buffer(receive)
    token = scope["path"][len(TRACK_PREFIX):]
    try:
        link = await resolve_link(state.db, token, grace_s=state.engine.tracking_link_grace_s)
    except LinkRefused as exc:
        await _close(send, exc.code, exc.reason)
        return
    except Exception:
        log.exception("resolving a tracking link failed")
        await _close(send, CLOSE_UNAVAILABLE, "unavailable")
        return
    client = hub.watch(link, send)
    try:
        try:
            opened = await hub.open_watcher(client)
        except Exception:   # Postgres or Redis away, or the peer left during the snapshot
            log.warning("no snapshot of delivery %s for a watcher", link.delivery_id, exc_info=True)
            opened = False
        if not opened and not client.closed:
            await _close(send, CLOSE_UNAVAILABLE, "unavailable")
            return
        await _drain(receive)   # until the peer leaves, or the hub's close frame is sent
    finally:
        hub.forget(client)


def _vendor_token(scope) -> tuple[str | None, str | None]:
    """(token, subprotocol to accept) from the handshake."""
    token = None
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            token = bearer(value.decode("latin-1"))
    subprotocol = None
    for proto in scope.get("subprotocols", ()):
        if proto.startswith(SUBPROTOCOL_PREFIX):
            token, subprotocol = proto[len(SUBPROTOCOL_PREFIX):], proto
    return token, subprotocol


async def _first_message_token(receive, timeout_s: float) -> Any:
    message = await asyncio.wait_for(receive(), timeout_s)
    if message["type"] != "websocket.receive":
        return None
    raw = message.get("text") if message.get("text") is not None else message.get("bytes")
    if raw is None or len(raw) > 4096:
        return None
    try:
        first = json.loads(raw)
    except ValueError:
        return None
    return first.get("token") if isinstance(first, dict) and first.get("type") == "auth" else None


async def vendor_socket(scope, receive, send, state) -> None:
    hub: TrackingHub = state.hub
    if (await receive())["type"] != "websocket.connect":
        return
    token, subprotocol = _vendor_token(scope)
    accept: dict[str, Any] = {"type": "websocket.accept"}
    if subprotocol is not None:
        accept["subprotocol"] = subprotocol
    await send(accept)
    _cap_send_buffer(receive)
    if token is None:
        try:
            token = await _first_message_token(receive, state.engine.auth_timeout_s)
        except TimeoutError:
            await _close(send, CLOSE_AUTH_TIMEOUT, "auth_timeout")
            return
        if token is None:
            await _close(send, CLOSE_UNAUTHORISED, "unknown_token")
            return
    try:
        user = await state.users.verify(token, client=client_address(scope))
    except TokenRejected as exc:
        await _close(send, CLOSE_UNAUTHORISED, exc.reason)
        return
    except Exception:
        log.exception("verifying a vendor screen's token failed")
        await _close(send, CLOSE_UNAVAILABLE, "unavailable")
        return
    if "vendor" not in user.roles or user.vendor_id is None:
        await _close(send, CLOSE_FORBIDDEN, FORBIDDEN)
        return
    client = hub.watch_vendor(user.tenant_id, user.vendor_id, user.token_hash, user.expires_at, send)
    try:
        await send({"type": "websocket.send", "text": json.dumps({"type": "ready", "vendor_id": user.vendor_id})})
        hub.start_pump(client)
        await _drain(receive)
    except Exception:   # the peer left during the ready frame
        return
    finally:
        hub.forget(client)
