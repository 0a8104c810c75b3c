"""The control plane under made-up tenant ids: unknown ids remembered briefly and boundedly,
a bounded wait for the small control pool, and the tenant listing read as the app role."""

import asyncio
import uuid

import pytest

import schema.db
from schema.connect import connection
from schema.db import TenantDatabase
from schema.errors import DatabaseUnavailable, UnknownTenant
from schema.tenants import create_tenant


async def test_an_unknown_tenant_is_remembered_without_asking_the_control_plane_again(platform):
    async with TenantDatabase(platform, control_acquire_timeout_s=0.2) as db:
        guessed = uuid.uuid4()
        with pytest.raises(UnknownTenant):
            await db.placement(guessed)
        # With every control connection taken, the remembered answer still comes at once
        # while a new guess waits a bounded time and is told the database is unavailable.
        async with db._control.acquire(), db._control.acquire():
            with pytest.raises(UnknownTenant):
                await db.placement(guessed)
            with pytest.raises(DatabaseUnavailable) as busy:
                await db.placement(uuid.uuid4())
            assert "retry later" in str(busy.value) and platform.control.host not in str(busy.value)


async def test_unknown_tenants_remembered_are_bounded_and_expire(platform):
    async with TenantDatabase(platform, unknown_max=50, unknown_ttl_s=0.05) as db:
        for _ in range(500):
            with pytest.raises(UnknownTenant):
                await db.placement(uuid.uuid4())
            assert len(db._unknown) <= 50
        guessed = next(iter(db._unknown))
        await asyncio.sleep(0.06)   # past the short TTL (nothing to await: time is the input)
        db.control_acquire_timeout_s = 0.2
        async with db._control.acquire(), db._control.acquire():
            with pytest.raises(DatabaseUnavailable):   # expired: the control plane is asked again
                await db.placement(guessed)


async def test_forget_placement_drops_a_remembered_unknown_so_a_new_tenant_is_found(platform):
    async with TenantDatabase(platform) as db:
        tid = uuid.uuid4()
        with pytest.raises(UnknownTenant):
            await db.placement(tid)
        async with connection(platform.control) as owner:   # the tenant appears (as if created elsewhere)
            await owner.execute("INSERT INTO tenants (id, name, slug, status) VALUES ($1, 'Late', $2, 'active')",
                                tid, f"late-{tid.hex[:8]}")
            await owner.execute("INSERT INTO tenant_shard_mapping (tenant_id, shard_id, schema_name) "
                                "VALUES ($1, 0, $2)", tid, f"tenant_{tid.hex[:12]}")
        with pytest.raises(UnknownTenant):
            await db.placement(tid)
        db.forget_placement(tid)
        assert (await db.placement(tid)).tenant_id == tid


async def test_concurrent_lookups_of_one_tenant_share_one_query_and_stale_placements_serve_an_outage(
        platform, monkeypatch):
    tenant = await create_tenant(platform, f"Shared {uuid.uuid4().hex[:6]}")
    async with TenantDatabase(platform, control_acquire_timeout_s=0.3) as db:
        async with db._control.acquire():   # one connection left: a query per caller would queue
            placements = await asyncio.gather(*(db.placement(tenant.id) for _ in range(200)))
        assert {p.tenant_id for p in placements} == {tenant.id}
        assert len({id(p) for p in placements}) == 1
        monkeypatch.setattr(schema.db, "PLACEMENT_TTL_S", 0.0)   # the cached placement is stale now
        async with db._control.acquire(), db._control.acquire():
            assert (await db.placement(tenant.id)).tenant_id == tenant.id


async def test_active_tenants_are_listed_through_the_app_role_pool(platform):
    live = await create_tenant(platform, f"Live {uuid.uuid4().hex[:6]}")
    paused = await create_tenant(platform, f"Paused {uuid.uuid4().hex[:6]}")
    async with connection(platform.control) as owner:
        await owner.execute("UPDATE tenants SET status = 'suspended' WHERE id = $1", paused.id)
        async with TenantDatabase(platform) as db:
            assert await db.active_tenant_ids() == [live.id]
            users = await owner.fetch(
                "SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                platform.control.database)
    assert {r["usename"] for r in users} == {platform.app_role}
