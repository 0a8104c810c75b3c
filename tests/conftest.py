"""Fixtures against real services only.

With a Docker engine, PostgreSQL+PostGIS and Redis come from testcontainers; without one,
the local services are used (``WAKALA_*`` variables override where they are). Every test
that needs the database gets its own control and shard databases, named after a per-session
prefix, and they are dropped afterwards.

Under pytest-xdist every worker is its own session (its own prefix, template and topics), so
workers share nothing but the servers.

Two costs dominate a database test, and both are paid once instead of per test:

* Migrating a control plane and two shards (PostGIS included) takes seconds; cloning
  databases already migrated with ``CREATE DATABASE ... TEMPLATE`` takes a tenth of that. The
  ``platform`` fixture clones a template that this session migrated with the real runner
  (tests of the runner itself use ``fresh_settings`` and migrate empty databases).
* ``DROP DATABASE`` waits for a checkpoint of the whole server. A test hands its databases to
  a dropping thread and goes on; drops in flight together share one checkpoint, so that
  thread drops them in rounds. The end of the session drops whatever is left under its
  prefix and waits for it.

Nothing a test makes outlives the session: its databases; the broker topics named after its
``stream_settings`` (and the app id's own topics); and the Redis keys that name those
suffixes or an id (tenant, driver, delivery) from its databases, which the engine writes
without a TTL (driver states, the availability index, assignments, dispatcher offsets).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import asyncpg
import pytest

from schema.migrate import migrate
from schema.settings import DSN, PostgresSettings

SESSION_PREFIX = f"wkt{uuid.uuid4().hex[:6]}"  # per process: each pytest-xdist worker its own
# Every forced checkpoint also syncs the files of every database still alive (about a
# thousand per platform, more per tenant), so drops go out in rounds, not one test at a time:
# a round waits for DROP_ROUND databases (three tests' worth) or DROP_ROUND_WAIT_S, and drops
# them all at once (each holds a connection while it waits for the checkpoint). A database
# dropped before any checkpoint saw it is never written out at all.
DROP_ROUND = 9
DROP_ROUND_WAIT_S = 15.0
# A test waits in its teardown while more than this many databases wait to be dropped: on a
# busy server the drops must not fall behind (disk, and what an interrupted run leaves).
DROP_BACKLOG = 30
# The last round, when this session's tests and their pools are done.
FINAL_DROP_CONCURRENCY = 12


def docker_engine_answers() -> bool:
    if os.environ.get("WAKALA_TEST_NO_DOCKER") or shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def pg_base() -> Iterator[DSN]:
    """Server address (with owner credentials) that test databases are created on."""
    if docker_engine_answers() and not os.environ.get("WAKALA_CONTROL_DSN"):
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgis/postgis:15-3.4", username="postgres",
                               password="postgres", dbname="postgres") as pg:
            yield DSN(pg.get_container_host_ip(), int(pg.get_exposed_port(5432)),
                      "postgres", "postgres", "postgres")
        return
    yield PostgresSettings.from_env().control.with_database("postgres")


def _like_prefix(prefix: str) -> str:
    """A LIKE pattern for names starting with ``prefix`` (its ``_`` taken literally)."""
    return prefix.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%") + "%"


async def _names_under(admin: asyncpg.Connection, prefix: str) -> list[str]:
    rows = await admin.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1",
                             _like_prefix(prefix))
    return [row["datname"] for row in rows]


class DatabaseGraveyard:
    """Drops test databases on a thread of its own, in rounds that share a checkpoint.

    A test hands its databases over and goes on (it waits only while DROP_BACKLOG are still
    waiting); the thread collects a round (see DROP_ROUND) and drops it concurrently.
    ``close`` drops what is still queued and waits for it.
    """

    def __init__(self, server: DSN) -> None:
        self.server = server
        self.queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.waiting = 0
        self.dropped = threading.Condition()
        self.failures: list[str] = []
        self.thread = threading.Thread(target=self._run, name="test-database-graveyard",
                                       daemon=True)
        self.thread.start()

    async def bury(self, names: list[str]) -> None:
        self.enqueue(names)
        await asyncio.to_thread(self._wait_for_backlog)

    def enqueue(self, names: list[str]) -> None:
        with self.dropped:
            self.waiting += len(names)
        for name in names:
            self.queue.put(name)

    def _wait_for_backlog(self) -> None:
        with self.dropped:
            while self.waiting > DROP_BACKLOG and self.thread.is_alive():
                self.dropped.wait(timeout=1.0)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()

    def _run(self) -> None:
        done = False
        while not done:
            names = [self.queue.get()]
            until = time.monotonic() + DROP_ROUND_WAIT_S
            while None not in names and len(names) < DROP_ROUND:
                try:
                    names.append(self.queue.get(timeout=max(0.0, until - time.monotonic())))
                except queue.Empty:
                    break
            while not self.queue.empty():
                names.append(self.queue.get())
            done = None in names
            names = [name for name in names if name is not None]
            if names:
                # The last round comes when this session's tests (and their pools) are done:
                # all of it at once, so the run does not end waiting checkpoint after checkpoint.
                gate = FINAL_DROP_CONCURRENCY if done else DROP_ROUND
                asyncio.run(self._drop(names, gate))
            with self.dropped:
                self.waiting -= len(names)
                self.dropped.notify_all()

    async def _drop(self, names: list[str], concurrency: int) -> None:
        gate = asyncio.Semaphore(concurrency)

        async def drop(name: str) -> None:
            # A busy server may refuse a connection for a moment (its slots are shared with
            # the engines under test): try again before calling the database left behind.
            for attempt in range(5):
                async with gate:
                    try:
                        conn = await asyncpg.connect(self.server.url())
                        try:
                            ident = await conn.fetchval("SELECT quote_ident($1)", name)
                            await conn.execute(f"DROP DATABASE IF EXISTS {ident} WITH (FORCE)")
                        finally:
                            await conn.close()
                        return
                    except (OSError, asyncpg.PostgresError) as exc:
                        error = exc
                await asyncio.sleep(1.0 + attempt)
            self.failures.append(f"{name}: {error}")

        await asyncio.gather(*(drop(name) for name in names))


@pytest.fixture(scope="session")
async def _session_cleanup(pg_base: DSN) -> AsyncIterator[DatabaseGraveyard]:
    try:
        conn = await asyncpg.connect(pg_base.url(), timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.exit(f"PostgreSQL at {pg_base.redacted()} does not answer ({exc}); "
                    "run `wakala services up` (or `make test`, which does)", returncode=3)
    await conn.close()
    graveyard = DatabaseGraveyard(pg_base)
    try:
        yield graveyard
    finally:
        conn = await asyncpg.connect(pg_base.url())
        try:
            leftovers = await _names_under(conn, f"{SESSION_PREFIX}_")
        finally:
            await conn.close()
        graveyard.enqueue(leftovers)
        await asyncio.to_thread(graveyard.close)
    if graveyard.failures:
        pytest.fail("test databases left on the server: " + "; ".join(graveyard.failures))


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Engine keys that hold ids as members rather than in their name.
_ID_SETS = ("deliveries:unassigned:tenants",)


class RedisLeftovers:
    """What names this session's Redis keys: stream suffixes and ids from its databases."""

    def __init__(self) -> None:
        self.suffixes: list[str] = []
        self.ids: set[str] = set()

    async def note_ids_in(self, settings: PostgresSettings) -> None:
        """Tenant, driver and delivery ids in a test's databases (best effort: the databases
        may never have been created, or a test may have broken them on purpose)."""
        try:
            conn = await asyncpg.connect(settings.control.url())
        except (OSError, asyncpg.PostgresError):
            return
        try:
            if not await conn.fetchval(
                    "SELECT to_regclass('public.tenant_shard_mapping') IS NOT NULL "
                    "AND to_regclass('public.shard_map') IS NOT NULL"):
                return
            rows = await conn.fetch(
                "SELECT m.tenant_id::text AS tenant_id, m.schema_name, s.database_name "
                "FROM tenant_shard_mapping m JOIN shard_map s USING (shard_id)")
        except asyncpg.PostgresError:
            return
        finally:
            await conn.close()
        self.ids.update(row["tenant_id"] for row in rows)
        for database in {row["database_name"] for row in rows}:
            try:
                shard = await asyncpg.connect(settings.control.with_database(database).url())
            except (OSError, asyncpg.PostgresError):
                continue
            try:
                for row in rows:
                    if row["database_name"] != database:
                        continue
                    for table in ("drivers", "deliveries"):
                        name = await shard.fetchval("SELECT to_regclass($1)::text",
                                                    f"{row['schema_name']}.{table}")
                        if name is not None:
                            self.ids.update(r[0] for r in await shard.fetch(
                                f"SELECT id::text FROM {name}"))  # noqa: S608 - a regclass
            except asyncpg.PostgresError:
                pass
            finally:
                await shard.close()

    def owns(self, key: str) -> bool:
        return (any(suffix in key for suffix in self.suffixes)
                or any(found in self.ids for found in _UUID.findall(key)))

    async def delete(self, redis_url: str) -> None:
        if not (self.suffixes or self.ids):
            return
        from redis.asyncio import Redis

        client = Redis.from_url(redis_url, socket_timeout=30, socket_connect_timeout=10)
        try:
            doomed = [key async for key in client.scan_iter(count=1000)
                      if self.owns(key.decode(errors="replace"))]
            for i in range(0, len(doomed), 500):
                await client.delete(*doomed[i:i + 500])
            if self.ids:
                for key in _ID_SETS:
                    await client.srem(key, *self.ids)
        except Exception:  # noqa: BLE001 - best effort: a leftover key is not a test failure
            pass
        finally:
            await client.aclose()


