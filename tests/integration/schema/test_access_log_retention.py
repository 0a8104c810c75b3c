"""The access log by months: partitions ahead, months past the period dropped whole and logged,
the default partition swept; the migration moved rows into their months."""

import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from schema.retention.control import access_log_retention, month_bounds


async def _partitions(conn) -> list[str]:
    return sorted(r["relname"] for r in await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'data_access_log'::regclass"))


def test_month_bounds_cross_the_year():
    bounds = month_bounds(datetime(2026, 11, 30, 23, tzinfo=UTC), 2)
    assert [(n, s.isoformat(), e.isoformat()) for n, s, e in bounds] == [
        ("data_access_log_y2026m11", "2026-11-01", "2026-12-01"),
        ("data_access_log_y2026m12", "2026-12-01", "2027-01-01"),
        ("data_access_log_y2027m01", "2027-01-01", "2027-02-01")]


async def test_old_months_go_whole_and_months_ahead_are_made(platform):
    conn = await asyncpg.connect(platform.control.url())
    try:
        tenant = await conn.fetchval("INSERT INTO tenants (name, slug) VALUES ('Log', $1) RETURNING id",
                                     f"log-{uuid.uuid4().hex[:8]}")
        await conn.execute("CREATE TABLE data_access_log_y2023m01 PARTITION OF data_access_log "
                           "FOR VALUES FROM ('2023-01-01') TO ('2023-02-01')")
        for when in ("2023-01-15", "2023-01-20", datetime.now(UTC).date().isoformat()):
            await conn.execute("INSERT INTO data_access_log (tenant_id, action, record_id, purpose, created_at) "
                               "VALUES ($1, 'read_customer', $2, 'test', $3::text::date)", tenant, uuid.uuid4(), when)
        # a row in the default partition, older than the period (a month that had no partition)
        await conn.execute("INSERT INTO data_access_log_default (tenant_id, action, purpose, created_at) "
                           "VALUES ($1, 'read_order', 'test', '2022-06-01')", tenant)
        now = datetime.now(UTC)
        report = await access_log_retention(platform, keep_months=24, months_ahead=5, now=now)
        names = await _partitions(conn)
        assert "data_access_log_y2023m01" not in names and report.dropped == ["data_access_log_y2023m01"]
        assert report.deleted_rows == 3
        for name, _, _ in month_bounds(now, 5):
            assert name in names
        assert await conn.fetchval("SELECT count(*) FROM data_access_log") == 1
        logged = await conn.fetch("SELECT deleted_count, partitions_dropped FROM data_deletion_log "
                                  "WHERE table_name = 'data_access_log' ORDER BY id")
        assert [(r["deleted_count"], list(r["partitions_dropped"])) for r in logged] == [
            (2, ["data_access_log_y2023m01"]), (1, [])]
        again = await access_log_retention(platform, keep_months=24, months_ahead=5, now=now)
        assert (again.created, again.dropped, again.deleted_rows) == ([], [], 0)
    finally:
        await conn.close()


async def test_a_bad_period_is_refused(platform):
    with pytest.raises(ValueError):
        await access_log_retention(platform, keep_months=0)
