"""The dispatcher's read of ``delivery-events``: claim, handle, retry, park, resume.

Every engine reads every partition; the first to claim an event (a Redis string per event id)
handles it, and the read position is shared in Redis (``dispatch:offsets:{group}:{topic}``,
only moving forward) so a restarted engine resumes where the deployment left off.

Faults, and what each costs
---------------------------

* **Handling fails** (Postgres or Redis away, a bug on one event): the position does not
  move past the failed event. Its claim stays this engine's (the claim's value is the engine's
  id while it works on it, ``done`` after), so when the partition is read again from that
  event the events already done are skipped and the failed ones are handled again, after a
  backoff that doubles from ``BACKOFF_MIN_S`` to ``BACKOFF_MAX_S``. Handling twice is
  harmless: every step checks the delivery's state first.
* **Poison** (an event that fails every time): after ``max_attempts`` it is logged, pushed on
  ``dispatch:parked:{group}`` (capped at ``PARKED_MAX``) for an operator, marked done and
  passed, so it never blocks the stream for good. With the defaults that is about a minute
  of retries, longer than the short database and Redis outages the engine is expected to ride
  out.
* **Redis away** while claiming or marking: nothing is counted against the events; the batch
  is read again after the backoff.
* **The broker restarted empty**: the topic is gone. Every ``watch_s`` without messages the
  consumer asks the broker for its topics; a missing topic is created again (``partitions``),
  the partitions are re-assigned from their beginning, and the shared position is reset to
  where the new topic starts (it would otherwise stay above the new offsets forever). Broker
  errors back off like handling errors; this loop never spins.

An engine that dies holding a failed event's claim leaves it to the claim's expiry
(``CLAIM_TTL_S``) and to the sweeps that do not need the event: pending deliveries
(``Dispatcher._sweep_pending``) and the reconciliation of drivers' claims with Postgres
(``dispatch.matching.recovery``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from redis.asyncio import Redis

from dispatch.deliveries.outbox import ensure_topic
from dispatch.matching.keys import (
    dispatcher_event_key,
    dispatcher_offsets_key,
    dispatcher_parked_key,
)
from streams.replies import as_text

__all__ = ["BACKOFF_MAX_S", "BACKOFF_MIN_S", "EventConsumer", "Handler"]

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
CLAIM_TTL_S = 3600
PARKED_MAX = 10_000
DONE = "done"
_ATTEMPTS_MAX = 10_000   # failing events tracked at once; beyond it the oldest are forgotten

# KEYS: the shared offsets hash. ARGV: partition, next offset. Positions only move forward.
_ADVANCE = """
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
if tonumber(ARGV[2]) > current then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
"""
# KEYS: the event's claim. ARGV: this engine's id, ttl. 1 when this engine may handle it:
# unclaimed, or claimed by this engine earlier and not done (a retry).
_CLAIM = """
local holder = redis.call('GET', KEYS[1])
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) return 1 end
if holder == ARGV[1] then return 1 end
return 0
"""


class Handler(Protocol):
    redis: Redis
    mode: str
    window_s: float

    async def handle(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Handle the events; return those whose handling failed."""


