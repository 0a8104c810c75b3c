"""The shard map: list shards, register a new one (a real database) and prepare it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from schema.connect import connection
from schema.errors import ShardError
from schema.migrate import SHARDS_SQL, lock, prepare_shard, shard_dsn, unlock
from schema.placement import ShardCandidate
from schema.settings import DSN, PostgresSettings

_SHARD_NAME = re.compile(r"^[a-z0-9_]{1,50}$")
_DATABASE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

ADD_SHARD_SQL = """
INSERT INTO shard_map (shard_id, shard_name, host, port, database_name, weight)
SELECT coalesce(max(shard_id) + 1, 0), $1, $2, $3, $4, $5 FROM shard_map
RETURNING shard_id
"""
SHARD_TENANT_COUNTS_SQL = """
SELECT s.shard_id, s.shard_name, s.host, s.port, s.database_name, s.status, s.weight,
       count(m.tenant_id) AS tenants
FROM shard_map s LEFT JOIN tenant_shard_mapping m ON m.shard_id = s.shard_id
GROUP BY s.shard_id ORDER BY s.shard_id
"""


@dataclass(frozen=True)
class Shard:
    shard_id: int
    name: str
    host: str
    port: int
    database: str
    status: str
    weight: float
    tenants: int = 0


async def list_shards(settings: PostgresSettings) -> list[Shard]:
    async with connection(settings.control) as conn:
        rows = await conn.fetch(SHARD_TENANT_COUNTS_SQL)
    return [
        Shard(r["shard_id"], r["shard_name"], r["host"], r["port"], r["database_name"],
              r["status"], float(r["weight"]), r["tenants"])
        for r in rows
    ]


def active_candidates(rows: list) -> list[ShardCandidate]:
    return [ShardCandidate(r["shard_id"], float(r["weight"])) for r in rows if r["status"] == "active"]


async def add_shard(
    settings: PostgresSettings,
    name: str,
    database: str,
    *,
    host: str | None = None,
    port: int | None = None,
    weight: float = 1.0,
) -> Shard:
    """Register a shard database (created if missing, with PostGIS) and make it take new tenants.

    Existing tenants stay where ``tenant_shard_mapping`` says they are.
    """
    if not _SHARD_NAME.match(name):
        raise ShardError(f"shard name must match [a-z0-9_]{{1,50}}, got {name!r}")
    if not _DATABASE.match(database):
        raise ShardError(f"shard database must be a lower-case identifier, got {database!r}")
    if not (weight > 0):
        raise ShardError(f"shard weight must be > 0, got {weight}")
    host = host or settings.control.host
    port = port or settings.control.port
    if not 1 <= port <= 65535:
        raise ShardError(f"shard port must be 1..65535, got {port}")
    async with connection(settings.control) as conn:
        await lock(conn)
        try:
            existing = await conn.fetch(SHARDS_SQL)
            for row in existing:
                if row["shard_name"] == name:
                    raise ShardError(f"a shard named {name!r} already exists")
                if (row["host"], row["port"], row["database_name"]) == (host, port, database):
                    raise ShardError(f"{host}:{port}/{database} is already shard {row['shard_name']!r}")
            # Prepare the database first: a shard row only appears once its database is usable.
            await prepare_shard(settings, DSN(host, port, settings.control.user, database,
                                              settings.control.password))
            shard_id = await conn.fetchval(ADD_SHARD_SQL, name, host, port, database, weight)
        finally:
            await unlock(conn)
    return Shard(shard_id, name, host, port, database, "active", weight, 0)


__all__ = ["Shard", "active_candidates", "add_shard", "list_shards", "shard_dsn"]
