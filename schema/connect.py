"""Owner-level connections for the control plane and the shards, with errors that say what to run."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg

from schema.errors import DatabaseUnavailable
from schema.settings import DSN

_START_HINT = (
    "start PostgreSQL (`pg_ctlcluster --skip-systemctl-redirect 15 main start`, "
    "or `docker compose up -d postgis`), then run `wakala services up`"
)


async def connect(dsn: DSN, *, connect_timeout: float = 5.0) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(dsn.url(), timeout=connect_timeout)
    except asyncpg.InvalidCatalogNameError:
        raise DatabaseUnavailable(
            f"database {dsn.database!r} does not exist at {dsn.host}:{dsn.port}; "
            "run `wakala migrate` to create the control plane and the shards"
        ) from None
    except (TimeoutError, OSError, asyncpg.CannotConnectNowError) as exc:
        raise DatabaseUnavailable(
            f"PostgreSQL at {dsn.host}:{dsn.port} does not answer ({exc.__class__.__name__}: {exc}); "
            + _START_HINT
        ) from None


@contextlib.asynccontextmanager
async def connection(dsn: DSN, *, connect_timeout: float = 5.0) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(dsn, connect_timeout=connect_timeout)
    try:
        yield conn
    finally:
        await conn.close()


async def ensure_database(dsn: DSN) -> bool:
    """Create ``dsn.database`` if missing; return True when it was created."""
    async with connection(dsn.with_database("postgres")) as admin:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", dsn.database)
        if exists:
            return False
        ident = await admin.fetchval("SELECT quote_ident($1)", dsn.database)
        try:
            await admin.execute(f"CREATE DATABASE {ident}")
        except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
            # Another runner created it between our check and our CREATE (the second error
            # is what PostgreSQL raises when both CREATEs were in flight at once).
            return False
        return True


async def drop_database(dsn: DSN) -> None:
    """Drop ``dsn.database`` (used by tests and `wakala services` never); terminates its sessions."""
    async with connection(dsn.with_database("postgres")) as admin:
        ident = await admin.fetchval("SELECT quote_ident($1)", dsn.database)
        await admin.execute(f"DROP DATABASE IF EXISTS {ident} WITH (FORCE)")
