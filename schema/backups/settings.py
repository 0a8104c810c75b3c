"""Backup settings from WAKALA_BACKUP_* variables, and the backup key.

The key is 32 bytes (AES-256), given as 64 hex digits or as base64 (standard or URL-safe,
padding optional) in ``WAKALA_BACKUP_KEY``, or in a file (``WAKALA_BACKUP_KEY_FILE`` or
``--key-file``) holding that text or the 32 raw bytes. It is never written with a backup;
the backup header carries only its id, a fingerprint from which the key cannot be
recovered, so a restore with the wrong key can say which key the file needs.

Scheduled backups (the engine's maintenance loop calling ``run_due_backups``) are off unless
``WAKALA_BACKUP_SCHEDULE=1`` and a key is configured: an engine started without a key must
not fail, and must not write unencrypted files either (it writes none).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from schema.backups.errors import BackupKeyError
from schema.errors import ConfigError
from schema.settings import env_int

KEY_BYTES = 32
DEFAULT_DIR = ".wakala/backups"
DEFAULT_INTERVAL_S = 86_400
DAILY_KEEP_DAYS = 7
WEEKLY_KEEP_DAYS = 30
_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
_KEY_ID_CONTEXT = b"wakala backup key id\x00"
KEY_FILE_MAX = 4096  # a key file is a few dozen bytes; refuse to read a large file by mistake


@dataclass(frozen=True)
class BackupKey:
    """The 32-byte master key and its public id (``repr`` never shows the key)."""

    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_BYTES:
            raise BackupKeyError(f"a backup key is {KEY_BYTES} bytes, got {len(self.secret)}")

    @property
    def key_id(self) -> str:
        return key_id_of(self.secret)

    def __repr__(self) -> str:
        return f"BackupKey(id={self.key_id})"


def key_id_of(secret: bytes) -> str:
    """A fingerprint naming a key in headers and messages (16 hex digits of a hash)."""
    return hashlib.sha256(_KEY_ID_CONTEXT + secret).hexdigest()[:16]


def parse_key_text(text: str, source: str) -> BackupKey:
    """A key from its text form: 64 hex digits, or base64 of exactly 32 bytes."""
    cleaned = text.strip()
    if not cleaned:
        raise BackupKeyError(f"{source} is empty; give 32 bytes as 64 hex digits or base64 "
                             "(e.g. `openssl rand -base64 32`)")
    if _HEX.match(cleaned):
        return BackupKey(bytes.fromhex(cleaned))
    # URL-safe base64 is read as standard base64; padding is optional.
    padded = cleaned.replace("-", "+").replace("_", "/")
    padded += "=" * (-len(padded) % 4)
    try:
        raw = base64.b64decode(padded.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raw = None
    if raw is not None and len(raw) != KEY_BYTES:
        raise BackupKeyError(f"{source} decodes (base64) to {len(raw)} bytes; a backup key is "
                             f"{KEY_BYTES} bytes (64 hex digits or 44 base64 characters)")
    if raw is not None:
        return BackupKey(raw)
    raise BackupKeyError(f"{source} is neither 64 hex digits nor base64 of {KEY_BYTES} bytes "
                         f"({len(cleaned)} characters given); generate one with "
                         "`openssl rand -base64 32`")


def read_key_file(path: str | Path) -> BackupKey:
    """A key from a file: its text form, or exactly 32 raw bytes."""
    source = f"key file {str(path)!r}"
    try:
        with open(path, "rb") as fh:
            data = fh.read(KEY_FILE_MAX + 1)
    except FileNotFoundError:
        raise BackupKeyError(f"{source} does not exist") from None
    except IsADirectoryError:
        raise BackupKeyError(f"{source} is a directory, not a key file") from None
    except OSError as exc:
        raise BackupKeyError(f"{source} cannot be read ({exc.strerror or exc})") from None
    if len(data) > KEY_FILE_MAX:
        raise BackupKeyError(f"{source} is larger than {KEY_FILE_MAX} bytes; is it the right file?")
    if len(data) == KEY_BYTES:
        return BackupKey(data)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise BackupKeyError(f"{source} holds {len(data)} bytes that are not text; a key file holds "
                             f"{KEY_BYTES} raw bytes, 64 hex digits or base64") from None
    return parse_key_text(text, source)


@dataclass(frozen=True)
class BackupSettings:
    directory: Path
    key: BackupKey | None
    interval_s: int = DEFAULT_INTERVAL_S
    schedule: bool = False
    daily_keep_days: int = DAILY_KEEP_DAYS
    weekly_keep_days: int = WEEKLY_KEEP_DAYS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *,
                 key_file: str | None = None) -> BackupSettings:
        """Settings from the environment; ``key_file`` (``--key-file``) wins over both key variables.

        A malformed key raises here, even when scheduling is off: a key that would fail at
        restore time is better found when it is set."""
        env = os.environ if env is None else env
        if key_file is not None:
            key = read_key_file(key_file)
        elif env.get("WAKALA_BACKUP_KEY"):
            key = parse_key_text(env["WAKALA_BACKUP_KEY"], "WAKALA_BACKUP_KEY")
        elif env.get("WAKALA_BACKUP_KEY_FILE"):
            key = read_key_file(env["WAKALA_BACKUP_KEY_FILE"])
        else:
            key = None
        schedule_raw = (env.get("WAKALA_BACKUP_SCHEDULE") or "0").strip().lower()
        if schedule_raw not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
            raise ConfigError(f"WAKALA_BACKUP_SCHEDULE must be 1 or 0, got {schedule_raw!r}")
        directory = env.get("WAKALA_BACKUP_DIR") or DEFAULT_DIR
        if "\0" in directory:
            raise ConfigError("WAKALA_BACKUP_DIR contains a NUL byte")
        return cls(
            directory=Path(directory),
            key=key,
            interval_s=env_int(env, "WAKALA_BACKUP_INTERVAL_S", DEFAULT_INTERVAL_S, 60, 366 * 86_400),
            schedule=schedule_raw in ("1", "true", "yes", "on"),
            daily_keep_days=env_int(env, "WAKALA_BACKUP_DAILY_KEEP_DAYS", DAILY_KEEP_DAYS, 1, 3650),
            weekly_keep_days=env_int(env, "WAKALA_BACKUP_WEEKLY_KEEP_DAYS", WEEKLY_KEEP_DAYS, 1, 3650),
        )

    @property
    def scheduled(self) -> bool:
        return self.schedule and self.key is not None

    def require_key(self) -> BackupKey:
        if self.key is None:
            raise BackupKeyError("no backup key: set WAKALA_BACKUP_KEY (64 hex digits or base64 of "
                                 "32 bytes), WAKALA_BACKUP_KEY_FILE, or pass --key-file")
        return self.key
