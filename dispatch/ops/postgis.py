"""Install PostGIS when the local PostgreSQL lacks it: ``wakala services up``'s one
change to the system.

Installing packages is the most intrusive step of ``services up``, so it happens only
when every condition holds: the server is on this machine (a remote server is never
touched; the error names the command for it), ``apt-get`` exists, and we run as root.
Otherwise the :class:`~dispatch.ops.config.ServiceError` says exactly what to run.
apt's output streams straight to the terminal, because an install can take minutes and
a silent wait looks like a hang.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import subprocess

from dispatch.ops.checks import CHECK_TIMEOUT, postgis_info
from dispatch.ops.config import (
    COMPOSE_HINT,
    Echo,
    ServiceError,
    ServicesConfig,
    echo_stderr,
    is_local_host,
    redact,
    url_host_port,
)

__all__ = ["APT_TIMEOUT", "ensure_postgis"]

#: Seconds ``apt-get update`` / ``apt-get install`` may take.
APT_TIMEOUT = 900.0


async def _run_streaming(argv: list[str], time_limit: float, echo: Echo) -> int:
    """Run *argv* with its output going straight to our stdout/stderr."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    echo(f"$ {shlex.join(argv)}")
    proc = await asyncio.create_subprocess_exec(*argv, env=env, stdin=subprocess.DEVNULL)
    try:
        async with asyncio.timeout(time_limit):
            return await proc.wait()
    except TimeoutError as exc:
        proc.kill()
        await proc.wait()
        raise ServiceError(f"`{shlex.join(argv)}` did not finish within {time_limit:g}s") from exc


async def ensure_postgis(
    dsn: str | None = None,
    *,
    echo: Echo = echo_stderr,
    time_limit: float = CHECK_TIMEOUT,
) -> str:
    """Make sure the PostGIS extension is available to the PostgreSQL server.

    When it is missing and we run as root on a machine with ``apt-get`` and a local
    server, install ``postgresql-<major>-postgis-3``. Returns the available PostGIS
    version. Raises :class:`ServiceError` when PostGIS is missing and cannot be
    installed here, naming the command to run.
    """
    import asyncpg

    if dsn is None:
        dsn = ServicesConfig.from_env().server_dsn
    try:
        version, major = await postgis_info(dsn, time_limit)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise ServiceError(
            f"cannot ask PostgreSQL at {redact(dsn)} about PostGIS: {type(exc).__name__}: {exc}"
        ) from exc
    if version is not None:
        return str(version)

    package = f"postgresql-{major}-postgis-3"
    command = f"apt-get update && apt-get install -y {package}"
    host, _port = url_host_port(dsn, 5432)
    if not is_local_host(host):
        raise ServiceError(
            f"PostGIS is not installed on the PostgreSQL {major} server at {host}. "
            f"Install it on that server (Debian/Ubuntu: `{command}`)."
        )
    apt_get = shutil.which("apt-get")
    if apt_get is None:
        raise ServiceError(
            f"PostGIS is not installed on the local PostgreSQL {major} server and apt-get "
            f"is not available; install the PostGIS 3 package for PostgreSQL {major} with "
            f"your system's package manager, or use `{COMPOSE_HINT} postgis`."
        )
    if os.geteuid() != 0:
        raise ServiceError(
            f"PostGIS is not installed on the local PostgreSQL {major} server. "
            f"Run as root: `{command}` (e.g. `sudo sh -c '{command}'`), "
            "then run `wakala services up` again."
        )

    echo(f"PostGIS is missing; installing {package} with apt-get")
    for argv in ([apt_get, "update"], [apt_get, "install", "-y", package]):
        returncode = await _run_streaming(argv, APT_TIMEOUT, echo)
        if returncode != 0:
            raise ServiceError(
                f"`{shlex.join(argv)}` failed with exit code {returncode}; see its output "
                f"above. PostGIS is required: install {package} and run "
                "`wakala services up` again."
            )
    try:
        version, _major = await postgis_info(dsn, time_limit)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise ServiceError(
            f"installed {package} but could not ask PostgreSQL again: {exc}"
        ) from exc
    if version is None:
        raise ServiceError(
            f"installed {package} but PostgreSQL at {host} still lists no postgis "
            "extension; is the server on this port really the local PostgreSQL "
            f"{major} cluster (and not, e.g., a container)?"
        )
    echo(f"PostGIS {version} is now available")
    return str(version)
