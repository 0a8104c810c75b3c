"""pg_dump and pg_restore as subprocesses, and scratch databases to restore into.

The password goes to the tools in ``PGPASSWORD`` (never on a command line, which ``ps``
shows). Dumps are custom format (``-Fc``, compressed by pg_dump) of one schema; restores
run with ``--single-transaction --exit-on-error`` so a failed restore leaves nothing
behind, and ``--no-owner`` so the restored objects belong to whoever restores them (the
owner role of the control DSN, as for objects the migration runner creates). Privileges
and row-level security policies are part of the dump (``GRANT`` and ``CREATE POLICY``
entries of the schema) and are restored with it.

A scratch database (``wkrestore_<hex>``) is where a backup is restored to be checked
(``verify``) or rewritten (``--as-new-tenant``) without touching a shard. It gets PostGIS
(tenant tables use its types) and is dropped on the way out, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from schema.backups.errors import BackupError
from schema.connect import connection
from schema.settings import DSN

SCRATCH_PREFIX = "wkrestore_"
READ_BLOCK = 1 << 16
STDERR_SHOWN = 2_000


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BackupError(f"{name} is not on PATH; install the PostgreSQL 15 client "
                          "(postgresql-client-15)")
    return path


def _conninfo(dsn: DSN) -> str:
    # Identifiers only (validated in settings / shard_map); no quoting needed beyond this.
    return f"host={dsn.host} port={dsn.port} user={dsn.user} dbname={dsn.database}"


def _env(dsn: DSN) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PGPASSWORD", None)
    if dsn.password is not None:
        env["PGPASSWORD"] = dsn.password
    env.setdefault("PGCONNECT_TIMEOUT", "10")
    return env


def _failure(tool: str, code: int | None, stderr: bytes) -> BackupError:
    text = stderr.decode("utf-8", "replace").strip()
    if len(text) > STDERR_SHOWN:
        text = "…" + text[-STDERR_SHOWN:]
    return BackupError(f"{tool} exited with status {code}: {text or '(no message)'}")


async def dump_schema(dsn: DSN, schema_name: str, sink: Callable[[bytes], None], *,
                      snapshot: str | None = None) -> int:
    """Stream ``pg_dump -Fc -n schema`` into ``sink`` block by block; return bytes dumped.

    With ``snapshot`` the dump reads exactly what the exporting transaction sees; that
    transaction must stay open until this returns."""
    args = [_tool("pg_dump"), "--format=custom", f"--schema={schema_name}",
            f"--dbname={_conninfo(dsn)}"]
    if snapshot is not None:
        args.append(f"--snapshot={snapshot}")
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(dsn))
    assert proc.stdout is not None and proc.stderr is not None
    total = 0

    async def pump() -> None:
        nonlocal total
        assert proc.stdout is not None
        while block := await proc.stdout.read(READ_BLOCK):
            sink(block)
            total += len(block)

    try:
        _, stderr = await asyncio.gather(pump(), proc.stderr.read())
        code = await proc.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if code != 0:
        raise _failure("pg_dump", code, stderr)
    return total


async def dump_schema_to_file(dsn: DSN, schema_name: str, path: Path) -> int:
    out = _private_file(path)
    try:
        return await dump_schema(dsn, schema_name, out.write)
    finally:
        out.close()


def _private_file(path: Path):
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")


async def _run(tool: str, args: list[str], dsn: DSN) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        _tool(tool), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=_env(dsn))
    try:
        stdout, stderr = await proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise _failure(tool, proc.returncode, stderr)
    return stdout


async def archive_entries(path: Path) -> list[str]:
    """The table of contents of a custom-format archive (``pg_restore --list``): proves the
    decrypted plaintext is a dump pg_restore can read before anything is restored."""
    out = await _run("pg_restore", ["--list", str(path)], DSN("localhost", 5432, "x", "x"))
    return [line for line in out.decode("utf-8", "replace").splitlines()
            if line and not line.startswith(";")]


async def restore_archive(dsn: DSN, path: Path) -> None:
    """Restore a schema archive into ``dsn`` in one transaction (all of it or nothing)."""
    await _run("pg_restore", ["--no-owner", "--single-transaction", "--exit-on-error",
                              f"--dbname={_conninfo(dsn)}", str(path)], dsn)


def scratch_name() -> str:
    return f"{SCRATCH_PREFIX}{uuid.uuid4().hex[:12]}"


@contextlib.asynccontextmanager
async def scratch_database(server: DSN) -> AsyncIterator[DSN]:
    """A new empty database with PostGIS on ``server``'s host, dropped on exit (always)."""
    dsn = server.with_database(scratch_name())
    async with connection(server.with_database("postgres")) as admin:
        await admin.execute(f'CREATE DATABASE "{dsn.database}"')
    try:
        async with connection(dsn) as conn:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS postgis WITH SCHEMA public")
        yield dsn
    finally:
        # Shielded: a cancelled caller (Ctrl-C) must not leave the scratch database behind.
        await asyncio.shield(_drop(server, dsn.database))


async def _drop(server: DSN, database: str) -> None:
    async with connection(server.with_database("postgres")) as admin:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
