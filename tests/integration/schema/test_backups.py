"""Backups and restores against real shard databases: the round trips, and every refusal
leaving tenant data, control rows and the server's database list as they were."""

from __future__ import annotations

import argparse
import io
import os
import shutil
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from dispatch.cli.backups import register
from schema.backups import (
    BackupSettings,
    backup_tenant,
    dump,
    list_backups,
    prune,
    restore,
    run_due_backups,
    verify_backups,
)
from schema.backups.container import SealedWriter, decrypt_to, read_header
from schema.backups.errors import (
    BackupError,
    BackupKeyError,
    CorruptBackup,
    ForeignFile,
    RestoreRefused,
    UnknownBackup,
    VerificationFailed,
    WrongBackupKey,
)
from schema.backups.settings import BackupKey
from schema.checksums import TableSum, checksums
from schema.connect import connection
from schema.db import TenantDatabase
from schema.errors import (
    InvalidTenantId,
    InvalidTenantName,
    ShardError,
    TenantExists,
    UnknownTenant,
)
from schema.tenants import create_tenant

INSERT_USER = "INSERT INTO users (phone_number, name) VALUES ($1, $2) RETURNING id"
INSERT_VENDOR = """
INSERT INTO vendors (user_id, business_name, address, location)
VALUES ($1, $2, '{"street": "1 Main"}', ST_GeogFromText('POINT(28.04 -26.2)')) RETURNING id
"""
INSERT_EVENT = "INSERT INTO analytics_events (event_type, user_id) VALUES ('login', $1)"


@pytest.fixture(autouse=True)
def scratch_tag(monkeypatch) -> str:
    """Scratch databases of this test carry a tag of their own, so that the check that none
    is left behind does not see those of tests running beside it."""
    tag = uuid.uuid4().hex[:6]
    monkeypatch.setattr(dump, "scratch_name", lambda: f"wkrestore_{tag}_{uuid.uuid4().hex[:8]}")
    return tag


@pytest.fixture
def bsettings(tmp_path) -> BackupSettings:
    return BackupSettings(directory=tmp_path / "backups", key=BackupKey(os.urandom(32)))


async def _tenant_with_data(settings, name="Spaza Backup", users=5):
    tenant = await create_tenant(settings, name)
    async with TenantDatabase(settings) as db:
        async with db.tenant_transaction(tenant.id) as tx:
            for i in range(users):
                user = await tx.fetchval(INSERT_USER, f"+2771{i:07d}", f"User {i}")
                await tx.execute(INSERT_EVENT, user)
            await tx.fetchval(INSERT_VENDOR, user, "Mama's Spaza")
            for _ in range(3):
                await tx.fetchval("SELECT nextval('order_number_seq')")
    return tenant


def _shard(settings, tenant):
    return settings.control.with_database(settings.shard_databases[tenant.shard_id])


async def _sums(settings, tenant, shard_id=None):
    database = settings.shard_databases[tenant.shard_id if shard_id is None else shard_id]
    async with connection(settings.control.with_database(database)) as conn:
        return await checksums(conn, tenant.schema_name)


async def _sequences(settings, tenant):
    async with connection(_shard(settings, tenant)) as conn:
        return await conn.fetch("SELECT sequencename, last_value FROM pg_sequences "
                                "WHERE schemaname = $1 ORDER BY 1", tenant.schema_name)


SECURITY_SQL = """
SELECT c.relname, c.relkind, c.relrowsecurity, c.relforcerowsecurity, c.relacl::text AS acl,
       (SELECT array_agg(p.polname || ':' || pg_get_expr(p.polqual, p.polrelid) ORDER BY p.polname)
        FROM pg_policy p WHERE p.polrelid = c.oid) AS policies
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
ORDER BY c.relname
"""


