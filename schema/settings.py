"""PostgreSQL settings from WAKALA_* environment variables, with defaults for the local services."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from urllib.parse import urlsplit, urlunsplit

from schema.errors import ConfigError

DEFAULT_CONTROL_DSN = "postgresql://postgres@127.0.0.1:5432/wakala_control"
DEFAULT_SHARD_DATABASES = ("wakala_shard_0", "wakala_shard_1")
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def env_number(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    """A numeric WAKALA_* setting within [lo, hi]; ConfigError naming the variable otherwise."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be between {lo:g} and {hi:g}, got {value:g}")
    return value


def env_int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    """An integer WAKALA_* setting within [lo, hi]."""
    value = env_number(env, name, default, lo, hi)
    if value != int(value):
        raise ConfigError(f"{name} must be an integer, got {env.get(name)!r}")
    return int(value)


def _identifier(name: str, value: str) -> str:
    if not _IDENTIFIER.match(value):
        raise ConfigError(
            f"{name} must be a lower-case PostgreSQL identifier ([a-z_][a-z0-9_]*), got {value!r}"
        )
    return value


@dataclass(frozen=True)
class DSN:
    """A PostgreSQL address split into parts, so that shards can be derived from the control DSN."""

    host: str
    port: int
    user: str
    database: str
    password: str | None = None

    @classmethod
    def parse(cls, dsn: str) -> DSN:
        parts = urlsplit(dsn)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ConfigError(f"not a postgresql:// DSN: {dsn!r}")
        database = parts.path.lstrip("/")
        if not database:
            raise ConfigError(f"DSN names no database: {dsn!r}")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 5432,
            user=parts.username or "postgres",
            database=database,
            password=parts.password,
        )

    def with_database(self, database: str) -> DSN:
        return replace(self, database=database)

    def with_user(self, user: str, password: str | None) -> DSN:
        return replace(self, user=user, password=password)

    def url(self) -> str:
        auth = self.user if self.password is None else f"{self.user}:{self.password}"
        return urlunsplit(("postgresql", f"{auth}@{self.host}:{self.port}", f"/{self.database}", "", ""))

    def redacted(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"


@dataclass(frozen=True)
class PostgresSettings:
    """Where the control plane lives, which shards to create by default, how the engine connects.

    ``control`` is used with owner rights (migrations, provisioning). The engine's tenant
    traffic connects as ``app_role``, which owns nothing and cannot bypass row-level security.

    Pool sizes are per shard and per engine process, so a server sees processes x shards x
    (write + read) connections from the engine alone. The defaults (6 and 4) keep two
    processes on two shards at 40, which a stock ``max_connections = 100`` holds with the
    relays' LISTEN connections, the CLI and the tests beside them: at 10 and 10 the orders
    bench's engine reached 84 and was refused connections. More would not be faster on a
    small server either: the orders bench measured no gain from 6 to 10 write connections
    on two cores (docs/benchmarks.md).
    """

    control: DSN
    shard_databases: tuple[str, ...]
    app_role: str
    app_password: str | None
    write_pool_size: int
    read_pool_size: int
    pgbouncer: bool
    connect_timeout_s: float = 5.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PostgresSettings:
        env = os.environ if env is None else env
        try:
            control = DSN.parse(env.get("WAKALA_CONTROL_DSN") or DEFAULT_CONTROL_DSN)
        except ConfigError as exc:
            raise ConfigError(f"WAKALA_CONTROL_DSN: {exc}") from None
        shards_raw = env.get("WAKALA_SHARD_DATABASES")
        shards = (
            tuple(s.strip() for s in shards_raw.split(",") if s.strip())
            if shards_raw
            else DEFAULT_SHARD_DATABASES
        )
        if not shards:
            raise ConfigError("WAKALA_SHARD_DATABASES names no database")
        for name in shards:
            _identifier("WAKALA_SHARD_DATABASES", name)
        if len(set(shards)) != len(shards):
            raise ConfigError(f"WAKALA_SHARD_DATABASES repeats a database: {shards_raw!r}")
        return cls(
            control=control,
            shard_databases=shards,
            app_role=_identifier("WAKALA_APP_ROLE", env.get("WAKALA_APP_ROLE") or "wakala_app"),
            app_password=env.get("WAKALA_APP_PASSWORD") or None,
            write_pool_size=env_int(env, "WAKALA_PG_WRITE_POOL_SIZE", 6, 1, 1000),
            read_pool_size=env_int(env, "WAKALA_PG_READ_POOL_SIZE", 4, 1, 1000),
            pgbouncer=(env.get("WAKALA_PGBOUNCER", "").lower() in ("1", "true", "yes")),
        )
