"""Row-level security: a tenant's rows are invisible and unwritable from anywhere else."""

from dataclasses import replace

import asyncpg
import pytest

from schema.connect import connection
from schema.db import TenantDatabase
from schema.tenants import create_tenant

INSERT_USER = "INSERT INTO users (phone_number, name) VALUES ($1, $2) RETURNING id"


@pytest.fixture
async def two_tenants(platform):
    a = await create_tenant(platform, "Tenant A")
    b = await create_tenant(platform, "Tenant B")
    async with TenantDatabase(platform) as db:
        async with db.tenant_transaction(a.id) as tx:
            await tx.fetchval(INSERT_USER, "+27710000001", "Alice of A")
        async with db.tenant_transaction(b.id) as tx:
            await tx.fetchval(INSERT_USER, "+27710000002", "Bongani of B")
    return platform, a, b


async def _app_conn(settings, tenant):
    dsn = settings.control.with_database(settings.shard_databases[tenant.shard_id])
    return await asyncpg.connect(dsn.with_user(settings.app_role, settings.app_password).url())


async def test_each_tenant_sees_only_its_own_rows(two_tenants):
    settings, a, b = two_tenants
    async with TenantDatabase(settings) as db:
        async with db.tenant_transaction(a.id, readonly=True) as tx:
            assert [r["name"] for r in await tx.fetch("SELECT name FROM users")] == ["Alice of A"]
            assert await tx.fetchval("SELECT tenant_id FROM users") == a.id



async def test_cross_tenant_access_on_the_same_shard_is_denied(platform):
    # Provision until two tenants share a shard, so qualified cross-schema SQL is possible.
    tenants = []
    while True:
        tenants.append(await create_tenant(platform, f"Neighbour {len(tenants)}"))
        by_shard = {}
        for t in tenants:
            by_shard.setdefault(t.shard_id, []).append(t)
        pair = next((ts for ts in by_shard.values() if len(ts) >= 2), None)
        if pair:
            a, b = pair[:2]
            break
    async with TenantDatabase(platform) as db:
        async with db.tenant_transaction(a.id) as tx:
            await tx.fetchval(INSERT_USER, "+27710000003", "Alice of A")
        async with db.tenant_transaction(b.id) as tx:
            assert await tx.fetchval(f'SELECT count(*) FROM "{a.schema_name}".users') == 0  # noqa: S608
            assert await tx.execute(f'UPDATE "{a.schema_name}".users SET name = $1', "pwned") == "UPDATE 0"  # noqa: S608
            assert await tx.execute(f'DELETE FROM "{a.schema_name}".users') == "DELETE 0"  # noqa: S608
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security") as info:
            async with db.tenant_transaction(b.id) as tx:
                await tx.fetchval(f'INSERT INTO "{a.schema_name}".users (phone_number) VALUES ($1) RETURNING id', "+27710000009")  # noqa: S608
        assert "+2771" not in str(info.value)
        async with db.tenant_transaction(a.id, readonly=True) as tx:
            assert await tx.fetchval("SELECT count(*) FROM users") == 1
            assert await tx.fetchval("SELECT name FROM users") == "Alice of A"


async def test_no_tenant_set_sees_nothing_and_cannot_write(two_tenants):
    settings, a, _ = two_tenants
    conn = await _app_conn(settings, a)
    try:
        assert await conn.fetchval(f'SELECT count(*) FROM "{a.schema_name}".users') == 0  # noqa: S608
        with pytest.raises(asyncpg.InsufficientPrivilegeError) as info:
            await conn.execute(f'INSERT INTO "{a.schema_name}".users (phone_number, name) VALUES ($1, $2)',  # noqa: S608
                               "+27719999999", "Mallory")
        message = str(info.value)
        assert "row-level security" in message and "+2771" not in message and "Mallory" not in message
    finally:
        await conn.close()
    async with TenantDatabase(settings) as db, db.tenant_transaction(a.id) as tx:
        assert await tx.fetchval("SELECT count(*) FROM users") == 1


async def test_raw_sql_as_the_app_role_claiming_another_tenant_sees_nothing(two_tenants):
    settings, a, b = two_tenants
    conn = await _app_conn(settings, a)
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.current_tenant_id', $1, true)", str(b.id))
            assert await conn.fetchval(f'SELECT count(*) FROM "{a.schema_name}".users') == 0  # noqa: S608
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.current_tenant_id', $1, true)", str(a.id))
            assert await conn.fetchval(f'SELECT count(*) FROM "{a.schema_name}".users') == 1  # noqa: S608
        with pytest.raises(asyncpg.PostgresError):
            await conn.execute(f'ALTER TABLE "{a.schema_name}".users DISABLE ROW LEVEL SECURITY')
        await conn.execute("SET row_security = off")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await conn.fetchval(f'SELECT count(*) FROM "{a.schema_name}".users')  # noqa: S608
    finally:
        await conn.close()


async def test_app_role_owns_nothing_and_cannot_bypass_rls(two_tenants):
    settings, a, _ = two_tenants
    dsn = settings.control.with_database(settings.shard_databases[a.shard_id])
    async with connection(dsn) as conn:
        role = await conn.fetchrow("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1",
                                   settings.app_role)
        assert role == (False, False)
        owned = await conn.fetchval(
            "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner WHERE r.rolname = $1",
            settings.app_role)
        assert owned == 0
        unprotected = await conn.fetch(
            "SELECT relname FROM pg_class WHERE relnamespace = to_regnamespace($1) "
            "AND relkind IN ('r', 'p') AND NOT (relrowsecurity AND relforcerowsecurity)", a.schema_name)
        assert unprotected == []
        tables = await conn.fetchval(
            "SELECT count(*) FROM pg_class WHERE relnamespace = to_regnamespace($1) AND relkind IN ('r','p')",
            a.schema_name)
        assert tables >= 30


async def test_a_failed_transaction_writes_nothing(two_tenants):
    settings, a, _ = two_tenants
    async with TenantDatabase(settings) as db:
        with pytest.raises(RuntimeError):
            async with db.tenant_transaction(a.id) as tx:
                await tx.fetchval(INSERT_USER, "+27710000077", "Half written")
                raise RuntimeError("crash mid-request")
        async with db.tenant_transaction(a.id, readonly=True) as tx:
            assert await tx.fetchval("SELECT count(*) FROM users") == 1
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                await tx.fetchval(INSERT_USER, "+27710000078", "Read only")


async def test_tenant_context_does_not_leak_to_the_next_user_of_a_connection(two_tenants):
    # PgBouncer mode: no statement cache, no session reset on release, one connection.
    settings, a, b = two_tenants
    bouncer = replace(settings, pgbouncer=True, write_pool_size=1, read_pool_size=1)
    async with TenantDatabase(bouncer) as db:
        async with db.tenant_transaction(a.id) as tx:
            backend = await tx.fetchval("SELECT pg_backend_pid()")
        pools = db._pools[a.shard_id]
        async with pools.write.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == backend
            assert await conn.fetchval("SELECT current_setting('app.current_tenant_id', true)") in ("", None)
            assert a.schema_name not in await conn.fetchval("SHOW search_path")
            assert await conn.fetchval(f'SELECT count(*) FROM "{a.schema_name}".users') == 0  # noqa: S608
        if b.shard_id == a.shard_id:
            async with db.tenant_transaction(b.id, readonly=False) as tx:
                assert await tx.fetchval("SELECT name FROM users") == "Bongani of B"
