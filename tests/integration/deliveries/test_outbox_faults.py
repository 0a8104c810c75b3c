"""The outbox relay under faults: one broken tenant does not starve the others, its LISTEN
connections run as the application role, and a topic lost by the broker is recreated."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from dispatch.deliveries.outbox import OutboxRelay, ensure_topic
from schema.db import TenantDatabase
from schema.shards import list_shards
from schema.tenants import create_tenant
from tests.integration.deliveries.test_outbox import _events, _unpublished
from tests.integration.deliveries.test_store import _populate
from tests.integration.streams.harness import eventually

pytestmark = pytest.mark.timeout(120)


async def _owner_on_shard(settings, tenant):
    shard = next(s for s in await list_shards(settings) if s.shard_id == tenant.shard_id)
    return await asyncpg.connect(settings.control.with_database(shard.database).url())


async def test_a_broken_tenant_is_counted_and_the_tenants_after_it_still_relay(platform, stream_settings):
    broken = await create_tenant(platform, f"Broken Spaza {uuid.uuid4().hex[:6]}")
    healthy = await create_tenant(platform, f"Healthy Spaza {uuid.uuid4().hex[:6]}")
    async with TenantDatabase(platform) as db:
        await _populate(db, broken)
        good = await _populate(db, healthy)
        # The broken tenant's outbox cannot be read by the application role any more.
        owner = await _owner_on_shard(platform, broken)
        try:
            role = await owner.fetchval("SELECT quote_ident($1)", platform.app_role)
            await owner.execute(f"REVOKE ALL ON {broken.schema_name}.delivery_events_outbox FROM {role}")
        finally:
            await owner.close()
        producer = AIOKafkaProducer(bootstrap_servers=stream_settings.kafka_bootstrap, linger_ms=2)
        await producer.start()
        try:
            relay = OutboxRelay(db, producer, stream_settings.delivery_events_topic)
            # the broken tenant first: before, its error ended the pass and the healthy one waited
            assert await relay.publish_all([broken.id, healthy.id]) == 1
            assert relay.failures == 1 and not relay.broker_failed
            assert await _unpublished(db, healthy.id) == 0
        finally:
            await producer.stop()
    events = await _events(stream_settings.kafka_bootstrap, stream_settings.delivery_events_topic, 1)
    assert [(e["tenant_id"], e["delivery_id"]) for _, e in events] == [(str(healthy.id), str(good.delivery_id))]


async def test_the_listen_connections_log_in_as_the_application_role(platform, stream_settings):
    tenant = await create_tenant(platform, f"Listening Spaza {uuid.uuid4().hex[:6]}")
    async with TenantDatabase(platform) as db:
        w = await _populate(db, tenant)
        producer = AIOKafkaProducer(bootstrap_servers=stream_settings.kafka_bootstrap, linger_ms=2)
        await producer.start()
        relay = OutboxRelay(db, producer, stream_settings.delivery_events_topic)
        task = asyncio.create_task(relay.run(platform, sweep_s=0.5))
        admin = await asyncpg.connect(platform.control.with_database("postgres").url())
        try:
            databases = [s.database for s in await list_shards(platform)]

            async def listeners() -> list[str]:
                rows = await admin.fetch(
                    "SELECT usename FROM pg_stat_activity WHERE datname = ANY($1::text[]) "
                    "AND query ILIKE 'LISTEN%'", databases)
                return [r["usename"] for r in rows]

            await eventually(lambda: _has(listeners, len(databases)), within=20)
            assert await listeners() == [platform.app_role] * len(databases)

            async def relayed() -> bool:   # the first sweep relays the created event
                return await _unpublished(db, tenant.id) == 0

            await eventually(relayed, within=20)

            # LISTEN connections terminated under the relay are opened again, as the app role
            before = {r["pid"] for r in await admin.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = ANY($1::text[]) AND query ILIKE 'LISTEN%'",
                databases)}
            for pid in before:
                await admin.execute("SELECT pg_terminate_backend($1)", pid)

            async def reopened() -> bool:
                rows = await admin.fetch(
                    "SELECT pid, usename FROM pg_stat_activity WHERE datname = ANY($1::text[]) "
                    "AND query ILIKE 'LISTEN%'", databases)
                return (len(rows) == len(databases) and not {r["pid"] for r in rows} & before
                        and all(r["usename"] == platform.app_role for r in rows))

            await eventually(reopened, within=20)
            assert w.delivery_id is not None
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await admin.close()
            await producer.stop()


async def _has(listeners, n: int) -> bool:
    return len(await listeners()) >= n


async def test_ensure_topic_recreates_a_missing_topic_once(stream_settings):
    topic = f"{stream_settings.delivery_events_topic}-gone"
    assert await ensure_topic(stream_settings.kafka_bootstrap, topic, 2) is True
    assert await ensure_topic(stream_settings.kafka_bootstrap, topic, 2) is False
    admin = AIOKafkaAdminClient(bootstrap_servers=stream_settings.kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
        assert len(described[0]["partitions"]) == 2
    finally:
        await admin.close()
    assert json.dumps(topic)