@pytest.fixture(scope="session")
async def _redis_leftovers(redis_url: str) -> AsyncIterator[RedisLeftovers]:
    leftovers = RedisLeftovers()
    yield leftovers
    await leftovers.delete(redis_url)


@pytest.fixture
async def fresh_settings(pg_base: DSN, _session_cleanup: DatabaseGraveyard,
                         _redis_leftovers: RedisLeftovers) -> AsyncIterator[PostgresSettings]:
    """Settings naming a control database and two shard databases that do not exist yet."""
    async with _databases_of_a_test(pg_base, _session_cleanup, _redis_leftovers) as settings:
        yield settings


@contextlib.asynccontextmanager
async def _databases_of_a_test(pg_base: DSN, graveyard: DatabaseGraveyard,
                               leftovers: RedisLeftovers) -> AsyncIterator[PostgresSettings]:
    """Settings under a fresh prefix; afterwards the Redis keys of the ids found in them and
    every database under the prefix go (to the graveyard)."""
    prefix = f"{SESSION_PREFIX}_{uuid.uuid4().hex[:8]}"
    settings = _settings_under(pg_base, prefix)
    yield settings
    await leftovers.note_ids_in(settings)
    conn = await asyncpg.connect(pg_base.url())
    try:
        names = await _names_under(conn, prefix)
    finally:
        await conn.close()
    await graveyard.bury(names)


