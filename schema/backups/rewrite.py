"""Operations on a restored schema: make it another tenant's, record its migrations, check it.

``rewrite_tenant`` runs in a scratch database, never on a shard: it renames the schema,
replaces ``schema_tenant_id()`` (an IMMUTABLE function whose body is the tenant's UUID
literal), rewrites every ``tenant_id`` column, repoints functions whose ``SET search_path``
names the old schema, and refreshes the materialized views (derived from rows that carry
the tenant id). Triggers and foreign-key checks are off meanwhile
(``session_replication_role = replica``): the rows are already consistent, only the tenant
id changes, and every table is rewritten in one transaction.

Only ``tenant_id`` columns are rewritten. A tenant id copied into free text or JSON (an
event payload, say) keeps the old value; nothing in the tenant migrations stores one there
for lookups.
"""

from __future__ import annotations

import uuid

import asyncpg

from schema.backups.container import BackupHeader
from schema.backups.errors import VerificationFailed
from schema.checksums import TableSum, checksums, differences, qualified, quote_ident

TENANT_ID_TABLES_SQL = """
SELECT c.relname FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND a.atttypid = 'uuid'::regtype
ORDER BY c.relname
"""
SEARCH_PATH_FUNCTIONS_SQL = """
SELECT p.oid::regprocedure::text AS signature, cfg
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace, unnest(p.proconfig) AS cfg
WHERE n.nspname = $1 AND cfg LIKE 'search_path=%'
"""
MATVIEWS_SQL = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relkind = 'm' AND c.relispopulated ORDER BY 1
"""
RECORD_MIGRATION_SQL = """
INSERT INTO public.schema_migrations (scope, version, name, checksum, execution_time_ms, applied_by)
VALUES ($1, $2, $3, $4, 0, $5)
"""
OLD_MIGRATIONS_SQL = """
SELECT scope, version, name, checksum, execution_time_ms, applied_by, applied_at
FROM public.schema_migrations WHERE scope = $1
"""
PUT_BACK_MIGRATION_SQL = """
INSERT INTO public.schema_migrations (scope, version, name, checksum, execution_time_ms,
                                      applied_by, applied_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""
APP_ROLE_USAGE_SQL = "SELECT has_schema_privilege($1, $2, 'USAGE')"


async def rewrite_tenant(conn: asyncpg.Connection, old_schema: str, new_schema: str,
                         old_id: uuid.UUID, new_id: uuid.UUID) -> None:
    async with conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(f"ALTER SCHEMA {quote_ident(old_schema)} RENAME TO {quote_ident(new_schema)}")
        await conn.execute(
            f"CREATE OR REPLACE FUNCTION {quote_ident(new_schema)}.schema_tenant_id() RETURNS uuid "
            f"LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$SELECT '{new_id}'::uuid$$")
        for row in await conn.fetch(TENANT_ID_TABLES_SQL, new_schema):
            await conn.execute(
                f"UPDATE {qualified(new_schema, row['relname'])} SET tenant_id = $1 "  # noqa: S608
                "WHERE tenant_id = $2", new_id, old_id)
        for row in await conn.fetch(SEARCH_PATH_FUNCTIONS_SQL, new_schema):
            value = row["cfg"].split("=", 1)[1]
            parts = [new_schema if p.strip().strip('"') == old_schema else p.strip()
                     for p in value.split(",")]
            await conn.execute(f"ALTER FUNCTION {row['signature']} SET search_path = "
                               + ", ".join(parts))
        await conn.execute("SELECT set_config('app.current_tenant_id', $1, true)", str(new_id))
        for row in await conn.fetch(MATVIEWS_SQL, new_schema):
            await conn.execute(f"REFRESH MATERIALIZED VIEW {qualified(new_schema, row['relname'])}")


async def verified_sums(conn: asyncpg.Connection, schema_name: str,
                        expected: dict[str, TableSum], *, what: str) -> dict[str, TableSum]:
    """The schema's sums, or VerificationFailed listing every table that differs."""
    actual = await checksums(conn, schema_name)
    problems = differences(expected, actual)
    if problems:
        raise VerificationFailed(f"{what} does not match: " + "; ".join(problems))
    return actual


async def saved_migrations(conn: asyncpg.Connection, scope: str) -> list[asyncpg.Record]:
    return list(await conn.fetch(OLD_MIGRATIONS_SQL, scope))


async def record_migrations(conn: asyncpg.Connection, scope: str, header: BackupHeader) -> None:
    """public.schema_migrations for ``scope`` becomes what the backup's schema had applied."""
    async with conn.transaction():
        await conn.execute("DELETE FROM public.schema_migrations WHERE scope = $1", scope)
        who = f"restore of backup {header.backup_id}"
        for m in header.migrations:
            await conn.execute(RECORD_MIGRATION_SQL, scope, m["version"], m["name"], m["checksum"], who)


async def put_back_migrations(conn: asyncpg.Connection, scope: str, rows: list[asyncpg.Record]) -> None:
    async with conn.transaction():
        await conn.execute("DELETE FROM public.schema_migrations WHERE scope = $1", scope)
        for r in rows:
            await conn.execute(PUT_BACK_MIGRATION_SQL, *r.values())


async def check_app_access(conn: asyncpg.Connection, schema_name: str, app_role: str) -> None:
    """The restored ACLs must let the application role in (pg_restore restores them)."""
    if not await conn.fetchval(APP_ROLE_USAGE_SQL, app_role, schema_name):
        raise VerificationFailed(f"the application role {app_role} has no USAGE on the restored "
                                 f"{schema_name}; the dump's privileges were not restored")


async def schema_exists(conn: asyncpg.Connection, schema_name: str) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema_name))


async def drop_schema(conn: asyncpg.Connection, schema_name: str) -> None:
    await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema_name)} CASCADE")


async def rename_schema(conn: asyncpg.Connection, old: str, new: str) -> None:
    await conn.execute(f"ALTER SCHEMA {quote_ident(old)} RENAME TO {quote_ident(new)}")
