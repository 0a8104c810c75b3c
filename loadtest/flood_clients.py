"""Hostile clients for `wakala bench flood`: raw HTTP/1.1 and websocket bytes over asyncio streams.

The flood shares the machine's cores with the engine it attacks, so it does not go through an
HTTP library: a request is a ``bytes`` built once, a connection is an asyncio stream kept
alive for as many requests as the server allows, a response is read only as far as its status
and framing need. What a client sees is reduced to one small vocabulary of outcomes
(``outcome``): the refusal kinds the bench reports (401, 413, 429, 431, 414), ``closed`` when
the server hung up without an answer, ``no_answer`` when it neither answered nor hung up in
time, ``accepted`` for a 2xx, and the bare status code for anything else.

Every client binds its side of the connection to a given source address (``127.0.0.x``): the
legitimate workload speaks from 127.0.0.1, the flood from other loopback addresses, so a
per-address limit in the engine sees the attacker as someone else, as it would in production.

The pure parts (tokens, request bytes, frames, outcomes) have no I/O and are unit-tested.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import socket
import time
from dataclasses import dataclass

__all__ = [
    "REFUSAL_KINDS", "RawConnection", "http_request", "masked_frame", "never_reading_driver",
    "oversized_body", "outcome", "random_token", "read_response", "silent_websocket", "slowloris",
    "upgrade_request", "websocket_attempt",
]

REFUSAL_KINDS = ("401", "413", "429", "431", "414", "closed")
CHUNK = 64 * 1024
# Websocket close codes the engine uses for refusals, read as the HTTP status they stand for.
# 1013 (try again later) is the driver socket's answer to a throttled token check (it also
# closes that way when the token check is unavailable, which a flood against healthy services
# does not meet): counted with the 429s.
CLOSE_AS_STATUS = {4401: 401, 4408: 408, 4429: 429, 1013: 429, 1009: 413, 4413: 413, 4414: 414}


def random_token(prefix: str, rng: random.Random, tenant_hex: str | None = None) -> str:
    """A well-formed bearer token (``wkd_``/``wku_`` + 32 hex + 43 urlsafe characters) that no
    tenant issued: a random tenant part unless ``tenant_hex`` names a real one."""
    tenant = tenant_hex or rng.randbytes(16).hex()
    secret = base64.urlsafe_b64encode(rng.randbytes(32)).rstrip(b"=").decode()
    return f"{prefix}_{tenant}_{secret}"


def http_request(method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b"",
                 *, host: str = "bench", keep_alive: bool = True) -> bytes:
    """One HTTP/1.1 request as bytes (Content-Length set when there is a body or a method that takes one)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def upgrade_request(target: str, headers: dict[str, str] | None = None) -> bytes:
    """A websocket opening handshake for ``target``."""
    key = base64.b64encode(os.urandom(16)).decode()
    return http_request("GET", target, {"Upgrade": "websocket", "Connection": "Upgrade",
                                        "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13",
                                        **(headers or {})})


