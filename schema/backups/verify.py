"""``wakala backup verify``: restore a backup into a scratch database and compare its counts
and checksums with the header, without touching any shard.

The scratch database is made on the control database's server (the owner credentials of the
control DSN reach it, and shards share that server unless shard_map says otherwise) and
dropped afterwards. The outcome is recorded on the backup's row (verified_at, verify_status).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from schema.backups import catalog
from schema.backups.dump import restore_archive, scratch_database
from schema.backups.opening import opened
from schema.backups.settings import BackupSettings
from schema.checksums import checksums, differences
from schema.connect import connection
from schema.errors import WakalaError
from schema.settings import PostgresSettings


@dataclass(frozen=True)
class VerifyResult:
    ref: str
    backup_id: str
    tenant_id: str
    tables: int
    rows: int
    ok: bool
    problems: tuple[str, ...]
    seconds: float


async def verify_one(settings: PostgresSettings, backup_settings: BackupSettings, ref: str) -> VerifyResult:
    """Verify one backup; a file that cannot be opened raises (nothing to compare)."""
    started = time.perf_counter()
    async with opened(settings, backup_settings, ref) as backup:
        header = backup.header
        async with scratch_database(settings.control) as scratch:
            await restore_archive(scratch, backup.plaintext)
            async with connection(scratch) as conn:
                actual = await checksums(conn, header.schema_name)
        problems = tuple(differences(header.tables, actual))
        if backup.logged is not None:
            async with connection(settings.control) as control:
                await control.execute(catalog.VERIFIED_SQL, backup.backup_id,
                                      "mismatch" if problems else "ok")
    return VerifyResult(ref, header.backup_id, header.tenant_id, len(header.tables),
                        header.total_rows, not problems, problems, time.perf_counter() - started)


async def verify_backups(settings: PostgresSettings, backup_settings: BackupSettings,
                         ref: str | None = None) -> list[VerifyResult]:
    """``ref`` alone (errors raise), or the latest completed backup of every tenant (a backup
    that cannot be opened is reported as a failed result and the others go on)."""
    if ref is not None:
        return [await verify_one(settings, backup_settings, ref)]
    backup_settings.require_key()
    async with connection(settings.control) as control:
        latest = [r["id"] for r in await control.fetch(catalog.LATEST_COMPLETED_SQL)]
    results = []
    for backup_id in latest:
        try:
            results.append(await verify_one(settings, backup_settings, backup_id))
        except WakalaError as exc:
            async with connection(settings.control) as control:
                await control.execute(catalog.VERIFIED_SQL, uuid.UUID(backup_id), "error")
            results.append(VerifyResult(backup_id, backup_id, "", 0, 0, False, (str(exc),), 0.0))
    return results
