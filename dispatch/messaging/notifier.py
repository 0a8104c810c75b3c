"""The notifier: order and delivery events in, WhatsApp notifications (the outbox) out.

A Kafka consumer of ``order-events`` and ``delivery-events`` in its own consumer group
(``<app id>-whatsapp``): each event is read by one engine of the deployment, whichever holds
its partition. For an event that makes messages (``templates.wanted``; most make none and are
passed over without touching the database), ``store.plan_event`` inserts its notifications
``pending`` in one tenant transaction; the sender takes them from there. Offsets are committed
after the batch they belong to is planned.

Never twice: delivery is at-least-once (the outbox relay may publish an event again; a
consumer that dies before committing reads its batch again), and each planned message carries
a dedupe key that the table holds UNIQUE, so a second reading inserts nothing.

Faults:

* A record that is not an event (bad JSON, a field missing) is logged, counted (``bad``) and
  passed: it would fail the same way forever.
* An event older than ``max_event_age_s`` when read is passed (``stale``): a first start of
  the group reads the topics from their beginning, and after a long outage "your driver is
  arriving" an hour late helps nobody.
* A tenant that is gone or not active: passed (``dropped``).
* Postgres away or any other failure: the event is tried again with a doubling backoff
  (``BACKOFF_MIN_S`` to ``BACKOFF_MAX_S``), holding the stream, up to ``max_attempts``; then
  it is logged and passed (``dropped``) so one poison event cannot stop every message.
* The broker away: the consumer is rebuilt after a backoff; uncommitted events are read again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from dispatch.core.errors import Refusal
from dispatch.core.metrics import WHATSAPP_EVENTS
from dispatch.deliveries.outbox import ensure_topic
from dispatch.messaging.store import plan_event
from dispatch.messaging.templates import DELIVERY, ORDER, is_stale, parse_event, wanted
from schema.db import TenantDatabase
from schema.errors import InvalidTenantId, TenantNotActive, UnknownTenant

__all__ = ["Notifier"]

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0


class Notifier:
    """Plans notifications from the two event topics until cancelled (``run``)."""

    def __init__(self, db: TenantDatabase, bootstrap: str, *, order_topic: str, delivery_topic: str,
                 group: str, max_event_age_s: float = 3600, partitions: int = 1,
                 session_timeout_s: float = 10.0, max_attempts: int = 8,
                 on_planned: Callable[[str], None] | None = None,
                 backoff_min_s: float = BACKOFF_MIN_S, backoff_max_s: float = BACKOFF_MAX_S) -> None:
        self.db = db
        self.bootstrap = bootstrap
        self.topics = {order_topic: ORDER, delivery_topic: DELIVERY}
        self.group = group
        self.max_event_age_s = max_event_age_s
        self.partitions = partitions
        self.session_timeout_s = session_timeout_s
        self.max_attempts = max_attempts
        self.on_planned = on_planned
        self.backoff_min_s, self.backoff_max_s = backoff_min_s, backoff_max_s
        self.planned = 0          # notifications inserted pending (for tests and logs)
        self.assigned = asyncio.Event()   # set once the group gave this consumer its partitions

    def _backoff(self, n: int) -> float:
        return min(self.backoff_max_s, self.backoff_min_s * 2 ** max(0, n - 1))

    async def run(self) -> None:
        failures = 0
        while True:
            consumer = AIOKafkaConsumer(
                *self.topics, bootstrap_servers=self.bootstrap, group_id=self.group,
                enable_auto_commit=False, auto_offset_reset="earliest",
                session_timeout_ms=int(self.session_timeout_s * 1000),
                heartbeat_interval_ms=int(min(3.0, self.session_timeout_s / 4) * 1000))
            try:
                for topic in self.topics:
                    await ensure_topic(self.bootstrap, topic, self.partitions)
                await consumer.start()
                failures = 0
                await self._consume(consumer)
            except KafkaError as exc:
                failures += 1
                delay = self._backoff(failures)
                log.warning("whatsapp notifier: broker error (%s: %s); again in %.1f s",
                            exc.__class__.__name__, exc, delay)
                await asyncio.sleep(delay)
            finally:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(consumer.stop(), 5.0)

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=200)
            if consumer.assignment():
                self.assigned.set()
            if not batches:
                continue
            for tp, records in batches.items():
                kind = self.topics.get(tp.topic)
                for record in records:
                    if kind is not None:
                        await self.handle(record.value, kind)
            await consumer.commit()

    async def handle(self, value: bytes | None, kind: str) -> int:
        """Plan one record's notifications; how many were inserted pending. Never raises for
        the record's content; retries the database as the module doc says."""
        if value is None:
            WHATSAPP_EVENTS.labels("bad").inc()
            return 0
        try:
            event = parse_event(value, kind)
        except Refusal as exc:
            WHATSAPP_EVENTS.labels("bad").inc()
            log.warning("whatsapp notifier: passing a record that is not an event (%s: %s)", exc.field, exc.message)
            return 0
        if not wanted(event.topic, event.type):
            return 0
        if is_stale(event, datetime.now(UTC), self.max_event_age_s):
            WHATSAPP_EVENTS.labels("stale").inc()
            return 0
        for attempt in range(1, self.max_attempts + 1):
            try:
                inserted, pending = await plan_event(self.db, event)
                break
            except (UnknownTenant, InvalidTenantId, TenantNotActive) as exc:
                WHATSAPP_EVENTS.labels("dropped").inc()
                log.warning("whatsapp notifier: event %s of tenant %s passed (%s)", event.id, event.tenant_id, exc)
                return 0
            except Exception as exc:   # noqa: BLE001 - Postgres away: hold the stream and retry
                if attempt == self.max_attempts:
                    WHATSAPP_EVENTS.labels("dropped").inc()
                    log.error("whatsapp notifier: event %s (%s) failed %d times (%s: %s); passed",
                              event.id, event.type, attempt, exc.__class__.__name__, exc)
                    return 0
                delay = self._backoff(attempt)
                log.warning("whatsapp notifier: planning event %s failed (%s: %s); again in %.1f s",
                            event.id, exc.__class__.__name__, exc, delay)
                await asyncio.sleep(delay)
        WHATSAPP_EVENTS.labels("planned" if inserted else "duplicate").inc()
        self.planned += pending
        if pending and self.on_planned is not None:
            self.on_planned(str(event.tenant_id))
        return pending
