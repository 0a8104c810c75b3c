"""Private Redis and broker processes for tests that must kill or restart them.

The shared services on this machine are never stopped; a test that needs Redis or the broker to
die starts its own on a spare port, kills it with SIGKILL, starts it again empty (no
persistence, memory-only tansu) and removes it at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable

import pytest

from dispatch.ops.broker import find_tansu_binary
from dispatch.ops.config import ServiceError


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

    def __init__(self, argv: Callable[[int], list[str]], what: str, scheme: str = "tcp") -> None:
        self.port = spare_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"   # redis://... for a redis-server
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

    server = PrivateServer(argv, "redis-server", scheme="redis")
    await server.start()
    try:
        yield server
    finally:
        server.kill()
        shutil.rmtree(workdir, ignore_errors=True)



@contextlib.asynccontextmanager
async def private_tansu() -> AsyncIterator[PrivateServer]:
    """A memory-only tansu broker: a restart loses every topic, group and offset."""
    try:
        binary = str(find_tansu_binary())
    except ServiceError as exc:
        pytest.skip(str(exc))

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