class EventConsumer:
    """One engine's reader of the delivery events (see the module doc)."""

    def __init__(self, handler: Handler, bootstrap: str, topic: str, group: str, *, partitions: int = 1,
                 max_attempts: int = 8, watch_s: float = 2.0, backoff_min_s: float = BACKOFF_MIN_S,
                 backoff_max_s: float = BACKOFF_MAX_S) -> None:
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or not 1 <= max_attempts <= 100:
            raise ValueError(f"max_attempts must be an integer from 1 to 100, got {max_attempts!r}")
        self.handler, self.redis = handler, handler.redis
        self.bootstrap, self.topic, self.group = bootstrap, topic, group
        self.partitions, self.max_attempts, self.watch_s = partitions, max_attempts, watch_s
        self.backoff_min_s, self.backoff_max_s = backoff_min_s, backoff_max_s
        self.engine_id = uuid.uuid4().hex
        self.offsets = dispatcher_offsets_key(group, topic)
        self.attempts: dict[str, int] = {}
        self._next: dict[TopicPartition, int] = {}   # next offset to read, as handled here
        self.parked = 0
        self._outages = 0
        self._advance = self.redis.register_script(_ADVANCE)
        self._claim_script = self.redis.register_script(_CLAIM)

    def backoff(self, n: int) -> float:
        return min(self.backoff_max_s, self.backoff_min_s * 2 ** max(0, n - 1))

    # -- the loop ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Read until cancelled. A topic found missing or recreated gets a fresh consumer (its
        metadata would be stale) reading the new topic from its beginning."""
        recreated = False
        while True:
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                        enable_auto_commit=False, auto_offset_reset="earliest")
            try:
                await self._start(consumer)
                tps = await self._assign(consumer, recreated=recreated)
                await self._consume(consumer, tps)
                recreated = True
            finally:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(consumer.stop(), 2.0)

    async def _consume(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> None:
        """Handle what arrives; return when the topic has to be read anew."""
        loop = asyncio.get_running_loop()
        next_watch = loop.time() + self.watch_s
        while True:
            timeout_ms = round(self.handler.window_s * 1000) if self.handler.mode == "batch" else 200
            try:
                batches = await consumer.getmany(timeout_ms=timeout_ms, max_records=500)
            except KafkaError as exc:   # e.g. the topic vanished under the fetch
                log.warning("delivery events: fetch failed (%s: %s)", exc.__class__.__name__, exc)
                if await self._watch(consumer, tps, failed=True):
                    return
                continue
            if self.handler.mode == "batch" and batches:
                await asyncio.sleep(max(0.0, self.handler.window_s - 0.05))   # let the window fill
                for tp, more in (await consumer.getmany(timeout_ms=0, max_records=5000)).items():
                    batches.setdefault(tp, []).extend(more)
            if batches:
                await self._step(consumer, batches)
                next_watch = loop.time() + self.watch_s
            elif loop.time() >= next_watch:
                if await self._watch(consumer, tps):
                    return
                next_watch = loop.time() + self.watch_s

    async def _start(self, consumer: AIOKafkaConsumer) -> None:
        """Make sure the topic exists, then connect, backing off while the broker is away."""
        failures = 0
        while True:
            try:
                await ensure_topic(self.bootstrap, self.topic, self.partitions)
                await consumer.start()
                return
            except KafkaError as exc:
                failures += 1
                delay = self.backoff(failures)
                log.warning("delivery events: broker not ready (%s: %s); retrying in %.1f s",
                            exc.__class__.__name__, exc, delay)
                await asyncio.sleep(delay)

    async def _assign(self, consumer: AIOKafkaConsumer, *, recreated: bool = False) -> list[TopicPartition]:
        for attempt in range(1, 9):   # a topic just created takes a moment to show in metadata
            await consumer.topics()   # metadata, so the partitions are known
            partitions = sorted(consumer.partitions_for_topic(self.topic) or ())
            if partitions:
                break
            await asyncio.sleep(self.backoff(attempt))
        else:
            raise RuntimeError(f"topic {self.topic} has no partitions yet")
        tps = [TopicPartition(self.topic, p) for p in partitions]
        consumer.assign(tps)
        self._next.clear()
        stored = {as_text(k): int(as_text(v)) for k, v in (await self.redis.hgetall(self.offsets)).items()}
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            at = stored.get(str(tp.partition))
            if at is not None and at <= ends.get(tp, 0) and not recreated:
                consumer.seek(tp, at)
            else:
                if at is not None and at > 0:   # the topic was recreated: start it over
                    log.warning("delivery events: stored position %d of partition %d is past the end (%d); "
                                "the topic was recreated, reading it from its beginning", at, tp.partition,
                                ends.get(tp, 0))
                    await self.redis.hset(self.offsets, str(tp.partition), 0)
                await consumer.seek_to_beginning(tp)
        return tps

    async def _watch(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition], *,
                     failed: bool = False) -> bool:
        """Idle for a while (or a fetch failed): True when the topic is missing or was recreated
        (a broker restarted empty), after creating it again; the caller then reads it anew."""
        if failed:
            self._outages += 1
            await asyncio.sleep(self.backoff(self._outages))
        try:
            topics = await consumer.topics()
            if self.topic in topics:
                ends = await consumer.end_offsets(tps)
                short = [tp for tp in tps if ends.get(tp, 0) < self._next.get(tp, 0)]
                if not short or await self._last_read_still_there(consumer, short):
                    self._outages = 0
                    return False
            log.warning("delivery events: topic %s is missing or was recreated; recreating and re-reading it",
                        self.topic)
            await ensure_topic(self.bootstrap, self.topic, self.partitions)
            return True
        except KafkaError as exc:
            self._outages += 1
            delay = self.backoff(self._outages)
            log.warning("delivery events: broker check failed (%s: %s); retrying in %.1f s",
                        exc.__class__.__name__, exc, delay)
            await asyncio.sleep(delay)
            return False

    async def _last_read_still_there(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> bool:
        """Whether the last event read from each of ``tps`` is still on the broker.

        An end offset below the next position usually means the topic was recreated, but the
        bundled broker (tansu) answers ListOffsets with the last batch's base offset + 1: after a
        batch of several events (the outbox relay sends them so) the end it reports is short of
        the real one. Fetching the last event read tells the two apart: a recreated topic does
        not have it. Each partition's position is put back afterwards."""
        try:
            for tp in tps:
                last = self._next[tp] - 1
                consumer.seek(tp, last)
                got = await consumer.getmany(tp, timeout_ms=1000, max_records=1)
                if not any(m.offset == last for m in got.get(tp, ())):
                    return False
            return True
        finally:
            for tp in tps:
                consumer.seek(tp, self._next[tp])

    async def _step(self, consumer: AIOKafkaConsumer, batches: dict) -> None:
        items: list[tuple[TopicPartition, int, dict[str, Any]]] = []
        for tp, messages in batches.items():
            for message in messages:
                try:
                    event = json.loads(message.value)
                except (ValueError, TypeError):
                    event = None
                if not isinstance(event, dict) or not isinstance(event.get("id"), str):
                    log.warning("ignored an undecodable delivery event at offset %s", message.offset)
                    continue
                items.append((tp, message.offset, event))
        try:
            retry, parked = await self._handle(items)
        except Exception as exc:
            # Redis (or something under handle) away: nothing is passed; read the batch again.
            self._outages += 1
            delay = self.backoff(self._outages)
            log.error("delivery events not handled (%s: %s); reading %d again in %.1f s",
                      exc.__class__.__name__, exc, len(items), delay)
            for tp, messages in batches.items():
                consumer.seek(tp, messages[0].offset)
            await asyncio.sleep(delay)
            return
        self._outages = 0
        positions = {tp: messages[-1].offset + 1 for tp, messages in batches.items()}
        for tp, offset, _ in retry:
            positions[tp] = min(positions[tp], offset)
        self._next.update(positions)
        async with self.redis.pipeline(transaction=False) as pipe:
            for tp, position in positions.items():
                await self._advance(keys=[self.offsets], args=[tp.partition, position], client=pipe)
            await pipe.execute()
        if retry:
            for tp in {tp for tp, _, _ in retry}:
                consumer.seek(tp, positions[tp])
            delay = self.backoff(min(self.attempts.get(e["id"], 1) for _, _, e in retry))
            log.warning("%d delivery events failed; retrying in %.1f s", len(retry), delay)
            await asyncio.sleep(delay)
        if parked:
            self.parked += parked

    async def _handle(self, items: list[tuple[TopicPartition, int, dict[str, Any]]]):
        """Claim, handle, and mark done or count a failure; (events to retry, events parked)."""
        if not items:
            return [], 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for _, _, event in items:
                await self._claim_script(keys=[dispatcher_event_key(self.group, event["id"])],
                                         args=[self.engine_id, CLAIM_TTL_S], client=pipe)
            won = await pipe.execute()
        mine = [item for item, ok in zip(items, won, strict=True) if int(ok) == 1]
        failed = {id(e) for e in await self.handler.handle([e for _, _, e in mine])}
        done, retry, parked = [], [], []
        for item in mine:
            event_id = item[2]["id"]
            if id(item[2]) not in failed:
                done.append(event_id)
                self.attempts.pop(event_id, None)
                continue
            n = self.attempts[event_id] = self.attempts.get(event_id, 0) + 1
            if n >= self.max_attempts:
                parked.append(item[2])
                done.append(event_id)
                self.attempts.pop(event_id, None)
            else:
                retry.append(item)
        while len(self.attempts) > _ATTEMPTS_MAX:
            self.attempts.pop(next(iter(self.attempts)))
        async with self.redis.pipeline(transaction=False) as pipe:
            for event_id in done:
                pipe.set(dispatcher_event_key(self.group, event_id), DONE, ex=CLAIM_TTL_S)
            for event in parked:
                log.error("parked delivery event %s after %d failed attempts: %.500s", event["id"],
                          self.max_attempts, json.dumps(event))
                pipe.lpush(dispatcher_parked_key(self.group), json.dumps(event))
            if parked:
                pipe.ltrim(dispatcher_parked_key(self.group), 0, PARKED_MAX - 1)
            await pipe.execute()
        return retry, len(parked)
