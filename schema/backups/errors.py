"""Errors of backups and restores: each names the file, backup or setting and what to do.

Every refusal happens before anything is changed (a restore decrypts and authenticates the
whole file first), so the messages can say "nothing was changed" and mean it.
"""

from __future__ import annotations

from schema.errors import WakalaError


class BackupError(WakalaError):
    """A backup or restore could not be done."""


class BackupKeyError(BackupError):
    """No backup key is configured, or the one given is malformed or unreadable."""


class WrongBackupKey(BackupError):
    """The file was encrypted under another key (the key ids differ)."""


class ForeignFile(BackupError):
    """The file is not a Wakala backup (no magic), or of a format version we do not read."""


class CorruptBackup(BackupError):
    """The file fails authentication: altered, truncated, extended or damaged."""


class UnknownBackup(BackupError):
    """No backup with this id is logged, or its file is missing."""


class RestoreRefused(BackupError):
    """The restore would overwrite live data or target a shard that cannot take it."""


class VerificationFailed(BackupError):
    """Restored data does not match the counts and checksums recorded in the backup."""
