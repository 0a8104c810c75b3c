"""The location-ingest worker: a faust app that lands `driver-locations` pings in Redis.

Flow per batch (up to ``batch_size`` events, or whatever arrived within ``batch_within_s``):

1. decode every raw value with ``decode_message`` (one ping, one driver's upload, or the
   gateway's bundle of many drivers' uploads: ``streams.bundles``); an undecodable message,
   or an undecodable upload of a bundle, becomes a ``DeadLetter`` record on the dead-letter
   topic (its delivery is awaited before the batch is acknowledged);
2. one ``LocationStore.write_batch`` (a Lua script per 500 pings, one round trip) does the
   out-of-order and jump checks against the stored positions, the writes and the index;
3. the landed pings go to the batch observer the composition root handed in (the engine's
   tracker, built by ``dispatch/tracking/worker.py``: geofence arrivals of assigned deliveries
   and their live ETAs). Best effort within TRACKING_TIMEOUT_S: a failure is logged and
   counted (``tracking_errors``) and never holds back step 4. This package never imports the
   engine: ``create_app(..., observer=None)`` lands pings and nothing more;
4. only then are the batch's events acknowledged, so faust commits their offsets only after
   Redis has the data;
5. the batch's last offset per partition (+1) goes to ``metrics:ingest:offsets:{app_id}:{topic}``
   (``streams.keys.ingest_offsets_key``), so that lag samplers read the real lag, end offset
   minus what has landed, instead of the committed offsets, which trail by faust's commit
   interval and turn the figure into a sawtooth; one pipelined HSET + EXPIRE per batch;
6. accepted positions are remembered for the throttled Postgres writer, a timer that writes
   ``drivers.current_location`` at most once per ``pg_write_interval_s`` per driver, one
   ``UPDATE ... FROM unnest(...)`` per tenant. A Postgres failure is logged and counted and the
   positions are retried an interval later; Redis ingestion never waits for Postgres.

Acknowledgement and failures (at-least-once, nothing acknowledged is lost):

- faust's ``Stream.take()`` acknowledges the buffered events in a ``finally`` block, i.e. also
  when the agent body raises or is cancelled mid-batch. The agent therefore uses
  ``noack_take()`` (which never acknowledges) with a stream processor that turns each value
  into its ``Event``, and calls ``stream.ack(event)`` itself after step 2 (and 1) succeeded.
  An exception or a cancellation before that leaves the whole batch unacknowledged: faust's
  commit stops at the first unacknowledged offset, and the next worker replays from there.
- Transient Redis errors (connection, timeout, loading, OOM, TRYAGAIN) are retried with
  backoff for as long as it takes: the partition waits (backpressure), nothing is skipped.
  Any other error in a batch crashes the app (the worker exits) without acknowledging it.
- Replays are harmless: the write script ignores a ping whose device ``ts`` is not newer than
  the stored one, so a replayed ping is counted ``out_of_order`` and changes nothing.

Broker specifics: the app creates its topics (``locations_partitions`` each) before the consumer
subscribes, keeps the producer's idempotence off (the bundled tansu refuses InitProducerId;
at-least-once plus idempotent writes is what we rely on anyway), shortens the consumer-group
session (DEFAULT_SESSION_TIMEOUT_S) and the fetch wait (FETCH_MAX_WAIT_MS). A broker that
comes back empty is handled by ``streams.consumer``: commits are bounded, missing topics are
recreated, and a worker that still cannot commit exits with status 1 to be restarted.

Throughput and latency: faust's per-event path (fetcher, conductor, channel queue, stream
iterator, acks) costs ~50-60 µs an event, which capped a worker near 16k events/s when every
upload was a message. The gateway's bundles (``streams.bundles``) carry many uploads per
event, so that cost is now small beside decoding (a fast path for known drivers' well-formed
pings, ~3 µs a ping) and the Redis script: one worker lands ~60k pings/s from a backlog of
bundles on this class of machine. The floor of ping -> Redis latency is the broker fetch wait
(``fetch_max_wait_ms``: the bundled tansu holds every fetch that long) plus the batch wait
(``batch_within_s``, 5 ms); both were chosen with ``wakala bench tracking`` and
``wakala bench ingest`` (docs/benchmarks.md).

Counters: ``app.ingest_stats`` (a Counter: accepted, relocated (a subset of accepted: see
``location_store``), out_of_order, implausible_jump, dead_letter, pg_written, pg_failed, batches,
redis_retries, arrived_pickup, arrived_dropoff, etas_written, tracking_errors), logged every
STATS_LOG_INTERVAL_S; all but the tracking ones are mirrored in Redis ``metrics:ingest:counts``.
With ``WAKALA_INGEST_LATENCY_SAMPLES=1`` every batch also pushes its per-ping latencies (Redis
time minus the gateway's ``received_at``, ms) to ``metrics:ingest:latency_ms``. Prometheus:
``streams.metrics`` (batch sizes, Redis write time, outcomes, lag; WAKALA_WORKER_METRICS_PORT).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import faust
from faust.types import EventT, StreamT, TopicT
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from schema.db import TenantDatabase
from schema.settings import PostgresSettings
from streams.consumer import WATCH_INTERVAL_S, BrokerWatch, IngestApp
from streams.decode import decode_message
from streams.keys import INGEST_OFFSETS_TTL_S, ingest_offsets_key
from streams.location_store import BatchOutcome, LocationStore
from streams.metrics import count_outcomes, instrument, note_landed, observe_batch, timed_write
from streams.pg_writer import PgLocationWriter
from streams.records import DeadLetter, DriverPing
from streams.settings import StreamSettings

log = logging.getLogger("wakala.streams")

PG_FLUSH_EVERY_S = 1.0
STATS_LOG_INTERVAL_S = 10.0
REDIS_BACKOFF_MAX_S = 5.0
SHUTDOWN_GRACE_S = 5.0
TRACKING_TIMEOUT_S = 5.0        # a batch's arrivals and ETAs; the acknowledgement waits for it
DEAD_LETTER_PREVIEW = 512
LATENCY_SAMPLES_ENV = "WAKALA_INGEST_LATENCY_SAMPLES"
SESSION_TIMEOUT_ENV = "WAKALA_KAFKA_SESSION_TIMEOUT_S"
# A dead worker's partitions wait this long before another worker takes them over; drivers
# vanish from the index after location_ttl_s of silence, so keep it well below that (faust's
# default is 60 s). The bundled tansu also holds every group join for half of it.
DEFAULT_SESSION_TIMEOUT_S = 10.0



class ObservedBatch(Protocol):
    """What an observer reports about one batch (counted in ``ingest_stats``)."""

    arrived_pickup: int
    arrived_dropoff: int
    etas_written: int
    failed: int


class BatchObserver(Protocol):
    async def on_pings(self, pings: list[DriverPing]) -> ObservedBatch:
        """Act on a batch of pings that Redis has accepted."""


# Builds the observer once the pipeline's clients exist: (redis, db or None) -> observer.
ObserverFactory = Callable[[Redis, TenantDatabase | None], BatchObserver]


class PipelineClosed(RuntimeError):
    """The worker is shutting down; the batch in hand stays unacknowledged and is replayed."""


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, redis_errors.ConnectionError | redis_errors.TimeoutError
                  | redis_errors.TryAgainError | redis_errors.NoScriptError | OSError):
        # BusyLoadingError is a ConnectionError. NOSCRIPT: Redis lost its script cache (a
        # restart or SCRIPT FLUSH between the pipeline's SCRIPT EXISTS check and its EVALSHA);
        # the retry's pipeline loads the script again.
        return True
    return isinstance(exc, redis_errors.ResponseError) and str(exc).startswith(("OOM", "MASTERDOWN"))


class IngestPipeline:
    """What the agent does with a batch of events; owns the Redis client and the PG writer."""

    def __init__(self, app: faust.App, settings: StreamSettings, pg: PostgresSettings | None,
                 dead_letters: TopicT, *, latency_samples: bool,
                 observer: ObserverFactory | None = None) -> None:
        self.app = app
        self.settings = settings
        self.pg_settings = pg
        self.dead_letters = dead_letters
        self.latency_samples = latency_samples
        self.observer_factory = observer
        self.stats: Counter[str] = Counter()
        self.progress_key = ingest_offsets_key(settings.app_id, settings.locations_topic)
        self.redis: Redis | None = None
        self.store: LocationStore | None = None
        self.db: TenantDatabase | None = None
        self.pg_writer: PgLocationWriter | None = None
        self.tracker: BatchObserver | None = None
        self.closing = False
        self._open_lock = asyncio.Lock()
        self._batch_lock = asyncio.Lock()
        self._last_stats: tuple[float, Counter[str]] = (time.monotonic(), Counter())

    async def open(self) -> None:
        async with self._open_lock:
            if self.store is not None:
                return
            self.redis = Redis.from_url(self.settings.redis_url, socket_timeout=10,
                                        socket_connect_timeout=5, health_check_interval=30)
            self.store = LocationStore(self.redis, self.settings)
            if self.pg_settings is not None:
                self.db = TenantDatabase(self.pg_settings)
                self.pg_writer = PgLocationWriter(self.db, self.settings.pg_write_interval_s)
            if self.observer_factory is not None:
                self.tracker = self.observer_factory(self.redis, self.db)

    async def close(self) -> None:
        self.closing = True
        try:   # let a batch in flight finish (and be acknowledged) before the client goes
            async with asyncio.timeout(SHUTDOWN_GRACE_S):
                await self._batch_lock.acquire()
            self._batch_lock.release()
        except TimeoutError:
            log.warning("a batch was still in flight at shutdown; it will be replayed")
        if self.pg_writer is not None and self.pg_writer.pending:
            with _suppress_all("final Postgres flush"):
                await self.flush_pg(force=True)
        if self.redis is not None:
            with _suppress_all("closing Redis"):
                await self.redis.aclose()
        if self.db is not None:
            with _suppress_all("closing Postgres pools"):
                await self.db.close()
        self.store = None
        self.tracker = None

    async def process(self, events: Sequence[EventT]) -> None:
        """Land a batch in Redis; returns only when it may be acknowledged, else raises."""
        async with self._batch_lock:
            if self.closing or self.store is None:
                raise PipelineClosed("the ingest pipeline is closed")
            store = self.store
            max_future_s = self.settings.max_future_s
            pings: list[DriverPing] = []
            dead: list[tuple[EventT, str, Any]] = []
            for event in events:
                good, rejected = decode_message(event.value, max_future_s=max_future_s)
                pings += good
                for exc, part in rejected:
                    dead.append((event, exc.reason, part))
            if dead:
                await self._dead_letter(dead)
            if pings:
                outcome = await timed_write(self._write(store, pings))
                self.stats.update(outcome.counts)
                observe_batch(len(pings), outcome.counts)
                if outcome.relocated:
                    self.stats["relocated"] += outcome.relocated
                if self.pg_writer is not None:
                    self.pg_writer.note(outcome.accepted_pings)
                await self._track(outcome.accepted_pings)
                if self.latency_samples:
                    now_ms = outcome.redis_now_ms
                    with _suppress_all("recording latency samples"):
                        await store.record_latencies([now_ms - p.received_at * 1000 for p in pings])
            with _suppress_all("recording the landed offsets"):
                await self._note_progress(events)
            self.stats["batches"] += 1

    async def _note_progress(self, events: Sequence[EventT]) -> None:
        """partition -> next offset to land, for the real lag (see ``ingest_offsets_key``):
        one pipelined HSET + EXPIRE per batch."""
        landed: dict[int, int] = {}
        for event in events:
            message = event.message
            if message.offset >= landed.get(message.partition, -1):
                landed[message.partition] = message.offset + 1
        if not landed or self.redis is None:
            return
        note_landed(self.settings.locations_topic, landed)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.progress_key, mapping=landed)
        pipe.expire(self.progress_key, INGEST_OFFSETS_TTL_S)
        await pipe.execute()

    async def _track(self, pings: list[DriverPing]) -> None:
        """The observer's work on the landed pings (the engine's geofence arrivals and ETAs). Best effort: the
        pings are in Redis already, so a failure is logged and counted, never a reason to hold
        back the acknowledgement; the driver's next ping tries again."""
        if self.tracker is None or not pings:
            return
        try:
            async with asyncio.timeout(TRACKING_TIMEOUT_S):
                tracked = await self.tracker.on_pings(pings)
        except Exception as exc:  # noqa: BLE001 - Redis or Postgres trouble, or a timeout
            self.stats["tracking_errors"] += 1
            log.warning("tracking %d ping(s) failed: %s: %s", len(pings), type(exc).__name__, exc)
            return
        self.stats.update(arrived_pickup=tracked.arrived_pickup, etas_written=tracked.etas_written,
                          arrived_dropoff=tracked.arrived_dropoff, tracking_errors=tracked.failed)

    async def _write(self, store: LocationStore, pings: list[DriverPing]) -> BatchOutcome:
        delay = 0.05
        while True:
            try:
                return await store.write_batch(pings)
            except Exception as exc:
                if not _retryable(exc):
                    raise
                if self.closing:
                    raise PipelineClosed("shutting down while Redis is failing") from exc
                self.stats["redis_retries"] += 1
                log.warning("Redis write of %d pings failed (%s: %s); retrying in %.2f s",
                            len(pings), type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, REDIS_BACKOFF_MAX_S)

    async def _dead_letter(self, dead: list[tuple[EventT, str, Any]]) -> None:
        """Dead-letter whole messages (``part`` None) or single uploads of a bundle (``part``
        is the upload's decoded JSON, previewed re-encoded)."""
        sent = []
        for event, reason, part in dead:
            message = event.message
            raw = event.value
            if part is not None:
                preview = _preview_json(part)
            elif isinstance(raw, bytes | bytearray):
                preview = bytes(raw[: DEAD_LETTER_PREVIEW * 4]).decode("utf-8", "replace")
            else:
                preview = "" if raw is None else repr(raw)
            key = event.key
            if isinstance(key, bytes | bytearray):
                key = bytes(key).decode("utf-8", "replace")
            letter = DeadLetter(
                topic=message.topic, partition=message.partition, offset=message.offset,
                reason=reason, key=key, value_preview=preview[:DEAD_LETTER_PREVIEW],
            )
            sent.append(await self.dead_letters.send(key=event.key, value=letter))
            log.info("dead letter %s[%d]@%d: %s", message.topic, message.partition,
                     message.offset, reason)
        await asyncio.gather(*sent)   # delivered before the originals are acknowledged
        self.stats["dead_letter"] += len(dead)
        count_outcomes((("dead_letter", len(dead)),))
        if self.store is not None:
            with _suppress_all("counting dead letters"):
                await self.store.count(dead_letter=len(dead))

    async def flush_pg(self, *, force: bool = False) -> None:
        if self.pg_writer is None:
            return
        written, failed = await self.pg_writer.flush(force=force)
        if written or failed:
            self.stats["pg_written"] += written
            self.stats["pg_failed"] += failed
            if self.store is not None:
                with _suppress_all("counting Postgres writes"):
                    await self.store.count(pg_written=written, pg_failed=failed)

    def log_stats(self) -> None:
        now = time.monotonic()
        then, before = self._last_stats
        if now - then < STATS_LOG_INTERVAL_S:
            return
        delta = self.stats - before
        self._last_stats = (now, self.stats.copy())
        if delta:
            rate = (delta["accepted"] + delta["out_of_order"] + delta["implausible_jump"]) / (now - then)
            log.info("ingest: %.0f pings/s; last %.0f s %s; total %s", rate, now - then,
                     dict(delta), dict(self.stats))