async def _security(settings, shard_id, schema_name):
    """Row-level security flags, policies and privileges of every relation, and the schema's ACL."""
    async with connection(settings.control.with_database(settings.shard_databases[shard_id])) as conn:
        relations = [(*tuple(r)[:5], [p.replace(schema_name, "<schema>") for p in r["policies"] or []])
                     for r in await conn.fetch(SECURITY_SQL, schema_name)]
        acl = await conn.fetchval("SELECT nspacl::text FROM pg_namespace WHERE nspname = $1", schema_name)
    return relations, acl


async def _control_state(settings):
    async with connection(settings.control) as conn:
        return (await conn.fetch("SELECT id, status FROM tenants ORDER BY id"),
                await conn.fetch("SELECT * FROM tenant_shard_mapping ORDER BY tenant_id"),
                await conn.fetchval("SELECT count(*) FROM restore_log"),
                await conn.fetchval("SELECT count(*) FROM backup_log"))


async def _scratch_databases(settings, tag):
    async with connection(settings.control.with_database("postgres")) as conn:
        return await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1",
                                f"wkrestore\\_{tag}\\_%")


async def _names(settings, tenant_id):
    async with TenantDatabase(settings) as db:
        async with db.tenant_transaction(tenant_id, readonly=True) as tx:
            return sorted(r["name"] for r in await tx.fetch("SELECT name FROM users")), \
                set(r["tenant_id"] for r in await tx.fetch("SELECT tenant_id FROM users"))


async def test_backup_then_replace_restores_exactly_what_was_dumped(platform, bsettings):
    tenant = await _tenant_with_data(platform)
    sequences = await _sequences(platform, tenant)
    security = await _security(platform, tenant.shard_id, tenant.schema_name)
    assert len(security[0]) > 30 and all(r[2] and r[3] for r in security[0] if r[1] in ("r", "p"))
    before = await _sums(platform, tenant)
    result = await backup_tenant(platform, bsettings, tenant.id)
    assert result.path.is_file() and result.kind == "weekly" and result.total_rows == 11
    header = _header_of(result.path)[0]
    assert header.tables == before and header.schema_name == tenant.schema_name
    assert [m["version"] for m in header.migrations][0] == "0001"
    assert b"User 0" not in result.path.read_bytes()
    [row] = [r for r in await list_backups(platform) if r["id"] == str(result.backup_id)]
    assert row["status"] == "completed" and row["size_bytes"] == result.path.stat().st_size

    async with TenantDatabase(platform) as db:
        async with db.tenant_transaction(tenant.id) as tx:
            await tx.execute("DELETE FROM analytics_events")
            await tx.execute("UPDATE users SET name = 'changed'")
            await tx.fetchval(INSERT_USER, "+27799999999", "Newcomer")
    altered = await _sums(platform, tenant)
    with pytest.raises(RestoreRefused, match="live.*--replace"):
        await restore(platform, bsettings, str(result.backup_id))
    assert await _sums(platform, tenant) == altered

    restored = await restore(platform, bsettings, str(result.backup_id), replace=True)
    assert restored.mode == "replace" and restored.pre_restore_backup_id is not None
    assert await _sums(platform, tenant) == header.tables
    assert await _sequences(platform, tenant) == sequences
    assert await _security(platform, tenant.shard_id, tenant.schema_name) == security
    names, ids = await _names(platform, tenant.id)
    assert names == [f"User {i}" for i in range(5)] and ids == {tenant.id}
    async with connection(platform.control) as conn:
        assert await conn.fetchval("SELECT status FROM tenants WHERE id = $1", tenant.id) == "active"
        log = await conn.fetchrow("SELECT * FROM restore_log WHERE restore_id = $1", restored.restore_id)
        pre = await conn.fetchrow("SELECT * FROM backup_log WHERE backup_id = $1",
                                  restored.pre_restore_backup_id)
    assert log["status"] == "completed" and log["rows_restored"] == 11
    assert pre["status"] == "completed" and pre["reason"] == "pre-restore" and pre["kind"] == "daily"
    async with connection(_shard(platform, tenant)) as conn:
        versions = await conn.fetch("SELECT version FROM public.schema_migrations WHERE scope = $1",
                                    tenant.schema_name)
        held = await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname LIKE $1",
                                   tenant.schema_name + "%")
    assert len(versions) == len(header.migrations) and held == 1
    # The pre-restore backup holds the altered data: restoring it brings the change back.
    await restore(platform, bsettings, str(restored.pre_restore_backup_id), replace=True)
    assert await _sums(platform, tenant) == altered
    assert (await verify_backups(platform, bsettings))[0].ok


