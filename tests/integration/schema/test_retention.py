"""Retention against real shards: what goes, what stays, in batches, logged, without blocking."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from schema.connect import connection
from schema.errors import UnknownTenant
from schema.retention.policies import RetentionPolicyError, RetentionSettings
from schema.retention.runner import list_policies, run_retention, set_policy
from schema.tenants import create_tenant

FAST = RetentionSettings(batch_size=4, pause_s=0.0, lock_timeout_ms=500, statement_timeout_ms=10_000)
NOW = datetime.now(UTC)


def _days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


@contextlib.asynccontextmanager
async def _tenant_tx(settings, tenant):
    """An owner transaction on the tenant's shard, scoped to its schema and tenant."""
    async with connection(settings.control.with_database(settings.shard_databases[tenant.shard_id])) as conn:
        async with conn.transaction():
            await conn.execute("SELECT set_config('search_path', $1, true), "
                               "set_config('app.current_tenant_id', $2, true)",
                               f"{tenant.schema_name}, public", str(tenant.id))
            yield conn


async def _count(settings, tenant, table, where="true", *args):
    async with _tenant_tx(settings, tenant) as conn:
        return await conn.fetchval(f"SELECT count(*) FROM {table} WHERE {where}", *args)  # noqa: S608


async def _messages(conn, n, created_at, prefix):
    await conn.executemany(
        "INSERT INTO whatsapp_messages (message_id, conversation_id, from_number, to_number, direction,"
        " type, content, created_at) VALUES ($1, 'c1', '+27820000001', '+27820000002', $2, 'text',"
        " '{}'::jsonb, $3)",
        [(f"{prefix}-{i}", "inbound" if i % 2 else "outbound", created_at) for i in range(n)])


async def _seed_credentials(conn):
    user = await conn.fetchval("INSERT INTO users (phone_number) VALUES ('+27821110000') RETURNING id")
    tokens = [("expired-long-ago", _days_ago(40), None), ("revoked-long-ago", NOW + timedelta(days=9), _days_ago(40)),
              ("expired-recently", _days_ago(5), None), ("live", NOW + timedelta(days=9), None)]
    await conn.executemany(
        "INSERT INTO auth_tokens (user_id, token_hash, token_type, expires_at, revoked_at)"
        " VALUES ($1, $2, 'access', $3, $4)", [(user, *t) for t in tokens])
    await conn.executemany(
        "INSERT INTO idempotency_keys (caller, key, request_hash, expires_at) VALUES ('gateway', $1, $2, $3)",
        [(f"k{i}", "0" * 64, _days_ago(10) if i < 3 else NOW + timedelta(hours=5)) for i in range(5)])


async def _log_rows(settings, run_id):
    async with connection(settings.control) as conn:
        return {r["table_name"]: r for r in await conn.fetch(
            "SELECT * FROM data_deletion_log WHERE run_id = $1::uuid", run_id)}


async def test_old_rows_go_in_bounded_batches_new_rows_stay_and_each_table_is_logged(platform):
    tenant = await create_tenant(platform, "Retention Spaza")
    async with _tenant_tx(platform, tenant) as conn:
        await _messages(conn, 25, _days_ago(400), "old")
        await _messages(conn, 5, _days_ago(30), "new")
        await _seed_credentials(conn)

    report = await run_retention(platform, FAST, now=NOW)

    assert report.errors == [] and report.refused == []
    assert await _count(platform, tenant, "whatsapp_messages") == 5
    assert await _count(platform, tenant, "whatsapp_messages", "message_id LIKE 'old-%'") == 0
    assert sorted(r[0] for r in await _tokens(platform, tenant)) == ["expired-recently", "live"]
    assert await _count(platform, tenant, "idempotency_keys") == 2
    logged = await _log_rows(platform, report.run_id)
    # One row per active default policy (orders is inactive), zero counts included.
    assert set(logged) == {"auth_tokens", "user_sessions", "tracking_links", "idempotency_keys",
                           "delivery_events_outbox", "order_events_outbox", "whatsapp_messages",
                           "notifications", "conversations", "user_activities", "analytics_events"}
    messages = logged["whatsapp_messages"]
    assert (messages["deleted_count"], messages["tenant_id"], messages["dry_run"]) == (25, tenant.id, False)
    # 25 rows in batches of at most 4: six full batches and a last one of one.
    assert messages["batches"] == 7
    assert logged["auth_tokens"]["deleted_count"] == 2 and logged["idempotency_keys"]["deleted_count"] == 3
    assert logged["notifications"]["deleted_count"] == 0
    async with connection(platform.control) as conn:
        run = await conn.fetchrow("SELECT * FROM retention_runs WHERE id = $1::uuid", report.run_id)
    assert run["status"] == "completed" and run["finished_at"] is not None and not run["dry_run"]


