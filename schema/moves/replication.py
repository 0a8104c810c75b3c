"""PostgreSQL's logical replication, driven for one tenant schema: publication, slot, subscription.

Why logical replication and not a row pump of our own (the seed's shadow tables and sync
triggers): the subscription's table synchronisation copies each table with ``COPY`` inside
the server, and from the slot's consistent point streams every later change, in commit
order, until it is dropped. That is the copy and the catch-up of an online move, done by
the database, transactional and restartable on its own (a crash of ``wakala`` does not stop
it; the subscription lives in the target server). What it does not carry: DDL (the target
schema is built from the same migrations first), sequences (copied during the write pause),
materialized views (refreshed on the target), and it needs ``wal_level = logical``.

Source and target may be databases of one server. ``CREATE SUBSCRIPTION`` that creates its
own slot on the same server waits for itself forever, so the slot is made first with
``pg_create_logical_replication_slot`` and the subscription attaches to it
(``create_slot = false``). Apply commits are synchronous (``synchronous_commit = on``), so
the slot's confirmed position follows the applied changes closely: the switch waits on it.

Every function here is idempotent: it checks the catalogue and creates or drops only what
is (not) there, which is what lets a move resume after a crash at any point.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg

from schema.checksums import qualified, quote_ident
from schema.errors import MoveError
from schema.settings import DSN

WAL_LEVEL_SQL = "SHOW wal_level"
PUBLICATION_EXISTS_SQL = "SELECT 1 FROM pg_publication WHERE pubname = $1"
SLOT_SQL = "SELECT active, confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1"
CREATE_SLOT_SQL = "SELECT pg_create_logical_replication_slot($1, 'pgoutput')"
DROP_SLOT_SQL = "SELECT pg_drop_replication_slot($1)"
SUBSCRIPTION_EXISTS_SQL = "SELECT 1 FROM pg_subscription WHERE subname = $1"
# Per table of the subscription: 'r' ready (copied and streaming), 's' synced, 'i'/'d'/'f' copying.
SYNC_STATES_SQL = """
SELECT count(*) FILTER (WHERE r.srsubstate = 'r') AS ready, count(*) AS total
FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid WHERE s.subname = $1
"""
# Rows the initial copy has brought so far (the tables' live tuples on the target).
TARGET_ROWS_SQL = """
SELECT coalesce(sum(n_live_tup), 0)::bigint FROM pg_stat_user_tables WHERE schemaname = $1
"""
LAG_SQL = """
SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
FROM pg_replication_slots WHERE slot_name = $1
"""
CURRENT_LSN_SQL = "SELECT pg_current_wal_lsn()"
FLUSHED_PAST_SQL = """
SELECT confirmed_flush_lsn >= $2::pg_lsn FROM pg_replication_slots WHERE slot_name = $1
"""
SUBSCRIPTION_ERRORS_SQL = """
SELECT apply_error_count + sync_error_count FROM pg_stat_subscription_stats WHERE subname = $1
"""


async def wal_level(conn: asyncpg.Connection) -> str:
    return await conn.fetchval(WAL_LEVEL_SQL)


def conninfo(dsn: DSN) -> str:
    """A libpq connection string for the subscription to reach the source (values quoted)."""
    def q(value: object) -> str:
        return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"
    parts = [f"host={q(dsn.host)}", f"port={q(dsn.port)}", f"dbname={q(dsn.database)}", f"user={q(dsn.user)}"]
    if dsn.password:
        parts.append(f"password={q(dsn.password)}")
    return " ".join(parts)


async def ensure_publication(src: asyncpg.Connection, name: str, schema_name: str, tables: list[str]) -> None:
    """A publication of the schema's tables; partitioned tables publish through their root, so
    rows land in whatever partitions the target has."""
    if await src.fetchval(PUBLICATION_EXISTS_SQL, name):
        return
    listed = ", ".join(qualified(schema_name, t) for t in tables)
    await src.execute(f"CREATE PUBLICATION {quote_ident(name)} FOR TABLE {listed} "
                      "WITH (publish_via_partition_root = true)")


async def ensure_slot(src: asyncpg.Connection, name: str) -> None:
    if await src.fetchrow(SLOT_SQL, name) is None:
        await src.fetchval(CREATE_SLOT_SQL, name)


async def ensure_subscription(dst: asyncpg.Connection, name: str, source: DSN) -> None:
    if await dst.fetchval(SUBSCRIPTION_EXISTS_SQL, name):
        return
    literal = "'" + conninfo(source).replace("'", "''") + "'"
    await dst.execute(
        f"CREATE SUBSCRIPTION {quote_ident(name)} CONNECTION {literal} PUBLICATION {quote_ident(name)} "
        f"WITH (create_slot = false, slot_name = '{name}', copy_data = true, "
        "synchronous_commit = 'on', enabled = true)")


async def sync_states(dst: asyncpg.Connection, name: str) -> tuple[int, int]:
    row = await dst.fetchrow(SYNC_STATES_SQL, name)
    return row["ready"], row["total"]


async def target_rows(dst: asyncpg.Connection, schema_name: str) -> int:
    return await dst.fetchval(TARGET_ROWS_SQL, schema_name)


async def lag_bytes(src: asyncpg.Connection, name: str) -> int | None:
    return await src.fetchval(LAG_SQL, name)


async def errors(dst: asyncpg.Connection, name: str) -> int:
    return (await dst.fetchval(SUBSCRIPTION_ERRORS_SQL, name)) or 0


async def current_lsn(src: asyncpg.Connection) -> int:
    """The source's WAL position now (asyncpg hands a pg_lsn over as an integer)."""
    return await src.fetchval(CURRENT_LSN_SQL)


async def wait_flushed(src: asyncpg.Connection, name: str, lsn: int, *, timeout_s: float,
                       poll_s: float = 0.01) -> float:
    """Wait until the subscriber confirms it applied everything up to ``lsn``; seconds waited."""
    start = time.monotonic()
    while not await src.fetchval(FLUSHED_PAST_SQL, name, lsn):
        if time.monotonic() - start > timeout_s:
            raise MoveError(f"the target did not confirm the source's last change within {timeout_s:g} s "
                            f"(slot {name}); the move stays resumable: rerun it")
        await asyncio.sleep(poll_s)
    return time.monotonic() - start


async def drop_replication(src: asyncpg.Connection, dst: asyncpg.Connection, name: str,
                           *, timeout_s: float = 30.0) -> None:
    """Drop the subscription (detached from its slot first, so the drop does not reach back
    into the source), the slot once its walsender has gone, and the publication."""
    if await dst.fetchval(SUBSCRIPTION_EXISTS_SQL, name):
        ident = quote_ident(name)
        await dst.execute(f"ALTER SUBSCRIPTION {ident} DISABLE")
        await dst.execute(f"ALTER SUBSCRIPTION {ident} SET (slot_name = NONE)")
        await dst.execute(f"DROP SUBSCRIPTION {ident}")
    deadline = time.monotonic() + timeout_s
    while (slot := await src.fetchrow(SLOT_SQL, name)) is not None:
        if not slot["active"]:
            try:
                await src.fetchval(DROP_SLOT_SQL, name)
                break
            except asyncpg.ObjectInUseError:
                pass   # its walsender is still exiting
        if time.monotonic() > deadline:
            raise MoveError(f"replication slot {name} on the source is still in use after {timeout_s:g} s; "
                            "rerun to finish the move")
        await asyncio.sleep(0.05)
    if await src.fetchval(PUBLICATION_EXISTS_SQL, name):
        await src.execute(f"DROP PUBLICATION {quote_ident(name)}")
