"""The control plane's record of backups and restores (backup_log, restore_log), and the
placement lookups a backup or restore needs. Queries only; the decisions are elsewhere."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg

from schema.backups.errors import UnknownBackup
from schema.errors import ShardError, UnknownTenant

PLACEMENT_SQL = """
SELECT t.id AS tenant_id, t.status, t.name, t.slug, m.schema_name, s.shard_id, s.shard_name,
       s.host, s.port, s.database_name, s.status AS shard_status
FROM tenants t
JOIN tenant_shard_mapping m ON m.tenant_id = t.id
JOIN shard_map s ON s.shard_id = m.shard_id
WHERE t.id = $1
"""
SHARD_SQL = """
SELECT shard_id, shard_name, host, port, database_name, status, weight FROM shard_map
WHERE shard_id = $1
"""
ACTIVE_TENANTS_SQL = """
SELECT t.id FROM tenants t JOIN tenant_shard_mapping m ON m.tenant_id = t.id
WHERE t.status = 'active' ORDER BY t.created_at, t.id
"""
BACKUP_STARTED_SQL = """
INSERT INTO backup_log (backup_id, tenant_id, backup_type, status, started_at, reason,
                        schema_name, shard_id, key_id)
VALUES ($1, $2, 'full', 'started', $3, $4, $5, $6, $7)
"""
BACKUP_COMPLETED_SQL = """
UPDATE backup_log
SET status = 'completed', completed_at = now(), location = $2, size_bytes = $3, checksum = $4,
    table_counts = $5::jsonb, total_rows = $6, kind = $7
WHERE backup_id = $1
"""
BACKUP_FAILED_SQL = """
UPDATE backup_log SET status = 'failed', completed_at = now(), error_message = $2
WHERE backup_id = $1
"""
EARLIER_COMPLETED_SQL = """
SELECT started_at FROM backup_log
WHERE tenant_id = $1 AND status IN ('completed', 'expired') AND backup_id <> $2
"""
BACKUP_SQL = """
SELECT b.*, b.backup_id::text AS id FROM backup_log b WHERE b.backup_id = $1
"""
LIST_SQL = """
SELECT b.backup_id::text AS id, b.tenant_id::text AS tenant_id, t.slug, b.status, b.kind,
       b.reason, b.started_at, b.completed_at, b.size_bytes, b.total_rows, b.shard_id,
       b.location, b.verify_status, b.key_id
FROM backup_log b LEFT JOIN tenants t ON t.id = b.tenant_id
ORDER BY b.started_at DESC
LIMIT $1
"""
LATEST_COMPLETED_SQL = """
SELECT DISTINCT ON (tenant_id) backup_id::text AS id, tenant_id, started_at
FROM backup_log WHERE status = 'completed'
ORDER BY tenant_id, started_at DESC
"""
COMPLETED_SQL = """
SELECT backup_id::text AS id, tenant_id::text AS tenant_id, started_at, kind, location
FROM backup_log WHERE status = 'completed'
"""
EXPIRE_SQL = """
UPDATE backup_log SET status = 'expired', expired_at = now() WHERE backup_id = $1
"""
VERIFIED_SQL = """
UPDATE backup_log SET verified_at = now(), verify_status = $2 WHERE backup_id = $1
"""
RESTORE_STARTED_SQL = """
INSERT INTO restore_log (restore_id, backup_id, target_tenant_id, status, mode,
                         source_tenant_id, target_shard_id, location)
VALUES ($1, $2, $3, 'started', $4, $5, $6, $7)
"""
RESTORE_FINISHED_SQL = """
UPDATE restore_log
SET status = $2, error_message = $3, completed_at = now(), target_tenant_id = $4,
    pre_restore_backup_id = $5, rows_restored = $6
WHERE restore_id = $1
"""


@dataclass(frozen=True)
class LoggedFile:
    """A backup as logged: where its file is and the sha256 recorded for it."""

    backup_id: uuid.UUID
    tenant_id: uuid.UUID | None
    status: str
    location: Path | None
    sha256: str | None
    started_at: datetime


async def placement(conn: asyncpg.Connection, tenant_id: uuid.UUID) -> asyncpg.Record:
    row = await conn.fetchrow(PLACEMENT_SQL, tenant_id)
    if row is None:
        raise UnknownTenant(f"no tenant {tenant_id} is registered; see `wakala tenant list`")
    return row


async def shard(conn: asyncpg.Connection, shard_id: int, *, for_writing: bool) -> asyncpg.Record:
    """A shard row; ShardError for an unknown one, or (``for_writing``) one not active."""
    row = await conn.fetchrow(SHARD_SQL, shard_id)
    if row is None:
        known = ", ".join(str(r[0]) for r in await conn.fetch("SELECT shard_id FROM shard_map ORDER BY 1"))
        raise ShardError(f"no shard {shard_id} in the shard map (known: {known or 'none'}); "
                         "see `wakala shard list`")
    if row["status"] == "retired" or (for_writing and row["status"] != "active"):
        raise ShardError(f"shard {shard_id} ({row['shard_name']}) is {row['status']}; "
                         "restore onto an active shard")
    return row


async def logged(conn: asyncpg.Connection, backup_id: uuid.UUID) -> LoggedFile | None:
    row = await conn.fetchrow(BACKUP_SQL, backup_id)
    if row is None:
        return None
    return LoggedFile(row["backup_id"], row["tenant_id"], row["status"],
                      Path(row["location"]) if row["location"] else None, row["checksum"],
                      row["started_at"])


async def logged_or_fail(conn: asyncpg.Connection, backup_id: uuid.UUID) -> LoggedFile:
    found = await logged(conn, backup_id)
    if found is None:
        raise UnknownBackup(f"no backup {backup_id} in backup_log; see `wakala backup list`, "
                            "or give the file's path")
    if found.status != "completed" or found.location is None:
        raise UnknownBackup(f"backup {backup_id} is {found.status}: it has no file to restore; "
                            "see `wakala backup list`")
    return found


def counts_json(tables: dict) -> str:
    return json.dumps({name: s.rows for name, s in sorted(tables.items())})
