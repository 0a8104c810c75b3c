"""The migration runner: numbered plain .sql files, applied once, recorded with checksums.

Two sets: ``control`` (applied to the control database) and ``tenant`` (applied to every
tenant schema on every shard). Each database keeps its own ``schema_migrations`` and
``migration_log`` (a ``scope`` column says which set / which tenant schema), so a migration
and the record of it commit in one transaction on the same database.

One runner at a time: a session advisory lock on the control database serialises
``migrate``, tenant provisioning and shard registration, so running ``wakala migrate``
twice at once is safe.
"""

from __future__ import annotations

import getpass
import hashlib
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from schema.connect import connect, connection, ensure_database
from schema.errors import MigrationChecksumError, MigrationError, ShardError
from schema.settings import DSN, PostgresSettings

MIGRATIONS_ROOT = Path(__file__).parent / "migrations"
CONTROL_SCOPE = "control"
MIGRATION_LOCK_KEY = 0x77616B616C61  # "wakala"
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
TENANT_SCHEMA = re.compile(r"^tenant_[0-9a-f]{12}$")

BOOKKEEPING_SQL = """
CREATE TABLE IF NOT EXISTS public.schema_migrations (
    scope             VARCHAR(63)  NOT NULL,
    version           VARCHAR(255) NOT NULL,
    name              VARCHAR(255) NOT NULL,
    checksum          VARCHAR(64)  NOT NULL,
    execution_time_ms INTEGER      NOT NULL,
    applied_by        VARCHAR(255) NOT NULL,
    applied_at        TIMESTAMPTZ  NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, version)
);
CREATE TABLE IF NOT EXISTS public.migration_log (
    id            BIGSERIAL PRIMARY KEY,
    scope         VARCHAR(63)  NOT NULL,
    version       VARCHAR(255) NOT NULL,
    operation     VARCHAR(50)  NOT NULL CHECK (operation IN ('apply', 'rollback')),
    status        VARCHAR(20)  NOT NULL CHECK (status IN ('started', 'completed', 'failed')),
    error_message TEXT,
    started_at    TIMESTAMPTZ  NOT NULL DEFAULT clock_timestamp(),
    completed_at  TIMESTAMPTZ,
    metadata      JSONB        NOT NULL DEFAULT '{}'
);
"""

APPLIED_SQL = "SELECT version, name, checksum FROM public.schema_migrations WHERE scope = $1"
LOG_STARTED_SQL = """
INSERT INTO public.migration_log (scope, version, operation, status, metadata)
VALUES ($1, $2, 'apply', 'started', jsonb_build_object('name', $3::text, 'applied_by', $4::text))
RETURNING id
"""
LOG_FINISHED_SQL = """
UPDATE public.migration_log
SET status = $2, error_message = $3, completed_at = clock_timestamp()
WHERE id = $1
"""
RECORD_SQL = """
INSERT INTO public.schema_migrations (scope, version, name, checksum, execution_time_ms, applied_by)
VALUES ($1, $2, $3, $4, $5, $6)
"""
SET_CONTEXT_SQL = """
SELECT set_config('search_path', $1, true),
       set_config('wakala.schema_tenant_id', $2, true),
       set_config('wakala.app_role', $3, true)
"""
# Tables a future tenant migration forgets to protect are caught here, not in production.
UNPROTECTED_TABLES_SQL = """
SELECT c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')
  AND NOT (c.relrowsecurity AND c.relforcerowsecurity)
ORDER BY 1
"""
# Row-level security cannot be enabled on a materialized view, and the application role has
# USAGE on every tenant schema of its shard: one it may read directly is readable from any
# tenant's transaction. Tenant migrations expose them through views filtered on
# current_tenant_id() instead (see 0012).
READABLE_MATVIEWS_SQL = """
SELECT c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relkind = 'm' AND has_table_privilege($2, c.oid, 'SELECT')
ORDER BY 1
"""


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    path: Path
    sql: str
    checksum: str


