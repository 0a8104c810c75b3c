"""Health checks of the backing services: does each one answer, and if not, what to run.

Each check returns a :class:`ServiceStatus` instead of raising, so ``wakala services
status`` can show every service at once, each down one with a hint that names the
command to start it (a local start command for a loopback host, "start the server at
..." for a remote one). A check never waits longer than its *time_limit*: a firewall
that drops packets must not hang the status command.

The client libraries (asyncpg, redis, aiokafka) are imported inside the checks, so the
CLI starts without loading them for commands that never touch a service.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from dispatch.ops.config import (
    COMPOSE_HINT,
    host_for_url,
    is_local_host,
    parse_bootstrap,
    redact,
    url_host_port,
)

__all__ = [
    "CHECK_TIMEOUT",
    "ServiceStatus",
    "check_kafka",
    "check_postgis",
    "check_postgres",
    "check_redis",
    "docker_available",
    "format_statuses",
    "postgis_info",
    "tcp_probe",
]

#: Seconds a single health check may take before the service counts as down.
CHECK_TIMEOUT = 5.0


@dataclass(frozen=True)
class ServiceStatus:
    """The outcome of one health check."""

    name: str
    ok: bool
    detail: str
    hint: str | None = None


def format_statuses(statuses: list[ServiceStatus]) -> str:
    """Render statuses as a plain-text table: service, state, detail, hint."""
    rows = [("SERVICE", "STATE", "DETAIL")]
    rows += [(s.name, "up" if s.ok else "DOWN", s.detail) for s in statuses]
    name_w = max(len(r[0]) for r in rows)
    state_w = max(len(r[1]) for r in rows)
    lines = []
    for (name, state, detail), status in zip(rows, [None, *statuses], strict=True):
        lines.append(f"{name:<{name_w}}  {state:<{state_w}}  {detail}".rstrip())
        if status is not None and not status.ok and status.hint:
            lines.append(f"{'':<{name_w}}  {'':<{state_w}}  hint: {status.hint}")
    return "\n".join(lines)



def _postgres_start_hint(host: str) -> str:
    if is_local_host(host):
        majors = sorted(
            (p.name for p in Path("/etc/postgresql").glob("*") if p.name.isdigit()),
            key=int,
        )
        major = majors[-1] if majors else "15"
        return (
            f"pg_ctlcluster --skip-systemctl-redirect {major} main start"
            f"  (or: {COMPOSE_HINT} postgis)"
        )
    return f"start the PostgreSQL server at {host} (or point WAKALA_CONTROL_DSN elsewhere)"


async def check_postgres(dsn: str, time_limit: float = CHECK_TIMEOUT) -> ServiceStatus:
    """Connect to PostgreSQL at *dsn* and report the server version."""
    import asyncpg

    host, _port = url_host_port(dsn, 5432)
    name = "postgres"
    try:
        async with asyncio.timeout(time_limit):
            conn = await asyncpg.connect(dsn, timeout=time_limit)
            try:
                version = await conn.fetchval("SHOW server_version")
            finally:
                await conn.close()
    except TimeoutError:
        return ServiceStatus(
            name,
            False,
            f"{redact(dsn)}: no answer within {time_limit:g}s",
            _postgres_start_hint(host),
        )
    except OSError as exc:
        return ServiceStatus(name, False, f"{redact(dsn)}: {exc}", _postgres_start_hint(host))
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return ServiceStatus(
            name,
            False,
            f"{redact(dsn)}: {type(exc).__name__}: {exc}",
            "the server answers but refused the connection; check the user, password and "
            "database in WAKALA_CONTROL_DSN",
        )
    return ServiceStatus(name, True, f"PostgreSQL {version} at {host}")


def _postgis_install_hint(major: int | None) -> str:
    package = f"postgresql-{major or 15}-postgis-3"
    return f"as root: apt-get update && apt-get install -y {package}  (or: {COMPOSE_HINT} postgis)"


async def postgis_info(dsn: str, time_limit: float) -> tuple[str | None, int]:
    """Return (available PostGIS version or None, server major version)."""
    import asyncpg

    async with asyncio.timeout(time_limit):
        conn = await asyncpg.connect(dsn, timeout=time_limit)
        try:
            version = await conn.fetchval(
                "SELECT default_version FROM pg_available_extensions WHERE name = 'postgis'"
            )
            version_num = int(await conn.fetchval("SHOW server_version_num"))
        finally:
            await conn.close()
    return version, version_num // 10000


async def check_postgis(dsn: str, time_limit: float = CHECK_TIMEOUT) -> ServiceStatus:
    """Report whether the PostGIS extension is available to the server at *dsn*."""
    import asyncpg

    name = "postgis"
    try:
        version, major = await postgis_info(dsn, time_limit)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return ServiceStatus(
            name,
            False,
            f"cannot ask PostgreSQL: {type(exc).__name__}: {exc}",
            "start PostgreSQL first (see the postgres row)",
        )
    if version is None:
        return ServiceStatus(
            name,
            False,
            f"extension not installed on PostgreSQL {major}",
            _postgis_install_hint(major),
        )
    return ServiceStatus(name, True, f"PostGIS {version} available")


def _redis_start_hint(host: str, port: int) -> str:
    if is_local_host(host):
        return (
            f'redis-server --daemonize yes --bind 127.0.0.1 --port {port} --save "" '
            f"--appendonly no  (or: {COMPOSE_HINT} redis)"
        )
    return f"start the Redis server at {host}:{port} (or point WAKALA_REDIS_URL elsewhere)"


async def check_redis(url: str, time_limit: float = CHECK_TIMEOUT) -> ServiceStatus:
    """PING Redis at *url* and report the server version."""
    import redis.asyncio as aioredis
    from redis.exceptions import AuthenticationError, RedisError

    host, port = url_host_port(url, 6379)
    name = "redis"
    client = aioredis.from_url(url, socket_connect_timeout=time_limit, socket_timeout=time_limit)
    try:
        async with asyncio.timeout(time_limit):
            await client.ping()
            info = await client.info("server")
    except AuthenticationError as exc:
        return ServiceStatus(
            name,
            False,
            f"{redact(url)}: {exc}",
            "the server answers but refused the credentials; fix WAKALA_REDIS_URL",
        )
    except TimeoutError:
        return ServiceStatus(
            name,
            False,
            f"{redact(url)}: no answer within {time_limit:g}s",
            _redis_start_hint(host, port),
        )
    except (RedisError, OSError) as exc:
        return ServiceStatus(name, False, f"{redact(url)}: {exc}", _redis_start_hint(host, port))
    finally:
        await client.aclose()
    return ServiceStatus(name, True, f"Redis {info.get('redis_version', '?')} at {host}:{port}")


async def tcp_probe(host: str, port: int, time_limit: float) -> str | None:
    """Return None when something accepts TCP connections at host:port, else the error."""
    try:
        async with asyncio.timeout(time_limit):
            _reader, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return f"no answer within {time_limit:g}s"
    except socket.gaierror as exc:
        return f"cannot resolve {host}: {exc.strerror or exc}"
    except OSError as exc:
        # asyncio words refusals as "Connect call failed (...)"; the errno says more.
        return os.strerror(exc.errno) if exc.errno and exc.errno > 0 else str(exc)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


def _kafka_hint(bootstrap: str) -> str:
    host, _port = parse_bootstrap(bootstrap)[0]
    if is_local_host(host):
        return f"wakala services up  (or: {COMPOSE_HINT} kafka)"
    return f"start the Kafka broker at {bootstrap} (or point WAKALA_KAFKA_BOOTSTRAP elsewhere)"


async def check_kafka(bootstrap: str, time_limit: float = CHECK_TIMEOUT) -> ServiceStatus:
    """Ask the Kafka broker(s) at *bootstrap* for cluster metadata, within *time_limit*."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    name = "kafka"
    hint = _kafka_hint(bootstrap)
    deadline = time.monotonic() + time_limit
    servers = parse_bootstrap(bootstrap)
    # A plain TCP probe first: it gives a precise reason ("Connection refused") and
    # keeps aiokafka from logging connection errors when nothing listens at all.
    reasons = []
    for host, port in servers:
        reason = await tcp_probe(host, port, max(0.1, deadline - time.monotonic()))
        if reason is None:
            break
        reasons.append(f"{host_for_url(host)}:{port}: {reason}")
    else:
        return ServiceStatus(name, False, "; ".join(reasons), hint)

    remaining = max(0.5, deadline - time.monotonic())
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=max(1000, int(remaining * 1000)),
        client_id="wakala-services-check",
    )
    try:
        async with asyncio.timeout(remaining):
            await admin.start()
            # aiokafka answers this from a Metadata request, which every broker supports.
            cluster = await admin.describe_cluster()
    except TimeoutError:
        return ServiceStatus(
            name,
            False,
            f"{bootstrap}: port is open but no Kafka answer within {time_limit:g}s "
            "(is something else listening there?)",
            hint,
        )
    except KafkaError as exc:
        return ServiceStatus(
            name,
            False,
            f"{bootstrap}: port is open but the Kafka handshake failed: {exc}",
            hint,
        )
    finally:
        await admin.close()
    brokers = cluster.get("brokers", [])
    return ServiceStatus(
        name,
        True,
        f"{len(brokers)} broker(s), cluster id {cluster.get('cluster_id')!s} at {bootstrap}",
    )


def docker_available() -> bool:
    """True when a Docker engine answers ``docker info`` within 5 seconds."""
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        result = subprocess.run(
            [docker, "info"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=5,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    except OSError:
        return False
    return result.returncode == 0
