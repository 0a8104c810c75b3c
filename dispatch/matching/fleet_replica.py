"""The availability index replicated into each matcher process, kept fresh from Redis.

Why a replica
    A nearest-driver query against Redis costs a round trip, a script that reads every driver
    of the searched cells, and parsing the reply: 1.5-1.8 ms p50 at 50,000 drivers, slower
    than a plain ``GEOSEARCH`` (``wakala bench nearest``; docs/benchmarks.md). A Python→Redis round trip alone is
    ~0.1-0.2 ms here, so ranking inside Redis (one script returning only the top k) could at
    best tie ``GEOSEARCH``. Answering from memory (``dispatch.matching.fleet_index``) takes
    no round trip at all. The replica only *proposes* drivers: the claim
    (``DriverClaims.offer``, one atomic script on ``driver:state``) stays the one truth, so a
    replica that is behind can offer nobody twice; a driver it still thinks available is
    refused by the claim and the round goes on to the next candidate
    (``OfferEngine._advance``).

The feeds (one Redis connection, RESP2, subscribed to two channels)
    - ``AVAILABILITY_CHANNEL``: the location worker publishes, after each batch it lands, the
      rows of the batch's drivers as Redis holds them then (``AvailabilityPublisher``, built
      into the worker by ``dispatch.tracking.worker``): one script call per batch (per
      PUBLISH_CHUNK drivers) that reads each driver's location hash and index membership and
      publishes them, so the row is Redis's own truth, not the ping's.
    - ``__redis__:invalidate``: client-side-caching invalidations in broadcast mode
      (``CLIENT TRACKING on REDIRECT <self> BCAST PREFIX driver:state:``). Every status change
      (shift start and end, claims' accept and release, a rebuild after a Redis restart)
      writes ``driver:state:{id}``, so Redis itself tells us which drivers changed, whoever
      changed them, without touching any writer; the replica re-reads those drivers' rows
      with the same script. A ``FLUSHALL``/``FLUSHDB`` arrives as a null invalidation: resync.

Freshness (documented bound)
    A landed ping reaches the replica after one more round trip of the worker (the publish
    runs before the batch's tracking work) plus delivery: measured 0.33-0.36 ms p50 and at
    most 0.82 ms (``wakala bench nearest``), well under the 1 s we promise. A status change reaches it after its invalidation and one re-read round trip.
    Drivers whose ``seen_ms`` is older than ``location_ttl_s`` are not candidates, with
    Redis's clock estimated from ``TIME`` (``now_ms``), the same test the Redis readers make.

Losing messages
    Pub/sub loses messages only with the connection (a Redis restart, a client output
    buffer overflow, a network cut); then the replica is not ready (callers use the Redis
    path) until it has reconnected, re-subscribed and resynced: a ``SCAN`` of the location
    hashes, read with the rows script in chunks. Rows applied by the feed during a resync win
    over the resync's, and a driver neither seen by the resync nor updated during it is
    dropped. A ping landed while the worker died before publishing is missed until the
    driver's next ping or the periodic resync (``resync_interval_s``, the backstop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from redis.asyncio import Redis

from dispatch.core.ids import InvalidId, canonical_uuid
from dispatch.matching.fleet_index import CELL_DEG, DriverRow, FleetIndex
from dispatch.matching.ranking import Job, RankedCandidate
from geo import CIRCUITY
from streams.keys import location_key, state_key
from streams.replies import as_text
from streams.settings import StreamSettings

__all__ = [
    "AVAILABILITY_CHANNEL",
    "AvailabilityPublisher",
    "FleetReplica",
    "parse_rows",
]

log = logging.getLogger(__name__)

AVAILABILITY_CHANNEL = "drivers:availability"
INVALIDATE_CHANNEL = "__redis__:invalidate"
STATE_PREFIX = state_key("")
LOCATION_PREFIX = location_key("")
PUBLISH_CHUNK = 1000          # drivers per script call (a few ms of Redis time at most)
READ_CHUNK = 1000             # drivers per re-read / resync script call (~2 ms to parse)
SCAN_COUNT = 5000
IDLE_PING_S = 5.0             # a silent feed connection is pinged ...
DEAD_AFTER_S = 15.0           # ... and given up (reconnect, resync) after this long silent
EVICT_EVERY_S = 10.0

# ARGV: channel ('' = return the payload instead of publishing), driver ids joined by '\n'
# (one argument: encoding a thousand arguments cost redis-py more than the reads below).
# Payload: Redis TIME (ms), then one line per driver:
#   id \t tenant \t lat \t lng \t vehicle \t seen_ms \t 1|0   (1 = in the availability index)
#   id \t\t\t\t\t now_ms \t g                                (no live location)
# A driver:location key that is not a hash (written by something other than the worker) reads
# as no live location for that driver; the whole feed does not fail on it.
# "In the index" is the test LocationStore.available_in_cells makes: a member of its cell's
# set, and 'available' in the location hash.
ROWS_SCRIPT = """
local t = redis.call('TIME')
local now = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
local out = {now}
for id in string.gmatch(ARGV[2], '[^\\n]+') do
  local h = redis.pcall('HMGET', 'driver:location:' .. id,
    'lat', 'lng', 'vehicle', 'seen_ms', 'tenant', 'cell', 'status')
  if h.err then h = {} end   -- a key of another type: no live location, not a dead feed
  if h[1] and h[2] and h[4] and h[5] and h[6] then
    local flag = '0'
    if h[7] == 'available'
        and redis.call('ZSCORE', 'drivers:available:' .. h[5] .. ':' .. h[6], id) then
      flag = '1'
    end
    out[#out + 1] = id .. '\\t' .. h[5] .. '\\t' .. h[1] .. '\\t' .. h[2] .. '\\t'
      .. (h[3] or '') .. '\\t' .. h[4] .. '\\t' .. flag
  else
    out[#out + 1] = id .. '\\t\\t\\t\\t\\t' .. now .. '\\tg'
  end
end
local payload = table.concat(out, '\\n')
if ARGV[1] ~= '' then
  redis.call('PUBLISH', ARGV[1], payload)
  return #out - 1
end
return payload
"""


def parse_rows(payload: str) -> tuple[int, list[DriverRow]]:
    """(Redis time in ms, rows) of a ROWS_SCRIPT payload. Pure."""
    lines = payload.split("\n")
    now_ms = int(lines[0])
    rows: list[DriverRow] = []
    append = rows.append
    for line in lines[1:]:
        driver, tenant, lat, lng, vehicle, seen, flag = line.split("\t")
        if flag == "g":
            append(DriverRow(driver, "", math.nan, math.nan, "", int(seen), False, True))
        else:
            append(DriverRow(driver, tenant, float(lat), float(lng), vehicle, int(seen), flag == "1"))
    return now_ms, rows


def _unique(ids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(ids))


class AvailabilityPublisher:
    """The worker side: publish the current rows of the drivers a batch just moved."""

    def __init__(self, redis: Redis, channel: str = AVAILABILITY_CHANNEL) -> None:
        self.redis = redis
        self.channel = channel
        self._rows = redis.register_script(ROWS_SCRIPT)

    async def publish(self, driver_ids: Iterable[str]) -> int:
        """One script call per PUBLISH_CHUNK drivers, pipelined; returns the rows published."""
        ids = _unique(driver_ids)
        if not ids:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for i in range(0, len(ids), PUBLISH_CHUNK):
            await self._rows(args=[self.channel, "\n".join(ids[i:i + PUBLISH_CHUNK])], client=pipe)
        return sum(int(n) for n in await pipe.execute())


class FleetReplica:
    """A ``FleetIndex`` of every tenant's drivers, kept in step with Redis (see the module doc).

    ``run`` (or ``start``/``stop``) keeps it fresh; ``nearest`` answers from memory, or None
    while the replica is not ready (before its first resync, or after losing its feed).
    ``redis`` is the client for reads (re-reads, resyncs, ``TIME``); the feed has its own
    connection to ``settings.redis_url``.
    """

    def __init__(self, redis: Redis, settings: StreamSettings, *,
                 channel: str = AVAILABILITY_CHANNEL, resync_interval_s: float = 300.0,
                 cell_deg: float = CELL_DEG) -> None:
        self.redis = redis
        self.settings = settings
        self.channel = channel
        self.ttl_ms = int(settings.location_ttl_s * 1000)
        self.resync_interval_s = resync_interval_s
        self.index = FleetIndex(cell_deg)
        self.stats: dict[str, int] = {"messages": 0, "rows": 0, "rereads": 0, "resyncs": 0,
                                      "reconnects": 0, "evicted": 0}
        self._rows = redis.register_script(ROWS_SCRIPT)
        self._offset_ms = 0.0          # Redis clock minus ours
        self._ready = False
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self._touched: set[str] | None = None    # drivers updated while a resync runs
        self._task: asyncio.Task | None = None
        self._synced = asyncio.Event()
        self._resync_now = asyncio.Event()

    # -- queries --------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready

    def now_ms(self) -> int:
        """Redis's clock, estimated."""
        return int(time.time() * 1000 + self._offset_ms)

    def nearest(self, job: Job, *, k: int = 10, exclude: Collection[str] = frozenset(),
                driver_facts: Mapping[str, Any] | None = None,
                circuity: float = CIRCUITY) -> list[RankedCandidate] | None:
        """As ``nearest_from_redis`` answers, from memory; None when not ready.

        ``driver_facts`` maps driver_id to ``DriverFacts`` (cold storage); missing: none.
        """
        if not self._ready:
            return None
        try:
            tenant = canonical_uuid(job.tenant_id, "tenant_id")
        except InvalidId:
            return []
        index = self.index.tenant(tenant)
        if index is None:
            return []
        cold_of = None
        if driver_facts:
            def cold_of(driver_id: str) -> bool:
                facts = driver_facts.get(driver_id)
                return facts is not None and bool(facts.has_cold_storage)
        return index.nearest(job, k=k, now_ms=self.now_ms(), ttl_ms=self.ttl_ms,
                             exclude=exclude, cold_of=cold_of, circuity=circuity)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, *, wait_s: float | None = None) -> None:
        """Run in the background; with ``wait_s``, wait up to that long for the first resync."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name="fleet-replica")
        if wait_s is not None:
            async with asyncio.timeout(wait_s):
                await self._synced.wait()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._ready = False

    async def run(self) -> None:
        """Keep the replica fresh until cancelled; reconnect and resync after any failure."""
        delay = 0.1
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                self._ready = False
                raise
            except Exception as exc:  # noqa: BLE001 - Redis away, restarting, or a bug: retry
                log.warning("fleet replica feed lost (%s: %s); reconnecting in %.1f s",
                            type(exc).__name__, exc, delay)
            self._ready = False
            self.stats["reconnects"] += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _session(self) -> None:
        feed = Redis.from_url(self.settings.redis_url, protocol=2, socket_connect_timeout=5)
        conn = feed.connection_pool.make_connection()
        helpers: list[asyncio.Task] = []
        try:
            await conn.connect()
            await conn.send_command("CLIENT", "ID")
            client_id = int(await conn.read_response())
            await conn.send_command("CLIENT", "TRACKING", "on", "REDIRECT", client_id,
                                    "BCAST", "PREFIX", STATE_PREFIX)
            await conn.read_response()
            await conn.send_command("SUBSCRIBE", INVALIDATE_CHANNEL, self.channel)
            await conn.read_response()
            await conn.read_response()
            # Subscribed before the resync reads anything: no change falls in between.
            helpers = [asyncio.create_task(self._reread_forever(), name="fleet-replica-reread"),
                       asyncio.create_task(self._resync_forever(), name="fleet-replica-resync")]
            await self._listen(conn, helpers)
        finally:
            self._ready = False
            for task in helpers:
                task.cancel()
            for task in helpers:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            with contextlib.suppress(Exception):
                await conn.disconnect()
            with contextlib.suppress(Exception):
                await feed.aclose()

    async def _listen(self, conn: Any, helpers: Sequence[asyncio.Task]) -> None:
        loop = asyncio.get_running_loop()
        heard = loop.time()
        pinged = False
        while True:
            for task in helpers:
                if task.done():
                    task.result()     # a helper that failed ends the session
            message = await conn.read_response(timeout=1.0)
            now = loop.time()
            if message is None:
                if now - heard > DEAD_AFTER_S:
                    raise ConnectionError(f"the feed was silent for {DEAD_AFTER_S:.0f} s")
                if now - heard > IDLE_PING_S and not pinged:
                    await conn.send_command("PING")
                    pinged = True
                continue
            heard, pinged = now, False
            if not isinstance(message, list) or len(message) < 3 or as_text(message[0]) != "message":
                continue     # pong, subscribe confirmations
            channel, data = as_text(message[1]), message[2]
            self.stats["messages"] += 1
            if channel == self.channel:
                self._apply_payload(as_text(data))
            elif channel == INVALIDATE_CHANNEL:
                if data is None:
                    self._ready = False
                    self._resync_now.set()
                    continue
                keys = data if isinstance(data, list) else [data]
                self._pending.update(as_text(key)[len(STATE_PREFIX):] for key in keys)
                self._wake.set()

    # -- applying rows --------------------------------------------------------------------------

    def _apply_payload(self, payload: str) -> None:
        _, rows = parse_rows(payload)
        self._apply(rows)

    def _apply(self, rows: list[DriverRow]) -> None:
        self.index.apply(rows)
        self.stats["rows"] += len(rows)
        if self._touched is not None:
            self._touched.update(r.driver_id for r in rows)

    async def read_rows(self, driver_ids: Sequence[str]) -> list[DriverRow]:
        """The drivers' current rows, READ_CHUNK per script call, one round trip."""
        if not driver_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for i in range(0, len(driver_ids), READ_CHUNK):
            await self._rows(args=["", "\n".join(driver_ids[i:i + READ_CHUNK])], client=pipe)
        rows: list[DriverRow] = []
        for payload in await pipe.execute():
            rows += parse_rows(as_text(payload))[1]
        return rows

    async def _reread_forever(self) -> None:
        """Re-read the drivers whose status changed, as their invalidations arrive."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            ids, self._pending = list(self._pending), set()
            if ids:
                self.stats["rereads"] += len(ids)
                self._apply(await self.read_rows(ids))

    async def _resync_forever(self) -> None:
        loop = asyncio.get_running_loop()
        last_evict = loop.time()
        while True:
            await self.resync()
            self._ready = True
            self._synced.set()
            deadline = loop.time() + self.resync_interval_s
            while loop.time() < deadline and not self._resync_now.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(EVICT_EVERY_S, max(0.0, deadline - loop.time()))):
                        await self._resync_now.wait()
                if loop.time() - last_evict >= EVICT_EVERY_S:
                    self.stats["evicted"] += self.index.evict(self.now_ms() - self.ttl_ms)
                    last_evict = loop.time()
            self._resync_now.clear()

    async def _measure_clock(self) -> None:
        t0 = time.time()
        seconds, micros = await self.redis.time()
        t1 = time.time()
        self._offset_ms = (int(seconds) * 1000 + int(micros) / 1000) - (t0 + t1) / 2 * 1000

    async def resync(self) -> int:
        """Read every live location (SCAN) and apply it; drop drivers Redis no longer has.

        Returns the drivers read.
        """
        await self._measure_clock()
        self._touched = set()
        seen: set[str] = set()
        try:
            batch: list[str] = []
            async for key in self.redis.scan_iter(match=LOCATION_PREFIX + "*", count=SCAN_COUNT):
                batch.append(as_text(key)[len(LOCATION_PREFIX):])
                if len(batch) >= READ_CHUNK:
                    seen.update(batch)
                    self._apply_resync(await self.read_rows(batch))
                    batch = []
                    await asyncio.sleep(0)   # queries run between slices of a resync
            if batch:
                seen.update(batch)
                self._apply_resync(await self.read_rows(batch))
            touched = self._touched
            for driver_id in self.index.driver_ids():
                if driver_id not in seen and driver_id not in touched:
                    self.index.remove(driver_id)
        finally:
            self._touched = None
        self.stats["resyncs"] += 1
        return len(seen)

    def _apply_resync(self, rows: list[DriverRow]) -> None:
        self.index.apply(rows)
        self.stats["rows"] += len(rows)
