"""Encrypted, verifiable per-tenant backups and their restores.

Rooms: ``settings`` (WAKALA_BACKUP_* and the key), ``container`` (the sealed file format,
pure), ``retention`` (which backups to keep, pure), ``dump`` (pg_dump / pg_restore and
scratch databases), ``catalog`` (backup_log / restore_log queries), ``service`` (taking,
listing, pruning, scheduling), ``opening`` (find, check and decrypt a file before use),
``rewrite`` (operations on a restored schema), ``restores`` and ``verify``.
"""

from schema.backups.restores import RestoreResult, restore
from schema.backups.service import (
    BackupResult,
    backup_all,
    backup_tenant,
    list_backups,
    prune,
    run_due_backups,
)
from schema.backups.settings import BackupKey, BackupSettings
from schema.backups.verify import VerifyResult, verify_backups

__all__ = [
    "BackupKey", "BackupResult", "BackupSettings", "RestoreResult", "VerifyResult", "backup_all",
    "backup_tenant", "list_backups", "prune", "restore", "run_due_backups", "verify_backups",
]
