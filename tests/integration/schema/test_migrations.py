"""The migration runner against real, empty databases."""

import asyncio
import shutil
import uuid

import pytest

import schema.migrate as migrate_module
from schema.connect import connection
from schema.errors import MigrationChecksumError, MigrationError
from schema.migrate import load_migrations, migrate, migration_status
from schema.tenants import create_tenant


async def _fetch(dsn, sql, *args):
    async with connection(dsn) as conn:
        return await conn.fetch(sql, *args)


async def test_migrations_apply_on_empty_databases_and_record_what_ran(fresh_settings):
    report = await migrate(fresh_settings)
    assert report.control_applied == [m.version for m in load_migrations("control")]
    assert report.shards_registered == ["shard_0", "shard_1"]
    rows = await _fetch(fresh_settings.control,
                        "SELECT version, checksum, execution_time_ms, applied_by "
                        "FROM schema_migrations WHERE scope = 'control' ORDER BY version")
    files = load_migrations("control")
    assert [(r["version"], r["checksum"]) for r in rows] == [(m.version, m.checksum) for m in files]
    assert all(r["execution_time_ms"] >= 0 and " as postgres" in r["applied_by"] for r in rows)
    log = await _fetch(fresh_settings.control,
                       "SELECT status, count(*) AS n FROM migration_log GROUP BY status")
    assert {r["status"]: r["n"] for r in log} == {"completed": len(files)}
    for database in fresh_settings.shard_databases:
        ext = await _fetch(fresh_settings.control.with_database(database),
                           "SELECT extname FROM pg_extension WHERE extname = 'postgis'")
        assert ext, f"PostGIS missing on {database}"


async def test_second_run_is_a_no_op(platform):
    await create_tenant(platform, "Rerun Spaza")
    before = await _fetch(platform.control, "SELECT count(*) AS n FROM migration_log")
    report = await migrate(platform)
    assert not report.changed
    assert all(not versions for versions in report.tenant_applied.values())
    after = await _fetch(platform.control, "SELECT count(*) AS n FROM migration_log")
    assert before[0]["n"] == after[0]["n"]
    assert all(not s.pending for s in await migration_status(platform))


async def test_two_runners_at_once_apply_each_migration_once(fresh_settings):
    await asyncio.gather(migrate(fresh_settings), migrate(fresh_settings))
    rows = await _fetch(fresh_settings.control,
                        "SELECT version, count(*) AS n FROM schema_migrations GROUP BY version")
    assert {r["version"] for r in rows} == {m.version for m in load_migrations("control")}
    assert all(r["n"] == 1 for r in rows)
    shards = await _fetch(fresh_settings.control, "SELECT count(*) AS n FROM shard_map")
    assert shards[0]["n"] == 2


@pytest.fixture
def migrations_copy(tmp_path, monkeypatch):
    root = tmp_path / "migrations"
    shutil.copytree(migrate_module.MIGRATIONS_ROOT, root)
    monkeypatch.setattr(migrate_module, "MIGRATIONS_ROOT", root)
    return root


async def test_an_edited_applied_file_is_refused_by_name(platform, migrations_copy):
    edited = sorted((migrations_copy / "control").glob("0001_*.sql"))[0]
    edited.write_text(edited.read_text() + "\n-- an innocent-looking edit\n")
    with pytest.raises(MigrationChecksumError, match=edited.name):
        await migrate(platform)
    with pytest.raises(MigrationChecksumError, match=edited.name):
        await migration_status(platform)


async def test_an_edited_tenant_file_is_refused_before_any_tenant_changes(platform, migrations_copy):
    await create_tenant(platform, "Checksum Corner")
    edited = sorted((migrations_copy / "tenant").glob("*.sql"))[-1]
    edited.write_text(edited.read_text() + "\nSELECT 1;\n")
    with pytest.raises(MigrationChecksumError, match=edited.name):
        await migrate(platform)


async def test_a_failing_migration_is_logged_and_rolled_back(platform, migrations_copy):
    (migrations_copy / "control" / "9999_broken.sql").write_text(
        "CREATE TABLE half_done (id int);\nSELECT no_such_function();\n"
    )
    with pytest.raises(MigrationError, match="9999_broken.sql"):
        await migrate(platform)
    log = await _fetch(platform.control,
                       "SELECT status, error_message FROM migration_log WHERE version = '9999'")
    assert [r["status"] for r in log] == ["failed"]
    assert "no_such_function" in log[0]["error_message"]
    assert not await _fetch(platform.control, "SELECT 1 FROM schema_migrations WHERE version = '9999'")
    assert not await _fetch(platform.control, "SELECT to_regclass('half_done') AS t WHERE to_regclass('half_done') IS NOT NULL")