async def test_as_new_tenant_gives_a_second_usable_tenant(platform, bsettings, scratch_tag):
    tenant = await _tenant_with_data(platform)
    original = await _sums(platform, tenant)
    security = await _security(platform, tenant.shard_id, tenant.schema_name)
    result = await backup_tenant(platform, bsettings, tenant.id)
    copy = await restore(platform, bsettings, str(result.path), as_new_tenant="Spaza Copy")
    assert await _security(platform, copy.shard_id, copy.schema_name) == security
    assert copy.tenant_id != tenant.id and copy.schema_name != tenant.schema_name
    names, ids = await _names(platform, copy.tenant_id)
    assert names == [f"User {i}" for i in range(5)] and ids == {copy.tenant_id}
    async with TenantDatabase(platform) as db:
        async with db.tenant_transaction(copy.tenant_id) as tx:
            assert await tx.fetchval("SELECT schema_tenant_id()") == copy.tenant_id
            assert await tx.fetchval("SELECT count(*) FROM analytics_events") == 5
            await tx.fetchval(INSERT_USER, "+27788888888", "Only in the copy")
            assert await tx.fetchval("SELECT count(*) FROM vendors") == 1
    assert await _sums(platform, tenant) == original
    assert (await _names(platform, tenant.id))[1] == {tenant.id}
    async with connection(platform.control.with_database(platform.shard_databases[copy.shard_id])) as conn:
        configs = await conn.fetch("SELECT proconfig FROM pg_proc p JOIN pg_namespace n "
                                   "ON n.oid = p.pronamespace WHERE n.nspname = $1 "
                                   "AND proconfig IS NOT NULL", copy.schema_name)
    assert len(configs) == 2
    assert all(c["proconfig"] == [f"search_path={copy.schema_name}, public, pg_temp"] for c in configs)
    async with connection(platform.control) as conn:
        row = await conn.fetchrow("SELECT t.status, t.slug, m.schema_name FROM tenants t "
                                  "JOIN tenant_shard_mapping m ON m.tenant_id = t.id WHERE t.id = $1",
                                  copy.tenant_id)
    assert dict(row) == {"status": "active", "slug": "spaza-copy", "schema_name": copy.schema_name}
    assert await _scratch_databases(platform, scratch_tag) == []
    with pytest.raises(TenantExists):
        await restore(platform, bsettings, str(result.backup_id), as_new_tenant="Spaza Copy")
    with pytest.raises(InvalidTenantName):
        await restore(platform, bsettings, str(result.backup_id), as_new_tenant="x'; DROP TABLE t;--")


async def test_to_shard_moves_the_tenant(platform, bsettings):
    tenant = await _tenant_with_data(platform)
    before = await _sums(platform, tenant)
    result = await backup_tenant(platform, bsettings, tenant.id)
    other = 1 - tenant.shard_id
    moved = await restore(platform, bsettings, str(result.backup_id), to_shard=other, replace=True)
    assert moved.mode == "to-shard" and moved.shard_id == other
    assert await _sums(platform, tenant, shard_id=other) == before
    assert await _sums(platform, tenant) == {}   # gone from the old shard
    assert (await _names(platform, tenant.id))[0] == [f"User {i}" for i in range(5)]


