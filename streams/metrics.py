"""The location worker's Prometheus metrics, and the operator port that serves them.

The worker is its own process (``wakala engine worker``), so the engine's /metrics never
sees these: with ``WAKALA_WORKER_METRICS_PORT`` set (0, the default, serves nothing) the
worker serves them itself on 127.0.0.1 only, for a Prometheus on the same host (job
``wakala-worker`` in deploy/prometheus/prometheus.yml). Each worker process needs a port
of its own; one that finds its port taken logs it and runs without one.

What a batch costs them: one histogram observation for its size, one for its Redis write,
and one counter increment per outcome that occurred (at most five). The lag is not counted
on the batch path at all: a timer (``LAG_SAMPLE_S``) reads it from memory the consumer
already keeps (no request to the broker):

* ``wakala_worker_lag_messages{partition}``: the partition's high watermark, as of the
  worker's last fetch from it, minus what the worker has done there (the larger of faust's
  committed offset and the offset its last batch landed in Redis). A worker that has stopped
  fetching (paused by faust's flow control while its buffer is full) reports the lag as of
  its last fetch, so the figure can trail a growing backlog; the engine's own sample,
  ``wakala_location_lag_messages``, asks the broker for the end offsets and keeps counting
  when the worker is gone altogether.

The engine's operator port uses ``serve_metrics`` too (this package is below ``dispatch/``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge, Histogram, start_http_server

__all__ = ["BATCH_PINGS", "LAG_SAMPLE_S", "REDIS_WRITE_SECONDS", "WORKER_LAG", "WORKER_PINGS",
           "count_outcomes", "instrument", "note_landed", "observe_batch", "partition_lag", "sample_lag", "serve_metrics", "timed_write"]

log = logging.getLogger(__name__)

LAG_SAMPLE_S = 5.0
T = TypeVar("T")

WORKER_LAG = Gauge("wakala_worker_lag_messages",
                   "Messages of the locations topic this worker has yet to land, per assigned partition "
                   "(high watermark at its last fetch minus the larger of committed and landed offsets)",
                   ["partition"])
BATCH_PINGS = Histogram("wakala_worker_batch_pings",
                        "Pings decoded from one batch of the location worker (batches with at least one)",
                        buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 25_000))
REDIS_WRITE_SECONDS = Histogram(
    "wakala_worker_redis_write_seconds",
    "Landing one batch's pings in Redis (the write script, one round trip; retries included)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
WORKER_PINGS = Counter("wakala_worker_pings_total",
                       "Pings the location worker processed, by outcome "
                       "(accepted, out_of_order, implausible_jump, dead_letter)", ["outcome"])


def partition_lag(highwaters: Mapping[int, int | None], committed: Mapping[int, int | None],
                  landed: Mapping[int, int]) -> dict[int, int]:
    """partition -> messages not yet landed, for each partition with a known high watermark.

    Done is the larger of the committed and the landed offset (both "next offset to
    read"); a partition with neither known counts from 0. Never negative: a high watermark
    from an older fetch may trail the offsets landed since.
    """
    lag: dict[int, int] = {}
    for partition, high in highwaters.items():
        if high is None:
            continue
        done = max(committed.get(partition) or 0, landed.get(partition, 0))
        lag[partition] = max(0, high - done)
    return lag


_shown: set[int] = set()   # the partitions WORKER_LAG has a series of


def sample_lag(consumer: Any, topic: str, landed: Mapping[int, int]) -> dict[int, int]:
    """Set ``WORKER_LAG`` from what a faust consumer holds in memory (no I/O): the high
    watermarks of its last fetches, its committed offsets and ``landed`` (partition -> next
    offset to land). Partitions no longer assigned lose their series. Returns the lag; empty
    when the consumer cannot tell (not started, mid-rebalance: the next sample will)."""
    global _shown
    try:
        tps = [tp for tp in consumer.assignment() if tp.topic == topic]
        highwaters = {tp.partition: consumer.highwater(tp) for tp in tps}
        committed = getattr(consumer, "_committed_offset", {})   # faust's, per partition
        done = {tp.partition: committed.get(tp) for tp in tps}
    except Exception:  # noqa: BLE001 - any state the consumer is in between samples
        return {}
    lag = partition_lag(highwaters, done, landed)
    for partition, value in lag.items():
        WORKER_LAG.labels(str(partition)).set(value)
    for gone in _shown - set(lag):
        with contextlib.suppress(KeyError):
            WORKER_LAG.remove(str(gone))
    _shown = set(lag)
    return lag


def count_outcomes(counts: Iterable[tuple[str, int]]) -> None:
    """Add one batch's outcome counts to ``WORKER_PINGS`` (zeros skipped)."""
    for outcome, n in counts:
        if n:
            WORKER_PINGS.labels(outcome).inc(n)


def observe_batch(pings: int, counts: Mapping[str, int]) -> None:
    """One batch that decoded ``pings`` pings and landed them with these outcome ``counts``."""
    BATCH_PINGS.observe(pings)
    count_outcomes(counts.items())


async def timed_write(write: Awaitable[T]) -> T:
    """Await a batch's Redis write (its retries included) into ``REDIS_WRITE_SECONDS``."""
    started = time.perf_counter()
    result = await write
    REDIS_WRITE_SECONDS.observe(time.perf_counter() - started)
    return result


# topic -> partition -> next offset to land: what the pipeline has landed in Redis (this process)
_landed: dict[str, dict[int, int]] = {}


def note_landed(topic: str, landed: Mapping[int, int]) -> None:
    """The pipeline landed a batch: ``landed`` is partition -> next offset to land."""
    _landed.setdefault(topic, {}).update(landed)


def instrument(app: Any, topic: str, port: int) -> None:
    """Give the ingest app (faust) its lag timer over ``topic`` (with what ``note_landed`` was
    told) and, with ``port``, its metrics server for as long as the app runs."""

    @app.timer(LAG_SAMPLE_S)
    async def sample_worker_lag() -> None:
        sample_lag(app.consumer, topic, _landed.get(topic, {}))

    if not port:
        return
    stops: list[Callable[[], None]] = []

    @app.task
    async def serve_worker_metrics() -> None:
        if not stops and (stop := serve_metrics(port)) is not None:
            stops.append(stop)

    @app.on_before_shutdown.connect
    async def stop_worker_metrics(sender: Any, **kwargs: Any) -> None:
        while stops:
            await asyncio.to_thread(stops.pop())


def serve_metrics(port: int) -> Callable[[], None] | None:
    """Serve this process's /metrics on 127.0.0.1:``port`` in a thread; returns how to stop it,
    or None if the port is taken (logged: the process goes on without it)."""
    try:
        server, thread = start_http_server(port, addr="127.0.0.1")
    except OSError as exc:
        log.warning("metrics port 127.0.0.1:%d not served by this process: %s", port, exc)
        return None

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop
