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
``wakala_order_outbox`` for orders; payload: the tenant), and publishes that tenant
``linger_s`` later (``LINGER_S``, 10 ms: the latency it adds to every event); every
``sweep_s`` it also drains every active tenant, which covers notifications lost while a
connection was down. The seed has no outbox: see docs/schema.md.

Metrics: events published and failed passes are counted per outbox; each sweep also measures,
per tenant and in the transaction of its first batch, how many rows were unpublished and how
old the oldest was, before publishing them (``backlog``, per shard, exported by
``dispatch.core.metrics.watch_outbox``). A healthy relay's sweep finds almost nothing (the
notified passes got there first); a backlog that grows and ages is a relay or broker stuck.

What a pass costs is paid per pass, not per event: a pass of one tenant is four statements
(begin, select, mark, commit), one produce request and one metadata request, whether it
carries one event or a hundred. So a relay makes few passes:

* The linger gathers the transactions that commit within it (and during the pass before)
  into one pass; a tenant notified many times meanwhile is published once. At 500 events/s
  a pass carries about ten events instead of one or two.
* Every engine process runs a relay of each outbox, and every notification reaches them all;
  if each ran a pass, all but one would find the rows locked or gone and run an empty
  transaction per event. So one relay per outbox and shard leads: it holds a session
  advisory lock (``LEADER_LOCK_SQL``) on its LISTEN connection, and only notifications that
  reach a leading connection start a pass. The others pass them over, costing nothing per
  event. The lock lives exactly as long as the connection that hears the notifications: a
  leader whose session ends (process gone, connection terminated) loses the lead with it,
  and another relay that passed notifications over tries for the lead at most every
  ``TAKEOVER_S`` (one round trip) and publishes those tenants when it wins. Every relay
  still sweeps, so a leader that is alive but stuck delays events by ``sweep_s`` at most,
  never loses them; the price of one leader is that one process does the relaying.

Faults, and why they are handled where they are:

* One tenant failing (its schema broken, a row the broker refuses, its shard away) must not
  starve the tenants after it: ``publish_all`` logs and counts the failure per tenant
  (``failures``) and goes on; the next pass tries that tenant again.
* A LISTEN connection that dies (its session terminated, the shard restarted) is
  reconnected at the next sweep; until then the sweep alone relays that shard, unless
  another relay takes its lead (above).
* The LISTEN connections log in as the application role, not the owner: listening needs no
  privilege, and the engine's processes run as the role that RLS applies to.
* A broker restarted empty has lost the topic. The bundled broker (tansu, memory storage)
  still acknowledges records sent to the lost topic, and shows them once the topic is created
  again, but lists no such topic, so consumers cannot read it until someone creates it, and
  such records were seen lost (those of one partition in three). So, with ``bootstrap``
  given, a batch is marked published only if the broker lists the topic after acknowledging
  it (one metadata request per batch, so per tenant and pass: one check for several tenants
  would have to follow the last of their acknowledgements); otherwise it rolls back, the
  topic is recreated (``ensure_topic``, with the partition count it was given) and the batch
  is sent again (consumers deduplicate on the event id). ``run`` also checks the topic at
  every sweep. The first sends after a recreation may fail once (the producer's metadata is
  stale), which rolls back and is retried too. While the broker keeps failing, the passes
  back off exponentially (``BACKOFF_MIN_S`` to ``BACKOFF_MAX_S``), so a broker that stays
  down costs a few calls a minute, never a tight loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError, UnknownTopicOrPartitionError