async def test_verify_reports_a_header_that_does_not_match(platform, bsettings, tmp_path, scratch_tag):
    tenant = await _tenant_with_data(platform)
    result = await backup_tenant(platform, bsettings, tenant.id)
    forged = _forge(result.path, bsettings.key, tmp_path / "forged.wkb",
                    users=TableSum("users", 99, "1"))
    [bad] = await verify_backups(platform, bsettings, str(forged))
    assert not bad.ok and any("users: 5 rows, expected 99" in p for p in bad.problems)
    [good] = await verify_backups(platform, bsettings, str(result.backup_id))
    assert good.ok and good.rows == 11
    assert await _scratch_databases(platform, scratch_tag) == []


def _flip(path: Path, offset: int, target: Path) -> Path:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    target.write_bytes(bytes(data))
    return target


async def test_hostile_input_changes_nothing(platform, bsettings, tmp_path, scratch_tag):
    tenant = await _tenant_with_data(platform)
    result = await backup_tenant(platform, bsettings, tenant.id)
    async with TenantDatabase(platform) as db:
        async with db.tenant_transaction(tenant.id) as tx:
            await tx.execute("UPDATE users SET name = 'after the backup'")
    data = await _sums(platform, tenant)
    state = await _control_state(platform)
    src = result.path
    end = len(_header_of(src)[1]) + 32
    cases = [
        (str(uuid.uuid4()), UnknownBackup, "no backup"),
        ("not-a-uuid-or-file", UnknownBackup, "neither a backup id"),
        ("", UnknownBackup, "not a backup id"),
        (str(_empty(tmp_path / "empty.wkb")), ForeignFile, "empty file"),
        (str(_write(tmp_path / "foreign.wkb", b"PGDMP" + os.urandom(200))), ForeignFile, "magic"),
        (str(_write(tmp_path / "cut.wkb", src.read_bytes()[:end + 100])), CorruptBackup, None),
        (str(_write(tmp_path / "cut-header.wkb", src.read_bytes()[:40])), CorruptBackup, None),
        (str(_flip(src, 30, tmp_path / "header.wkb")), CorruptBackup, None),
        (str(_flip(src, end + 50, tmp_path / "chunk.wkb")), CorruptBackup, None),
    ]
    for ref, error, match in cases:
        with pytest.raises(error, match=match):
            await restore(platform, bsettings, ref, replace=True)
    # Without a sha256 in the log the file's own authentication catches the same damage.
    async with connection(platform.control) as conn:
        await conn.execute("UPDATE backup_log SET checksum = NULL WHERE backup_id = $1", result.backup_id)
    for offset, match in ((end - 40, "header was altered"), (end + 50, "chunk 0")):
        shutil.copy(src, tmp_path / "orig")
        _flip(tmp_path / "orig", offset, src)
        with pytest.raises(CorruptBackup, match=match):
            await restore(platform, bsettings, str(result.backup_id), replace=True)
        shutil.copy(tmp_path / "orig", src)
    wrong = replace(bsettings, key=BackupKey(os.urandom(32)))
    with pytest.raises(WrongBackupKey, match=f"encrypted with key {bsettings.key.key_id}"):
        await restore(platform, wrong, str(result.backup_id), replace=True)
    with pytest.raises(BackupKeyError):
        await restore(platform, replace(bsettings, key=None), str(result.backup_id), replace=True)
    with pytest.raises(ShardError, match="no shard 7"):
        await restore(platform, bsettings, str(result.backup_id), to_shard=7, replace=True)
    async with connection(platform.control) as conn:
        await conn.execute("UPDATE shard_map SET status = 'retired' WHERE shard_id = $1",
                           1 - tenant.shard_id)
    with pytest.raises(ShardError, match="retired"):
        await restore(platform, bsettings, str(result.backup_id), to_shard=1 - tenant.shard_id,
                      replace=True)
    async with connection(platform.control) as conn:
        await conn.execute("UPDATE shard_map SET status = 'active' WHERE shard_id = $1",
                           1 - tenant.shard_id)
    with pytest.raises(UnknownTenant):
        await backup_tenant(platform, bsettings, uuid.uuid4())
    with pytest.raises(InvalidTenantId):
        await backup_tenant(platform, bsettings, "tenant; DROP SCHEMA public")
    assert await _sums(platform, tenant) == data
    assert await _control_state(platform) == state
    assert await _scratch_databases(platform, scratch_tag) == []


