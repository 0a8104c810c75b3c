"""Taking backups, listing and pruning them, and the maintenance loop's entry point.

A backup is consistent: one REPEATABLE READ transaction on the tenant's shard exports its
snapshot, computes the row counts and checksums and reads the schema's applied migrations
in it, and ``pg_dump --snapshot`` dumps exactly that snapshot while the transaction stays
open. The header written before the dump therefore describes the data after it. The dump
streams through the sealing writer to ``<dir>/<tenant id>/<time>-<backup id>.wkb.part``,
which is synced and renamed when complete; the sha256 of the final file goes to backup_log
with its size and location. A failure removes the partial file and logs 'failed'.

``run_due_backups`` is safe to call from several engine processes at once: it takes a
session advisory lock on the control database with ``pg_try_advisory_lock`` and returns at
once (nothing done) when another process holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from schema import migrate
from schema.backups import catalog
from schema.backups.container import BackupHeader, SealedWriter
from schema.backups.dump import dump_schema
from schema.backups.errors import BackupError
from schema.backups.retention import LoggedBackup, expired, kind_for
from schema.backups.settings import BackupSettings
from schema.checksums import checksums
from schema.connect import connection
from schema.settings import PostgresSettings
from schema.tenants import parse_tenant_id

BACKUP_LOCK_KEY = 0x77616B626B7570  # "wakbkup": scheduled backups, one process at a time
MIGRATIONS_SQL = """
SELECT version, name, checksum FROM public.schema_migrations WHERE scope = $1 ORDER BY version
"""
SCHEMA_EXISTS_SQL = "SELECT 1 FROM pg_namespace WHERE nspname = $1"
FILE_SUFFIX = ".wkb"


@dataclass(frozen=True)
class BackupResult:
    backup_id: uuid.UUID
    tenant_id: uuid.UUID
    schema_name: str
    shard_name: str
    path: Path
    size_bytes: int
    sha256: str
    kind: str
    tables: int
    total_rows: int
    dump_bytes: int
    seconds: float


class _HashingFile:
    """A file that hashes what is written to it (the sha256 without reading it back)."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.fh.write(data)


def backup_path(directory: Path, tenant_id: uuid.UUID, backup_id: uuid.UUID, at: datetime) -> Path:
    return directory / str(tenant_id) / f"{at:%Y%m%dT%H%M%SZ}-{backup_id}{FILE_SUFFIX}"


async def backup_tenant(settings: PostgresSettings, backup_settings: BackupSettings,
                        tenant: object, *, reason: str = "manual") -> BackupResult:
    """Back up one tenant's schema (see the module docstring); return what was written."""
    key = backup_settings.require_key()
    tenant_id = parse_tenant_id(tenant)
    started = time.perf_counter()
    async with connection(settings.control) as control:
        place = await catalog.placement(control, tenant_id)
        if place["shard_status"] == "retired":
            raise BackupError(f"tenant {tenant_id} is mapped to retired shard {place['shard_name']}")
        backup_id = uuid.uuid4()
        at = datetime.now(UTC)
        path = backup_path(backup_settings.directory, tenant_id, backup_id, at)
        partial = path.with_name(path.name + ".part")
        await control.execute(catalog.BACKUP_STARTED_SQL, backup_id, tenant_id, at, reason,
                              place["schema_name"], place["shard_id"], key.key_id)
        try:
            header, size, digest, dumped = await _dump(settings, place, backup_id, at, key, partial)
            os.replace(partial, path)
            earlier = [r["started_at"] for r in
                       await control.fetch(catalog.EARLIER_COMPLETED_SQL, tenant_id, backup_id)]
            kind = kind_for(at, earlier)
            await control.execute(catalog.BACKUP_COMPLETED_SQL, backup_id, str(path.resolve()),
                                  size, digest, catalog.counts_json(header.tables),
                                  header.total_rows, kind)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                partial.unlink()
            with contextlib.suppress(OSError):
                path.unlink()
            await asyncio.shield(_log_failure(control, backup_id, exc))
            raise
    return BackupResult(backup_id, tenant_id, place["schema_name"], place["shard_name"], path,
                        size, digest, kind, len(header.tables), header.total_rows, dumped,
                        time.perf_counter() - started)


async def _log_failure(control, backup_id: uuid.UUID, exc: BaseException) -> None:
    with contextlib.suppress(Exception):
        await control.execute(catalog.BACKUP_FAILED_SQL, backup_id,
                              f"{type(exc).__name__}: {exc}"[:2000])


