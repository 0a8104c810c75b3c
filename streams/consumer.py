"""The ingest app's faust plumbing: short fetch waits, bounded commits, and a broker watch that
recovers from a broker that came back empty (or gives up so a supervisor restarts the worker).

Why a watch: with the bundled tansu (memory storage) a broker restart loses every topic, group
and committed offset. aiokafka retries an offset commit on every retriable error, including
``UnknownTopicOrPartitionError``, every 100 ms without end; faust awaits that commit (also while
partitions are revoked in a rebalance), so one commit against the emptied broker used to hold the
worker forever while the process looked alive. So:

1. every commit is bounded (COMMIT_TIMEOUT_S): a commit that cannot finish counts as failed and
   faust goes on (the offsets are committed again with the next batch; an uncommitted offset
   only means a replay after a restart, which the write script makes harmless);
2. a failed commit, or a worker that owns no partition of its topic, makes the watch check the
   broker's topics on its next round (every WATCH_INTERVAL_S, in the app's own loop) and
   create the missing ones with the configured partition count, as the app does at start;
   the consumer's metadata refresh then finds them, the group rebalances, faust forgets the
   old offsets of the revoked partitions and consumes from the start of the new topic;
3. when commits keep failing anyway (GIVE_UP_AFTER_S of nothing but failures, with at least
   GIVE_UP_MIN_FAILURES attempts), the watch crashes the app and ``run_worker`` exits with
   status 1: a supervisor (``wakala engine all``) restarts a fresh worker. An idle worker
   attempts no commits and so never gives up for want of traffic.

The watch's decisions are plain methods over timestamps (``BrokerWatch.note_commit``,
``due_for_topic_check``, ``should_give_up``); the I/O is ``streams.topics.ensure_topics``.

What was seen on tansu after a restart: the producer and the consumer, whose cached metadata
still named the topic, kept producing and fetching as if nothing happened (the broker accepts
both for a topic it no longer knows), and only the group's offset commits failed, with
``UnknownTopicOrPartitionError``, until the topic was created again and the group rejoined.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiokafka
import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, TopicT

from streams.topics import ensure_topics

log = logging.getLogger("wakala.streams")

# faust hard-codes fetch_max_wait_ms=1500. Kafka answers a fetch as soon as data arrive, but
# the bundled tansu holds every fetch for the full wait, which put up to 1.5 s on every ping.
# The default; ``StreamSettings.fetch_max_wait_ms`` (WAKALA_FETCH_MAX_WAIT_MS) sets the app's.
FETCH_MAX_WAIT_MS = 50
COMMIT_TIMEOUT_S = 5.0       # a commit that takes longer has failed (aiokafka retries it forever)
WATCH_INTERVAL_S = 5.0       # how often the watch looks at commit outcomes and the assignment
GIVE_UP_AFTER_S = 120.0      # commits failing this long without one success: exit, be restarted
GIVE_UP_MIN_FAILURES = 5


class BrokerStuck(RuntimeError):
    """The worker could not commit for GIVE_UP_AFTER_S; it exits so that it is restarted."""


class BrokerWatch:
    """Commit outcomes (written from faust's consumer thread) and what to do about them."""

    def __init__(self, *, give_up_after_s: float = GIVE_UP_AFTER_S,
                 give_up_min_failures: int = GIVE_UP_MIN_FAILURES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.give_up_after_s = give_up_after_s
        self.give_up_min_failures = give_up_min_failures
        self.clock = clock
        self._lock = threading.Lock()
        self.failing_since: float | None = None
        self.failures = 0            # consecutive failed commits
        self.suspect = False         # a commit failed since the topics were last checked
        self.commits_failed = 0
        self.topics_created = 0

    def note_commit(self, ok: bool) -> None:
        with self._lock:
            if ok:
                self.failing_since = None
                self.failures = 0
                return
            self.commits_failed += 1
            self.failures += 1
            self.suspect = True
            if self.failing_since is None:
                self.failing_since = self.clock()

    def due_for_topic_check(self, *, owns_partitions: bool) -> bool:
        """Check (and recreate) topics after a failed commit or while no partition is ours."""
        with self._lock:
            due = self.suspect or not owns_partitions
            self.suspect = False
            return due

    def should_give_up(self) -> bool:
        with self._lock:
            return (self.failing_since is not None and self.failures >= self.give_up_min_failures
                    and self.clock() - self.failing_since >= self.give_up_after_s)


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        if not hasattr(consumer, "_fetch_max_wait_ms"):   # an aiokafka upgrade renamed it
            raise RuntimeError("cannot set fetch_max_wait_ms on this aiokafka version")
        consumer._fetch_max_wait_ms = getattr(transport.app, "fetch_max_wait_ms", FETCH_MAX_WAIT_MS)
        return consumer

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        try:
            async with asyncio.timeout(COMMIT_TIMEOUT_S):
                ok = await super()._commit(offsets)
        except TimeoutError:
            log.warning("committing offsets %s did not finish within %g s (broker restarted "
                        "empty?); counted as failed, rejoining the group", dict(offsets),
                        COMMIT_TIMEOUT_S)
            ok = False
            self._rejoin()
        watch = getattr(self.app, "broker_watch", None)
        if watch is not None:
            watch.note_commit(ok)
        return ok


    def _rejoin(self) -> None:
        # tansu answers UnknownTopicOrPartition to the commits of a group that (re)joined while
        # its topic did not exist, even once the topic is back, until the group joins again;
        # aiokafka's own metadata has not changed, so nothing else would make it rejoin.
        coordinator = getattr(self._ensure_consumer(), "_coordinator", None)
        if coordinator is None or not hasattr(coordinator, "request_rejoin"):
            log.warning("cannot ask this aiokafka version's consumer to rejoin its group")
            return
        coordinator.request_rejoin()


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class IngestApp(faust.App):
    """faust.App that creates its topics first, bounds its commits and watches its broker."""

    declare_on_start: Sequence[TopicT] = ()
    broker_watch: BrokerWatch
    fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)

    async def on_start(self) -> None:
        await super().on_start()
        # Before the consumer subscribes: otherwise the broker auto-creates the locations
        # topic with its default partition count instead of locations_partitions.
        for topic in self.declare_on_start:
            await topic.maybe_declare()

    async def watch_broker(self, bootstrap: str, topics: Mapping[str, int], subscribed: str) -> None:
        """One round of the broker watch (the app's timer calls it every WATCH_INTERVAL_S)."""
        watch = self.broker_watch
        if watch.should_give_up():
            log.error("no offset commit succeeded for %g s; exiting so that a fresh worker "
                      "starts", watch.give_up_after_s)
            await self.crash(BrokerStuck(f"no offset commit succeeded for {watch.give_up_after_s:g} s"))
            return
        owns = any(tp.topic == subscribed for tp in self.consumer.assignment())
        if not watch.due_for_topic_check(owns_partitions=owns):
            return
        try:
            created = await ensure_topics(bootstrap, topics)
        except Exception as exc:  # noqa: BLE001 - the broker still away: try next round
            watch.suspect = True
            log.warning("checking the broker's topics failed: %s: %s", type(exc).__name__, exc)
            return
        if created:
            watch.topics_created += len(created)
            log.warning("recreated missing topic(s) %s (the broker came back empty)", created)