def _preview_json(part: Any) -> str:
    try:
        return json.dumps(part, ensure_ascii=False)[: DEAD_LETTER_PREVIEW * 4]
    except (TypeError, ValueError, RecursionError):
        return repr(part)[: DEAD_LETTER_PREVIEW * 4]


class _suppress_all:
    """Log and swallow an exception (for best-effort steps in shutdown and bookkeeping)."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is not None and isinstance(exc, Exception):
            log.warning("%s failed: %s: %s", self.what, type(exc).__name__, exc)
            return True
        return False


def _broker_url(bootstrap: str) -> str:
    return ";".join(f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip())


def create_app(settings: StreamSettings, pg: PostgresSettings | None = None, *,
               web_port: int | None = None, latency_samples: bool | None = None,
               session_timeout_s: float | None = None,
               observer: ObserverFactory | None = None) -> faust.App:
    """The ingest app: topics, the agent, the PG timer. ``pg=None`` skips Postgres writes;
    ``observer`` (see ``BatchObserver``) is handed every landed batch.

    ``web_port=None`` disables faust's web server. ``latency_samples`` defaults to
    ``WAKALA_INGEST_LATENCY_SAMPLES=1``; ``session_timeout_s`` (Kafka consumer group session)
    to ``WAKALA_KAFKA_SESSION_TIMEOUT_S`` or DEFAULT_SESSION_TIMEOUT_S. The pipeline is
    ``app.ingest`` and its counters ``app.ingest_stats``.
    """
    if latency_samples is None:
        latency_samples = os.environ.get(LATENCY_SAMPLES_ENV) == "1"
    if session_timeout_s is None:
        session_timeout_s = float(os.environ.get(SESSION_TIMEOUT_ENV) or DEFAULT_SESSION_TIMEOUT_S)
    state_dir = os.environ.get("WAKALA_STATE_DIR") or os.path.join(os.getcwd(), ".wakala")
    os.makedirs(os.path.join(state_dir, "faust"), exist_ok=True)
    app = IngestApp(
        settings.app_id,
        datadir=os.path.join(state_dir, "faust", "{conf.name}-data"),  # not the working directory
        broker=_broker_url(settings.kafka_bootstrap),
        store="memory://",
        topic_partitions=settings.locations_partitions,
        topic_replication_factor=1,
        processing_guarantee="at_least_once",   # the bundled tansu refuses InitProducerId
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,
        broker_session_timeout=session_timeout_s,
        broker_heartbeat_interval=min(3.0, session_timeout_s / 4),
        web_enabled=web_port is not None,
        web_port=web_port or 6066,
        web_bind="127.0.0.1",
        producer_linger=0.005,
        stream_buffer_maxsize=max(4096, settings.batch_size * 2),
    )
    locations = app.topic(
        settings.locations_topic, key_serializer="raw", value_serializer="raw",
        partitions=settings.locations_partitions,
    )
    dead_letters = app.topic(
        settings.dead_letters_topic, key_serializer="raw", value_type=DeadLetter,
        partitions=settings.locations_partitions,
    )
    app.declare_on_start = (locations, dead_letters)
    app.fetch_max_wait_ms = settings.fetch_max_wait_ms
    app.broker_watch = BrokerWatch()
    watched_topics = {settings.locations_topic: settings.locations_partitions,
                      settings.dead_letters_topic: settings.locations_partitions}
    pipeline = IngestPipeline(app, settings, pg, dead_letters, latency_samples=latency_samples,
                              observer=observer)
    app.ingest = pipeline                 # type: ignore[attr-defined]
    app.ingest_stats = pipeline.stats     # type: ignore[attr-defined]
    batch_size = settings.batch_size
    within = settings.batch_within_s

    @app.agent(locations, name="wakala.streams.ingest", concurrency=1)
    async def ingest(stream: StreamT) -> None:
        await pipeline.open()

        def event_of(value: Any) -> Any:
            return stream.current_event   # the buffer then holds events, which we ack ourselves

        stream.add_processor(event_of)   # each actor (re)start gets a new stream
        batches = stream.noack_take(batch_size, within=within)
        try:
            async for events in batches:
                try:
                    await pipeline.process(events)
                except PipelineClosed:
                    return
                except Exception as exc:
                    log.exception("ingest batch failed; crashing without acknowledging it")
                    await app.crash(exc)
                    return
                for event in events:
                    await stream.ack(event)
        finally:
            # noack_take turns the stream's auto-acks back on when it is closed, and a generator
            # left by `return` is closed whenever the loop gets to it: events still flowing
            # through the stream while the worker stops would then be acknowledged, and their
            # offsets committed, without ever reaching Redis (seen once under load in
            # test_a_failing_batch_is_not_acknowledged). Close it now and keep acks off.
            await batches.aclose()
            stream.enable_acks = False

    @app.timer(PG_FLUSH_EVERY_S)
    async def flush_and_report() -> None:
        if pipeline.store is None:
            return
        try:
            await pipeline.flush_pg()
        except Exception:  # noqa: BLE001 - never let the timer die
            log.exception("Postgres location flush failed")
        pipeline.log_stats()

    @app.timer(WATCH_INTERVAL_S)
    async def watch_broker() -> None:
        try:
            await app.watch_broker(settings.kafka_bootstrap, watched_topics, settings.locations_topic)
        except Exception:  # noqa: BLE001 - never let the timer die
            log.exception("the broker watch failed")

    @app.on_before_shutdown.connect
    async def close_pipeline(sender: Any, **kwargs: Any) -> None:
        await pipeline.close()
    instrument(app, settings.locations_topic, settings.metrics_port)

    return app


def run_worker(settings: StreamSettings | None = None, pg: PostgresSettings | None = None, *,
               loglevel: str = "info", web_port: int | None = None, use_uvloop: bool = True,
               observer: ObserverFactory | None = None) -> None:
    """Run the ingest worker in the foreground until SIGINT/SIGTERM (`wakala engine worker`
    calls it through ``dispatch.tracking.worker``, which hands in the tracker).

    uvloop, when installed, makes faust's per-event path about 20% faster. The collector runs
    old generations rarely (as the engine's app does: same heap-scan cost, many live events).
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    if use_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    settings = settings or StreamSettings.from_env()
    app = create_app(settings, pg, web_port=web_port, observer=observer)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    try:
        worker.execute_from_commandline()
    except SystemExit as exit_:
        # A crashed app (a failing batch, a broker the worker cannot commit to) stops the
        # worker with status 0; a supervisor must see a failure and restart it.
        if not exit_.code and app._crashed.is_set():
            raise SystemExit(1) from None
        raise


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m streams.app worker -l info`` (faust's CLI) with settings from WAKALA_*.

    Lands pings only (no tracker: that is the engine's, ``wakala engine worker``).
    ``WAKALA_STREAMS_PG=0`` disables the Postgres writer.
    """
    settings = StreamSettings.from_env()
    pg = None if os.environ.get("WAKALA_STREAMS_PG") == "0" else PostgresSettings.from_env()
    app = create_app(settings, pg)
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    app.main()


if __name__ == "__main__":
    main()