def _settings_under(pg_base: DSN, prefix: str) -> PostgresSettings:
    return replace(
        PostgresSettings.from_env(),
        control=pg_base.with_database(f"{prefix}_control"),
        shard_databases=(f"{prefix}_shard_0", f"{prefix}_shard_1"),
    )


@pytest.fixture(scope="session")
async def _migrated_template(pg_base: DSN, _session_cleanup: DatabaseGraveyard) -> PostgresSettings:
    """A control plane and two shards migrated once by the real runner, closed to connections.

    No test connects to it (``platform`` hands out clones), so no tenant schema or row written
    by a test can reach it, and nothing holds it open when it is cloned. The session cleanup
    drops it with the rest of the prefix.
    """
    template = _settings_under(pg_base, f"{SESSION_PREFIX}_tpl")
    await migrate(template)
    conn = await asyncpg.connect(pg_base.url())
    try:
        for database in (template.control.database, *template.shard_databases):
            ident = await conn.fetchval("SELECT quote_ident($1)", database)
            await conn.execute(f"ALTER DATABASE {ident} ALLOW_CONNECTIONS false")
    finally:
        await conn.close()
    return template


async def clone_platform(settings: PostgresSettings, template: PostgresSettings) -> PostgresSettings:
    """Make ``settings``' databases clones of the migrated ``template``, then what ``migrate``
    would have left: the control plane's shard map names these shards, and the application
    role may connect to each database (a database-level grant is not part of what a clone
    copies)."""
    pairs = list(zip(
        (template.control.database, *template.shard_databases),
        (settings.control.database, *settings.shard_databases),
        strict=True,
    ))
    admin = await asyncpg.connect(settings.control.with_database("postgres").url())
    try:
        for source, target in pairs:
            src = await admin.fetchval("SELECT quote_ident($1)", source)
            dst = await admin.fetchval("SELECT quote_ident($1)", target)
            # WAL_LOG: FILE_COPY would wait for two checkpoints; a clone accepts connections
            # (ALLOW_CONNECTIONS is not copied from the template).
            await admin.execute(f"CREATE DATABASE {dst} TEMPLATE {src} STRATEGY WAL_LOG")
            role = await admin.fetchval("SELECT quote_ident($1)", settings.app_role)
            await admin.execute(f"GRANT CONNECT ON DATABASE {dst} TO {role}")
    finally:
        await admin.close()
    control = await asyncpg.connect(settings.control.url())
    try:
        for shard_id, database in enumerate(settings.shard_databases):
            await control.execute("UPDATE shard_map SET database_name = $1 WHERE shard_id = $2",
                                  database, shard_id)
    finally:
        await control.close()
    return settings