async def _tokens(settings, tenant):
    async with _tenant_tx(settings, tenant) as conn:
        return await conn.fetch("SELECT token_hash FROM auth_tokens")


async def test_a_dry_run_counts_what_would_go_and_changes_nothing(platform):
    tenant = await create_tenant(platform, "Dry Spaza")
    async with _tenant_tx(platform, tenant) as conn:
        await _messages(conn, 9, _days_ago(400), "old")
        await _messages(conn, 2, _days_ago(3), "new")

    report = await run_retention(platform, FAST, dry_run=True, now=NOW)

    counted = {o.table: o.deleted for o in report.outcomes}
    assert counted["whatsapp_messages"] == 9 and report.run_id is None
    assert await _count(platform, tenant, "whatsapp_messages") == 11
    async with connection(platform.control) as conn:
        assert await conn.fetchval("SELECT count(*) FROM data_deletion_log") == 0
        assert await conn.fetchval("SELECT count(*) FROM retention_runs") == 0


async def test_tenant_and_table_limit_a_run(platform):
    one = await create_tenant(platform, "Only Me")
    other = await create_tenant(platform, "Not Me")
    for tenant in (one, other):
        async with _tenant_tx(platform, tenant) as conn:
            await _messages(conn, 3, _days_ago(400), "old")
            await _seed_credentials(conn)

    report = await run_retention(platform, FAST, tenant=one.slug, table="whatsapp_messages", now=NOW)

    assert {(o.tenant_id, o.table) for o in report.outcomes} == {(str(one.id), "whatsapp_messages")}
    assert await _count(platform, one, "whatsapp_messages") == 0
    assert await _count(platform, other, "whatsapp_messages") == 3
    assert await _count(platform, one, "idempotency_keys") == 5
    with pytest.raises(UnknownTenant):
        await run_retention(platform, FAST, tenant="no-such-tenant", now=NOW)
    with pytest.raises(RetentionPolicyError, match="not a table retention knows"):
        await run_retention(platform, FAST, table='users"; DROP TABLE users; --', now=NOW)


async def test_old_analytics_months_are_dropped_whole_and_months_ahead_exist(platform):
    tenant = await create_tenant(platform, "Analytics Spaza")
    async with _tenant_tx(platform, tenant) as conn:
        await conn.execute(
            "CREATE TABLE analytics_events_y2020m01 PARTITION OF analytics_events "
            "FOR VALUES FROM ('2020-01-01 00:00:00+00') TO ('2020-02-01 00:00:00+00')")
        await conn.executemany(
            'INSERT INTO analytics_events (event_type, "timestamp") VALUES ($1, $2)',
            [("in-old-month", datetime(2020, 1, 15, tzinfo=UTC)),
             ("old-in-default", datetime(2019, 6, 1, tzinfo=UTC)),
             ("recent", NOW - timedelta(days=2))])

    report = await run_retention(platform, replace(FAST, partitions_ahead=5), table="analytics_events", now=NOW)

    outcome = next(o for o in report.outcomes if o.table == "analytics_events")
    assert outcome.partitions_dropped == ["analytics_events_y2020m01"] and outcome.error is None
    assert outcome.deleted == 2         # the partition's row and the default partition's old row
    async with _tenant_tx(platform, tenant) as conn:
        assert await conn.fetchval("SELECT to_regclass('analytics_events_y2020m01')") is None
        assert [r[0] for r in await conn.fetch("SELECT event_type FROM analytics_events")] == ["recent"]
        ahead = NOW.replace(day=1)
        for _ in range(5):
            ahead = (ahead + timedelta(days=32)).replace(day=1)
        assert await conn.fetchval("SELECT to_regclass($1)", f"analytics_events_y{ahead:%Y}m{ahead:%m}")
    assert report.partitions_created >= 2
    logged = await _log_rows(platform, report.run_id)
    assert list(logged["analytics_events"]["partitions_dropped"]) == ["analytics_events_y2020m01"]


