"""The backup file: an authenticated header, then the dump in sealed chunks (no I/O of its own
beyond the file objects it is handed).

Layout::

    magic "WKBACKUP" | version (1 byte) | header length (4 bytes, big-endian)
    | header (canonical JSON, UTF-8) | HMAC-SHA256 of everything before it (32 bytes)
    | chunk 0 | chunk 1 | ... | final chunk

Each chunk is ``chunk_size`` bytes of plaintext sealed with AES-256-GCM (ciphertext + 16-byte
tag); every chunk but the last is full, the last holds 0..chunk_size bytes. The nonce is the
header's random 4-byte prefix followed by the chunk index (8 bytes), and the associated data
binds the SHA-256 of the header, the chunk index and a final-chunk flag. So a reader that
streams the file detects, chunk by chunk, with memory bounded by one chunk:

* a changed header (its HMAC, and every chunk's associated data),
* a changed, swapped or reordered chunk (tag; the index is in nonce and associated data),
* truncation (the last chunk present was not sealed as final: "truncated after chunk N"),
* bytes appended after the final chunk.

Keys: the header carries a random 16-byte salt; HKDF-SHA256 derives this file's encryption
and HMAC keys from the master key and the salt. Nonces therefore only need to be unique
within one file (a counter), however many files one master key seals; random 96-bit nonces
under one key would instead run into the birthday bound over many large backups. The header
names the master key by its id (``settings.key_id_of``), so a wrong key is reported as such
before any cryptography fails.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from schema.backups.errors import CorruptBackup, ForeignFile, WrongBackupKey
from schema.backups.settings import BackupKey
from schema.checksums import TableSum

MAGIC = b"WKBACKUP"
VERSION = 1
CHUNK_SIZE = 1 << 20
MIN_CHUNK, MAX_CHUNK = 1 << 10, 1 << 24
HEADER_MAX = 4 << 20
TAG = 16
_PREFIX = struct.Struct(">8sBI")
_HKDF_INFO = b"wakala backup v1"


@dataclass(frozen=True)
class BackupHeader:
    """What a backup says about itself; authenticated with the data."""

    backup_id: str
    tenant_id: str
    schema_name: str
    shard_id: int
    shard_name: str
    created_at: str            # ISO 8601, UTC
    key_id: str
    tables: dict[str, TableSum]
    migrations: list[dict[str, str]]   # version, name, checksum of public.schema_migrations
    server_version: str = ""
    chunk_size: int = CHUNK_SIZE
    salt: str = field(default_factory=lambda: os.urandom(16).hex())
    nonce_prefix: str = field(default_factory=lambda: os.urandom(4).hex())

    @property
    def total_rows(self) -> int:
        return sum(t.rows for t in self.tables.values())

    def to_json(self) -> bytes:
        body = {
            "backup_id": self.backup_id, "tenant_id": self.tenant_id,
            "schema_name": self.schema_name, "shard_id": self.shard_id,
            "shard_name": self.shard_name, "created_at": self.created_at, "key_id": self.key_id,
            "tables": {t: [s.rows, s.checksum] for t, s in sorted(self.tables.items())},
            "migrations": self.migrations, "server_version": self.server_version,
            "chunk_size": self.chunk_size, "salt": self.salt, "nonce_prefix": self.nonce_prefix,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> BackupHeader:
        try:
            body = json.loads(raw.decode("utf-8"))
            header = cls(
                backup_id=_text(body, "backup_id"), tenant_id=_text(body, "tenant_id"),
                schema_name=_text(body, "schema_name"), shard_id=int(body["shard_id"]),
                shard_name=_text(body, "shard_name"), created_at=_text(body, "created_at"),
                key_id=_text(body, "key_id"),
                tables={str(t): TableSum(str(t), int(v[0]), str(v[1]))
                        for t, v in dict(body["tables"]).items()},
                migrations=[{k: str(m[k]) for k in ("version", "name", "checksum")}
                            for m in list(body["migrations"])],
                server_version=str(body.get("server_version", "")),
                chunk_size=int(body["chunk_size"]), salt=_text(body, "salt"),
                nonce_prefix=_text(body, "nonce_prefix"),
            )
            salt, prefix = bytes.fromhex(header.salt), bytes.fromhex(header.nonce_prefix)
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise CorruptBackup(f"the backup header is not readable ({type(exc).__name__}: {exc})") from None
        if len(salt) != 16 or len(prefix) != 4:
            raise CorruptBackup("the backup header's salt or nonce prefix has the wrong length")
        if not MIN_CHUNK <= header.chunk_size <= MAX_CHUNK:
            raise CorruptBackup(f"the backup header's chunk size {header.chunk_size} is out of range")
        return header


def _text(body: dict, name: str) -> str:
    value = body[name]
    if not isinstance(value, str):
        raise TypeError(f"{name} is not text")
    return value


@dataclass(frozen=True)
class _FileKeys:
    aead: AESGCM
    mac: bytes
    prefix: bytes
    header_digest: bytes


def _file_keys(key: BackupKey, header: BackupHeader, header_bytes: bytes) -> _FileKeys:
    material = HKDF(algorithm=hashes.SHA256(), length=64, salt=bytes.fromhex(header.salt),
                    info=_HKDF_INFO).derive(key.secret)
    return _FileKeys(AESGCM(material[:32]), material[32:], bytes.fromhex(header.nonce_prefix),
                     hashlib.sha256(header_bytes).digest())


def _nonce(keys: _FileKeys, index: int) -> bytes:
    return keys.prefix + index.to_bytes(8, "big")


def _aad(keys: _FileKeys, index: int, final: bool) -> bytes:
    return keys.header_digest + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")


class SealedWriter:
    """Writes header and chunks to ``out`` as plaintext is handed to ``write``; ``close`` seals
    the final chunk. A full chunk is held back until more data arrives, so that the last one
    is always sealed as final (possibly empty)."""

    def __init__(self, out: BinaryIO, key: BackupKey, header: BackupHeader) -> None:
        if header.key_id != key.key_id:
            raise ValueError("header names another key")
        self.out = out
        header_bytes = _PREFIX.pack(MAGIC, VERSION, len(header.to_json())) + header.to_json()
        self.keys = _file_keys(key, header, header_bytes)
        out.write(header_bytes)
        out.write(hmac.new(self.keys.mac, header_bytes, hashlib.sha256).digest())
        self.chunk_size = header.chunk_size
        self.buffer = bytearray()
        self.index = 0
        self.plaintext_bytes = 0

    def write(self, data: bytes) -> None:
        self.buffer += data
        self.plaintext_bytes += len(data)
        while len(self.buffer) > self.chunk_size:
            self._seal(bytes(self.buffer[:self.chunk_size]), final=False)
            del self.buffer[:self.chunk_size]

    def close(self) -> None:
        self._seal(bytes(self.buffer), final=True)
        self.buffer = bytearray()

    def _seal(self, plaintext: bytes, *, final: bool) -> None:
        self.out.write(self.keys.aead.encrypt(_nonce(self.keys, self.index), plaintext,
                                              _aad(self.keys, self.index, final)))
        self.index += 1


def read_header(src: BinaryIO) -> tuple[BackupHeader, bytes]:
    """The header as written (not yet authenticated) and its bytes; ForeignFile if this is not
    a backup of ours, CorruptBackup if it is cut short or unreadable."""
    prefix = src.read(_PREFIX.size)
    if len(prefix) < len(MAGIC) or prefix[:len(MAGIC)] != MAGIC:
        shown = "an empty file" if not prefix else "a file without the WKBACKUP magic"
        raise ForeignFile(f"not a Wakala backup: {shown}")
    if len(prefix) < _PREFIX.size:
        raise CorruptBackup("the backup is truncated inside its header")
    _, version, length = _PREFIX.unpack(prefix)
    if version != VERSION:
        raise ForeignFile(f"backup format version {version}; this build reads version {VERSION}")
    if length > HEADER_MAX:
        raise CorruptBackup(f"the backup header claims {length} bytes (at most {HEADER_MAX})")
    raw = src.read(length)
    if len(raw) < length:
        raise CorruptBackup("the backup is truncated inside its header")
    return BackupHeader.from_json(raw), prefix + raw


def open_sealed(src: BinaryIO, key: BackupKey) -> tuple[BackupHeader, _FileKeys]:
    """Read and authenticate the header with ``key``; leaves ``src`` at the first chunk."""
    header, header_bytes = read_header(src)
    if header.key_id != key.key_id:
        raise WrongBackupKey(f"the backup was encrypted with key {header.key_id}, you gave key "
                             f"{key.key_id}; set WAKALA_BACKUP_KEY or --key-file to that key")
    keys = _file_keys(key, header, header_bytes)
    tag = src.read(32)
    expected = hmac.new(keys.mac, header_bytes, hashlib.sha256).digest()
    if len(tag) < 32:
        raise CorruptBackup("the backup is truncated after its header")
    if not hmac.compare_digest(tag, expected):
        raise CorruptBackup("the backup header was altered (its authentication code does not match)")
    return header, keys


def iter_plaintext(src: BinaryIO, key: BackupKey) -> Iterator[bytes]:
    """Authenticated plaintext, chunk by chunk. Raises before yielding a chunk that fails;
    the caller must treat everything yielded as unconfirmed until the iterator ends."""
    header, keys = open_sealed(src, key)
    return _chunks(src, header, keys)


def _chunks(src: BinaryIO, header: BackupHeader, keys: _FileKeys) -> Iterator[bytes]:
    block = header.chunk_size + TAG
    current = src.read(block)
    index = 0
    while True:
        following = src.read(block)
        final = not following
        if len(current) < TAG:
            raise CorruptBackup("the backup is truncated after its header" if not current else
                                f"the backup is truncated inside chunk {index}")
        try:
            plaintext = keys.aead.decrypt(_nonce(keys, index), current, _aad(keys, index, final))
        except InvalidTag:
            raise _diagnose(keys, index, current, final) from None
        yield plaintext
        if final:
            return
        current = following
        index += 1


def _diagnose(keys: _FileKeys, index: int, sealed: bytes, final: bool) -> CorruptBackup:
    """Say why chunk ``index`` failed: sealed with the other final flag means the file was cut
    (or extended) there; otherwise its bytes were changed."""
    try:
        keys.aead.decrypt(_nonce(keys, index), sealed, _aad(keys, index, not final))
    except InvalidTag:
        return CorruptBackup(f"chunk {index} of the backup fails authentication: "
                             "the file was altered, damaged, cut short or extended")
    if final:
        return CorruptBackup(f"the backup is truncated after chunk {index}")
    return CorruptBackup(f"the backup has extra data after its final chunk {index}")


def decrypt_to(src: BinaryIO, key: BackupKey, out: BinaryIO) -> BackupHeader:
    """Authenticate the whole file while writing its plaintext to ``out``; return the header."""
    header, keys = open_sealed(src, key)
    for chunk in _chunks(src, header, keys):
        out.write(chunk)
    return header


def sha256_of(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