def test_misnamed_migration_file_is_refused(tmp_path):
    (tmp_path / "control").mkdir()
    (tmp_path / "control" / "1_create.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="1_create.sql"):
        load_migrations("control", tmp_path)


@pytest.fixture
async def bypass_role(fresh_settings):
    """A login role with BYPASSRLS, of this test only: roles are cluster-wide, so it is
    dropped afterwards, with whatever it was granted in this test's databases."""
    role = f"wakala_test_bypass_{uuid.uuid4().hex[:8]}"
    server = fresh_settings.control.with_database("postgres")
    async with connection(server) as conn:
        await conn.execute(f"CREATE ROLE {role} LOGIN BYPASSRLS")
    try:
        yield role
    finally:
        async with connection(server) as conn:
            existing = {r["datname"] for r in await conn.fetch(
                "SELECT datname FROM pg_database WHERE datname = ANY($1::text[])",
                [fresh_settings.control.database, *fresh_settings.shard_databases])}
        for database in sorted(existing):
            async with connection(fresh_settings.control.with_database(database)) as conn:
                await conn.execute(f"DROP OWNED BY {role}")
        async with connection(server) as conn:
            await conn.execute(f"DROP ROLE IF EXISTS {role}")


async def test_migrate_refuses_an_app_role_that_bypasses_rls(fresh_settings, bypass_role):
    from dataclasses import replace

    settings = replace(fresh_settings, app_role=bypass_role)
    with pytest.raises(MigrationError, match="BYPASSRLS"):
        await migrate(settings)


async def test_a_new_tenant_migration_reaches_every_tenant_on_every_shard(platform, migrations_copy):
    tenants = []
    while {t.shard_id for t in tenants} != {0, 1}:
        tenants.append(await create_tenant(platform, f"Everywhere {len(tenants)}"))
        assert len(tenants) < 40
    (migrations_copy / "tenant" / "0999_driver_nickname.sql").write_text(
        "ALTER TABLE drivers ADD COLUMN nickname VARCHAR(50);\n"
    )
    report = await migrate(platform)
    assert {t.schema_name: report.tenant_applied[t.schema_name] for t in tenants} == {
        t.schema_name: ["0999"] for t in tenants
    }
    for t in tenants:
        rows = await _fetch(
            platform.control.with_database(platform.shard_databases[t.shard_id]),
            "SELECT 1 FROM information_schema.columns "
            "WHERE table_schema = $1 AND table_name = 'drivers' AND column_name = 'nickname'",
            t.schema_name,
        )
        assert rows, f"{t.schema_name} did not get the new column"


async def test_a_tenant_migration_that_leaves_a_table_unprotected_is_refused(platform, migrations_copy):
    (migrations_copy / "tenant" / "0999_naked.sql").write_text("CREATE TABLE naked (id int);\n")
    with pytest.raises(MigrationError, match="naked"):
        await create_tenant(platform, "Careless Tenant")
    tenants = await _fetch(platform.control, "SELECT count(*) AS n FROM tenants")
    assert tenants[0]["n"] == 0


async def test_a_tenant_migration_that_lets_the_app_role_read_a_materialized_view_is_refused(
        platform, migrations_copy):
    # RLS cannot protect a materialized view: readable directly, it is readable from any
    # tenant's transaction on the shard by naming the schema.
    (migrations_copy / "tenant" / "0999_open_view.sql").write_text(
        "CREATE MATERIALIZED VIEW open_totals AS SELECT vendor_id, count(*) AS n FROM orders GROUP BY 1;\n"
        "GRANT SELECT ON open_totals TO PUBLIC;\n"
    )
    with pytest.raises(MigrationError, match="open_totals"):
        await create_tenant(platform, "Leaky Views")


async def test_analytics_partitions_exist_ahead_of_time(platform):
    tenant = await create_tenant(platform, "Analytics Ahead")
    rows = await _fetch(
        platform.control.with_database(platform.shard_databases[tenant.shard_id]),
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass($1)",
        f"{tenant.schema_name}.analytics_events",
    )
    names = {r["relname"] for r in rows}
    start = await _fetch(platform.control, "SELECT date_trunc('month', now() AT TIME ZONE 'UTC') AS m")
    month = start[0]["m"]
    expected = set()
    for offset in range(4):
        y, m = divmod(month.month - 1 + offset, 12)
        expected.add(f"analytics_events_y{month.year + y}m{m + 1:02d}")
    assert expected <= names
    assert "analytics_events_default" in names
