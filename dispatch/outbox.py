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
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from schema.db import TenantDatabase

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