@pytest.fixture
async def platform(fresh_settings: PostgresSettings,
                   _migrated_template: PostgresSettings) -> PostgresSettings:
    """A migrated control plane with two empty shards, a clone of the session's template."""
    return await clone_platform(fresh_settings, _migrated_template)


@pytest.fixture(scope="module")
async def module_platform(pg_base: DSN, _session_cleanup: DatabaseGraveyard, _redis_leftovers: RedisLeftovers,
                          _migrated_template: PostgresSettings) -> AsyncIterator[PostgresSettings]:
    """One platform for every test of a module, for modules whose tests each make their own
    tenant (random names) and look only at it: a clone and its drop (a forced checkpoint)
    cost a test seconds on a busy server, and most of a short test's time. A module that
    opts in with ``tests.integration.shared_platform``."""
    async with _databases_of_a_test(pg_base, _session_cleanup, _redis_leftovers) as settings:
        yield await clone_platform(settings, _migrated_template)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: testcontainers with Docker, else WAKALA_REDIS_URL / the local server."""
    if docker_engine_answers() and not os.environ.get("WAKALA_REDIS_URL"):
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7-alpine") as container:
            yield f"redis://{container.get_container_host_ip()}:{container.get_exposed_port(6379)}/0"
        return
    yield os.environ.get("WAKALA_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """A real Kafka-protocol broker: the one `wakala services up` ensures (tansu or Kafka)."""
    return os.environ.get("WAKALA_KAFKA_BOOTSTRAP", "127.0.0.1:9092")


@pytest.fixture(scope="session")
async def _test_topics(kafka_bootstrap: str) -> AsyncIterator[list[str]]:
    """Suffixes of this session's topic names; their topics are deleted when it ends.

    The bundled broker keeps every topic until it is deleted, including those a Faust app
    creates under its app id (``wakala-test-<suffix>-...``).
    """
    suffixes: list[str] = []
    yield suffixes
    if not suffixes:
        return
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        await asyncio.wait_for(admin.start(), 10)
        doomed = [t for t in await asyncio.wait_for(admin.list_topics(), 30)
                  if any(s in t for s in suffixes)]
        if doomed:
            await asyncio.wait_for(admin.delete_topics(doomed), 60)
    except Exception:  # noqa: BLE001 - best effort: a leftover topic is not a test failure
        pass
    finally:
        await asyncio.wait_for(admin.close(), 10)


def _stream_settings(redis_url: str, kafka_bootstrap: str, topics: list[str], leftovers: RedisLeftovers):
    from streams.settings import StreamSettings

    suffix = uuid.uuid4().hex[:10]
    topics.append(suffix)
    leftovers.suffixes.append(suffix)
    return replace(
        StreamSettings.from_env(),
        kafka_bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        locations_topic=f"driver-locations-{suffix}",
        dead_letters_topic=f"dead-letters-{suffix}",
        delivery_events_topic=f"delivery-events-{suffix}",
        order_events_topic=f"order-events-{suffix}",
        app_id=f"wakala-test-{suffix}",
    )


@pytest.fixture
def stream_settings(redis_url: str, kafka_bootstrap: str, _test_topics: list[str],
                    _redis_leftovers: RedisLeftovers):
    """Stream settings with topic names and consumer group of this test only."""
    return _stream_settings(redis_url, kafka_bootstrap, _test_topics, _redis_leftovers)


@pytest.fixture(scope="module")
def module_stream_settings(redis_url: str, kafka_bootstrap: str, _test_topics: list[str],
                           _redis_leftovers: RedisLeftovers):
    """Stream settings shared by a module's tests (with ``module_platform``: one engine for them)."""
    return _stream_settings(redis_url, kafka_bootstrap, _test_topics, _redis_leftovers)


@pytest.fixture(scope="session", autouse=True)
async def _no_task_outlives_the_session() -> AsyncIterator[None]:
    """Cancel what the tests left running in the session's event loop, bounded in time.

    pytest-asyncio closes the session loop by cancelling every task once and waiting for all
    of them without a limit; a task that swallows one cancellation (a retry loop of an engine
    a test did not stop) would hang the run there. Cancelling repeatedly for up to 20 s, and
    naming what is still alive after that, turns a silent hang into a warning.
    """
    yield
    me = asyncio.current_task()
    deadline = time.monotonic() + 20
    alive = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    while alive and time.monotonic() < deadline:
        for task in alive:
            task.cancel()
        await asyncio.wait(alive, timeout=0.5)
        alive = [t for t in alive if not t.done()]
    if alive:
        import warnings

        warnings.warn(f"tasks still alive at the end of the session: "
                      f"{[t.get_name() for t in alive]}", stacklevel=1)
