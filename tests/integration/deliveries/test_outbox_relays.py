"""Several relays on one outbox (one per engine process): one leads each shard and publishes
what is notified, in passes that gather many transactions; the others run no pass per event,
and take over when the leader goes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import pytest
from aiokafka import AIOKafkaProducer

from dispatch.commerce.orders.records import INSERT_EVENT_SQL
from dispatch.deliveries.outbox import OutboxRelay
from tests.integration.deliveries.test_outbox import _events
from tests.integration.deliveries.test_store import world  # noqa: F401 - the fixture
from tests.integration.streams.harness import eventually

pytestmark = pytest.mark.timeout(120)


class CountingRelay(OutboxRelay):
    """Counts its passes and what they published."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.passes = 0
        self.published = 0

    async def publish_all(self, tenant_ids):
        n = await super().publish_all(tenant_ids)
        self.passes += 1
        self.published += n
        return n


async def _write_events(db, tenant_id, order_id, n: int) -> None:
    """``n`` order events, each in a transaction of its own, as ``write_event`` writes them."""
    for i in range(n):
        async with db.tenant_transaction(tenant_id) as tx:
            await tx.execute(INSERT_EVENT_SQL, order_id, "placed", json.dumps({"n": i}), str(tenant_id))


async def _unpublished_orders(db, tenant_id) -> int:
    async with db.tenant_transaction(tenant_id, readonly=True) as tx:
        return await tx.fetchval("SELECT count(*) FROM order_events_outbox WHERE published_at IS NULL")


@contextlib.asynccontextmanager
async def _two_relays(db, platform, stream_settings, **run):
    """Two relays of the order outbox, as two engine processes run them, past their first
    sweep; (relays, their tasks), all stopped on the way out."""
    producer = AIOKafkaProducer(bootstrap_servers=stream_settings.kafka_bootstrap, linger_ms=2)
    await producer.start()
    relays = [CountingRelay(db, producer, stream_settings.order_events_topic, table="order_events_outbox")
              for _ in range(2)]
    tasks = [asyncio.create_task(r.run(platform, sweep_s=60, **run)) for r in relays]
    async def swept() -> bool:   # the first sweep of each is done
        return all(r.passes >= 1 for r in relays)

    try:
        await eventually(swept, within=20, every=0.05)
        yield relays, tasks
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await producer.stop()


async def test_one_relay_leads_and_gathers_many_transactions_in_a_pass(world, platform, stream_settings):  # noqa: F811
    db, w = world
    topic = stream_settings.order_events_topic
    async with _two_relays(db, platform, stream_settings, linger_s=0.2) as (relays, _):
        started = time.monotonic()
        await _write_events(db, w.tenant.id, w.order_id, 20)
        writing = time.monotonic() - started

        async def drained() -> bool:
            return await _unpublished_orders(db, w.tenant.id) == 0

        await eventually(drained, within=20, every=0.05)
        leader, follower = sorted(relays, key=lambda r: r.published, reverse=True)
        assert leader.published == 20
        assert follower.passes == 1 and follower.published == 0   # its first sweep, nothing per event
        # 20 commits, a pass per linger (0.2 s) at most while they were written
        assert leader.passes - 1 <= min(19, writing / 0.2 + 1), writing
    events = await _events(stream_settings.kafka_bootstrap, topic, 20)
    assert sorted(e["payload"]["n"] for _, e in events) == list(range(20))


async def test_the_other_relay_takes_over_when_the_leader_stops(world, platform, stream_settings):  # noqa: F811
    db, w = world
    async with _two_relays(db, platform, stream_settings) as (relays, tasks):
        await _write_events(db, w.tenant.id, w.order_id, 1)

        async def drained() -> bool:
            return await _unpublished_orders(db, w.tenant.id) == 0

        await eventually(drained, within=20, every=0.05)
        lead = max(range(2), key=lambda i: relays[i].published)
        tasks[lead].cancel()                       # its LISTEN sessions close, and its lead with them
        await asyncio.gather(tasks[lead], return_exceptions=True)
        other = relays[1 - lead]
        before = other.published
        await _write_events(db, w.tenant.id, w.order_id, 3)
        await eventually(drained, within=10, every=0.05)   # long before the next sweep (60 s)
        assert other.published == before + 3