async def test_a_row_a_writer_holds_is_skipped_and_writers_wait_at_most_a_batch(platform):
    tenant = await create_tenant(platform, "Busy Spaza")
    async with _tenant_tx(platform, tenant) as conn:
        await _messages(conn, 40, _days_ago(400), "old")
    held = asyncio.Event()
    release = asyncio.Event()

    async def writer_holding_one_old_row():
        async with _tenant_tx(platform, tenant) as conn:
            await conn.execute("UPDATE whatsapp_messages SET status = 'read' WHERE message_id = 'old-7'")
            held.set()
            await release.wait()

    async def writer_touching_old_rows(latencies):
        shard = platform.control.with_database(platform.shard_databases[tenant.shard_id])
        async with connection(shard) as conn:
            await asyncio.sleep(0.3)     # retention has begun with the first rows
            for i in range(20):
                started = time.perf_counter()
                async with conn.transaction():
                    await conn.execute("SELECT set_config('search_path', $1, true), "
                                       "set_config('app.current_tenant_id', $2, true)",
                                       f"{tenant.schema_name}, public", str(tenant.id))
                    await conn.execute("UPDATE whatsapp_messages SET status = 'delivered' WHERE message_id = $1",
                                       f"old-{i + 8}")
                    await _messages(conn, 1, NOW, f"live-{i}")
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.01)

    holder = asyncio.create_task(writer_holding_one_old_row())
    await held.wait()
    latencies: list[float] = []
    # 20 batches with pauses: a run of about three seconds, so the writer's 20 transactions
    # all fall inside it (one long transaction would hold them until its end).
    slow = replace(FAST, batch_size=2, pause_s=0.15)
    started = time.perf_counter()
    report, _ = await asyncio.gather(run_retention(platform, slow, table="whatsapp_messages", now=NOW),
                                     writer_touching_old_rows(latencies))
    took = time.perf_counter() - started
    release.set()
    await holder

    assert report.errors == []          # retention never waited for the held row (no lock timeout)
    assert 2.5 < took < 30
    assert await _count(platform, tenant, "whatsapp_messages", "message_id = 'old-7'") == 1
    assert await _count(platform, tenant, "whatsapp_messages", "message_id LIKE 'live-%'") == 20
    # A writer waits for one batch at most (a few milliseconds; generous for a loaded server).
    assert max(latencies) < 1.0, latencies


async def _order(conn, status, changed_at):
    customer = await conn.fetchval("INSERT INTO customers (first_name) VALUES ('Thandi') RETURNING id")
    vendor = await conn.fetchval(
        "INSERT INTO vendors (business_name, address) VALUES ('Spaza', '{}') RETURNING id")
    order = await conn.fetchval(
        "INSERT INTO orders (order_number, customer_id, vendor_id, status, subtotal, total_amount,"
        " delivery_address, created_at, updated_at) VALUES ($1, $2, $3, $4, 10, 10, '{}', $5, $5)"
        " RETURNING id", f"WK-{uuid.uuid4().hex[:8]}", customer, vendor, status, changed_at)
    await conn.execute("INSERT INTO payments (order_id, gateway, method, amount, status, created_at)"
                       " VALUES ($1, 'test', 'card', 10, 'completed', $2)", order, changed_at)
    delivery = await conn.fetchval(
        "INSERT INTO deliveries (order_id, status, created_at) VALUES ($1, $2, $3) RETURNING id",
        order, "delivered" if status == "delivered" else "assigned", changed_at)
    await conn.execute("INSERT INTO order_status_history (order_id, to_status, created_at) VALUES ($1, $2, $3)",
                       order, status, changed_at)
    await conn.execute("INSERT INTO delivery_events_outbox (delivery_id, event_type, payload, published_at)"
                       " VALUES ($1, 'delivered', '{}', $2)", delivery, changed_at)
    return order


