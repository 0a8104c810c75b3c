"""The old schema of a finished move: kept fenced for a grace period, then dropped.

Keeping it costs disk only (no role can read it, nothing routes to it) and buys an operator
a way back from a move they regret (``GRANT USAGE`` and a reverse mapping by hand, or a
reverse move). ``cleanup_moves`` drops the schemas of completed moves whose grace period is
over, or of one tenant at once (``wakala tenant move TENANT --cleanup``). It never drops a
schema the mapping points at: the check and the drop read the same control-plane row.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from schema.connect import connection
from schema.moves.plan import ShardInfo
from schema.settings import DSN, PostgresSettings
from schema.tenants import drop_tenant_schema, parse_tenant_id

DUE_SQL = """
SELECT g.id, g.tenant_id, g.schema_name, g.source_shard, m.shard_id AS current_shard,
       s.shard_name, s.status, s.host, s.port, s.database_name, s.weight
FROM tenant_migrations g
JOIN shard_map s ON s.shard_id = g.source_shard
JOIN tenant_shard_mapping m ON m.tenant_id = g.tenant_id
WHERE g.status = 'completed' AND ($1::uuid IS NULL OR g.tenant_id = $1)
  AND ($1::uuid IS NOT NULL OR g.cleanup_after <= now())
ORDER BY g.completed_at
"""
CLEANED_SQL = "UPDATE tenant_migrations SET status = 'cleaned', cleaned_at = now(), updated_at = now() WHERE id = $1"

__all__ = ["Cleaned", "cleanup_moves", "drop_tenant_schema"]


@dataclass(frozen=True)
class Cleaned:
    move_id: uuid.UUID
    tenant_id: uuid.UUID
    shard_id: int
    schema_name: str


async def cleanup_moves(settings: PostgresSettings, tenant: object | None = None) -> list[Cleaned]:
    """Drop old schemas: every due one, or all of one tenant's finished moves at once."""
    tenant_id = parse_tenant_id(tenant) if tenant is not None else None
    done: list[Cleaned] = []
    async with connection(settings.control) as control:
        for row in await control.fetch(DUE_SQL, tenant_id):
            if row["current_shard"] == row["source_shard"]:
                # The tenant lives there again (moved back): its schema is live, keep it.
                await control.execute(CLEANED_SQL, row["id"])
                continue
            shard = ShardInfo(row["source_shard"], row["shard_name"], row["status"], row["host"], row["port"],
                              row["database_name"], float(row["weight"]))
            async with connection(DSN(shard.host, shard.port, settings.control.user, shard.database,
                                      settings.control.password)) as src:
                await drop_tenant_schema(src, row["schema_name"])
            await control.execute(CLEANED_SQL, row["id"])
            done.append(Cleaned(row["id"], row["tenant_id"], row["source_shard"], row["schema_name"]))
    return done
