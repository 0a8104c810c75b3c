"""Fixtures against real services only.

With a Docker engine, PostgreSQL+PostGIS and Redis come from testcontainers; without one,
the local services are used (``WAKALA_*`` variables override where they are). Every test
that needs the database gets its own control and shard databases, named after a per-session
prefix, and they are dropped afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import asyncpg
import pytest

from schema.connect import drop_database
from schema.migrate import migrate
from schema.settings import DSN, PostgresSettings

SESSION_PREFIX = f"wkt{uuid.uuid4().hex[:6]}"


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


@pytest.fixture(scope="session")
async def _session_cleanup(pg_base: DSN) -> AsyncIterator[None]:
    try:
        conn = await asyncpg.connect(pg_base.url(), timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.exit(f"PostgreSQL at {pg_base.redacted()} does not answer ({exc}); "
                    "run `wakala services up` (or `make test`, which does)", returncode=3)
    await conn.close()
    yield
    conn = await asyncpg.connect(pg_base.url())
    try:
        names = await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1",
                                 f"{SESSION_PREFIX}%")
    finally:
        await conn.close()
    for row in names:
        await drop_database(pg_base.with_database(row["datname"]))


@pytest.fixture
async def fresh_settings(pg_base: DSN, _session_cleanup: None) -> AsyncIterator[PostgresSettings]:
    """Settings naming a control database and two shard databases that do not exist yet."""
    prefix = f"{SESSION_PREFIX}_{uuid.uuid4().hex[:8]}"
    base = PostgresSettings.from_env()
    settings = replace(
        base,
        control=pg_base.with_database(f"{prefix}_control"),
        shard_databases=(f"{prefix}_shard_0", f"{prefix}_shard_1"),
    )
    yield settings
    conn = await asyncpg.connect(pg_base.url())
    try:
        names = await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1", f"{prefix}%")
    finally:
        await conn.close()
    for row in names:
        await drop_database(pg_base.with_database(row["datname"]))


@pytest.fixture
async def platform(fresh_settings: PostgresSettings) -> PostgresSettings:
    """A migrated control plane with two empty shards."""
    await migrate(fresh_settings)
    return fresh_settings


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


@pytest.fixture
def stream_settings(redis_url: str, kafka_bootstrap: str):
    """Stream settings with topic names and consumer group of this test only."""
    from streams.settings import StreamSettings

    suffix = uuid.uuid4().hex[:10]
    return replace(
        StreamSettings.from_env(),
        kafka_bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        locations_topic=f"driver-locations-{suffix}",
        dead_letters_topic=f"dead-letters-{suffix}",
        delivery_events_topic=f"delivery-events-{suffix}",
        app_id=f"wakala-test-{suffix}",
    )