from dispatch.commerce.orders.records import ORDER_OUTBOX_CHANNEL
from dispatch.core.metrics import OUTBOX_FAILURES, OUTBOX_PUBLISHED, watch_outbox
from dispatch.deliveries.store import OUTBOX_CHANNEL
from schema.connect import connect
from schema.db import TenantDatabase
from schema.settings import DSN, PostgresSettings
from streams.topics import ensure_topics

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
LINGER_S = 0.01     # a notified pass waits this long first: the latency it adds to every event
TAKEOVER_S = 1.0    # a relay that does not lead a shard tries for its lead at most this often
# The lead of one outbox on one shard database: a session lock of the LISTEN connection, so a
# relay leads exactly while its connection can hear that shard's notifications. The two-key
# form keeps it apart from the engine's one-key transaction locks.
LEADER_LOCK_SQL = "SELECT pg_try_advisory_lock(hashtext('wakala.outbox_relay'), hashtext($1))"


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
# The sweep's measure of a tenant's backlog, both bounded whatever the backlog: rows counted up
# to BACKLOG_COUNT_MAX and the oldest found first through the partial index on seq.
BACKLOG_COUNT_MAX = 10_000
BACKLOG_SQL = """
SELECT (SELECT count(*) FROM (SELECT 1 FROM {table} WHERE published_at IS NULL LIMIT $1) AS capped) AS n,
       (SELECT extract(epoch FROM now() - created_at)::float8 FROM {table}
        WHERE published_at IS NULL ORDER BY seq LIMIT 1) AS oldest_s
"""


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
        self._backlog_sql = BACKLOG_SQL.format(table=_quote(outbox.table))
        # Where to recreate the topic after a broker lost it (None: the caller's producer
        # is expected to reach a broker that keeps its topics).
        self.bootstrap = bootstrap
        self.partitions = partitions
        self.failures = 0          # tenant passes that failed, for metrics and tests
        self.broker_failed = False  # the last pass had a broker error
        self._backoff_s = 0.0
        # shard -> (rows, oldest row's age in seconds or None, monotonic time): what the last
        # sweep found unpublished before publishing, summed over the shard's tenants. Read at
        # scrape time (``dispatch.core.metrics.watch_outbox``).
        self.backlog: dict[int, tuple[int, float | None, float]] = {}
        self._sweeping = False
        self._published = OUTBOX_PUBLISHED.labels(outbox.table)
        self._failed = OUTBOX_FAILURES.labels(outbox.table)
        watch_outbox(self)

    async def publish_tenant(self, tenant_id: uuid.UUID | str, *,
                             found: list[tuple[int, float | None]] | None = None) -> int:
        """Publish one batch of a tenant's unpublished events; returns how many.

        ``found``: measure the tenant's backlog first, in the same transaction, and append
        (rows, oldest row's age) to it (the sweep's measure; two bounded index reads, and a
        tenant with nothing to publish then skips the locking select)."""
        async with self.db.tenant_transaction(tenant_id) as tx:
            if found is not None:
                measured = await tx.fetchrow(self._backlog_sql, BACKLOG_COUNT_MAX)
                found.append((measured["n"], measured["oldest_s"]))
                if not measured["n"]:
                    return 0
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
        self._published.inc(len(rows))
        return len(rows)

    async def publish_all(self, tenant_ids: Iterable[uuid.UUID | str], *, measure: bool | None = None) -> int:
        """Drain every tenant; a failing tenant is logged, counted in ``failures`` and retried
        on the next pass, and the tenants after it are still drained. ``measure`` (default: on
        in ``run``'s sweeps): ``backlog`` becomes what this pass found unpublished, per shard."""
        if measure is None:
            measure = self._sweeping
        total = 0
        self.broker_failed = False
        backlog: dict[int, tuple[int, float | None, float]] = {}
        for tenant_id in tenant_ids:
            found: list[tuple[int, float | None]] = []
            try:
                # measured once, before the tenant's first batch
                while (n := await self.publish_tenant(tenant_id, found=found if measure and not found else None)) > 0:
                    total += n
                    if n < self.batch:
                        break
            except KafkaError as exc:
                self.failures += 1
                self._failed.inc()
                self.broker_failed = True
                log.warning("publishing %s of tenant %s failed (%s: %s); will retry", self.outbox.table,
                            tenant_id, exc.__class__.__name__, exc)
            except Exception as exc:   # noqa: BLE001 - one tenant's fault is not the others'
                self.failures += 1
                self._failed.inc()
                log.error("publishing %s of tenant %s failed (%s: %s); the other tenants go on",
                          self.outbox.table, tenant_id, exc.__class__.__name__, exc)
            if measure:
                await self._add_backlog(backlog, tenant_id, found)
        if measure:
            self.backlog = backlog
        return total

    async def _add_backlog(self, backlog: dict[int, tuple[int, float | None, float]],
                           tenant_id: uuid.UUID | str, found: list[tuple[int, float | None]]) -> None:
        """Add one tenant's measure to its shard's (a tenant whose measure failed adds nothing)."""
        if not found:
            return
        rows, oldest_s = found[0]
        try:
            shard_id = (await self.db.placement(tenant_id)).shard_id   # cached by the pass just made
        except Exception:   # noqa: BLE001 - moved or gone meanwhile: left out of this sweep's figure
            return
        had_rows, had_oldest, _ = backlog.get(shard_id, (0, None, 0.0))
        oldest = had_oldest if oldest_s is None else max(oldest_s, had_oldest or 0.0)
        backlog[shard_id] = (had_rows + rows, oldest, time.monotonic())

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

    async def _listen(self, settings: PostgresSettings, listeners: dict, leading: set, notified) -> None:
        """(Re)open a LISTEN connection, as the application role, on every shard without one, and
        try for the lead of every shard this relay does not lead yet."""
        for key in await self.db.shard_addresses():   # listed as the app role too
            host, port, database = key
            conn = listeners.get(key)
            if conn is not None and not conn.is_closed():
                continue
            leading.discard(conn)
            try:
                conn = await connect(app_listen_dsn(settings, host, port, database))
                # the lead first, LISTEN last: the sweep that follows covers the moment between
                await self._take_lead([conn], leading)
                await conn.add_listener(self.outbox.channel, notified)
            except Exception as exc:   # noqa: BLE001 - that shard is relayed by the sweep meanwhile
                leading.discard(conn)
                log.warning("cannot LISTEN on shard %s (%s: %s); the sweep covers it",
                            database, exc.__class__.__name__, exc)
                continue
            listeners[key] = conn
        await self._take_lead(listeners.values(), leading)

    async def _take_lead(self, conns: Iterable, leading: set) -> bool:
        """Try the leader lock on each live connection of ``conns`` that does not hold it; True
        if this relay now leads a shard it did not lead before."""
        gained = False
        for conn in conns:
            if conn in leading or conn.is_closed():
                continue
            try:
                if await conn.fetchval(LEADER_LOCK_SQL, self.outbox.table):
                    leading.add(conn)
                    gained = True
            except Exception as exc:   # noqa: BLE001 - the connection is going: reopened at the sweep
                log.warning("cannot take the %s relay lead (%s: %s)", self.outbox.table,
                            exc.__class__.__name__, exc)
        return gained

    async def run(self, settings: PostgresSettings, *, sweep_s: float = 5.0, linger_s: float = LINGER_S) -> None:
        """Publish until cancelled: ``linger_s`` after a notification on a shard this relay leads
        (every tenant notified meanwhile in one pass), and every ``sweep_s`` for all tenants."""
        woken: set[str] = set()     # tenants notified on shards this relay leads
        passed: set[str] = set()    # tenants notified on shards another relay leads
        wake = asyncio.Event()
        listeners: dict = {}
        leading: set = set()        # the LISTEN connections that hold their shard's leader lock
        loop = asyncio.get_running_loop()
        next_take = 0.0

        def notified(conn, _pid, _channel, payload: str) -> None:
            if conn in leading:
                woken.add(payload)
                wake.set()
            else:
                if not passed:   # the loop now waits for its next try for the lead at most
                    wake.set()
                passed.add(payload)

        try:
            next_sweep = 0.0
            while True:
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + sweep_s
                    try:
                        passed.clear()   # the sweep publishes every tenant
                        await self._listen(settings, listeners, leading, notified)
                        await self.check_topic()
                        tenants = await self.db.active_tenant_ids()   # as the app role
                        self._sweeping = True
                        try:
                            await self.publish_all(tenants)
                        finally:
                            self._sweeping = False
                        await self._after_pass()
                    except Exception:   # Postgres briefly away: the next sweep tries again
                        log.exception("outbox sweep failed")
                # Notifications passed over are a reason to try for the lead once TAKEOVER_S is up.
                until = min(next_sweep, next_take) if passed else next_sweep
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), max(0.0, until - loop.time()))
                wake.clear()
                if passed and loop.time() >= next_take:
                    # Another relay leads where these were notified; if it is gone (its session
                    # ended, and its lock with it), take over and publish what it may have missed.
                    next_take = loop.time() + TAKEOVER_S
                    with contextlib.suppress(Exception):
                        if await self._take_lead(listeners.values(), leading):
                            woken |= passed
                    passed.clear()
                if not woken:
                    continue
                if linger_s > 0:
                    await asyncio.sleep(linger_s)   # the transactions committing meanwhile join this pass
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
                    await conn.close()   # the leader lock goes with the session
