"""The dispatcher's read of delivery events under faults, against real Redis, Postgres and broker.

A handler failure does not lose the event (it is handled again before the read position passes
it, and the driver it frees is available again); an event that always fails is parked after
bounded attempts and the stream goes on.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from dispatch.deliveries.outbox import ensure_topic
from dispatch.deliveries.store import transition
from dispatch.matching.consumer import DONE, EventConsumer
from dispatch.matching.keys import (
    dispatcher_event_key,
    dispatcher_offsets_key,
    dispatcher_parked_key,
    round_key,
)
from dispatch.matching.terms import RoundOutcome
from geo import destination
from schema.errors import DatabaseUnavailable
from schema.tenants import create_tenant
from tests.integration.deliveries.test_outbox_faults import _owner_on_shard
from tests.integration.matching.test_dispatcher import _driver, matcher
from tests.integration.matching.test_nearest import put_live
from tests.integration.streams.harness import eventually
from tests.integration.test_dispatch_e2e import VENDOR

pytestmark = pytest.mark.timeout(90)


async def _produce(bootstrap: str, topic: str, events: list[dict]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for event in events:
            await producer.send_and_wait(topic, json.dumps(event).encode(), key=event["delivery_id"].encode())
    finally:
        await producer.stop()


async def test_a_finish_event_whose_handling_fails_once_is_retried_and_frees_the_driver(
        platform, stream_settings):
    topic, group = stream_settings.delivery_events_topic, f"{stream_settings.app_id}-dispatcher"
    await ensure_topic(stream_settings.kafka_bootstrap, topic, 1)
    async with matcher(platform, stream_settings) as m:
        driver, _ = await _driver(m.db, m.tenant_id, 1)
        await put_live(m.store, m.tenant_id, [(driver, *destination(*VENDOR, 0.0, 200), "motorbike")])
        delivery = await m.delivery(VENDOR)
        assert await m.dispatcher.dispatch(m.tenant_id, delivery) == RoundOutcome(delivery, "offered", driver)
        assert (await m.offers.reply(driver, delivery, True)).status == "assigned"
        assert await m.store.status(driver) == "busy"
        await transition(m.db, m.tenant_id, delivery, "cancel", actor="system:test", reason="shop closed")

        calls = []
        real_forget = m.dispatcher.forget

        async def forget_failing_once(delivery_id: str) -> None:
            calls.append(delivery_id)
            if len(calls) == 1:
                raise ConnectionError("Postgres went away")   # the fault, injected once
            await real_forget(delivery_id)

        m.dispatcher.forget = forget_failing_once
        event = {"id": str(uuid.uuid4()), "tenant_id": m.tenant_id, "delivery_id": delivery, "type": "cancel"}
        await _produce(stream_settings.kafka_bootstrap, topic, [event])
        task = asyncio.create_task(m.dispatcher.run(stream_settings.kafka_bootstrap, topic, group))
        try:
            async def available() -> bool:
                return await m.store.status(driver) == "available"

            await eventually(available, within=30, every=0.1)
            assert calls == [delivery, delivery]   # failed, then handled on the retry
            assert await m.dispatcher.claims.active_deliveries(driver) == set()
            assert (await m.redis.get(dispatcher_event_key(group, event["id"]))) == DONE.encode()

            async def passed() -> bool:
                return await m.redis.hget(dispatcher_offsets_key(group, topic), "0") == b"1"

            await eventually(passed, within=10)   # and only then is the position past it
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class FlakyHandler:
    """A handler whose ``poison`` events always fail; records what it was given."""

    mode, window_s = "greedy", 0.2

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.seen: list[str] = []

    async def handle(self, events: list[dict]) -> list[dict]:
        self.seen += [e["id"] for e in events]
        return [e for e in events if e["type"] == "poison"]


async def test_a_poison_event_is_parked_after_bounded_attempts_and_the_stream_goes_on(stream_settings):
    topic, group = stream_settings.delivery_events_topic, f"{stream_settings.app_id}-poison"
    await ensure_topic(stream_settings.kafka_bootstrap, topic, 1)
    redis = aioredis.from_url(stream_settings.redis_url)
    handler = FlakyHandler(redis)
    tenant, delivery = str(uuid.uuid4()), str(uuid.uuid4())
    poison = {"id": f"poison-{uuid.uuid4()}", "tenant_id": tenant, "delivery_id": delivery, "type": "poison"}
    after = {"id": f"after-{uuid.uuid4()}", "tenant_id": tenant, "delivery_id": delivery, "type": "cancel"}
    await _produce(stream_settings.kafka_bootstrap, topic, [poison, after])
    consumer = EventConsumer(handler, stream_settings.kafka_bootstrap, topic, group, max_attempts=3,
                             backoff_min_s=0.05, backoff_max_s=0.2)
    task = asyncio.create_task(consumer.run())
    try:
        async def parked() -> bool:
            return consumer.parked == 1 and after["id"] in handler.seen

        await eventually(parked, within=30, every=0.05)
        assert handler.seen.count(poison["id"]) == 3          # bounded, then parked
        assert handler.seen.count(after["id"]) == 1           # handled once, after the poison
        stored = await redis.lrange(dispatcher_parked_key(group), 0, -1)
        assert [json.loads(s) for s in stored] == [poison]
        assert await redis.hget(dispatcher_offsets_key(group, topic), "0") == b"2"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await redis.delete(dispatcher_parked_key(group), dispatcher_offsets_key(group, topic),
                           dispatcher_event_key(group, poison["id"]), dispatcher_event_key(group, after["id"]))
        await redis.aclose()


async def test_a_broken_tenant_does_not_stop_the_pending_sweep_of_the_others(platform, stream_settings):
    broken = await create_tenant(platform, f"Broken Spaza {uuid.uuid4().hex[:6]}")   # listed first
    owner = await _owner_on_shard(platform, broken)
    try:
        role = await owner.fetchval("SELECT quote_ident($1)", platform.app_role)
        await owner.execute(f"REVOKE ALL ON {broken.schema_name}.deliveries FROM {role}")
    finally:
        await owner.close()
    async with matcher(platform, stream_settings) as m:
        driver, _ = await _driver(m.db, m.tenant_id, 1)
        await put_live(m.store, m.tenant_id, [(driver, *destination(*VENDOR, 0.0, 200), "motorbike")])
        stranded = await m.delivery(VENDOR)   # its created event was lost: nobody dispatched it
        async with m.db.tenant_transaction(m.tenant_id) as tx:
            await tx.execute("UPDATE deliveries SET created_at = now() - interval '1 minute', "
                             "updated_at = now() - interval '1 minute' WHERE id = $1", uuid.UUID(stranded))

        assert await m.dispatcher._sweep_pending() == 1

        assert await m.status(stranded) == ("offered", driver)


async def test_a_round_orphaned_by_a_database_failure_is_dispatched_again_by_the_pending_sweep(
        platform, stream_settings):
    async with matcher(platform, stream_settings) as m:
        delivery = await m.delivery(VENDOR)
        real = m.offers.transitions

        async def database_gone(tenant, delivery_id, event, **kwargs):
            if str(event) in ("give_up", "DeliveryEvent.GIVE_UP"):
                raise DatabaseUnavailable("the shard's session was terminated")
            return await real(tenant, delivery_id, event, **kwargs)

        # nobody is live: the round gives up at once, and the give-up's write fails
        m.offers.transitions = database_gone
        assert await m.dispatcher.dispatch(m.tenant_id, delivery) is None
        m.offers.transitions = real
        redis = aioredis.from_url(stream_settings.redis_url)
        try:
            assert await redis.exists(round_key(delivery)) == 1   # a round with nothing in flight
        finally:
            await redis.aclose()
        assert await m.status(delivery) == ("pending", None)
        driver, _ = await _driver(m.db, m.tenant_id, 1)
        await put_live(m.store, m.tenant_id, [(driver, *destination(*VENDOR, 0.0, 200), "motorbike")])
        assert await m.dispatcher._sweep_pending() == 0   # changed 5 s ago at the earliest
        async with m.db.tenant_transaction(m.tenant_id) as tx:
            await tx.execute("UPDATE deliveries SET updated_at = now() - interval '6 seconds' WHERE id = $1",
                             uuid.UUID(delivery))
        assert await m.dispatcher._sweep_pending() == 1
        assert await m.status(delivery) == ("offered", driver)
        # an open offer is left to its deadline: the sweep does not start another round
        async with m.db.tenant_transaction(m.tenant_id) as tx:
            await tx.execute("UPDATE deliveries SET status = 'pending', updated_at = now() - interval '1 minute' "
                             "WHERE id = $1", uuid.UUID(delivery))
        assert await m.dispatcher._sweep_pending() == 0


async def test_an_offer_whose_end_was_not_recorded_is_released_and_dispatched_again_by_the_sweep(
        platform, stream_settings):
    async with matcher(platform, stream_settings) as m:
        delivery = await m.delivery(VENDOR)
        driver, _ = await _driver(m.db, m.tenant_id, 1)
        # the database says offered (a decline's transition failed), Redis has nothing open
        async with m.db.tenant_transaction(m.tenant_id) as tx:
            await tx.execute("UPDATE deliveries SET status = 'offered', driver_id = $2, "
                             "updated_at = now() - interval '5 seconds' WHERE id = $1",
                             uuid.UUID(delivery), uuid.UUID(driver))
        await put_live(m.store, m.tenant_id, [(driver, *destination(*VENDOR, 0.0, 200), "motorbike")])
        assert await m.dispatcher._sweep_pending() == 0   # not yet longer than an offer lasts
        async with m.db.tenant_transaction(m.tenant_id) as tx:
            await tx.execute("UPDATE deliveries SET updated_at = now() - make_interval(secs => $2) WHERE id = $1",
                             uuid.UUID(delivery), m.offers.offer_timeout_s + 11)
        assert await m.dispatcher._sweep_pending() == 1
        assert await m.status(delivery) == ("offered", driver)
        assert [d for d, _, _ in await m.offers.pending_deadlines()] == [delivery]