async def _dump(settings: PostgresSettings, place, backup_id: uuid.UUID, at: datetime, key,
                partial: Path) -> tuple[BackupHeader, int, str, int]:
    schema_name = place["schema_name"]
    dsn = migrate.shard_dsn(settings, place)
    try:
        partial.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    except OSError as exc:
        raise BackupError(f"cannot write backups to {partial.parent} ({exc.strerror or exc}); "
                          "set WAKALA_BACKUP_DIR to a writable directory") from None
    async with connection(dsn) as shard:
        if not await shard.fetchval(SCHEMA_EXISTS_SQL, schema_name):
            raise BackupError(f"schema {schema_name} of tenant {place['tenant_id']} does not exist "
                              f"on {place['shard_name']}; nothing to back up")
        async with shard.transaction(isolation="repeatable_read", readonly=True):
            snapshot = await shard.fetchval("SELECT pg_export_snapshot()")
            sums = await checksums(shard, schema_name)
            migrations = [dict(r) for r in await shard.fetch(MIGRATIONS_SQL, schema_name)]
            header = BackupHeader(
                backup_id=str(backup_id), tenant_id=str(place["tenant_id"]),
                schema_name=schema_name, shard_id=place["shard_id"],
                shard_name=place["shard_name"], created_at=at.isoformat(), key_id=key.key_id,
                tables=sums, migrations=migrations,
                server_version=await shard.fetchval("SHOW server_version"),
            )
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                out = _HashingFile(fh)
                writer = SealedWriter(out, key, header)  # type: ignore[arg-type]
                dumped = await dump_schema(dsn, schema_name, writer.write, snapshot=snapshot)
                writer.close()
                fh.flush()
                os.fsync(fh.fileno())
    return header, out.size, out.digest.hexdigest(), dumped


async def backup_all(settings: PostgresSettings, backup_settings: BackupSettings, *,
                     reason: str = "manual",
                     tenants: list[uuid.UUID] | None = None) -> list[BackupResult | BaseException]:
    """Back up every active tenant (or ``tenants``), one at a time; a failure is returned in
    that tenant's place and the others go on."""
    backup_settings.require_key()
    if tenants is None:
        async with connection(settings.control) as control:
            tenants = [r["id"] for r in await control.fetch(catalog.ACTIVE_TENANTS_SQL)]
    results: list[BackupResult | BaseException] = []
    for tenant_id in tenants:
        try:
            results.append(await backup_tenant(settings, backup_settings, tenant_id, reason=reason))
        except Exception as exc:  # noqa: BLE001 - reported per tenant, the rest go on
            results.append(exc)
    return results


async def list_backups(settings: PostgresSettings, *, limit: int = 200) -> list:
    async with connection(settings.control) as control:
        return list(await control.fetch(catalog.LIST_SQL, limit))


@dataclass(frozen=True)
class PruneResult:
    expired: list[str]
    missing_files: list[str]


async def prune(settings: PostgresSettings, backup_settings: BackupSettings, *,
                now: datetime | None = None) -> PruneResult:
    """Delete the files of backups past retention and mark them 'expired' (see retention)."""
    now = now or datetime.now(UTC)
    async with connection(settings.control) as control:
        rows = await control.fetch(catalog.COMPLETED_SQL)
        by_id = {r["id"]: r for r in rows}
        doomed = expired(
            [LoggedBackup(r["id"], r["tenant_id"], r["started_at"], r["kind"] or "daily") for r in rows],
            now, daily_days=backup_settings.daily_keep_days,
            weekly_days=backup_settings.weekly_keep_days)
        gone, missing = [], []
        for b in doomed:
            location = by_id[b.backup_id]["location"]
            if location:
                if not await asyncio.to_thread(_unlink, Path(location)):
                    missing.append(b.backup_id)
            await control.execute(catalog.EXPIRE_SQL, uuid.UUID(b.backup_id))
            gone.append(b.backup_id)
    return PruneResult(gone, missing)


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


async def run_due_backups(settings: PostgresSettings, backup_settings: BackupSettings, *,
                          now: datetime | None = None) -> list[BackupResult | BaseException]:
    """For the engine's maintenance loop: back up every active tenant whose last completed
    backup is older than ``interval_s`` (or who has none), then prune. Returns the results
    (a failure in its tenant's place); empty when scheduling is off or another process is
    doing it."""
    if not backup_settings.scheduled:
        return []
    now = now or datetime.now(UTC)
    async with connection(settings.control) as control:
        if not await control.fetchval("SELECT pg_try_advisory_lock($1)", BACKUP_LOCK_KEY):
            return []
        try:
            latest = {r["tenant_id"]: r["started_at"]
                      for r in await control.fetch(catalog.LATEST_COMPLETED_SQL)}
            active = [r["id"] for r in await control.fetch(catalog.ACTIVE_TENANTS_SQL)]
            due_before = now - timedelta(seconds=backup_settings.interval_s)
            due = [t for t in active if t not in latest or latest[t] <= due_before]
            results = await backup_all(settings, backup_settings, reason="scheduled", tenants=due)
            await prune(settings, backup_settings, now=now)
        finally:
            await control.execute("SELECT pg_advisory_unlock($1)", BACKUP_LOCK_KEY)
    return results
