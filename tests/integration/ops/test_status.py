"""``wakala status`` against real services, and against dead and silent ones."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from dispatch.cli.status import register
from dispatch.ops.status import gather_status, render, verdict
from schema.connect import connection
from schema.tenants import create_tenant
from streams.settings import StreamSettings


@pytest.fixture
def streams(redis_url, kafka_bootstrap):
    # A topic nobody created: the lag is "unknown", which is not an outage.
    return replace(StreamSettings.from_env(), redis_url=redis_url, kafka_bootstrap=kafka_bootstrap,
                   locations_topic=f"status-test-{uuid.uuid4().hex[:10]}")


async def _deliveries(platform, tenant, states):
    database = platform.shard_databases[tenant.shard_id]
    async with connection(platform.control.with_database(database)) as conn, conn.transaction():
        await conn.execute("SELECT set_config('search_path', $1, true), "
                           "set_config('app.current_tenant_id', $2, true)",
                           f"{tenant.schema_name}, public", str(tenant.id))
        customer = await conn.fetchval("INSERT INTO customers (first_name) VALUES ('Thandi') RETURNING id")
        vendor = await conn.fetchval(
            "INSERT INTO vendors (business_name, address) VALUES ('Spaza', '{}') RETURNING id")
        for state in states:
            order = await conn.fetchval(
                "INSERT INTO orders (order_number, customer_id, vendor_id, status, subtotal, total_amount,"
                " delivery_address) VALUES ($1, $2, $3, 'ready', 10, 10, '{}') RETURNING id",
                f"WK-{uuid.uuid4().hex[:8]}", customer, vendor)
            await conn.execute("INSERT INTO deliveries (order_id, status) VALUES ($1, $2)", order, state)


async def test_status_shows_deliveries_moves_backups_and_is_up(platform, streams):
    acme = await create_tenant(platform, "Acme Spaza")
    books = await create_tenant(platform, "Books Spaza")
    await _deliveries(platform, acme, ["pending", "pending", "assigned", "delivered", "cancelled"])
    await _deliveries(platform, books, ["pending", "picked_up"])
    async with connection(platform.control) as conn:
        await conn.execute("INSERT INTO backup_log (tenant_id, backup_type, status, started_at, completed_at) "
                           "VALUES ($1, 'full', 'completed', $2, $2)", acme.id,
                           datetime.now(UTC) - timedelta(hours=2))
        await conn.execute("INSERT INTO backup_log (tenant_id, backup_type, status, started_at, completed_at) "
                           "VALUES ($1, 'full', 'completed', $2, $2)", books.id,
                           datetime.now(UTC) - timedelta(hours=30))
        await conn.execute("INSERT INTO tenant_migrations (tenant_id, source_shard, target_shard, status) "
                           "VALUES ($1, $2, $3, 'copying')", acme.id, acme.shard_id, 1 - acme.shard_id)
        await conn.execute("INSERT INTO database_metrics (shard_id, metric_name, metric_value) "
                           "VALUES (0, 'reachable', 1)")
    report = await gather_status(platform, streams, timeout_s=5)
    assert report.errors == []
    assert verdict(report)
    assert {s.name.split()[0] for s in report.services} == {"postgres", "redis", "broker"}
    assert len(report.services) == 5 and all(s.ok and s.latency_ms is not None for s in report.services)
    assert {k: v for k, v in report.deliveries.items() if v} == {"pending": 3, "assigned": 1, "picked_up": 1}
    assert [(m["tenant_id"], m["status"]) for m in report.moves] == [(str(acme.id), "copying")]
    backups = {b["slug"]: b for b in report.backups}
    assert not backups["acme-spaza"]["stale"] and backups["books-spaza"]["stale"]
    assert sum(s["tenants"] for s in report.shards) == 2
    assert all(s["size_bytes"] > 0 and s["connections"] >= 1 for s in report.shards)
    assert report.consumer_lag is None and "does not exist" in report.consumer_lag_detail
    assert report.metrics_sampled_at is not None
    screen = render(report)
    assert "books-spaza" in screen and "STALE" in screen and "verdict: all up" in screen


async def _run_cli(monkeypatch, platform, streams, *argv):
    monkeypatch.setenv("WAKALA_CONTROL_DSN", platform.control.url())
    monkeypatch.setenv("WAKALA_SHARD_DATABASES", ",".join(platform.shard_databases))
    monkeypatch.setenv("WAKALA_REDIS_URL", streams.redis_url)
    monkeypatch.setenv("WAKALA_KAFKA_BOOTSTRAP", streams.kafka_bootstrap)
    monkeypatch.setenv("WAKALA_LOCATIONS_TOPIC", streams.locations_topic)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["status", *argv])
    return await args.handler(args)


async def test_dead_redis_and_broker_are_down_exit_1_and_do_not_hang(platform, streams, monkeypatch, capsys):
    dead = replace(streams, redis_url="redis://127.0.0.1:1/0", kafka_bootstrap="127.0.0.1:1")
    started = time.monotonic()
    assert await _run_cli(monkeypatch, platform, dead, "--json", "--timeout", "2") == 1
    assert time.monotonic() - started < 15
    data = json.loads(capsys.readouterr().out)
    state = {s["name"]: s["ok"] for s in data["services"]}
    assert state["redis"] is False and state["broker"] is False and state["postgres control"] is True
    assert data["ok"] is False and data["consumer_lag"] is None
    assert data["consumer_lag_detail"] == "unknown (the broker is down)"


async def test_services_that_accept_but_never_answer_are_down_within_the_timeout(platform, streams):
    held: list[asyncio.StreamWriter] = []

    async def silent(_reader, writer):
        held.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        silent_streams = replace(streams, redis_url=f"redis://127.0.0.1:{port}/0",
                                 kafka_bootstrap=f"127.0.0.1:{port}")
        started = time.monotonic()
        report = await gather_status(platform, silent_streams, timeout_s=1.0)
        assert time.monotonic() - started < 8
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    down = {s.name for s in report.services if not s.ok}
    assert down == {"redis", "broker"}
    assert not verdict(report)


async def test_a_dead_control_database_is_down_and_nothing_else_is_read(platform, streams):
    gone = replace(platform, control=platform.control.with_database(f"{platform.control.database}_missing"))
    report = await gather_status(gone, streams, timeout_s=2)
    assert report.services[0].name == "postgres control" and not report.services[0].ok
    assert report.shards == [] and report.backups == []
    assert not verdict(report)


async def test_a_dead_shard_is_down_and_a_retired_one_is_not_checked(platform, streams):
    async with connection(platform.control) as conn:
        await conn.execute("INSERT INTO shard_map (shard_id, shard_name, host, port, database_name, status) "
                           "VALUES (5, 'old', '127.0.0.1', 1, 'dropped_long_ago', 'retired')")
    report = await gather_status(platform, streams, timeout_s=2)
    assert verdict(report) and len([s for s in report.services if "shard" in s.name]) == 2
    assert [s["status"] for s in report.shards] == ["active", "active", "retired"]
    async with connection(platform.control) as conn:
        await conn.execute("UPDATE shard_map SET status = 'readonly' WHERE shard_id = 5")
    report = await gather_status(platform, streams, timeout_s=2)
    (dead,) = [s for s in report.services if not s.ok]
    assert dead.name == "postgres shard 5 old" and not verdict(report)
