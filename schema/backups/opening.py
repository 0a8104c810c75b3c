"""Finding a backup (by id or path) and opening it: sha256 against the log, then decrypt and
authenticate ALL of it to a private temporary file, before anything else happens.

Everything that can be wrong with a file (foreign, empty, truncated, extended, altered,
wrong key, a plaintext pg_restore cannot read, migrations this build does not know) is
found here, so a restore that gets past ``opened`` starts from a dump known to be the one
that was written. The plaintext lives in a 0700 temporary directory removed on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from schema import migrate
from schema.backups import catalog
from schema.backups.container import BackupHeader, decrypt_to, read_header, sha256_of
from schema.backups.dump import archive_entries
from schema.backups.errors import BackupError, CorruptBackup, RestoreRefused, UnknownBackup
from schema.backups.settings import BackupKey, BackupSettings
from schema.connect import connection
from schema.settings import PostgresSettings


@dataclass(frozen=True)
class OpenedBackup:
    header: BackupHeader
    source: Path           # the encrypted file
    plaintext: Path        # the authenticated dump (pg_dump custom format)
    workdir: Path          # private temporary directory, removed on exit
    logged: catalog.LoggedFile | None

    @property
    def backup_id(self) -> uuid.UUID:
        return uuid.UUID(self.header.backup_id)

    @property
    def tenant_id(self) -> uuid.UUID:
        return uuid.UUID(self.header.tenant_id)


def _as_uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text.strip())
    except ValueError:
        return None


async def resolve(settings: PostgresSettings, ref: str) -> tuple[Path, catalog.LoggedFile | None]:
    """A backup reference: a backup id from backup_log, or the path of a backup file."""
    if not isinstance(ref, str) or not ref.strip() or "\0" in ref:
        raise UnknownBackup(f"not a backup id or file: {ref!r}")
    backup_id = _as_uuid(ref)
    async with connection(settings.control) as control:
        if backup_id is not None:
            found = await catalog.logged_or_fail(control, backup_id)
            assert found.location is not None
            if not await asyncio.to_thread(found.location.is_file):
                raise UnknownBackup(f"the file of backup {backup_id} is missing: {found.location}")
            return found.location, found
        path = Path(ref)
        header = await asyncio.to_thread(_peek_header, path, ref)
        header_id = _as_uuid(header.backup_id)
        found = await catalog.logged(control, header_id) if header_id else None
        return path, found


def _peek_header(path: Path, ref: str) -> BackupHeader:
    """The (unauthenticated) header of a file named on the command line: its backup id."""
    if not path.is_file():
        shown = ref if len(ref) <= 80 else ref[:80] + "…"
        raise UnknownBackup(f"{shown!r} is neither a backup id (a UUID) nor an existing backup file")
    try:
        with open(path, "rb") as fh:
            return read_header(fh)[0]
    except PermissionError:
        raise UnknownBackup(f"{path} cannot be read (permission denied)") from None


def _decrypt(path: Path, key: BackupKey, plaintext: Path) -> BackupHeader:
    fd = os.open(plaintext, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(path, "rb") as src, os.fdopen(fd, "wb") as out:
        return decrypt_to(src, key, out)


def check_migrations(header: BackupHeader) -> None:
    """Refuse a backup whose schema was built by migrations this build does not have (or has
    in another version): the restored schema could not be migrated or used."""
    files = {m.version: m for m in migrate.load_migrations("tenant")}
    for m in header.migrations:
        mine = files.get(m["version"])
        if mine is None:
            raise RestoreRefused(f"the backup's schema has tenant migration {m['version']}_{m['name']}, "
                                 "which this build does not have; restore with the build that took it")
        if mine.checksum != m["checksum"]:
            raise RestoreRefused(f"tenant migration {m['version']}_{m['name']} differs from the one the "
                                 "backup's schema was built with; restore with the build that took it")


@contextlib.asynccontextmanager
async def opened(settings: PostgresSettings, backup_settings: BackupSettings,
                 ref: str) -> AsyncIterator[OpenedBackup]:
    key = backup_settings.require_key()
    path, found = await resolve(settings, ref)
    if found is not None and found.sha256:
        actual = await asyncio.to_thread(sha256_of, path)
        if actual != found.sha256:
            raise CorruptBackup(f"{path}: sha256 {actual[:16]}… differs from the {found.sha256[:16]}… "
                                f"logged for backup {found.backup_id}; the file changed after it was "
                                "written. Nothing was changed")
    workdir = Path(tempfile.mkdtemp(prefix="wakala-restore-"))
    try:
        plaintext = workdir / "dump"
        header = await asyncio.to_thread(_decrypt, path, key, plaintext)
        if found is not None and str(found.backup_id) != header.backup_id:
            raise CorruptBackup(f"{path} holds backup {header.backup_id}, not {found.backup_id} "
                                "as backup_log says")
        if not migrate.TENANT_SCHEMA.match(header.schema_name) or _as_uuid(header.tenant_id) is None:
            raise CorruptBackup("the backup header names no valid tenant schema or tenant id")
        try:
            entries = await archive_entries(plaintext)
        except BackupError as exc:
            raise CorruptBackup(f"the decrypted backup is not a dump pg_restore can read: {exc}") from None
        if not entries:
            raise CorruptBackup("the decrypted backup holds no pg_dump archive entries")
        yield OpenedBackup(header, path, plaintext, workdir, found)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
