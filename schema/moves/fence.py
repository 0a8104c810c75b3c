"""The write pause of a move: engines told to hold the tenant, the source schema fenced off.

Two mechanisms, because either alone can fail:

* **The pause** (``writes_paused_at`` on the mapping, announced with ``NOTIFY
  wakala_placement``) is what engines honour: a process that hears it holds the tenant's new
  transactions until the mapping changes (``schema.db.TenantDatabase``), so requests wait a
  moment instead of failing.
* **The fence** is what the database enforces, whatever an engine heard: the move takes
  ``EXCLUSIVE`` locks on every table of the source schema (they wait for the writes already
  in flight, and block new ones; reads go on), revokes the application role's ``USAGE`` on
  the schema, and commits. From then on no statement of the application role can touch the
  old schema: a writer that missed the notification and queued behind the locks fails when
  they are released (its plan is invalidated with the schema's privileges, and the lookup
  of its tables fails), and gets 503 ``TenantMoved`` instead of writing where nobody reads.

The fence commits before the mapping switches: a crash between the two leaves the tenant
unavailable (503s, until the move is rerun or aborted) but never writing to both shards.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from schema.checksums import qualified, quote_ident
from schema.errors import MoveError

NOTIFY_CHANNEL = "wakala_placement"
PAUSE_SQL = """
UPDATE tenant_shard_mapping SET writes_paused_at = coalesce(writes_paused_at, now()) WHERE tenant_id = $1
"""
UNPAUSE_SQL = "UPDATE tenant_shard_mapping SET writes_paused_at = NULL WHERE tenant_id = $1"
NOTIFY_SQL = f"SELECT pg_notify('{NOTIFY_CHANNEL}', $1::text)"
HAS_USAGE_SQL = "SELECT has_schema_privilege($1, $2, 'USAGE')"
LOCK_ATTEMPTS = 5
# Writes in flight on the schema's tables (a writer holds ROW EXCLUSIVE until it ends).
WRITERS_SQL = """
SELECT count(DISTINCT l.pid) FROM pg_locks l
JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND l.mode = 'RowExclusiveLock' AND l.granted AND l.pid <> pg_backend_pid()
"""
DRAIN_WAIT_S = 0.5


async def notify(control: asyncpg.Connection, tenant_id: uuid.UUID) -> None:
    await control.execute(NOTIFY_SQL, str(tenant_id))


async def pause(control: asyncpg.Connection, tenant_id: uuid.UUID) -> None:
    async with control.transaction():
        await control.execute(PAUSE_SQL, tenant_id)
        await notify(control, tenant_id)


async def unpause(control: asyncpg.Connection, tenant_id: uuid.UUID) -> None:
    async with control.transaction():
        await control.execute(UNPAUSE_SQL, tenant_id)
        await notify(control, tenant_id)


async def is_fenced(src: asyncpg.Connection, schema_name: str, app_role: str) -> bool:
    return not await src.fetchval(HAS_USAGE_SQL, app_role, schema_name)


async def fence(src: asyncpg.Connection, schema_name: str, tables: list[str], app_role: str,
                *, lock_timeout_s: float = 2.0) -> None:
    """Wait for the writes in flight, then take the application role's access away (committed).

    Engines that heard the pause start no new transaction, so the move first waits (up to
    ``DRAIN_WAIT_S``) for the writers already in flight to end: taking the locks while a
    writer holds one table and wants another would deadlock with it, and PostgreSQL might
    abort the writer rather than the move. The locks are then taken in one statement with a
    lock timeout; a deadlock or a writer that will not finish makes the attempt fail and
    retry (``LOCK_ATTEMPTS``), never wait without bound."""
    deadline = asyncio.get_running_loop().time() + DRAIN_WAIT_S
    while await src.fetchval(WRITERS_SQL, schema_name) and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110 - polling the server
        await asyncio.sleep(0.005)
    locks = ", ".join(qualified(schema_name, t) for t in tables)
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        try:
            async with src.transaction():
                # A short deadlock_timeout: the deadlock check is also when a waiter makes an
                # autovacuum that blocks it cancel itself (after a bulk load, autovacuum holds
                # the big tables for seconds; at the default 1 s the pause grew by that).
                await src.execute(f"SET LOCAL lock_timeout = '{int(lock_timeout_s * 1000)}ms'; "
                                  "SET LOCAL deadlock_timeout = '20ms'")
                if tables:
                    await src.execute(f"LOCK TABLE {locks} IN EXCLUSIVE MODE")
                await src.execute(f"REVOKE USAGE ON SCHEMA {quote_ident(schema_name)} FROM {quote_ident(app_role)}")
            return
        except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError):
            if attempt == LOCK_ATTEMPTS:
                raise MoveError(f"the tenant's writes in flight did not finish within {LOCK_ATTEMPTS} tries of "
                                f"{lock_timeout_s:g} s; the move stays resumable: rerun it") from None
            await asyncio.sleep(0.1 * attempt)


async def unfence(src: asyncpg.Connection, schema_name: str, app_role: str) -> None:
    await src.execute(f"GRANT USAGE ON SCHEMA {quote_ident(schema_name)} TO {quote_ident(app_role)}")
