"""The personal-data registry covers the schema: every column whose name looks personal, in a
tenant schema built by the migrations and in the control database, has a registry row (or a
reason in ``schema.privacy.registry.NOT_PERSONAL``), and every registry row names a column
that exists. A migration adding ``customers.alt_phone`` without a row fails here."""

from __future__ import annotations

from schema.connect import connection
from schema.privacy.registry import stale, uncovered
from schema.tenants import create_tenant

COLUMNS_SQL = """
SELECT c.relname AS table_name, a.attname AS column_name
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition AND a.attnum > 0 AND NOT a.attisdropped
"""
REGISTRY_SQL = """
SELECT table_name, column_name, data_category, sensitivity_level, anonymization_method, purpose
FROM personal_data_registry WHERE scope = $1
"""


async def _columns(dsn, schema_name: str) -> list[tuple[str, str]]:
    async with connection(dsn) as conn:
        return [(r["table_name"], r["column_name"]) for r in await conn.fetch(COLUMNS_SQL, schema_name)]


async def test_every_personal_column_of_a_tenant_schema_is_registered(platform) -> None:
    tenant = await create_tenant(platform, "Registry Spaza")
    columns = await _columns(platform.control.with_database(platform.shard_databases[tenant.shard_id]),
                             tenant.schema_name)
    async with connection(platform.control) as control:
        rows = await control.fetch(REGISTRY_SQL, "tenant")
    registered = {(r["table_name"], r["column_name"]) for r in rows}
    assert uncovered(columns, registered) == []
    assert stale(columns, registered) == []
    assert all(r["purpose"] and r["anonymization_method"] for r in rows)
    assert {("customers", "first_name"), ("users", "phone_number"), ("orders", "delivery_location"),
            ("deliveries", "proof_of_delivery"), ("whatsapp_messages", "content")} <= registered


async def test_every_personal_column_of_the_control_database_is_registered(platform) -> None:
    columns = await _columns(platform.control, "public")
    async with connection(platform.control) as control:
        registered = {(r["table_name"], r["column_name"]) for r in await control.fetch(REGISTRY_SQL, "control")}
    assert uncovered(columns, registered) == []
    assert stale(columns, registered) == []


async def test_a_personal_column_added_without_a_registry_row_is_caught(platform) -> None:
    tenant = await create_tenant(platform, "Registry Drift")
    shard = platform.control.with_database(platform.shard_databases[tenant.shard_id])
    async with connection(shard) as conn:
        await conn.execute(f'ALTER TABLE "{tenant.schema_name}".customers ADD COLUMN alt_phone text')
    async with connection(platform.control) as control:
        registered = {(r["table_name"], r["column_name"]) for r in await control.fetch(REGISTRY_SQL, "tenant")}
    assert uncovered(await _columns(shard, tenant.schema_name), registered) == ["customers.alt_phone"]
