"""Restoring a backup: onto the tenant's own shard, onto another shard, or as a new tenant.

Order of work, so that a refusal changes nothing:

1. ``opened`` finds the file, checks its sha256 against backup_log, decrypts and
   authenticates all of it to a temporary file, checks pg_restore can read it and that this
   build has the migrations its schema was built with.
2. The control plane is asked where the tenant lives; an unknown tenant, an unknown or
   retired target shard, a live schema without ``--replace`` are refused here.
3. Only then: ``--replace`` backs up the live schema first; the tenant is suspended; the
   live schema is renamed aside (``<schema>_held_<hex>``), the dump restored in one
   transaction, its counts and checksums compared with the header, its migrations recorded
   and brought up to date (which also checks RLS on every table), and the held schema is
   dropped. Any failure drops what was restored and renames the held schema back.
4. ``--to-shard`` restores on the target shard, then moves ``tenant_shard_mapping`` and drops
   the old schema (if ``--replace``) on the old shard.

``--as-new-tenant`` restores into a scratch database, checks the checksums there, rewrites
the tenant there (``rewrite.rewrite_tenant``), dumps the rewritten schema and restores that
onto the new tenant's shard, where its checksums must equal the scratch copy's. The tenant
row is created (status 'provisioning') only for that last step, removed if it fails.

The migration lock (the one ``wakala migrate`` and tenant creation take) is held while a
shard's schema is swapped, so a migration run never sees a half-restored tenant.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from schema import migrate
from schema.backups import catalog
from schema.backups.dump import dump_schema_to_file, restore_archive, scratch_database
from schema.backups.errors import RestoreRefused
from schema.backups.opening import OpenedBackup, check_migrations, opened
from schema.backups.rewrite import (
    check_app_access,
    drop_schema,
    put_back_migrations,
    record_migrations,
    rename_schema,
    rewrite_tenant,
    saved_migrations,
    schema_exists,
    verified_sums,
)
from schema.backups.service import backup_tenant
from schema.backups.settings import BackupSettings
from schema.checksums import checksums
from schema.connect import connection
from schema.errors import ShardError, TenantExists
from schema.moves.fence import NOTIFY_CHANNEL
from schema.placement import place_tenant
from schema.settings import PostgresSettings
from schema.shards import active_candidates
from schema.tenants import free_tenant_id, slugify, validate_tenant_name

UNFINISHED_MOVE_SQL = """
SELECT status, target_shard FROM tenant_migrations
WHERE tenant_id = $1 AND status NOT IN ('completed', 'cleaned', 'failed')
"""
# Both tell the engines (NOTIFY on the placement channel): they forget the tenant's cached
# placement at once instead of routing to a suspended tenant or a dropped schema for a TTL.
SET_STATUS_SQL = f"""
WITH changed AS (UPDATE tenants SET status = $2, updated_at = now() WHERE id = $1 RETURNING id)
SELECT pg_notify('{NOTIFY_CHANNEL}', id::text) FROM changed
"""  # noqa: S608 - a constant channel name
MOVE_SQL = f"""
WITH moved AS (UPDATE tenant_shard_mapping SET shard_id = $2 WHERE tenant_id = $1 RETURNING tenant_id)
SELECT pg_notify('{NOTIFY_CHANNEL}', tenant_id::text) FROM moved
"""  # noqa: S608 - a constant channel name


@dataclass(frozen=True)
class RestoreResult:
    restore_id: uuid.UUID
    backup_id: uuid.UUID
    tenant_id: uuid.UUID
    schema_name: str
    shard_id: int
    shard_name: str
    mode: str
    rows: int
    tables: int
    seconds: float
    pre_restore_backup_id: uuid.UUID | None = None
    migrations_applied: tuple[str, ...] = ()


async def restore(settings: PostgresSettings, backup_settings: BackupSettings, ref: str, *,
                  as_new_tenant: str | None = None, to_shard: int | None = None,
                  replace: bool = False) -> RestoreResult:
    if as_new_tenant is not None and (to_shard is not None or replace):
        raise RestoreRefused("--as-new-tenant creates a tenant on a shard of its own choosing; "
                             "it cannot be combined with --to-shard or --replace")
    if to_shard is not None and not 0 <= to_shard < 2**31:
        raise ShardError(f"a shard id is a whole number from 0, got {to_shard}; see `wakala shard list`")
    name = validate_tenant_name(as_new_tenant) if as_new_tenant is not None else None
    async with opened(settings, backup_settings, ref) as backup:
        check_migrations(backup.header)
        if name is not None:
            return await _as_new_tenant(settings, backup, name)
        return await _onto_tenant(settings, backup_settings, backup, to_shard, replace)


async def _onto_tenant(settings: PostgresSettings, backup_settings: BackupSettings,
                       backup: OpenedBackup, to_shard: int | None, replace: bool) -> RestoreResult:
    started = time.perf_counter()
    header, tenant_id = backup.header, backup.tenant_id
    async with connection(settings.control) as control:
        place = await catalog.placement(control, tenant_id)
        schema_name = place["schema_name"]
        if schema_name != header.schema_name:
            raise RestoreRefused(f"the backup holds schema {header.schema_name} but tenant {tenant_id} "
                                 f"is mapped to {schema_name}; restore it --as-new-tenant instead")
        unfinished = await control.fetchrow(UNFINISHED_MOVE_SQL, tenant_id)
        if unfinished is not None:
            raise RestoreRefused(f"tenant {tenant_id} is being moved to shard {unfinished['target_shard']} "
                                 f"(status {unfinished['status']}); finish the move or abort it "
                                 "(`wakala tenant move --abort`) before restoring")
        home_id = place["shard_id"]
        target = await catalog.shard(control, home_id if to_shard is None else to_shard,
                                     for_writing=to_shard is not None and to_shard != home_id)
        moving = target["shard_id"] != home_id
        home_dsn, target_dsn = migrate.shard_dsn(settings, place), migrate.shard_dsn(settings, target)
        live = False
        if place["shard_status"] != "retired":
            async with connection(home_dsn) as home:
                live = await schema_exists(home, schema_name)
        if live and not replace:
            raise RestoreRefused(f"tenant {tenant_id} is live: {schema_name} exists on "
                                 f"{place['shard_name']}; pass --replace to replace it (a backup of "
                                 "it is taken first), or --as-new-tenant NAME. Nothing was changed")
        if moving:
            async with connection(target_dsn) as tconn:
                if await schema_exists(tconn, schema_name):
                    raise RestoreRefused(f"{schema_name} already exists on shard {target['shard_id']} "
                                         f"({target['shard_name']}) although the tenant is mapped to "
                                         f"{place['shard_name']}; remove it first. Nothing was changed")
        mode = "to-shard" if moving else ("replace" if live else "in-place")
        restore_id = uuid.uuid4()
        await control.execute(catalog.RESTORE_STARTED_SQL, restore_id, backup.backup_id, None, mode,
                              tenant_id, target["shard_id"], str(backup.source))
        pre_id, applied = None, []
        try:
            # Suspended first, so the backup of the live schema holds its last writes.
            await control.execute(SET_STATUS_SQL, tenant_id, "suspended")
            if live:
                pre = await backup_tenant(settings, backup_settings, tenant_id, reason="pre-restore")
                pre_id = pre.backup_id
            await migrate.lock(control)
            try:
                applied = await _swap_in(settings, backup, target_dsn, tenant_id,
                                         hold_live=live and not moving)
                if moving:
                    await control.execute(MOVE_SQL, tenant_id, target["shard_id"])
                    if live:
                        async with connection(home_dsn) as home:
                            await drop_schema(home, schema_name)
                            await home.execute("DELETE FROM public.schema_migrations WHERE scope = $1",
                                               schema_name)
            finally:
                await migrate.unlock(control)
            await control.execute(SET_STATUS_SQL, tenant_id, "active")
        except BaseException as exc:
            if place["status"] != "suspended":
                await control.execute(SET_STATUS_SQL, tenant_id, place["status"])
            await control.execute(catalog.RESTORE_FINISHED_SQL, restore_id, "failed",
                                  f"{type(exc).__name__}: {exc}"[:2000], tenant_id, pre_id, None)
            raise
        await control.execute(catalog.RESTORE_FINISHED_SQL, restore_id, "completed", None, tenant_id,
                              pre_id, header.total_rows)
    return RestoreResult(restore_id, backup.backup_id, tenant_id, schema_name, target["shard_id"],
                         target["shard_name"], mode, header.total_rows, len(header.tables),
                         time.perf_counter() - started, pre_id, tuple(applied))


async def _swap_in(settings: PostgresSettings, backup: OpenedBackup, target_dsn, tenant_id: uuid.UUID,
                   *, hold_live: bool) -> list[str]:
    """Restore the dump as the tenant's schema on the target shard and prove it; on any
    failure leave the shard as it was (the live schema, if held, renamed back)."""
    schema_name = backup.header.schema_name
    held = f"{schema_name}_held_{uuid.uuid4().hex[:8]}" if hold_live else None
    async with connection(target_dsn) as conn:
        old_rows = await saved_migrations(conn, schema_name)
        if held:
            await rename_schema(conn, schema_name, held)
        try:
            await restore_archive(target_dsn, backup.plaintext)
            await verified_sums(conn, schema_name, backup.header.tables,
                                what=f"the restored {schema_name}")
            await check_app_access(conn, schema_name, settings.app_role)
            await record_migrations(conn, schema_name, backup.header)
            applied = await migrate.migrate_tenant_schema(conn, settings, schema_name, str(tenant_id))
        except BaseException:
            await drop_schema(conn, schema_name)
            if held:
                await rename_schema(conn, held, schema_name)
            await put_back_migrations(conn, schema_name, old_rows)
            raise
        if held:
            await drop_schema(conn, held)
    return applied


async def _as_new_tenant(settings: PostgresSettings, backup: OpenedBackup, name: str) -> RestoreResult:
    started = time.perf_counter()
    header = backup.header
    slug = slugify(name)
    async with connection(settings.control) as control:
        if await control.fetchval("SELECT 1 FROM tenants WHERE slug = $1", slug):
            raise TenantExists(f"a tenant with slug {slug!r} already exists; choose another name. "
                               "Nothing was changed")
        shards = await control.fetch(migrate.SHARDS_SQL)
        candidates = active_candidates(shards)
        if not candidates:
            raise RestoreRefused("no active shard to place the new tenant on")
        new_id, new_schema = await free_tenant_id(control)
        target = next(s for s in shards if s["shard_id"] == place_tenant(new_id, candidates))
        target_dsn = migrate.shard_dsn(settings, target)
        restore_id = uuid.uuid4()
        await control.execute(catalog.RESTORE_STARTED_SQL, restore_id, backup.backup_id, None,
                              "as-new-tenant", backup.tenant_id, target["shard_id"], str(backup.source))
        created, applied = False, []
        try:
            moved = backup.workdir / "rewritten.dump"
            async with scratch_database(target_dsn) as scratch:
                await restore_archive(scratch, backup.plaintext)
                async with connection(scratch) as conn:
                    await verified_sums(conn, header.schema_name, header.tables,
                                        what=f"backup {header.backup_id} restored to a scratch database")
                    await rewrite_tenant(conn, header.schema_name, new_schema, backup.tenant_id, new_id)
                    expected = await checksums(conn, new_schema)
                await dump_schema_to_file(scratch, new_schema, moved)
            await migrate.lock(control)
            try:
                async with control.transaction():
                    await control.execute("INSERT INTO tenants (id, name, slug, status) "
                                          "VALUES ($1, $2, $3, 'provisioning')", new_id, name, slug)
                    await control.execute("INSERT INTO tenant_shard_mapping (tenant_id, shard_id, "
                                          "schema_name) VALUES ($1, $2, $3)",
                                          new_id, target["shard_id"], new_schema)
                created = True
                async with connection(target_dsn) as conn:
                    try:
                        await restore_archive(target_dsn, moved)
                        await verified_sums(conn, new_schema, expected,
                                            what=f"the new tenant's {new_schema}")
                        await check_app_access(conn, new_schema, settings.app_role)
                        await record_migrations(conn, new_schema, header)
                        applied = await migrate.migrate_tenant_schema(conn, settings, new_schema,
                                                                      str(new_id))
                    except BaseException:
                        await drop_schema(conn, new_schema)
                        await conn.execute("DELETE FROM public.schema_migrations WHERE scope = $1",
                                           new_schema)
                        raise
                await control.execute(SET_STATUS_SQL, new_id, "active")
            finally:
                await migrate.unlock(control)
        except BaseException as exc:
            await control.execute(catalog.RESTORE_FINISHED_SQL, restore_id, "failed",
                                  f"{type(exc).__name__}: {exc}"[:2000], None, None, None)
            if created:
                await control.execute("DELETE FROM tenants WHERE id = $1", new_id)
            raise
        await control.execute(catalog.RESTORE_FINISHED_SQL, restore_id, "completed", None, new_id,
                              None, header.total_rows)
    return RestoreResult(restore_id, backup.backup_id, new_id, new_schema, target["shard_id"],
                         target["shard_name"], "as-new-tenant", header.total_rows,
                         len(header.tables), time.perf_counter() - started, None, tuple(applied))
