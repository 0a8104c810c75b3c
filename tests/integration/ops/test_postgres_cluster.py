"""Tests for the private PostgreSQL 15 cluster that logical-replication tests start.

The integration test starts a real cluster (as the ``postgres`` OS user when run as root),
crashes it with SIGKILL, starts it again on the same data directory and proves that nothing
of it survives the context manager. The checks of caller-supplied settings and ports need no
server: they prove hostile values are refused before anything is written or started.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import asyncpg
import pytest

from dispatch.ops.postgres_cluster import (
    PG15_BINDIR,
    PrivateClusterError,
    cluster_settings,
    private_postgres,
    render_settings,
)

pytestmark = pytest.mark.timeout(120)

needs_pg15 = pytest.mark.skipif(not (PG15_BINDIR / "initdb").is_file(),
                                reason=f"PostgreSQL 15 server binaries not in {PG15_BINDIR}")


def _postgis_installed() -> bool:
    return any(Path("/usr/share/postgresql/15/extension").glob("postgis.control"))


def _runs_as_root(pid: int) -> bool:
    return "Uid:\t0\t" in Path(f"/proc/{pid}/status").read_text()


def _exists(path: object) -> bool:
    return Path(str(path)).exists()


def _clusters_left_mentioning(text: str) -> list[Path]:
    return [log.parent for log in Path(tempfile.gettempdir()).glob("wakala-pg-*/server.log")
            if text in log.read_text(errors="replace")]


def _process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


@needs_pg15
async def test_cluster_is_logical_survives_kill_and_leaves_nothing_behind() -> None:
    async with private_postgres() as cluster:
        root, first_pid = cluster.root, cluster.pid
        assert first_pid is not None and _exists(root)
        assert not _runs_as_root(first_pid)
        conn = await asyncpg.connect(cluster.dsn())
        try:
            assert await conn.fetchval("SHOW wal_level") == "logical"
            assert await conn.fetchval("SHOW fsync") == "off"
            assert await conn.fetchval("SHOW max_connections") == "200"
            await conn.execute("CREATE DATABASE moves")
        finally:
            await conn.close()

        conn = await asyncpg.connect(cluster.dsn("moves"))
        try:
            assert _postgis_installed(), (
                "PostGIS for PostgreSQL 15 is missing: `make` installs it "
                "(apt-get install postgresql-15-postgis-3)")
            await conn.execute("CREATE EXTENSION postgis")
            assert await conn.fetchval(
                "SELECT ST_Distance('SRID=4326;POINT(0 0)'::geography,"
                " 'SRID=4326;POINT(0 1)'::geography)") > 100_000
            # Committed with synchronous_commit on: the WAL reaches the OS before the commit
            # returns (fsync stays off), so the kill below cannot lose it; with the cluster's
            # default (off) it may still sit in shared memory that SIGKILL throws away.
            await conn.execute("SET synchronous_commit = on; CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)")
        finally:
            await conn.close()

        await cluster.kill()
        assert cluster.pid is None and not _process_alive(first_pid)
        with pytest.raises((OSError, asyncpg.PostgresError)):
            await asyncpg.connect(cluster.dsn(), timeout=2)

        await cluster.start()   # crash recovery on the same data directory
        assert cluster.pid not in (None, first_pid)
        second_pid = cluster.pid
        conn = await asyncpg.connect(cluster.dsn("moves"))
        try:
            assert await conn.fetchval("SELECT n FROM kept") == 42
        finally:
            await conn.close()

    assert second_pid is not None and not _process_alive(second_pid)
    assert not _exists(root)


@needs_pg15
async def test_stop_then_start_keeps_data_and_replica_mode_is_available() -> None:
    async with private_postgres(logical=False, settings={"work_mem": "8MB"}) as cluster:
        conn = await asyncpg.connect(cluster.dsn())
        try:
            assert await conn.fetchval("SHOW wal_level") == "replica"
            assert await conn.fetchval("SHOW work_mem") == "8MB"
            await conn.execute("CREATE TABLE kept AS SELECT 7 AS n")
        finally:
            await conn.close()
        await cluster.stop()
        assert cluster.pid is None
        await cluster.start()
        conn = await asyncpg.connect(cluster.dsn())
        try:
            assert await conn.fetchval("SELECT n FROM kept") == 7
        finally:
            await conn.close()


@needs_pg15
async def test_an_exception_inside_still_removes_the_cluster() -> None:
    seen: dict[str, object] = {}
    with pytest.raises(KeyboardInterrupt):
        async with private_postgres() as cluster:
            seen.update(root=cluster.root, pid=cluster.pid)
            raise KeyboardInterrupt
    assert not _exists(seen["root"])
    assert not _process_alive(int(str(seen["pid"])))


@needs_pg15
async def test_a_server_that_cannot_start_reports_its_log_and_cleans_up() -> None:
    with pytest.raises(PrivateClusterError, match="log tail") as caught:
        async with private_postgres(settings={"shared_buffers": "not-a-size"}):
            pytest.fail("the server started with an invalid shared_buffers")
    assert "shared_buffers" in str(caught.value)
    assert _clusters_left_mentioning("not-a-size") == []


@pytest.mark.parametrize("settings", [
    {"port": "5432"},
    {"wal_level": "minimal"},
    {"Listen_Addresses": "*"},
    {"unix_socket_directories": "/tmp"},
    {"hba_file": "/etc/passwd"},
])
def test_reserved_settings_are_refused(settings: dict[str, str]) -> None:
    with pytest.raises(PrivateClusterError, match="chosen by private_postgres"):
        cluster_settings(logical=True, port=5555, socket_dir="/tmp/x", extra=settings)


@pytest.mark.parametrize("name", [
    "work_mem\nfsync", "work mem", "", "1abc", "a;b", "x=y", "a.b.c", "../etc", "work_mem'",
])
def test_hostile_setting_names_are_refused(name: str) -> None:
    with pytest.raises(PrivateClusterError, match="not a PostgreSQL parameter name"):
        render_settings({name: "1"})


@pytest.mark.parametrize("value", ["1\nfsync = on", "x\r\nport = 1", "a\x00b", "\x1b[31m"])
def test_values_with_control_characters_are_refused(value: str) -> None:
    with pytest.raises(PrivateClusterError, match="control character"):
        render_settings({"application_name": value})


def test_quotes_and_backslashes_stay_inside_one_value() -> None:
    text = render_settings({"application_name": "x'; shared_preload_libraries='evil\\"})
    assert text.splitlines()[-1] == \
        "application_name = 'x''; shared_preload_libraries=''evil\\\\'"


@pytest.mark.parametrize("extra", [{"work_mem": 8}, {1: "x"}, {"work_mem": None}])
def test_non_string_settings_are_refused(extra: dict) -> None:
    with pytest.raises(PrivateClusterError, match="map names to strings"):
        cluster_settings(logical=True, port=5555, socket_dir="/tmp/x", extra=extra)


@pytest.mark.parametrize("port", [0, -1, 65536, True, "5432", 5432.0, None])
def test_hostile_ports_are_refused(port: object) -> None:
    with pytest.raises(PrivateClusterError, match="port must be"):
        cluster_settings(logical=True, port=port, socket_dir="/tmp/x")  # type: ignore[arg-type]


async def test_missing_binaries_are_named(tmp_path: Path) -> None:
    with pytest.raises(PrivateClusterError, match="no PostgreSQL 15 server binaries"):
        async with private_postgres(bindir=tmp_path):
            pytest.fail("started without binaries")


def test_defaults_are_the_fast_logical_ones() -> None:
    chosen = cluster_settings(logical=True, port=6000, socket_dir="/tmp/s",
                              extra={"shared_buffers": "64MB"})
    assert chosen["wal_level"] == "logical" and chosen["listen_addresses"] == "127.0.0.1"
    assert chosen["shared_buffers"] == "64MB" and chosen["fsync"] == "off"
    assert chosen["unix_socket_directories"] == "/tmp/s" and chosen["port"] == "6000"
    assert chosen["max_replication_slots"] == "20"
