"""``tenant_transaction``: one message begins it, nothing outlives it on the pooled connection."""

import asyncio
from dataclasses import replace

import asyncpg
import pytest

from schema.connect import connection
from schema.db import TenantDatabase
from schema.tenants import create_tenant

INSERT_USER = "INSERT INTO users (phone_number, name) VALUES ($1, $2) RETURNING id"
SETTINGS_SQL = ("SELECT current_setting('search_path'), current_setting('app.current_tenant_id', true), "
                "pg_current_xact_id_if_assigned() IS NOT NULL")


@pytest.fixture
async def one_connection(platform):
    """A database whose write and read pools hold one connection each, so every transaction of
    a test reuses the same session and anything left behind would show."""
    tenant = await create_tenant(platform, "Transaction Tenant")
    async with TenantDatabase(replace(platform, write_pool_size=1, read_pool_size=1)) as db:
        yield db, tenant


async def test_a_transaction_is_scoped_and_leaves_nothing_on_the_session(one_connection):
    db, tenant = one_connection
    async with db.tenant_transaction(tenant.id) as tx:
        path, tid, _ = await tx.fetchrow(SETTINGS_SQL)
        assert path == f'"{tenant.schema_name}", public' and tid == str(tenant.id)
        assert tx.is_in_transaction()
        await tx.fetchval(INSERT_USER, "+27710000001", "Thandi")
    pool = (await db._shard_pools(await db.placement(tenant.id))).write
    async with pool.acquire() as raw:
        path, tid, _ = await raw.fetchrow(SETTINGS_SQL)
        assert path != f'"{tenant.schema_name}", public' and tid in (None, "")
        assert not raw.is_in_transaction()
    async with db.tenant_transaction(tenant.id, readonly=True) as tx:
        assert await tx.fetchval("SELECT count(*) FROM users WHERE name = 'Thandi'") == 1
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await tx.fetchval(INSERT_USER, "+27710000002", "Sipho")


async def test_an_exception_rolls_back_and_the_connection_is_reused_clean(one_connection):
    db, tenant = one_connection
    with pytest.raises(RuntimeError):
        async with db.tenant_transaction(tenant.id) as tx:
            await tx.fetchval(INSERT_USER, "+27710000003", "Lerato")
            raise RuntimeError("the caller changed its mind")
    with pytest.raises(asyncpg.UniqueViolationError):
        async with db.tenant_transaction(tenant.id) as tx:
            await tx.fetchval(INSERT_USER, "+27710000004", "Zanele")
            await tx.fetchval(INSERT_USER, "+27710000004", "Zanele again")
    async with db.tenant_transaction(tenant.id) as tx:
        assert await tx.fetchval("SELECT count(*) FROM users") == 0


async def test_a_caller_cancelled_mid_statement_leaves_no_open_transaction(one_connection):
    db, tenant = one_connection

    async def slow() -> None:
        async with db.tenant_transaction(tenant.id) as tx:
            await tx.fetchval(INSERT_USER, "+27710000005", "Mpho")
            await tx.execute("SELECT pg_sleep(10)")

    task = asyncio.create_task(slow())
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with db.tenant_transaction(tenant.id) as tx:   # the one connection, or its replacement
        assert await tx.fetchval("SELECT count(*) FROM users") == 0
        _, _, wrote_before = await tx.fetchrow(SETTINGS_SQL)
        assert not wrote_before   # a new transaction, not the cancelled one (which had written)


async def test_a_session_the_server_ends_leaves_the_callers_error_and_the_pool_recovers(one_connection, platform):
    db, tenant = one_connection

    class CallerError(Exception):
        pass

    with pytest.raises(CallerError):   # not the failed rollback's "released back to the pool"
        async with db.tenant_transaction(tenant.id) as tx:
            await tx.fetchval(INSERT_USER, "+27710000006", "Naledi")
            async with connection(platform.control) as admin:   # the owner may end the app's sessions
                await admin.execute("SELECT pg_terminate_backend($1)", tx.get_server_pid())
            await asyncio.sleep(0.5)   # the client has seen the session end
            raise CallerError("the caller's own failure")
    async with db.tenant_transaction(tenant.id) as tx:   # a fresh connection; nothing was written
        assert await tx.fetchval("SELECT count(*) FROM users") == 0
