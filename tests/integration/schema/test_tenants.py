"""Tenant provisioning, placement across real shard databases, and bad input."""

import uuid

import pytest

from schema.connect import connection
from schema.db import TenantDatabase
from schema.errors import (
    InvalidTenantId,
    InvalidTenantName,
    ShardError,
    TenantExists,
    UnknownTenant,
)
from schema.shards import add_shard, list_shards
from schema.tenants import create_tenant, list_tenants


async def _schemas_on(settings, database):
    async with connection(settings.control.with_database(database)) as conn:
        rows = await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tenant\\_%'")
    return {r["nspname"] for r in rows}


async def _control_counts(settings):
    async with connection(settings.control) as conn:
        return (await conn.fetchval("SELECT count(*) FROM tenants"),
                await conn.fetchval("SELECT count(*) FROM tenant_shard_mapping"))


async def _create_until_both_shards_used(settings, limit=40):
    tenants = []
    for i in range(limit):
        tenants.append(await create_tenant(settings, f"Spaza {i}"))
        if {t.shard_id for t in tenants} == {0, 1}:
            return tenants
    raise AssertionError(f"{limit} tenants all landed on one shard")


async def test_tenants_are_placed_on_two_different_shard_databases(platform):
    tenants = await _create_until_both_shards_used(platform)
    schemas = {db: await _schemas_on(platform, db) for db in platform.shard_databases}
    for t in tenants:
        home = platform.shard_databases[t.shard_id]
        other = platform.shard_databases[1 - t.shard_id]
        assert t.schema_name in schemas[home]
        assert t.schema_name not in schemas[other]
        assert t.schema_name == f"tenant_{t.id.hex[:12]}"
    listed = {t.id: t for t in await list_tenants(platform)}
    assert all(listed[t.id].status == "active" and listed[t.id].shard_id == t.shard_id for t in tenants)


async def test_adding_a_third_shard_leaves_every_tenant_where_it_was(platform):
    tenants = [await create_tenant(platform, f"Before {i}") for i in range(4)]
    async with connection(platform.control) as conn:
        before = await conn.fetch("SELECT tenant_id, shard_id, schema_name FROM tenant_shard_mapping ORDER BY 1")
    third = platform.control.database.replace("_control", "_shard_2")
    shard = await add_shard(platform, "shard_2", third)
    assert shard.shard_id == 2
    async with connection(platform.control) as conn:
        after = await conn.fetch("SELECT tenant_id, shard_id, schema_name FROM tenant_shard_mapping ORDER BY 1")
    assert before == after
    async with TenantDatabase(platform) as db:
        for t in tenants:  # and they still answer from their old shard
            async with db.tenant_transaction(t.id) as tx:
                assert await tx.fetchval("SELECT current_schema()") == t.schema_name
                assert await tx.fetchval("SELECT current_database()") == platform.shard_databases[t.shard_id]
    newcomers = []
    for i in range(40):
        newcomers.append(await create_tenant(platform, f"After {i}"))
        if newcomers[-1].shard_id == 2:
            break
    assert newcomers[-1].shard_id == 2, "no new tenant ever landed on the new shard"
    assert newcomers[-1].schema_name in await _schemas_on(platform, third)
    assert {s.name: s.tenants for s in await list_shards(platform)}["shard_2"] >= 1


async def test_shard_add_rejects_bad_and_duplicate_definitions(platform):
    with pytest.raises(ShardError, match="shard name"):
        await add_shard(platform, "x; DROP", "whatever")
    with pytest.raises(ShardError, match="lower-case identifier"):
        await add_shard(platform, "ok", 'db"; DROP DATABASE postgres; --')
    with pytest.raises(ShardError, match="already shard"):
        await add_shard(platform, "dup", platform.shard_databases[0])
    assert len(await list_shards(platform)) == 2


@pytest.mark.parametrize(
    "name, message",
    [
        ("Robert'); DROP TABLE tenants; --", "may not contain"),
        ("x' OR 1=1 /* ", "may not contain"),
        ("", "empty"),
        ("   ", "empty"),
        ("a" * 101, "limit is 100"),
        ("<script>alert(1)</script>", "contains '<'"),
        ("tab\there", "contains"),
        ("nul\x00byte", "contains"),
        (42, "must be text"),
    ],
)
async def test_hostile_tenant_names_are_refused_and_write_nothing(platform, name, message):
    before = await _control_counts(platform)
    schemas = {db: await _schemas_on(platform, db) for db in platform.shard_databases}
    with pytest.raises(InvalidTenantName, match=message):
        await create_tenant(platform, name)
    assert await _control_counts(platform) == before
    assert {db: await _schemas_on(platform, db) for db in platform.shard_databases} == schemas


async def test_real_shop_names_are_accepted(platform):
    tenant = await create_tenant(platform, "Mam' Thandi's Spaza & Café (Orlando-West)")
    assert tenant.slug == "mam-thandi-s-spaza-cafe-orlando-west"


async def test_duplicate_slug_is_refused_without_a_second_tenant(platform):
    await create_tenant(platform, "Kasi Kitchen")
    before = await _control_counts(platform)
    with pytest.raises(TenantExists, match="kasi-kitchen"):
        await create_tenant(platform, "Kasi  Kitchen")
    assert await _control_counts(platform) == before


@pytest.mark.parametrize("bad", ["not-a-uuid", "'; SELECT pg_sleep(10); --", "", "1234", None, 17])
async def test_malformed_tenant_id_is_a_clear_error(platform, bad):
    async with TenantDatabase(platform) as db:
        with pytest.raises(InvalidTenantId):
            async with db.tenant_transaction(bad):
                pass


async def test_unknown_tenant_id_is_a_clear_error(platform):
    async with TenantDatabase(platform) as db:
        with pytest.raises(UnknownTenant, match="no tenant"):
            async with db.tenant_transaction(uuid.uuid4()):
                pass
