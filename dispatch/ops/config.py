"""Where the backing services live, and how their addresses are read.

The pure part of ``wakala services``: the :class:`ServicesConfig` read from the
environment, the one error type every step raises, and the parsers for the three
kinds of address (a PostgreSQL URL, a Redis URL, a Kafka bootstrap list). Nothing
here opens a connection, so the parsing rules are tested without any service.

Addresses are shown to the user with their password hidden (:func:`redact`): a
status line or an error message may end up in a shared terminal or a CI log.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from schema.errors import WakalaError

__all__ = [
    "COMPOSE_HINT",
    "DEFAULT_CONTROL_DSN",
    "DEFAULT_KAFKA_BOOTSTRAP",
    "DEFAULT_REDIS_URL",
    "LOG_FILE_NAME",
    "PID_FILE_NAME",
    "Echo",
    "ServiceError",
    "ServicesConfig",
    "echo_stderr",
    "host_for_url",
    "is_local_host",
    "parse_bootstrap",
    "redact",
    "server_dsn",
    "url_host_port",
]

DEFAULT_CONTROL_DSN = "postgresql://postgres@127.0.0.1:5432/wakala_control"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:9092"

PID_FILE_NAME = "tansu.pid"
LOG_FILE_NAME = "tansu.log"

#: What the hints suggest when a Docker engine is the easier way to get a service.
COMPOSE_HINT = "docker compose up -d"

_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

#: Where progress notes go (``services up`` prints them to stderr; tests collect them).
Echo = Callable[[str], None]


class ServiceError(WakalaError, RuntimeError):
    """A backing service is missing or could not be brought up.

    The message always says what failed and what the user can run to fix it.
    """


def echo_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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


# --------------------------------------------------------------------------- addresses


def server_dsn(dsn: str) -> str:
    """Return *dsn* with its database replaced by ``postgres``.

    Host, port, user, password and query parameters are kept, so the server can be
    checked before the control database exists.
    """
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ServiceError(f"WAKALA_CONTROL_DSN must be a postgresql:// URL, got {redact(dsn)!r}")
    return urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, parts.fragment))


def redact(url: str) -> str:
    """Hide a password in a URL before it is shown to the user."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def url_host_port(url: str, default_port: int) -> tuple[str, int]:
    """The host and port of a service URL (``127.0.0.1`` and *default_port* when absent)."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    try:
        port = parts.port or default_port
    except ValueError as exc:
        raise ServiceError(f"invalid port in {redact(url)!r}: {exc}") from exc
    return host, port


def parse_bootstrap(bootstrap: str) -> list[tuple[str, int]]:
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


def is_local_host(host: str) -> bool:
    """True for this machine's loopback names and addresses: the only hosts wakala may
    start a broker on or install PostGIS for."""
    if host in _LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_for_url(host: str) -> str:
    """*host* as it goes before ``:port`` (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host
