"""Shared pieces of the gateway's integration tests: drivers with tokens, pings, a Redis of
the test's own (so that it can be killed), and a driver socket that never reads."""

from __future__ import annotations

import base64
import os
import socket
import time
import uuid
from dataclasses import dataclass

from dispatch.identity.auth import issue_driver_token
from dispatch.identity.drivers import NewDriver, create_driver
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
