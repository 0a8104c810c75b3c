"""Shared pieces of the gateway's integration tests: drivers with tokens, pings, a Redis of
the test's own (so that it can be killed), and a driver socket that never reads."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import redis.asyncio as aioredis

from dispatch.identity.auth import issue_driver_token
from dispatch.identity.drivers import NewDriver, create_driver
from loadtest.processes import free_port
from schema.db import TenantDatabase
from schema.tenants import create_tenant

SOWETO = (-26.2485, 27.8540)


def ping(driver_id, /, **overrides) -> dict:
    body = {"driver_id": str(driver_id), "lat": SOWETO[0], "lng": SOWETO[1], "accuracy": 8.0,
            "speed": 6.5, "heading": 90.0, "timestamp": time.time(), "battery": 71}
    body.update(overrides)
    return body


@dataclass
class Fleet:
    tenant_id: str
    ids: list[str]
    tokens: list[str]
    token_ids: list[str]


async def make_fleet(platform, n: int = 2, name: str = "Gateway Fleet") -> Fleet:
    tenant = await create_tenant(platform, name)
    ids, tokens, token_ids = [], [], []
    async with TenantDatabase(platform) as db:
        for i in range(n):
            did = await create_driver(db, tenant.id, NewDriver(
                "Naledi", f"Driver{i}", f"+2772100000{i}", f"LIC-{i}-{uuid.uuid4().hex[:6]}", "motorbike",
                f"GP {i}45-678"))
            issued = await issue_driver_token(db, tenant.id, did, ttl_s=3600)
            ids.append(str(did))
            tokens.append(issued.token)
            token_ids.append(issued.token_id)
    return Fleet(str(tenant.id), ids, tokens, token_ids)


class PrivateRedis:
    """A redis-server of this test only, on a spare port, that the test may kill and restart
    (on the same port: the engine's clients reconnect to it)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.mkdtemp(prefix="wakala-redis-")
        self.proc: subprocess.Popen | None = None

    async def start(self) -> None:
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - starting a server takes no time to wait for
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self._dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = aioredis.from_url(self.url)
        try:
            for _ in range(100):
                with contextlib.suppress(Exception):
                    if await client.ping():
                        return
                await asyncio.sleep(0.05)
            raise TimeoutError("the private redis-server did not start")
        finally:
            await client.aclose()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@contextlib.asynccontextmanager
async def private_redis() -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis()
    await server.start()
    try:
        yield server
    finally:
        server.kill()
        with contextlib.suppress(OSError):
            for name in os.listdir(server._dir):
                os.unlink(os.path.join(server._dir, name))
            os.rmdir(server._dir)


def silent_driver(addr: str, token: str) -> socket.socket:
    """A driver socket that completes the websocket handshake (token in the header) and then
    never reads: a small receive buffer, so the engine's sends to it stall early. Returns the
    raw socket (blocking connect and handshake: call it in a thread)."""
    host, port = addr.split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /v1/drivers/stream HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                  f"Authorization: Bearer {token}\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("the engine closed the silent driver's handshake")
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock
