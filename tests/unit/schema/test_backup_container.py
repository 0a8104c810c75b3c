"""The sealed backup file, the backup key and the retention rule: no service needed."""

from __future__ import annotations

import base64
import io
import os
import stat
from datetime import UTC, datetime, timedelta

import pytest

from schema.backups.container import (
    MAGIC,
    TAG,
    BackupHeader,
    SealedWriter,
    decrypt_to,
    iter_plaintext,
    read_header,
)
from schema.backups.errors import BackupKeyError, CorruptBackup, ForeignFile, WrongBackupKey
from schema.backups.retention import LoggedBackup, expired, kind_for
from schema.backups.settings import BackupKey, BackupSettings, parse_key_text, read_key_file
from schema.checksums import TableSum
from schema.errors import ConfigError

CHUNK = 1024
KEY = BackupKey(bytes(range(32)))
OTHER = BackupKey(bytes(range(1, 33)))


def _header(key: BackupKey = KEY, chunk: int = CHUNK) -> BackupHeader:
    return BackupHeader(
        backup_id="6f1c1c8e-0000-4000-8000-000000000001",
        tenant_id="6f1c1c8e-0000-4000-8000-000000000002",
        schema_name="tenant_6f1c1c8e0000", shard_id=0, shard_name="shard_0",
        created_at="2026-12-04T10:00:00+00:00", key_id=key.key_id,
        tables={"users": TableSum("users", 3, "123"), "orders": TableSum("orders", 0, "0")},
        migrations=[{"version": "0001", "name": "tenant_context", "checksum": "ab" * 32}],
        chunk_size=chunk)


def _seal(data: bytes, *, key: BackupKey = KEY, pieces: int = 7) -> bytes:
    out = io.BytesIO()
    writer = SealedWriter(out, key, _header(key))
    step = max(1, len(data) // pieces)
    for i in range(0, len(data), step):
        writer.write(data[i:i + step])
    writer.close()
    return out.getvalue()


def _open(blob: bytes, key: BackupKey = KEY) -> bytes:
    out = io.BytesIO()
    decrypt_to(io.BytesIO(blob), key, out)
    return out.getvalue()


def _body_offset(blob: bytes) -> int:
    _, raw = read_header(io.BytesIO(blob))
    return len(raw) + 32


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17])
def test_any_length_round_trips_and_chunks_are_full_but_the_last(size):
    data = os.urandom(size)
    blob = _seal(data)
    assert _open(blob) == data
    body = len(blob) - _body_offset(blob)
    full, last = divmod(size, CHUNK)
    if last == 0 and full:
        full, last = full - 1, CHUNK   # a full final chunk is held back and sealed as final
    assert body == full * (CHUNK + TAG) + last + TAG
    assert data[:16] not in blob[_body_offset(blob):] or size < 16


def test_header_is_readable_without_the_key_and_names_the_key():
    header, _ = read_header(io.BytesIO(_seal(b"x")))
    assert header.key_id == KEY.key_id and header.tables["users"] == TableSum("users", 3, "123")
    assert header.total_rows == 3


def test_wrong_key_names_both_keys():
    with pytest.raises(WrongBackupKey) as info:
        _open(_seal(b"data"), OTHER)
    assert KEY.key_id in str(info.value) and OTHER.key_id in str(info.value)


@pytest.mark.parametrize("blob, kind", [
    (b"", ForeignFile), (b"PGDMP\x01\x0e\x00", ForeignFile), (b"WKBACK", ForeignFile),
    (MAGIC + b"\x02" + (10).to_bytes(4, "big"), ForeignFile),
    (MAGIC + b"\x01" + (10 << 24).to_bytes(4, "big"), CorruptBackup),
    (MAGIC + b"\x01" + (5).to_bytes(4, "big") + b"{}", CorruptBackup),
    (MAGIC + b"\x01" + (2).to_bytes(4, "big") + b"{}", CorruptBackup),
    (MAGIC + b"\x01" + (4).to_bytes(4, "big") + b"\xff\xfe{}", CorruptBackup),
])
def test_foreign_empty_and_malformed_files_are_refused(blob, kind):
    with pytest.raises(kind):
        _open(blob)


def test_a_flipped_byte_anywhere_in_the_header_is_detected():
    blob = _seal(os.urandom(3 * CHUNK))
    end = _body_offset(blob)
    for offset in range(len(MAGIC) + 5, end, 7):
        broken = bytearray(blob)
        broken[offset] ^= 0x01
        with pytest.raises((CorruptBackup, WrongBackupKey, ForeignFile)):
            _open(bytes(broken))


def test_a_flipped_byte_in_a_chunk_names_the_chunk():
    blob = bytearray(_seal(os.urandom(3 * CHUNK + 5)))
    blob[_body_offset(blob) + (CHUNK + TAG) + 100] ^= 0x80
    with pytest.raises(CorruptBackup, match="chunk 1 .*fails authentication"):
        _open(bytes(blob))


