"""A tenant schema's rows copied to another server with ``COPY``, for moves without logical replication.

``COPY ... TO STDOUT (FORMAT binary)`` on the source streams into ``COPY ... FROM STDIN`` on
the target through a small queue, so memory stays bounded whatever the table's size, and
nothing is parsed in Python. The binary format is exact for every type (geography included)
because both sides are built from the same migrations on the same major version.

All tables go in one target transaction with ``session_replication_role = replica`` (no
triggers fire: the rows are history, not new events; foreign keys are not checked row by
row: the source was consistent and the copy is one snapshot of a fenced schema). A crash
rolls the whole copy back, so a rerun starts from an empty target.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import asyncpg

from schema.checksums import qualified, quote_ident

__all__ = ["copy_schema", "copy_table", "qualified"]
QUEUE_CHUNKS = 32
# The columns COPY can write: not dropped, not generated (the target computes those itself).
COLUMNS_SQL = """
SELECT attname FROM pg_attribute
WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
ORDER BY attnum
"""


async def copy_table(src: asyncpg.Connection, dst: asyncpg.Connection, schema_name: str, table: str) -> int:
    """Stream one table (a partitioned one through its root) from ``src`` to ``dst``; rows copied."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_CHUNKS)
    columns = [r["attname"] for r in await src.fetch(COLUMNS_SQL, qualified(schema_name, table))]
    listed = ", ".join(quote_ident(c) for c in columns)

    async def sink(chunk: bytes) -> None:
        await queue.put(chunk)

    async def produce() -> None:
        try:
            await src.copy_from_query(f"SELECT {listed} FROM {qualified(schema_name, table)}", output=sink,  # noqa: S608 - catalogue names, quoted
                                      format="binary")
        finally:
            await queue.put(None)

    async def chunks() -> AsyncIterator[bytes]:
        while (chunk := await queue.get()) is not None:
            yield chunk

    producer = asyncio.create_task(produce())
    try:
        status = await dst.copy_to_table(table, source=chunks(), schema_name=schema_name, columns=columns,
                                         format="binary")
    except BaseException:
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)
        raise
    await producer   # its error, if the source failed half-way, is the one that matters
    return int(status.split()[-1])


async def copy_schema(src: asyncpg.Connection, dst: asyncpg.Connection, schema_name: str, tables: list[str],
                      *, progress: Callable[[int], None] | None = None) -> int:
    """Every table in one target transaction (see the module docstring); rows copied.

    The target's tables are emptied first, in the same transaction: a copy that committed
    just before a crash (the step not yet recorded) is redone, not doubled."""
    rows = 0
    async with src.transaction(isolation="repeatable_read", readonly=True), dst.transaction():
        await dst.execute("SET LOCAL session_replication_role = replica")
        if tables:
            await dst.execute(f"TRUNCATE {', '.join(qualified(schema_name, t) for t in tables)}")
        for table in tables:
            rows += await copy_table(src, dst, schema_name, table)
            if progress is not None:
                progress(rows)
    return rows
