"""Tenant provisioning: validate, place on a shard, build the schema, record it in the control plane."""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime

from schema.connect import connection
from schema.errors import InvalidTenantId, InvalidTenantName, ShardError, TenantExists
from schema.migrate import SHARDS_SQL, lock, migrate_tenant_schema, shard_dsn, unlock
from schema.placement import place_tenant
from schema.settings import PostgresSettings
from schema.shards import active_candidates

NAME_MAX = 100
# Letters and digits of any script, spaces and the punctuation shop names use.
_NAME_ALLOWED = re.compile(r"^[\w][\w .,&'()/-]*$", re.UNICODE)
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
# Sequences that only appear in names when someone is trying SQL on us.
_SQLISH = ("--", "/*", "*/", ";")

INSERT_TENANT_SQL = """
INSERT INTO tenants (id, name, slug, status) VALUES ($1, $2, $3, 'provisioning')
"""
INSERT_MAPPING_SQL = """
INSERT INTO tenant_shard_mapping (tenant_id, shard_id, schema_name) VALUES ($1, $2, $3)
"""
ACTIVATE_SQL = "UPDATE tenants SET status = 'active', updated_at = now() WHERE id = $1"
DELETE_TENANT_SQL = "DELETE FROM tenants WHERE id = $1"
TENANTS_SQL = """
SELECT t.id, t.name, t.slug, t.status, t.created_at, m.shard_id, s.shard_name, m.schema_name
FROM tenants t
JOIN tenant_shard_mapping m ON m.tenant_id = t.id
JOIN shard_map s ON s.shard_id = m.shard_id
"""


@dataclass(frozen=True)
class Tenant:
    id: uuid.UUID
    name: str
    slug: str
    status: str
    shard_id: int
    shard_name: str
    schema_name: str
    created_at: datetime | None = None


def parse_tenant_id(value: object) -> uuid.UUID:
    """A tenant id from user input: a UUID object or its canonical text, nothing else."""
    if isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str):
        raise InvalidTenantId(f"tenant id must be a UUID string, got {type(value).__name__}")
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        shown = value if len(value) <= 40 else value[:40] + "…"
        raise InvalidTenantId(f"tenant id is not a UUID: {shown!r}") from None


def validate_tenant_name(name: object) -> str:
    if not isinstance(name, str):
        raise InvalidTenantName(f"tenant name must be text, got {type(name).__name__}")
    cleaned = unicodedata.normalize("NFC", name).strip()
    if not cleaned:
        raise InvalidTenantName("tenant name is empty")
    if len(cleaned) > NAME_MAX:
        raise InvalidTenantName(f"tenant name is {len(cleaned)} characters; the limit is {NAME_MAX}")
    for bad in _SQLISH:
        if bad in cleaned:
            raise InvalidTenantName(
                f"tenant name may not contain {bad!r}; use letters, digits, spaces and . , & ' ( ) / -"
            )
    if not _NAME_ALLOWED.match(cleaned):
        offending = next(
            (ch for ch in cleaned if not re.match(r"[\w .,&'()/-]", ch, re.UNICODE)), cleaned[0]
        )
        raise InvalidTenantName(
            f"tenant name contains {offending!r}; use letters, digits, spaces and . , & ' ( ) / - "
            "(starting with a letter or digit)"
        )
    return cleaned


def slugify(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:63].strip("-")
    return slug or "tenant"


def validate_slug(slug: str) -> str:
    if not isinstance(slug, str) or not _SLUG.match(slug):
        raise InvalidTenantName(
            f"tenant slug must be 1-63 of a-z, 0-9 and '-', starting with a letter or digit; got {slug!r}"
        )
    return slug


def schema_name_for(tenant_id: uuid.UUID) -> str:
    return f"tenant_{tenant_id.hex[:12]}"


async def free_tenant_id(conn) -> tuple[uuid.UUID, str]:
    """A new tenant id whose schema name (12 hex digits of it) no tenant has yet."""
    while True:
        tenant_id = uuid.uuid4()
        schema_name = schema_name_for(tenant_id)
        if not await conn.fetchval("SELECT 1 FROM tenant_shard_mapping WHERE schema_name = $1", schema_name):
            return tenant_id, schema_name


async def create_tenant(
    settings: PostgresSettings, name: str, *, slug: str | None = None
) -> Tenant:
    """Provision a tenant: schema on its shard from the tenant migrations, RLS, control-plane rows.

    Either everything exists afterwards or nothing does: a failure while building the schema
    drops it and removes the control-plane rows.
    """
    name = validate_tenant_name(name)
    slug = validate_slug(slug) if slug is not None else slugify(name)
    async with connection(settings.control) as conn:
        await lock(conn)
        try:
            if await conn.fetchval("SELECT 1 FROM tenants WHERE slug = $1", slug):
                raise TenantExists(f"a tenant with slug {slug!r} already exists; pass another --slug")
            shards = await conn.fetch(SHARDS_SQL)
            candidates = active_candidates(shards)
            if not candidates:
                raise ShardError("no active shard to place the tenant on; run `wakala migrate` first")
            tenant_id, schema_name = await free_tenant_id(conn)
            shard_id = place_tenant(tenant_id, candidates)
            shard = next(s for s in shards if s["shard_id"] == shard_id)
            async with conn.transaction():
                await conn.execute(INSERT_TENANT_SQL, tenant_id, name, slug)
                await conn.execute(INSERT_MAPPING_SQL, tenant_id, shard_id, schema_name)
            try:
                async with connection(shard_dsn(settings, shard)) as shard_conn:
                    try:
                        await migrate_tenant_schema(shard_conn, settings, schema_name, str(tenant_id))
                    except BaseException:
                        await drop_tenant_schema(shard_conn, schema_name)
                        raise
            except BaseException:
                await conn.execute(DELETE_TENANT_SQL, tenant_id)
                raise
            await conn.execute(ACTIVATE_SQL, tenant_id)
        finally:
            await unlock(conn)
    return Tenant(tenant_id, name, slug, "active", shard_id, shard["shard_name"], schema_name)


async def drop_tenant_schema(conn, schema_name: str) -> None:
    """Drop a tenant schema and its migration records on a shard (owner connection)."""
    ident = await conn.fetchval("SELECT quote_ident($1)", schema_name)
    await conn.execute(f"DROP SCHEMA IF EXISTS {ident} CASCADE")
    await conn.execute("DELETE FROM public.schema_migrations WHERE scope = $1", schema_name)


def _tenant(row) -> Tenant:
    return Tenant(
        row["id"], row["name"], row["slug"], row["status"], row["shard_id"],
        row["shard_name"], row["schema_name"], row["created_at"],
    )


async def list_tenants(settings: PostgresSettings) -> list[Tenant]:
    async with connection(settings.control) as conn:
        rows = await conn.fetch(TENANTS_SQL + " ORDER BY t.created_at, t.slug")
    return [_tenant(r) for r in rows]
