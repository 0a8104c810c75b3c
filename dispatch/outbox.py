"""The outbox relay: delivery events written in the transition's transaction, published after commit.

``dispatch.deliveries.transition`` inserts one ``delivery_events_outbox`` row in the same
transaction as the state change, so an event exists if and only if the change committed.
This relay publishes unpublished rows to Kafka ``delivery-events`` (keyed by delivery id, so
a delivery's events stay in order on one partition) and marks them published, in one
transaction per tenant batch:

1. lock the oldest unpublished rows (``FOR UPDATE SKIP LOCKED``: several relays never take
   the same rows),
2. produce them and wait for the broker's acknowledgement,
3. mark them published and commit.

A crash after 2 and before 3 publishes those rows again on the next pass: delivery is
at-least-once and every event carries its outbox ``id`` for consumers to deduplicate on.
A broker failure in 2 rolls back and leaves the rows for the next pass; nothing is lost.

``run`` is the relay of a running engine: it LISTENs on every shard for the
``wakala_outbox`` notification that a committing transition sends (payload: the tenant), and
publishes that tenant at once; every ``sweep_s`` it also drains every active tenant, which
covers notifications lost while a connection was down. The seed has no outbox: see
docs/schema.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from dispatch.deliveries import OUTBOX_CHANNEL
from schema.connect import connect
from schema.db import TenantDatabase
from schema.settings import DSN, PostgresSettings
from schema.shards import list_shards
from schema.tenants import list_tenants

log = logging.getLogger(__name__)

UNPUBLISHED_SQL = """
SELECT id, seq, delivery_id, event_type, payload, created_at
FROM delivery_events_outbox
WHERE published_at IS NULL
ORDER BY seq
LIMIT $1
FOR UPDATE SKIP LOCKED
"""
MARK_PUBLISHED_SQL = "UPDATE delivery_events_outbox SET published_at = now() WHERE id = ANY($1::uuid[])"


def event_message(tenant_id: str, row) -> tuple[bytes, bytes]:
    """(key, value) of one outbox row on `delivery-events`."""
    payload = row["payload"]
    if isinstance(payload, str):
        payload = json.loads(payload)
    value = {
        "id": str(row["id"]), "tenant_id": tenant_id, "seq": row["seq"],
        "delivery_id": str(row["delivery_id"]), "type": row["event_type"],
        "created_at": row["created_at"].isoformat(), "payload": payload,
    }
    return str(row["delivery_id"]).encode(), json.dumps(value, separators=(",", ":")).encode()


class OutboxRelay:
    def __init__(self, db: TenantDatabase, producer: AIOKafkaProducer, topic: str, *, batch: int = 500):
        self.db = db
        self.producer = producer
        self.topic = topic
        self.batch = batch

    async def publish_tenant(self, tenant_id: uuid.UUID | str) -> int:
        """Publish one batch of a tenant's unpublished events; returns how many."""
        async with self.db.tenant_transaction(tenant_id) as tx:
            rows = await tx.fetch(UNPUBLISHED_SQL, self.batch)
            if not rows:
                return 0
            futures = [await self.producer.send(self.topic, value=v, key=k)
                       for k, v in (event_message(str(tenant_id), r) for r in rows)]
            await asyncio.gather(*futures)   # raises (and rolls back) if the broker refused any
            await tx.execute(MARK_PUBLISHED_SQL, [r["id"] for r in rows])
        return len(rows)

    async def publish_all(self, tenant_ids: Iterable[uuid.UUID | str]) -> int:
        """Drain every tenant; a failing tenant is logged and retried on the next pass."""
        total = 0
        for tenant_id in tenant_ids:
            try:
                while (n := await self.publish_tenant(tenant_id)) > 0:
                    total += n
                    if n < self.batch:
                        break
            except KafkaError as exc:
                log.warning("publishing delivery events of tenant %s failed (%s); will retry", tenant_id, exc)
        return total

    async def run(self, settings: PostgresSettings, *, sweep_s: float = 5.0) -> None:
        """Publish until cancelled: at each notification, and every ``sweep_s`` for all tenants."""
        woken: set[str] = set()
        wake = asyncio.Event()

        def notified(_conn, _pid, _channel, payload: str) -> None:
            woken.add(payload)
            wake.set()

        listeners = []
        try:
            for shard in await list_shards(settings):
                dsn = DSN(shard.host, shard.port, settings.control.user, shard.database,
                          settings.control.password)
                conn = await connect(dsn)
                await conn.add_listener(OUTBOX_CHANNEL, notified)
                listeners.append(conn)
            next_sweep = 0.0
            loop = asyncio.get_running_loop()
            while True:
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + sweep_s
                    try:
                        tenants = [t.id for t in await list_tenants(settings) if t.status == "active"]
                        await self.publish_all(tenants)
                    except Exception:   # Postgres briefly away: the next sweep tries again
                        log.exception("outbox sweep failed")
                try:
                    await asyncio.wait_for(wake.wait(), max(0.0, next_sweep - loop.time()))
                except TimeoutError:
                    continue
                wake.clear()
                batch = list(woken)
                woken.clear()
                try:
                    await self.publish_all(batch)
                except Exception:
                    log.exception("publishing notified tenants failed; the sweep will retry")
        finally:
            for conn in listeners:
                with contextlib.suppress(Exception):
                    await conn.close()