async def test_a_failure_during_the_swap_puts_everything_back(platform, bsettings, monkeypatch,
                                                             scratch_tag):
    from schema.backups import restores as restore_module

    tenant = await _tenant_with_data(platform, users=3)
    result = await backup_tenant(platform, bsettings, tenant.id)
    async with TenantDatabase(platform) as db:
        async with db.tenant_transaction(tenant.id) as tx:
            await tx.execute("UPDATE users SET name = 'live'")
    live = await _sums(platform, tenant)
    tenants_before = (await _control_state(platform))[:2]

    async def refuse(conn, schema_name, app_role):
        raise VerificationFailed(f"injected failure on {schema_name}")

    monkeypatch.setattr(restore_module, "check_app_access", refuse)
    with pytest.raises(VerificationFailed, match="injected"):
        await restore(platform, bsettings, str(result.backup_id), replace=True)
    assert await _sums(platform, tenant) == live
    assert (await _names(platform, tenant.id))[0] == ["live"] * 3
    with pytest.raises(VerificationFailed, match="injected"):
        await restore(platform, bsettings, str(result.backup_id), as_new_tenant="Never Made")
    assert (await _control_state(platform))[:2] == tenants_before
    async with connection(platform.control) as conn:
        failed = await conn.fetch("SELECT mode, error_message FROM restore_log WHERE status = 'failed' "
                                  "ORDER BY started_at")
    assert [r["mode"] for r in failed] == ["replace", "as-new-tenant"]
    assert all("injected" in r["error_message"] for r in failed)
    for database in platform.shard_databases:
        async with connection(platform.control.with_database(database)) as conn:
            schemas = {r[0] for r in await conn.fetch(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tenant\\_%'")}
            scopes = {r[0] for r in await conn.fetch(
                "SELECT DISTINCT scope FROM public.schema_migrations WHERE scope LIKE 'tenant\\_%'")}
        assert schemas == scopes == ({tenant.schema_name} if database == _shard(platform, tenant).database
                                     else set())
    assert await _scratch_databases(platform, scratch_tag) == []


async def test_restoring_a_backup_of_an_unknown_tenant_is_refused(platform, bsettings):
    tenant = await _tenant_with_data(platform, users=1)
    result = await backup_tenant(platform, bsettings, tenant.id)
    async with connection(platform.control) as conn:
        await conn.execute("DELETE FROM backup_log WHERE tenant_id = $1", tenant.id)
        await conn.execute("DELETE FROM tenants WHERE id = $1", tenant.id)
    with pytest.raises(UnknownTenant):
        await restore(platform, bsettings, str(result.path))
    copy = await restore(platform, bsettings, str(result.path), as_new_tenant="Rescued")
    assert (await _names(platform, copy.tenant_id))[0] == ["User 0"]


async def test_schedule_backs_up_due_tenants_once_and_prunes(platform, bsettings):
    tenant = await _tenant_with_data(platform, users=1)
    assert await run_due_backups(platform, bsettings) == []   # scheduling off
    scheduled = replace(bsettings, schedule=True, interval_s=3600)
    first = await run_due_backups(platform, scheduled)
    assert [r.tenant_id for r in first] == [tenant.id]
    assert await run_due_backups(platform, scheduled) == []   # not due yet
    async with connection(platform.control) as conn:
        await conn.execute("UPDATE backup_log SET started_at = started_at - interval '10 days'")
    [second] = await run_due_backups(platform, scheduled)
    assert second.kind == "weekly"   # ten days later: a new ISO week
    async with connection(platform.control) as conn:
        await conn.execute("UPDATE backup_log SET started_at = started_at - interval '40 days' "
                           "WHERE backup_id = $1", first[0].backup_id)
    pruned = await prune(platform, scheduled)
    assert pruned.expired == [str(first[0].backup_id)] and not first[0].path.exists()
    assert second.path.exists()
    rows = {r["id"]: r["status"] for r in await list_backups(platform)}
    assert rows[str(first[0].backup_id)] == "expired"
    with pytest.raises(UnknownBackup, match="expired"):
        await restore(platform, bsettings, str(first[0].backup_id))


async def test_cli_backs_up_lists_verifies_restores_and_refuses(platform, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WAKALA_CONTROL_DSN", platform.control.url())
    monkeypatch.setenv("WAKALA_SHARD_DATABASES", ",".join(platform.shard_databases))
    monkeypatch.setenv("WAKALA_BACKUP_DIR", str(tmp_path / "b"))
    monkeypatch.setenv("WAKALA_BACKUP_KEY", os.urandom(32).hex())
    monkeypatch.delenv("WAKALA_BACKUP_KEY_FILE", raising=False)
    parser = argparse.ArgumentParser(prog="wakala")
    register(parser.add_subparsers(dest="command", required=True))

    async def run(*argv: str) -> int:
        args = parser.parse_args(argv)
        return await args.handler(args)

    tenant = await _tenant_with_data(platform, users=2)
    assert await run("backup", str(tenant.id)) == 0
    backup_id = capsys.readouterr().out.split()[1]
    assert str(uuid.UUID(backup_id)) == backup_id
    assert await run("backup", "list") == 0 and backup_id in capsys.readouterr().out
    assert await run("backup", "verify") == 0 and " ok " in capsys.readouterr().out
    with pytest.raises(RestoreRefused):
        await run("restore", backup_id)
    assert await run("restore", backup_id, "--replace") == 0
    assert "backed up first as" in capsys.readouterr().out
    assert await run("backup", "--all") == 0
    assert await run("backup", "prune") == 0 and "expired 0" in capsys.readouterr().out
    for argv, error in ((("backup",), BackupError), (("backup", "--all", str(tenant.id)), BackupError),
                        (("backup", "list", "extra"), BackupError),
                        (("backup", "list", "--limit", "0"), BackupError),
                        (("restore", backup_id, "--to-shard", "-1"), ShardError),
                        (("restore", backup_id, "--to-shard", str(2**40)), ShardError),
                        (("backup", "nope"), InvalidTenantId),
                        (("backup", "verify", "nope"), UnknownBackup),
                        (("restore", backup_id, "--key-file", str(tmp_path / "none")), BackupKeyError)):
        with pytest.raises(error):
            await run(*argv)
    (tmp_path / "a-file").write_text("not a directory")
    monkeypatch.setenv("WAKALA_BACKUP_DIR", str(tmp_path / "a-file" / "backups"))
    with pytest.raises(BackupError, match="cannot write backups"):
        await run("backup", str(tenant.id))
    monkeypatch.setenv("WAKALA_BACKUP_KEY", "c2hvcnQ=")
    with pytest.raises(BackupKeyError, match="5 bytes"):
        await run("restore", backup_id)
    for argv in (["restore", backup_id, "--to-shard", "one"],
                 ["restore", backup_id, "--to-shard", "1", "--as-new-tenant", "Twin"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)


def _header_of(path: Path):
    with open(path, "rb") as fh:
        return read_header(fh)


def _forge(path: Path, key: BackupKey, target: Path, users: TableSum) -> Path:
    """The same dump under a header whose sums lie (sealed with the right key)."""
    plain = io.BytesIO()
    with open(path, "rb") as fh:
        header = decrypt_to(fh, key, plain)
    lying = replace(header, backup_id=str(uuid.uuid4()), tables={**header.tables, "users": users})
    with open(target, "wb") as out:
        writer = SealedWriter(out, key, lying)
        writer.write(plain.getvalue())
        writer.close()
    return target


def _empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