def test_nothing_is_yielded_from_a_chunk_that_fails():
    blob = bytearray(_seal(os.urandom(3 * CHUNK + 5)))
    blob[_body_offset(blob) + 2 * (CHUNK + TAG) + 1] ^= 0x01
    seen = []
    with pytest.raises(CorruptBackup):
        for chunk in iter_plaintext(io.BytesIO(bytes(blob)), KEY):
            seen.append(chunk)
    assert len(seen) == 2


def test_truncation_at_a_chunk_boundary_is_called_truncation():
    blob = _seal(os.urandom(3 * CHUNK + 5))
    cut = blob[:_body_offset(blob) + 2 * (CHUNK + TAG)]
    with pytest.raises(CorruptBackup, match="truncated after chunk 1"):
        _open(cut)


@pytest.mark.parametrize("keep", [0, 10, 31, 32, 33, CHUNK // 2])
def test_truncation_elsewhere_is_refused(keep):
    blob = _seal(os.urandom(2 * CHUNK))
    with pytest.raises(CorruptBackup):
        _open(blob[:_body_offset(blob) + keep] if keep >= 32 else blob[:_body_offset(blob) - 32 + keep])


def test_data_appended_after_the_final_chunk_is_refused():
    full_final = _seal(os.urandom(2 * CHUNK))
    with pytest.raises(CorruptBackup, match="extra data after its final chunk 1"):
        _open(full_final + os.urandom(CHUNK + TAG))
    short_final = _seal(os.urandom(CHUNK + 5))
    for extra in (b"\x00", os.urandom(CHUNK + TAG)):
        with pytest.raises(CorruptBackup, match="chunk 1 .*extended"):
            _open(short_final + extra)


def test_swapped_chunks_are_refused():
    blob = _seal(os.urandom(4 * CHUNK + 5))
    start, size = _body_offset(blob), CHUNK + TAG
    first, second = blob[start:start + size], blob[start + size:start + 2 * size]
    swapped = blob[:start] + second + first + blob[start + 2 * size:]
    with pytest.raises(CorruptBackup, match="chunk 0"):
        _open(swapped)


def test_the_writer_holds_at_most_one_chunk():
    out = io.BytesIO()
    writer = SealedWriter(out, KEY, _header())
    for _ in range(50):
        writer.write(os.urandom(CHUNK // 3))
        assert len(writer.buffer) <= CHUNK
    writer.close()


def test_two_files_with_the_same_content_share_no_ciphertext():
    data = os.urandom(CHUNK)
    a, b = _seal(data), _seal(data)
    assert a[_body_offset(a):] != b[_body_offset(b):]


# --- the key -----------------------------------------------------------------------------

def test_key_text_forms():
    raw = os.urandom(32)
    std = base64.b64encode(raw).decode()
    url = base64.urlsafe_b64encode(raw).decode()
    for text in (raw.hex(), raw.hex().upper(), std, std.rstrip("="), url, f"  {std}\n"):
        assert parse_key_text(text, "WAKALA_BACKUP_KEY").secret == raw


@pytest.mark.parametrize("text, match", [
    ("", "empty"), ("   ", "empty"), ("00" * 31, "neither|bytes"), ("00" * 33, "neither|bytes"),
    (base64.b64encode(bytes(16)).decode(), "16 bytes"),
    (base64.b64encode(bytes(range(48))).decode(), "48 bytes"),
    ("not a key at all!", "neither"), ("zz" * 32, "neither|bytes"), ("é" * 44, "neither"),
])
def test_malformed_keys_are_refused_with_the_reason(text, match):
    with pytest.raises(BackupKeyError, match=match):
        parse_key_text(text, "WAKALA_BACKUP_KEY")


def test_key_repr_never_shows_the_secret():
    assert KEY.secret.hex() not in repr(KEY) and KEY.key_id in repr(KEY)
    assert KEY.key_id != OTHER.key_id and len(KEY.key_id) == 16


def test_key_files(tmp_path):
    raw = os.urandom(32)
    (tmp_path / "raw").write_bytes(raw)
    (tmp_path / "b64").write_text(base64.b64encode(raw).decode() + "\n")
    assert read_key_file(tmp_path / "raw").secret == raw
    assert read_key_file(tmp_path / "b64").secret == raw
    (tmp_path / "big").write_bytes(b"0" * 10_000)
    (tmp_path / "binary").write_bytes(os.urandom(32) + b"\xff")
    (tmp_path / "empty").write_bytes(b"")
    for name, match in (("missing", "does not exist"), ("big", "larger"), ("binary", "not text"),
                        ("empty", "empty"), ("", "directory")):
        with pytest.raises(BackupKeyError, match=match):
            read_key_file(tmp_path / name)


def test_unreadable_key_file(tmp_path, monkeypatch):
    path = tmp_path / "locked"
    path.write_text("00" * 32)
    path.chmod(0)
    if os.access(path, os.R_OK):   # root reads anything: make open fail as it would for others
        import builtins

        real_open = builtins.open

        def refusing(file, *args, **kwargs):
            if str(file) == str(path):
                raise PermissionError(13, "Permission denied")
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", refusing)
    with pytest.raises(BackupKeyError, match="cannot be read"):
        read_key_file(path)
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_settings_from_env(tmp_path):
    raw = os.urandom(32)
    (tmp_path / "k").write_text(raw.hex())
    assert BackupSettings.from_env({}).key is None
    assert not BackupSettings.from_env({"WAKALA_BACKUP_SCHEDULE": "1"}).scheduled
    s = BackupSettings.from_env({"WAKALA_BACKUP_KEY_FILE": str(tmp_path / "k"),
                                 "WAKALA_BACKUP_SCHEDULE": "1", "WAKALA_BACKUP_DIR": str(tmp_path),
                                 "WAKALA_BACKUP_INTERVAL_S": "3600"})
    assert s.key.secret == raw and s.scheduled and s.interval_s == 3600 and s.directory == tmp_path
    other = os.urandom(32)
    assert BackupSettings.from_env({"WAKALA_BACKUP_KEY": other.hex(),
                                    "WAKALA_BACKUP_KEY_FILE": str(tmp_path / "k")}).key.secret == other
    assert BackupSettings.from_env({"WAKALA_BACKUP_KEY": other.hex()},
                                   key_file=str(tmp_path / "k")).key.secret == raw
    with pytest.raises(BackupKeyError, match="no backup key"):
        BackupSettings.from_env({}).require_key()


@pytest.mark.parametrize("env, error", [
    ({"WAKALA_BACKUP_KEY": "short"}, BackupKeyError),
    ({"WAKALA_BACKUP_KEY_FILE": "/nonexistent/key"}, BackupKeyError),
    ({"WAKALA_BACKUP_INTERVAL_S": "soon"}, ConfigError),
    ({"WAKALA_BACKUP_INTERVAL_S": "0"}, ConfigError),
    ({"WAKALA_BACKUP_INTERVAL_S": "1.5e12"}, ConfigError),
    ({"WAKALA_BACKUP_SCHEDULE": "maybe"}, ConfigError),
    ({"WAKALA_BACKUP_DIR": "a\0b"}, ConfigError),
    ({"WAKALA_BACKUP_DAILY_KEEP_DAYS": "-1"}, ConfigError),
])
def test_hostile_settings_are_refused(env, error):
    with pytest.raises(error):
        BackupSettings.from_env(env)


# --- retention ---------------------------------------------------------------------------

T0 = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)   # a Monday


def _b(name: str, days: float, kind: str, tenant: str = "a") -> LoggedBackup:
    return LoggedBackup(name, tenant, T0 + timedelta(days=days), kind)


def test_first_backup_of_an_iso_week_is_weekly():
    monday, sunday = T0, T0 + timedelta(days=6, hours=21)
    next_monday = T0 + timedelta(days=7)
    assert kind_for(monday, []) == "weekly"
    assert kind_for(sunday, [monday]) == "daily"
    assert kind_for(next_monday, [monday, sunday]) == "weekly"
    assert kind_for(monday, [sunday]) == "weekly"   # only earlier backups count
    # ISO weeks, not calendar years: 2026-12-31 (Thu) and 2027-01-01 (Fri) share week 53
    thursday = datetime(2026, 12, 31, 12, tzinfo=UTC)
    assert kind_for(thursday + timedelta(days=1), [thursday]) == "daily"


def test_daily_kept_seven_days_weekly_thirty():
    backups = [_b("w1", 0, "weekly"), _b("d1", 1, "daily"), _b("d2", 2, "daily"),
               _b("w2", 7, "weekly"), _b("d9", 9, "daily"), _b("new", 40, "daily")]
    now = T0 + timedelta(days=40)
    assert [b.backup_id for b in expired(backups, now)] == ["w1", "d1", "d2", "w2", "d9"]
    now = T0 + timedelta(days=9)
    assert [b.backup_id for b in expired(backups[:5], now)] == ["d1"]
    assert expired(backups[:5], T0 + timedelta(days=8)) == []   # exactly 7 days: kept


def test_newest_backup_of_each_tenant_is_always_kept():
    backups = [_b("a-old", 0, "daily"), _b("a-last", 1, "daily"), _b("b-last", 0, "daily", "b")]
    doomed = expired(backups, T0 + timedelta(days=365))
    assert [b.backup_id for b in doomed] == ["a-old"]
    assert expired([], T0) == []