async def test_orders_and_payments_are_kept_unless_the_operator_allows_deleting_them(platform):
    tenant = await create_tenant(platform, "Books Spaza")
    async with _tenant_tx(platform, tenant) as conn:
        ancient = await _order(conn, "delivered", _days_ago(9 * 365))
        open_old = await _order(conn, "dispatched", _days_ago(9 * 365))
        recent = await _order(conn, "delivered", _days_ago(30))

    await run_retention(platform, FAST, now=NOW)       # the defaults: orders inactive
    assert await _count(platform, tenant, "orders") == 3
    assert await _count(platform, tenant, "payments") == 3
    assert await _count(platform, tenant, "order_status_history") == 3

    with pytest.raises(RetentionPolicyError, match="ALLOW_FINANCIAL"):
        await set_policy(platform, "orders", 2557, active=True, allow_financial=False)
    with pytest.raises(RetentionPolicyError, match="legal minimum"):
        await set_policy(platform, "orders", 365, active=True, allow_financial=True)
    await set_policy(platform, "orders", 2557, active=True, allow_financial=True)
    # Activated, but this process does not allow financial deletion: refused and kept.
    report = await run_retention(platform, FAST, table="orders", now=NOW)
    assert len(report.refused) == 1 and "ALLOW_FINANCIAL" in report.refused[0]
    assert await _count(platform, tenant, "orders") == 3

    report = await run_retention(platform, replace(FAST, allow_financial=True), table="orders", now=NOW)
    deleted = {o.table: o.deleted for o in report.outcomes}
    assert deleted["orders"] == 1 and deleted["payments"] == 1 and deleted["deliveries"] == 1
    # (its published delivery event went with the first run: the outbox's own 90-day policy)
    assert deleted["order_status_history"] == 1 and deleted["tracking_links"] == 0
    async with _tenant_tx(platform, tenant) as conn:
        assert {r[0] for r in await conn.fetch("SELECT id FROM orders")} == {open_old, recent}
        assert await conn.fetchval("SELECT count(*) FROM payments WHERE order_id = $1", ancient) == 0
    assert any(p.table_name == "orders" and p.is_active for p in await list_policies(platform, allow_financial=True))


async def test_outbox_rows_go_only_once_published_and_their_delivery_ended(platform):
    tenant = await create_tenant(platform, "Outbox Spaza")
    async with _tenant_tx(platform, tenant) as conn:
        await _order(conn, "delivered", _days_ago(200))       # published event, delivery ended
        live = await _order(conn, "dispatched", _days_ago(200))  # published, delivery under way
        order = await conn.fetchval("SELECT id FROM orders WHERE id <> $1 LIMIT 1", live)
        await conn.execute("INSERT INTO order_events_outbox (order_id, event_type, payload, created_at)"
                           " VALUES ($1, 'paid', '{}', $2)", order, _days_ago(200))   # never published
        await conn.execute("INSERT INTO order_events_outbox (order_id, event_type, payload, published_at)"
                           " VALUES ($1, 'paid', '{}', $2)", order, _days_ago(200))

    await run_retention(platform, FAST, now=NOW)

    assert await _count(platform, tenant, "delivery_events_outbox") == 1
    assert await _count(platform, tenant, "delivery_events_outbox",
                        "delivery_id IN (SELECT id FROM deliveries WHERE order_id = $1)", live) == 1
    assert await _count(platform, tenant, "order_events_outbox") == 1
    assert await _count(platform, tenant, "order_events_outbox", "published_at IS NULL") == 1


async def test_a_policy_row_written_behind_the_cli_is_refused_by_name(platform):
    await create_tenant(platform, "Hostile Spaza")
    async with connection(platform.control) as conn:
        await conn.execute("INSERT INTO data_retention_policies (table_name, retention_days) VALUES ($1, 1)",
                           "users; DROP TABLE users")
        await conn.execute("INSERT INTO data_retention_policies (table_name, retention_days, conditions)"
                           " VALUES ('notifications', 5, $1::jsonb)", '{"1=1) OR (true": ["x"]}')
    report = await run_retention(platform, FAST, now=NOW)
    assert len(report.refused) == 2
    assert any("not a table retention knows" in r for r in report.refused)
    assert any("conditions key" in r for r in report.refused)
    with pytest.raises(asyncpg.CheckViolationError):
        async with connection(platform.control) as conn:
            await conn.execute("INSERT INTO data_retention_policies (table_name, retention_days)"
                               " VALUES ('notifications', 0)")


def _wakala(argv, capsys):
    """``wakala retention ...`` as the console script runs it (exit status 2 on a user error)."""
    import argparse

    from dispatch.cli.retention import register
    from schema.errors import WakalaError

    parser = argparse.ArgumentParser(prog="wakala")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)

    async def call():
        try:
            return await args.handler(args)
        except WakalaError as exc:
            print(f"wakala {args.command}: {exc}")
            return 2

    return call


