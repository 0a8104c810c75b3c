"""The outbox relay: events written in the transaction that made them, published after commit.

Two outboxes share this relay. ``dispatch.deliveries.transition`` inserts one
``delivery_events_outbox`` row in the same transaction as a delivery's state change (topic
``delivery-events``, keyed by delivery id); ``dispatch.order_records`` does the same for
orders in ``order_events_outbox`` (topic ``order-events``, keyed by order id). So an event
exists if and only if its change committed. A relay publishes one outbox's unpublished rows
to its topic (keyed by the row's delivery or order, so each one's events stay in order on one
partition) and marks them published, in one transaction per tenant batch:

1. lock the oldest unpublished rows (``FOR UPDATE SKIP LOCKED``: several relays never take
   the same rows),
2. produce them and wait for the broker's acknowledgement,
3. mark them published and commit.

A crash after 2 and before 3 publishes those rows again on the next pass: delivery is
at-least-once and every event carries its outbox ``id`` for consumers to deduplicate on.
A broker failure in 2 rolls back and leaves the rows for the next pass; nothing is lost.

``run`` is the relay of a running engine: it LISTENs on every shard for the notification
that a committing transaction sends (channel ``wakala_outbox`` for deliveries,
``wakala_order_outbox`` for orders; payload: the tenant), and publishes that tenant at once;
every ``sweep_s`` it also drains every active tenant, which covers notifications lost while
a connection was down. The seed has no outbox: see docs/schema.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from dispatch.commerce.orders.records import ORDER_OUTBOX_CHANNEL
from dispatch.deliveries.store import OUTBOX_CHANNEL
from schema.connect import connect
from schema.db import TenantDatabase
from schema.settings import DSN, PostgresSettings
from schema.shards import list_shards
from schema.tenants import list_tenants

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outbox:
    """An outbox table, the column its events are keyed by, and its wake-up channel."""

    table: str
    key_column: str
    channel: str


OUTBOXES = {
    o.table: o for o in (
        Outbox("delivery_events_outbox", "delivery_id", OUTBOX_CHANNEL),
        Outbox("order_events_outbox", "order_id", ORDER_OUTBOX_CHANNEL),
    )
}
# Identifiers come from OUTBOXES only (never from input) and are quoted all the same.
UNPUBLISHED_SQL = """
SELECT id, seq, {key}, event_type, payload, created_at
FROM {table}
WHERE published_at IS NULL
ORDER BY seq
LIMIT $1
FOR UPDATE SKIP LOCKED
"""
MARK_PUBLISHED_SQL = "UPDATE {table} SET published_at = now() WHERE id = ANY($1::uuid[])"


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def event_message(tenant_id: str, row, key_column: str = "delivery_id") -> tuple[bytes, bytes]:
    """(key, value) of one outbox row on its topic; the value names the key column
    (``delivery_id`` or ``order_id``)."""
    payload = row["payload"]
    if isinstance(payload, str):
        payload = json.loads(payload)
    key = str(row[key_column])
    value = {
        "id": str(row["id"]), "tenant_id": tenant_id, "seq": row["seq"],
        key_column: key, "type": row["event_type"],
        "created_at": row["created_at"].isoformat(), "payload": payload,
    }
    return key.encode(), json.dumps(value, separators=(",", ":")).encode()


class OutboxRelay:
    """Publishes one outbox (``table``, default the delivery events) to ``topic``."""

    def __init__(self, db: TenantDatabase, producer: AIOKafkaProducer, topic: str, *,
                 table: str = "delivery_events_outbox", key_column: str | None = None,
                 batch: int = 500):
        outbox = OUTBOXES.get(table)
        if outbox is None or key_column not in (None, outbox.key_column):
            known = ", ".join(f"{o.table} (key {o.key_column})" for o in OUTBOXES.values())
            raise ValueError(f"unknown outbox {table!r} keyed by {key_column!r}; known: {known}")
        self.db = db
        self.producer = producer
        self.topic = topic
        self.batch = batch
        self.outbox = outbox
        self._unpublished_sql = UNPUBLISHED_SQL.format(key=_quote(outbox.key_column),
                                                       table=_quote(outbox.table))
        self._mark_published_sql = MARK_PUBLISHED_SQL.format(table=_quote(outbox.table))

    async def publish_tenant(self, tenant_id: uuid.UUID | str) -> int:
        """Publish one batch of a tenant's unpublished events; returns how many."""
        async with self.db.tenant_transaction(tenant_id) as tx:
            rows = await tx.fetch(self._unpublished_sql, self.batch)
            if not rows:
                return 0
            key_column = self.outbox.key_column
            futures = [await self.producer.send(self.topic, value=v, key=k)
                       for k, v in (event_message(str(tenant_id), r, key_column) for r in rows)]
            await asyncio.gather(*futures)   # raises (and rolls back) if the broker refused any
            await tx.execute(self._mark_published_sql, [r["id"] for r in rows])
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
                log.warning("publishing %s of tenant %s failed (%s); will retry", self.outbox.table,
                            tenant_id, exc)
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
                await conn.add_listener(self.outbox.channel, notified)
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