@dataclass
class MigrationReport:
    control_applied: list[str] = field(default_factory=list)
    tenant_applied: dict[str, list[str]] = field(default_factory=dict)  # schema -> versions
    shards_prepared: list[str] = field(default_factory=list)
    shards_registered: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(
            self.control_applied or any(self.tenant_applied.values()) or self.shards_registered
        )


def load_migrations(kind: str, root: Path | None = None) -> list[Migration]:
    """Read the ``kind`` set (``control`` or ``tenant``) in version order."""
    folder = (root or MIGRATIONS_ROOT) / kind
    if not folder.is_dir():
        raise MigrationError(f"no migration folder {folder}")
    migrations: list[Migration] = []
    seen: dict[str, Path] = {}
    for path in sorted(folder.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(
                f"{path}: migration files are named NNNN_lower_snake_name.sql; rename it"
            )
        version, name = match.groups()
        if version in seen:
            raise MigrationError(f"{path} and {seen[version]} share version {version}")
        seen[version] = path
        data = path.read_bytes()
        migrations.append(
            Migration(version, name, path, data.decode("utf-8"), hashlib.sha256(data).hexdigest())
        )
    return migrations


def applier_identity() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


async def ensure_bookkeeping(conn: asyncpg.Connection) -> None:
    await conn.execute(BOOKKEEPING_SQL)


async def _check_applied(conn: asyncpg.Connection, scope: str, files: list[Migration]) -> set[str]:
    """Return applied versions; refuse edited or vanished files before anything is applied."""
    by_version = {m.version: m for m in files}
    applied = await conn.fetch(APPLIED_SQL, scope)
    for row in applied:
        migration = by_version.get(row["version"])
        if migration is None:
            raise MigrationError(
                f"{scope}: migration {row['version']}_{row['name']}.sql was applied but its file "
                "is gone; restore the file (applied migrations are never deleted)"
            )
        if migration.checksum != row["checksum"]:
            raise MigrationChecksumError(
                f"{migration.path} was changed after it was applied to {scope} "
                f"(applied sha256 {row['checksum'][:12]}…, file now {migration.checksum[:12]}…); "
                "restore the original and put the change in a new numbered migration"
            )
    return {row["version"] for row in applied}


async def apply_set(
    conn: asyncpg.Connection,
    scope: str,
    migrations: list[Migration],
    *,
    search_path: str,
    app_role: str,
    tenant_id: str = "",
) -> list[str]:
    """Apply the pending migrations of one scope, each in its own transaction; return versions."""
    applied = await _check_applied(conn, scope, migrations)
    who = f"{applier_identity()} as {await conn.fetchval('SELECT current_user')}"
    done: list[str] = []
    for migration in migrations:
        if migration.version in applied:
            continue
        log_id = await conn.fetchval(LOG_STARTED_SQL, scope, migration.version, migration.name, who)
        started = time.perf_counter()
        try:
            async with conn.transaction():
                await conn.execute(SET_CONTEXT_SQL, search_path, tenant_id, app_role)
                await conn.execute(migration.sql)
                elapsed_ms = round((time.perf_counter() - started) * 1000)
                await conn.execute(
                    RECORD_SQL, scope, migration.version, migration.name,
                    migration.checksum, elapsed_ms, who,
                )
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            await conn.execute(LOG_FINISHED_SQL, log_id, "failed", str(exc))
            raise MigrationError(f"{migration.path} failed on {scope}: {exc}") from exc
        await conn.execute(LOG_FINISHED_SQL, log_id, "completed", None)
        done.append(migration.version)
    return done


async def ensure_app_role(conn: asyncpg.Connection, settings: PostgresSettings) -> None:
    """Create the application role if missing; refuse one that could bypass row-level security."""
    role = await conn.fetchrow(
        "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1", settings.app_role
    )
    if role is None:
        ident = await conn.fetchval("SELECT quote_ident($1)", settings.app_role)
        password = ""
        if settings.app_password:
            password = " PASSWORD " + await conn.fetchval(
                "SELECT quote_literal($1)", settings.app_password
            )
        try:
            await conn.execute(
                f"CREATE ROLE {ident} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE{password}"
            )
        except (asyncpg.DuplicateObjectError, asyncpg.UniqueViolationError):
            pass  # created concurrently by a runner on another database of this server
    elif role["rolsuper"] or role["rolbypassrls"]:
        raise MigrationError(
            f"the application role {settings.app_role!r} is a superuser or has BYPASSRLS; "
            "row-level security would not apply to it. Use another WAKALA_APP_ROLE or "
            f"ALTER ROLE {settings.app_role} NOSUPERUSER NOBYPASSRLS"
        )


async def _grant_connect(conn: asyncpg.Connection, database: str, role: str) -> None:
    await conn.execute(
        "DO $$ BEGIN EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', "
        f"{await conn.fetchval('SELECT quote_literal($1)', database)}, "
        f"{await conn.fetchval('SELECT quote_literal($1)', role)}); END $$"
    )


async def lock(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)


async def unlock(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


async def prepare_shard(settings: PostgresSettings, dsn: DSN) -> bool:
    """Create a shard database if needed, with PostGIS, bookkeeping and the app role's CONNECT."""
    created = await ensure_database(dsn)
    async with connection(dsn) as conn:
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS postgis WITH SCHEMA public")
        except asyncpg.FeatureNotSupportedError as exc:
            raise MigrationError(
                f"PostGIS is not installed on {dsn.host}:{dsn.port} ({exc}); "
                "run `wakala services up` (it installs postgresql-15-postgis-3 when root)"
            ) from None
        except asyncpg.UndefinedFileError as exc:
            raise MigrationError(
                f"PostGIS is not installed on {dsn.host}:{dsn.port} ({exc}); "
                "run `wakala services up` (it installs postgresql-15-postgis-3 when root)"
            ) from None
        await ensure_bookkeeping(conn)
        await ensure_app_role(conn, settings)
        await _grant_connect(conn, dsn.database, settings.app_role)
    return created


async def migrate_tenant_schema(
    conn: asyncpg.Connection, settings: PostgresSettings, schema_name: str, tenant_id: str
) -> list[str]:
    """Bring one tenant schema up to date and check that every table in it is RLS-protected
    and that no materialized view in it is readable by the application role."""
    if not TENANT_SCHEMA.match(schema_name):
        raise MigrationError(f"refusing to migrate {schema_name!r}: not a tenant schema name")
    ident = await conn.fetchval("SELECT quote_ident($1)", schema_name)
    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {ident}")
    done = await apply_set(
        conn,
        schema_name,
        load_migrations("tenant"),
        search_path=f"{ident}, public",
        app_role=settings.app_role,
        tenant_id=tenant_id,
    )
    unprotected = [r["relname"] for r in await conn.fetch(UNPROTECTED_TABLES_SQL, schema_name)]
    if unprotected:
        raise MigrationError(
            f"tenant tables without forced row-level security in {schema_name}: "
            f"{', '.join(unprotected)}; add ENABLE and FORCE ROW LEVEL SECURITY to the migration"
        )
    readable = [r["relname"] for r in
                await conn.fetch(READABLE_MATVIEWS_SQL, schema_name, settings.app_role)]
    if readable:
        raise MigrationError(
            f"materialized views the application role can read directly in {schema_name}: "
            f"{', '.join(readable)}; row-level security does not apply to them, so revoke SELECT "
            "and grant a view that filters on current_tenant_id() (as 0012 does)"
        )
    await conn.execute(
        f"SELECT set_config('search_path', '{ident}, public', false); "
        "SELECT ensure_analytics_partitions(3); RESET search_path"
    )
    return done


SHARDS_SQL = """
SELECT shard_id, shard_name, host, port, database_name, status, weight
FROM shard_map ORDER BY shard_id
"""
SCHEMAS_ON_SHARD_SQL = """
SELECT m.schema_name, m.tenant_id::text AS tenant_id
FROM tenant_shard_mapping m JOIN tenants t ON t.id = m.tenant_id
WHERE m.shard_id = $1 AND t.status <> 'deleted'
ORDER BY m.schema_name
"""
REGISTER_SHARD_SQL = """
INSERT INTO shard_map (shard_id, shard_name, host, port, database_name)
VALUES ($1, $2, $3, $4, $5)
"""


def shard_dsn(settings: PostgresSettings, row: asyncpg.Record) -> DSN:
    """Owner DSN of a shard: host, port and database from shard_map, credentials from the control DSN."""
    return DSN(
        host=row["host"], port=row["port"], user=settings.control.user,
        database=row["database_name"], password=settings.control.password,
    )


async def _register_default_shards(conn: asyncpg.Connection, settings: PostgresSettings) -> list[str]:
    if await conn.fetchval("SELECT count(*) FROM shard_map"):
        return []
    names = []
    for shard_id, database in enumerate(settings.shard_databases):
        name = f"shard_{shard_id}"
        await conn.execute(
            REGISTER_SHARD_SQL, shard_id, name, settings.control.host, settings.control.port, database
        )
        names.append(name)
    return names


async def migrate(settings: PostgresSettings) -> MigrationReport:
    """Apply the control set, register default shards, prepare every shard, migrate every tenant."""
    report = MigrationReport()
    await ensure_database(settings.control)
    conn = await connect(settings.control)
    try:
        await lock(conn)
        try:
            await ensure_bookkeeping(conn)
            await ensure_app_role(conn, settings)
            report.control_applied = await apply_set(
                conn, CONTROL_SCOPE, load_migrations("control"),
                search_path="public", app_role=settings.app_role,
            )
            await _grant_connect(conn, settings.control.database, settings.app_role)
            report.shards_registered = await _register_default_shards(conn, settings)
            for shard in await conn.fetch(SHARDS_SQL):
                if shard["status"] == "retired":
                    continue
                dsn = shard_dsn(settings, shard)
                await prepare_shard(settings, dsn)
                report.shards_prepared.append(shard["shard_name"])
                async with connection(dsn) as shard_conn:
                    for row in await conn.fetch(SCHEMAS_ON_SHARD_SQL, shard["shard_id"]):
                        report.tenant_applied[row["schema_name"]] = await migrate_tenant_schema(
                            shard_conn, settings, row["schema_name"], row["tenant_id"]
                        )
        finally:
            await unlock(conn)
    finally:
        await conn.close()
    return report


@dataclass(frozen=True)
class ScopeStatus:
    database: str
    scope: str
    applied: int
    pending: list[str]
    last_applied_at: str | None


async def _scope_status(conn: asyncpg.Connection, database: str, scope: str, files: list[Migration]) -> ScopeStatus:
    applied = await _check_applied(conn, scope, files)
    last = await conn.fetchval(
        "SELECT max(applied_at)::text FROM public.schema_migrations WHERE scope = $1", scope
    )
    pending = [f"{m.version}_{m.name}" for m in files if m.version not in applied]
    return ScopeStatus(database, scope, len(applied), pending, last)


async def migration_status(settings: PostgresSettings) -> list[ScopeStatus]:
    """What is applied and pending, per database and scope; raises on edited files like migrate."""
    async with connection(settings.control) as conn:
        has_bookkeeping = await conn.fetchval("SELECT to_regclass('public.schema_migrations') IS NOT NULL")
        if not has_bookkeeping:
            raise ShardError("the control database has never been migrated; run `wakala migrate`")
        statuses = [
            await _scope_status(conn, settings.control.database, CONTROL_SCOPE, load_migrations("control"))
        ]
        tenant_files = load_migrations("tenant")
        for shard in await conn.fetch(SHARDS_SQL):
            if shard["status"] == "retired":
                continue
            async with connection(shard_dsn(settings, shard)) as shard_conn:
                for row in await conn.fetch(SCHEMAS_ON_SHARD_SQL, shard["shard_id"]):
                    statuses.append(
                        await _scope_status(
                            shard_conn, shard["database_name"], row["schema_name"], tenant_files
                        )
                    )
    return statuses
