"""Starting and stopping `wakala engine ...` as child processes (demo, benchmarks)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys


def spawn_wakala(args: list[str], env: dict[str, str], log_path: str) -> subprocess.Popen:
    """Run ``wakala ARGS`` in its own session (so a stop reaches its workers), output to a log."""
    os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
    with open(log_path, "w") as log:
        return subprocess.Popen([sys.executable, "-m", "dispatch.cli", *args], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM the process group, SIGKILL after ``grace_s``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def streams_env(streams) -> dict[str, str]:
    """The ``WAKALA_*`` variables that make an engine use ``streams`` (a ``StreamSettings``):
    its broker, Redis, topics and consumer group."""
    return {"WAKALA_KAFKA_BOOTSTRAP": streams.kafka_bootstrap, "WAKALA_REDIS_URL": streams.redis_url,
            "WAKALA_LOCATIONS_TOPIC": streams.locations_topic,
            "WAKALA_DEAD_LETTERS_TOPIC": streams.dead_letters_topic,
            "WAKALA_DELIVERY_EVENTS_TOPIC": streams.delivery_events_topic,
            "WAKALA_ORDER_EVENTS_TOPIC": streams.order_events_topic, "WAKALA_APP_ID": streams.app_id}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for an engine, a test server, a bench)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_healthy(http, within_s: float = 30.0) -> bool:
    """Poll ``GET /healthz`` on an ``httpx.AsyncClient`` until the engine answers 200."""
    import asyncio

    import httpx

    for _ in range(max(1, round(within_s / 0.2))):
        try:
            if (await http.get("/healthz")).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.2)
    return False
