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

Faults, and why they are handled where they are:

* One tenant failing (its schema broken, a row the broker refuses, its shard away) must not
  starve the tenants after it: ``publish_all`` logs and counts the failure per tenant
  (``failures``) and goes on; the next pass tries that tenant again.
* A LISTEN connection that dies (its session terminated, the shard restarted) is
  reconnected at the next sweep; until then the sweep alone relays that shard.
* The LISTEN connections log in as the application role, not the owner: listening needs no
  privilege, and the engine's processes run as the role that RLS applies to.
* A broker restarted empty has lost the topic. The bundled broker (tansu, memory storage)
  still acknowledges records sent to the lost topic, and shows them once the topic is created
  again, but lists no such topic, so consumers cannot read it until someone creates it, and
  such records were seen lost (those of one partition in three). So, with ``bootstrap``
  given, a batch is marked published only if the broker lists the topic after acknowledging
  it (one metadata request per batch); otherwise it rolls back, the topic is recreated
  (``ensure_topic``, with the partition count it was given) and the batch is sent again
  (consumers deduplicate on the event id). ``run`` also checks the topic at every sweep. The
  first sends after a recreation may fail once (the producer's metadata is stale), which rolls
  back and is retried too. While the broker keeps failing, the
  passes back off exponentially (``BACKOFF_MIN_S`` to ``BACKOFF_MAX_S``), so a broker that
  stays down costs a few calls a minute, never a tight loop.
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
from aiokafka.errors import KafkaError, KafkaTimeoutError, UnknownTopicOrPartitionError

from dispatch.commerce.orders.records import ORDER_OUTBOX_CHANNEL
from dispatch.deliveries.store import OUTBOX_CHANNEL
from schema.connect import connect
from schema.db import TenantDatabase
from schema.settings import DSN, PostgresSettings
from streams.topics import ensure_topics

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0


def app_listen_dsn(settings: PostgresSettings, host: str, port: int, database: str) -> DSN:
    """The DSN a relay LISTENs with on one shard: the application role, as the engine's pools
    connect (``schema.db.TenantDatabase``), never the owner of the control DSN."""
    return DSN(host, port, settings.app_role, database, settings.app_password)


async def ensure_topic(bootstrap: str, topic: str, partitions: int) -> bool:
    """Create ``topic`` with ``partitions`` if the broker does not have it; True if created.

    A broker restarted with memory storage comes back without its topics, and a producer
    or consumer must not let it auto-create one with its own default partition count. The
    creating is ``streams.topics.ensure_topics``'s (the location worker's and the gateway's
    too); a broker that does not answer in time is a ``KafkaTimeoutError`` like its other
    errors, so callers back off on ``KafkaError`` alone.
    """
    try:
        created = topic in await ensure_topics(bootstrap, {topic: partitions})
    except TimeoutError as exc:
        raise KafkaTimeoutError(f"the broker gave no answer about topic {topic}") from exc
    if created:
        log.warning("topic %s was missing on the broker; created it with %d partitions", topic, partitions)
    return created


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
                 batch: int = 500, bootstrap: str | None = None, partitions: int = 1):
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
        # Where to recreate the topic after a broker lost it (None: the caller's producer
        # is expected to reach a broker that keeps its topics).
        self.bootstrap = bootstrap
        self.partitions = partitions
        self.failures = 0          # tenant passes that failed, for metrics and tests
        self.broker_failed = False  # the last pass had a broker error
        self._backoff_s = 0.0

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
            if self.bootstrap is not None:
                cluster = await self.producer.client.fetch_all_metadata()
                if self.topic not in cluster.topics():
                    raise UnknownTopicOrPartitionError(f"the broker does not list {self.topic}")
            await tx.execute(self._mark_published_sql, [r["id"] for r in rows])
        return len(rows)

    async def publish_all(self, tenant_ids: Iterable[uuid.UUID | str]) -> int:
        """Drain every tenant; a failing tenant is logged, counted in ``failures`` and retried
        on the next pass, and the tenants after it are still drained."""
        total = 0
        self.broker_failed = False
        for tenant_id in tenant_ids:
            try:
                while (n := await self.publish_tenant(tenant_id)) > 0:
                    total += n
                    if n < self.batch:
                        break
            except KafkaError as exc:
                self.failures += 1
                self.broker_failed = True
                log.warning("publishing %s of tenant %s failed (%s: %s); will retry", self.outbox.table,
                            tenant_id, exc.__class__.__name__, exc)
            except Exception as exc:   # noqa: BLE001 - one tenant's fault is not the others'
                self.failures += 1
                log.error("publishing %s of tenant %s failed (%s: %s); the other tenants go on",
                          self.outbox.table, tenant_id, exc.__class__.__name__, exc)
        return total

    async def check_topic(self) -> bool:
        """Recreate the topic if the broker lost it (``bootstrap`` given); True if all is well."""
        if self.bootstrap is None:
            return True
        try:
            await ensure_topic(self.bootstrap, self.topic, self.partitions)
        except Exception as exc:   # noqa: BLE001 - the broker is away: the caller backs off
            log.warning("cannot check topic %s on the broker (%s: %s)", self.topic, exc.__class__.__name__, exc)
            return False
        return True

    async def _after_pass(self) -> None:
        """After a pass with a broker error: recreate the topic if the broker lost it, and wait
        (exponential backoff) before the next pass; after a clean pass, reset the backoff."""
        if not self.broker_failed:
            self._backoff_s = 0.0
            return
        self._backoff_s = min(BACKOFF_MAX_S, max(BACKOFF_MIN_S, self._backoff_s * 2))
        await self.check_topic()
        log.warning("%s: broker errors; next pass in %.1f s", self.outbox.table, self._backoff_s)
        await asyncio.sleep(self._backoff_s)

    async def _listen(self, settings: PostgresSettings, listeners: dict, notified) -> None:
        """(Re)open a LISTEN connection, as the application role, on every shard without one."""
        for key in await self.db.shard_addresses():   # listed as the app role too
            host, port, database = key
            conn = listeners.get(key)
            if conn is not None and not conn.is_closed():
                continue
            try:
                conn = await connect(app_listen_dsn(settings, host, port, database))
                await conn.add_listener(self.outbox.channel, notified)
            except Exception as exc:   # noqa: BLE001 - that shard is relayed by the sweep meanwhile
                log.warning("cannot LISTEN on shard %s (%s: %s); the sweep covers it",
                            database, exc.__class__.__name__, exc)
                continue
            listeners[key] = conn

    async def run(self, settings: PostgresSettings, *, sweep_s: float = 5.0) -> None:
        """Publish until cancelled: at each notification, and every ``sweep_s`` for all tenants."""
        woken: set[str] = set()
        wake = asyncio.Event()

        def notified(_conn, _pid, _channel, payload: str) -> None:
            woken.add(payload)
            wake.set()

        listeners: dict = {}
        try:
            next_sweep = 0.0
            loop = asyncio.get_running_loop()
            while True:
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + sweep_s
                    try:
                        await self._listen(settings, listeners, notified)
                        await self.check_topic()
                        tenants = await self.db.active_tenant_ids()   # as the app role
                        await self.publish_all(tenants)
                        await self._after_pass()
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
                    await self._after_pass()
                except Exception:
                    log.exception("publishing notified tenants failed; the sweep will retry")
        finally:
            for conn in listeners.values():
                with contextlib.suppress(Exception):
                    await conn.close()