async def test_the_operator_commands(platform, monkeypatch, capsys):
    monkeypatch.setenv("WAKALA_CONTROL_DSN", platform.control.url())
    monkeypatch.delenv("WAKALA_RETENTION_ALLOW_FINANCIAL", raising=False)
    tenant = await create_tenant(platform, "Cli Spaza")
    async with _tenant_tx(platform, tenant) as conn:
        await _messages(conn, 3, _days_ago(400), "old")

    assert await _wakala(["retention", "policies"], capsys)() == 0
    listed = capsys.readouterr().out
    assert re.search(r"whatsapp_messages +365 +yes", listed) and re.search(r"orders +2557 +no", listed)
    assert "Companies Act" in listed

    assert await _wakala(["retention", "set", "whatsapp_messages", "--days", "90",
                          "--reason", "shorter, asked by the tenant"], capsys)() == 0
    assert "older than 90 day(s) are deleted" in capsys.readouterr().out
    hostile = [(["set", "users; DROP TABLE users", "--days", "5"], "not a table retention knows"),
               (["set", "whatsapp_messages", "--days", "0"], "between 1 and 36500"),
               (["set", "whatsapp_messages", "--days", "-3"], "between 1 and 36500"),
               (["set", "payments", "--days", "4000"], "kept with their order"),
               (["set", "orders", "--days", "2557"], "ALLOW_FINANCIAL"),
               (["set", "whatsapp_messages", "--days", "9", "--reason", "a\nb"], "reason must be"),
               (["run", "--tenant", "no-such-tenant"], "no tenant with id or slug"),
               (["run", "--tenant", "x\0y"], "no tenant with id or slug"),
               (["run", "--table", "users"], "not a table retention knows")]
    for argv, message in hostile:
        assert await _wakala(["retention", *argv], capsys)() == 2, argv
        assert message in capsys.readouterr().out
    with pytest.raises(SystemExit):
        _wakala(["retention", "set", "whatsapp_messages", "--days", "ninety"], capsys)
    assert await _wakala(["retention", "set", "orders", "--days", "2557", "--inactive"], capsys)() == 0
    capsys.readouterr()

    assert await _wakala(["retention", "run", "--dry-run", "--tenant", tenant.slug], capsys)() == 0
    out = capsys.readouterr().out
    assert "would delete" in out and "dry run" in out and "3 row(s) would be deleted" in out
    assert await _count(platform, tenant, "whatsapp_messages") == 3

    from schema.retention.runner import maintenance_lock

    async with maintenance_lock(platform) as held:
        assert held is not None
        assert await _wakala(["retention", "run"], capsys)() == 2
        assert "maintenance round" in capsys.readouterr().out
    assert await _wakala(["retention", "run", "--table", "whatsapp_messages"], capsys)() == 0
    assert "3 row(s) deleted" in capsys.readouterr().out
    assert await _count(platform, tenant, "whatsapp_messages") == 0


async def test_a_busy_table_stops_only_itself_and_the_next_run_finishes_it(platform):
    tenant = await create_tenant(platform, "Busy Analytics")
    async with _tenant_tx(platform, tenant) as conn:
        await conn.execute(
            "CREATE TABLE analytics_events_y2020m01 PARTITION OF analytics_events "
            "FOR VALUES FROM ('2020-01-01 00:00:00+00') TO ('2020-02-01 00:00:00+00')")
        await _messages(conn, 2, _days_ago(400), "old")
    reading, done = asyncio.Event(), asyncio.Event()

    async def long_report():          # a reader of analytics_events that will not finish soon
        async with _tenant_tx(platform, tenant) as conn:
            await conn.fetchval("SELECT count(*) FROM analytics_events")
            reading.set()
            await done.wait()

    reader = asyncio.create_task(long_report())
    await reading.wait()
    try:
        report = await run_retention(platform, FAST, tenant=str(tenant.id), now=NOW)
    finally:
        done.set()
        await reader
    errors = {o.table: o.error for o in report.outcomes if o.error}
    assert list(errors) == ["analytics_events"] and "LockNotAvailable" in errors["analytics_events"]
    assert await _count(platform, tenant, "whatsapp_messages") == 0        # the others went on
    logged = await _log_rows(platform, report.run_id)
    assert "LockNotAvailable" in logged["analytics_events"]["error_message"]

    again = await run_retention(platform, FAST, tenant=str(tenant.id), now=NOW)
    assert again.errors == []
    assert next(o for o in again.outcomes if o.table == "analytics_events").partitions_dropped == [
        "analytics_events_y2020m01"]