def masked_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A final client frame (clients must mask): text by default."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    if n == 0:
        return head + mask
    repeated = (mask * (n // 4 + 1))[:n]
    return head + mask + (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


def outcome(status: int | None = None, close_code: int | None = None, *, answered: bool = True) -> str:
    """What one hostile request came to, in the bench's vocabulary (see the module doc)."""
    if not answered:
        return "no_answer"
    if status is None and close_code is not None:
        status = CLOSE_AS_STATUS.get(close_code)
        if status is None:
            return f"ws_close_{close_code}"
    if status is None:
        return "closed"
    if 200 <= status < 300:
        return "accepted"
    return str(status)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def closes(self) -> bool:
        return self.headers.get("connection", "").lower() == "close"


async def read_response(reader: asyncio.StreamReader) -> Response:
    """Read one response: status line, headers, body (Content-Length, chunked, or to EOF)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if status == 101 or status == 304 or 100 <= status < 200:
        return Response(status, headers, b"")
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    else:
        body = await reader.read()
        headers["connection"] = "close"
    return Response(status, headers, body)


async def _read_close_code(reader: asyncio.StreamReader) -> int | None:
    """Read server frames until a close frame; its code (None if the stream ends first)."""
    while True:
        b0, b1 = await reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(await reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await reader.readexactly(8), "big")
        payload = await reader.readexactly(n)
        if b0 & 0x0F == 8:
            return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005


async def _open(addr: tuple[str, int], source_ip: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(addr[0], addr[1], local_addr=(source_ip, 0), limit=1 << 20)


def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        with contextlib.suppress(Exception):
            writer.transport.abort()


class RawConnection:
    """One keep-alive connection from ``source_ip``; reopened when the server closes it."""

    def __init__(self, addr: tuple[str, int], source_ip: str, timeout_s: float = 30.0) -> None:
        self.addr, self.source_ip, self.timeout_s = addr, source_ip, timeout_s
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reopened = 0

    async def request(self, data: bytes) -> str:
        """Send one request, read its answer; the outcome (``closed`` if the server hung up)."""
        try:
            if self.writer is None:
                self.reader, self.writer = await _open(self.addr, self.source_ip)
                self.reopened += 1
            self.writer.write(data)
            response = await asyncio.wait_for(read_response(self.reader), self.timeout_s)
        except TimeoutError:
            self.close()
            return outcome(answered=False)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError):
            self.close()
            return outcome()
        if response.closes:
            self.close()
        return outcome(response.status)

    def close(self) -> None:
        _close(self.writer)
        self.reader = self.writer = None


async def websocket_attempt(addr: tuple[str, int], source_ip: str, target: str, headers: dict[str, str],
                            timeout_s: float = 30.0) -> str:
    """Open a websocket with these headers; the refusal (HTTP status or close code) it meets."""
    writer = None
    try:
        reader, writer = await _open(addr, source_ip)
        writer.write(upgrade_request(target, headers))
        response = await asyncio.wait_for(read_response(reader), timeout_s)
        if response.status != 101:
            return outcome(response.status)
        code = await asyncio.wait_for(_read_close_code(reader), timeout_s)
        return outcome(close_code=code) if code is not None else outcome()
    except TimeoutError:
        return outcome(answered=False)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError):
        return outcome()
    finally:
        _close(writer)


async def oversized_body(addr: tuple[str, int], source_ip: str, method: str, target: str, size: int,
                         *, chunked: bool, headers: dict[str, str] | None = None,
                         timeout_s: float = 60.0) -> tuple[str, int]:
    """Stream ``size`` bytes of body (declared with Content-Length, or chunked) until the server
    answers or hangs up; (outcome, body bytes sent before that).

    A bare socket, not a stream: a server that answers and closes with our body unread resets
    the connection, and a transport that meets the reset on its next write drops the answer it
    has not read yet. Here the reader keeps reading what the kernel holds after the writer failed.
    """
    framing = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(size)}
    head = ("\r\n".join([f"{method} {target} HTTP/1.1", "Host: bench", "Content-Type: application/json",
                         *(f"{k}: {v}" for k, v in {**(headers or {}), **framing}.items())]) + "\r\n\r\n")
    piece = b'{"pad":"' + b"x" * (CHUNK - 8)
    loop = asyncio.get_running_loop()
    sent = 0
    received = bytearray()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.bind((source_ip, 0))
        await asyncio.wait_for(loop.sock_connect(sock, addr), timeout_s)

        async def pour() -> None:
            nonlocal sent
            with contextlib.suppress(OSError):
                await loop.sock_sendall(sock, head.encode("latin-1"))
                while sent < size:
                    part = piece[:min(CHUNK, size - sent)]
                    await loop.sock_sendall(sock, b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
                    sent += len(part)
                if chunked:
                    await loop.sock_sendall(sock, b"0\r\n\r\n")

        async def answer() -> None:
            with contextlib.suppress(OSError):
                while b"\r\n\r\n" not in received:
                    data = await loop.sock_recv(sock, 65536)
                    if not data:
                        return
                    received.extend(data)

        pouring = asyncio.create_task(pour())
        try:
            await asyncio.wait_for(answer(), timeout_s)
        finally:
            pouring.cancel()
            await asyncio.gather(pouring, return_exceptions=True)
    except TimeoutError:
        return outcome(answered=False), sent
    except OSError:
        return outcome(), sent
    finally:
        sock.close()
    head_seen = bytes(received[:12])
    status = int(head_seen[9:12]) if head_seen.startswith(b"HTTP/1.") and head_seen[9:12].isdigit() else None
    return outcome(status), sent


async def slowloris(addr: tuple[str, int], source_ip: str, target: str, until: float,
                    dribble_s: float = 1.0) -> tuple[str, float]:
    """Dribble a request's headers, one short line every ``dribble_s``, until the server answers
    or hangs up (its outcome) or ``until`` passes (``held_open``); and the seconds it took."""
    started = time.monotonic()
    writer = None
    try:
        reader, writer = await _open(addr, source_ip)
        writer.write(f"GET {target} HTTP/1.1\r\nHost: bench\r\n".encode())
        answer = asyncio.create_task(reader.read(65536))
        n = 0
        while time.time() < until:
            done, _ = await asyncio.wait({answer}, timeout=min(dribble_s, max(0.0, until - time.time())))
            if done:
                data = answer.result() if not answer.exception() else b""
                status = int(data[9:12]) if data.startswith(b"HTTP/1.") and data[9:12].isdigit() else None
                return outcome(status), time.monotonic() - started
            n += 1
            writer.write(f"X-Dribble-{n}: {n}\r\n".encode())
        answer.cancel()
        return "held_open", time.monotonic() - started
    except OSError:
        return outcome(), time.monotonic() - started
    finally:
        _close(writer)


async def silent_websocket(addr: tuple[str, int], source_ip: str, until: float) -> tuple[str, float]:
    """Open the driver websocket without a token, then neither send nor read until ``until``;
    whether the server closed it meanwhile (its close code) and after how long."""
    started = time.monotonic()
    writer = None
    try:
        reader, writer = await _open(addr, source_ip)
        writer.write(upgrade_request("/v1/drivers/stream"))
        response = await asyncio.wait_for(read_response(reader), max(1.0, until - time.time()))
        if response.status != 101:
            return outcome(response.status), time.monotonic() - started
        # Not reading is the point; the kernel buffers what the server sends. Only the end is
        # watched, so a close is seen when it comes.
        code = await asyncio.wait_for(_read_close_code(reader), max(0.1, until - time.time()))
        return (outcome(close_code=code) if code is not None else "closed"), time.monotonic() - started
    except TimeoutError:
        return "held_open", time.monotonic() - started
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
        return "closed", time.monotonic() - started
    finally:
        _close(writer)


async def never_reading_driver(addr: tuple[str, int], source_ip: str, token: str, driver_id: str,
                               until: float, frames_per_s: float = 50.0) -> tuple[str, int]:
    """A driver (real token) who sends pings on the websocket and never reads a reply: the
    engine's acks and errors pile up in the socket. (``held_open`` or ``closed``, frames sent)."""
    writer = None
    sent = 0
    try:
        _, writer = await _open(addr, source_ip)
        writer.write(upgrade_request("/v1/drivers/stream", {"Authorization": f"Bearer {token}"}))
        lat, lng = -26.2041, 28.0473
        while time.time() < until:
            now = time.time()
            frame = masked_frame(json.dumps({"type": "ping", "seq": sent, "driver_id": driver_id, "lat": lat,
                                             "lng": lng, "accuracy": 5.0, "speed": 0.0, "heading": 0.0,
                                             "timestamp": now}).encode())
            writer.write(frame)
            sent += 1
            await asyncio.wait_for(writer.drain(), max(0.1, until - time.time()))
            await asyncio.sleep(1 / frames_per_s)
        return ("closed" if writer.transport.is_closing() else "held_open"), sent
    except TimeoutError:
        return "held_open", sent   # our own send buffer is full: the server stopped reading us
    except OSError:
        return "closed", sent
    finally:
        _close(writer)
