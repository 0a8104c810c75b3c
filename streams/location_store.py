"""Live driver locations, status and availability in Redis: the contract and its only writer.

The gateway reads positions, the matcher reads the availability index and changes status, the
ingest agent writes positions. All of them go through ``LocationStore``; the key layout below
is the contract between them.

Keys
----

``driver:location:{driver_id}`` HASH, ``PEXPIRE`` location_ttl_s on every accepted ping
    ``lat``, ``lng`` (degrees), ``speed`` (m/s), ``heading`` (degrees), ``accuracy`` (m),
    ``ts`` (device fix time, epoch seconds), ``seen_ms`` (server time of the write, from
    Redis ``TIME``), ``tenant``, ``vehicle``, ``status`` (copied from the state hash),
    ``cell`` (H3 cell at the configured resolution), ``battery`` (percent, only when the
    last ping had one); ``cand_*`` while refused jumps are pending (see "Jumps" below).
    A silent driver's key expires: no key, no live position.

``driver:state:{driver_id}`` HASH, no TTL (status must survive a silent driver)
    ``status`` (``offline`` | ``available`` | ``busy``), ``tenant``, ``vehicle``,
    ``updated_ms``. Created by ``start_shift``; a ping never creates it, and a driver
    without it is ``offline`` (its location hash says so and it is never indexed).

``drivers:available:{tenant_id}:{cell}`` ZSET, member driver_id, score ``seen_ms``
    A driver is a fresh member of exactly one cell of its tenant while it is ``available``,
    its state's tenant is the ping's tenant, and its location key is alive. Moving cells
    removes it from the old cell (read from the location hash inside the script); status
    changes away from ``available`` remove it. Nothing removes a member when its location
    key expires; instead readers keep only ``score > now_ms - ttl_ms``, which is exactly
    the key's own lifetime (``PEXPIRE`` is set at ``seen_ms``), so an expired driver is
    never returned. Readers also trim stale members (``ZREMRANGEBYSCORE``) as they go.

``metrics:ingest:counts`` HASH of counters (``accepted``, ``out_of_order``,
    ``implausible_jump``, ``dead_letter``, ``pg_written``, ``pg_failed``), and
    ``metrics:ingest:latency_ms`` LIST of per-ping ingest latencies (gateway accept to Redis
    write, ms; only when the agent samples them), trimmed to LATENCY_SAMPLES_MAX.

Writes
------

A batch of pings is one ``EVALSHA`` per WRITE_CHUNK pings (the pings travel as one JSON array
argument, decoded with ``cjson`` in the script), all in one pipeline. For each ping, in order, the script
compares with the STORED position atomically: a ping whose device ``ts`` is not newer than the
stored one is ``out_of_order`` (so replaying a ping changes nothing: at-least-once delivery is
safe); a ping implying a speed above max_speed_kmh from the stored position and ts is an
``implausible_jump`` and the stored position stays (see below). Accepted pings are written
with ``HSET`` + ``PEXPIRE`` and the index is maintained according to ``driver:state``.

Jumps and a wrong stored fix
----------------------------

A jump is either a wild outlier (one bad fix) or the truth after a wrong stored fix (a first
fix in another city, say). The two look the same for one ping and differ over a few: the truth
keeps agreeing with itself. So a refused fix is remembered in the location hash as the jump
*candidate* (``cand_ts``, ``cand_lat``, ``cand_lng``, ``cand_n``); the next jump that is
plausible from the candidate (same speed rule, newer ts) counts one more, any other jump
starts a new candidate. The jump that brings the count to ``jump_confirm_fixes``
(JUMP_CONFIRM_FIXES, 3: e.g. ~10 s of 4-second pings, well inside the 30 s TTL) replaces the
stored position: outcome ``relocated``, landed and counted as accepted (and ``relocated``),
so the index, the tracker and the Postgres writer all get the new position. A single
outlier, or outliers that do not agree with one another, never move the driver; an accepted
ping clears the candidate. The price: a device repeating the same wrong fix three times moves
the driver there, and the truth then needs three fixes of its own; the fixes before the
confirming one were refused (and reported) although they turn out right. The cost on the accepted path is four more fields in the ``HMGET``
the script already does (and one ``HDEL`` after a candidate). ``LocationStore.get`` hides the
candidate fields.

Every refused jump is also published, from inside the script (same round trip, nothing for an
accepted ping), on ``DRIVER_NOTICES_CHANNEL``: ``{"tenant_id", "driver_id", "reason":
"implausible_jump", "message", "recorded_at"}`` with ``recorded_at`` the ping's own ``ts`` as
the gateway received it, so the gateway can tell the driver which acknowledged ping was
dropped and why. The JSON is built by concatenation: ids are canonical UUIDs (``decode``),
``recorded_at`` is the number ``repr`` wrote, and the message has no quotes.

Status changes (``start_shift``, ``end_shift``, ``set_status``) are one small script each
call, so a ping and a status change never interleave.

Scaling
-------

Single Redis instance for now. The scripts build key names themselves (the old cell comes from
the location hash), which Redis Cluster does not allow; under Cluster every key of a tenant
would need a ``{tenant}`` hash tag (``driver:location:{<tenant>}:<driver>``, ...) and one script
call per tenant and slot.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import h3
from redis.asyncio import Redis

from geo import cell_of, disk
from schema.ids import canonical_uuid
from streams import codec
from streams.keys import (
    DRIVER_NOTICES_CHANNEL,
    INGEST_COUNTS_KEY,
    INGEST_LATENCY_KEY,
    location_key,
    state_key,
)
from streams.records import DriverPing
from streams.replies import as_text
from streams.settings import StreamSettings

STATUSES = ("offline", "available", "busy")
WRITE_CHUNK = 500                  # pings per script call: ~5 ms of Redis time, then others run
LATENCY_SAMPLES_MAX = 200_000
OUTCOMES = {"a": "accepted", "r": "relocated", "o": "out_of_order", "j": "implausible_jump"}
# A jump becomes the stored position when this many consecutive refused fixes (itself included)
# agree with each other (see "Jumps and a wrong stored fix" in the module doc).
JUMP_CONFIRM_FIXES = 3
_CANDIDATE_FIELDS = frozenset({"cand_ts", "cand_lat", "cand_lng", "cand_n"})


class UnknownDriverState(LookupError):
    """A status change for a driver that never started a shift (no driver:state hash)."""


class InvalidStatus(ValueError):
    """A status other than offline, available or busy."""


# The key prefixes in the scripts below must match the functions above.
WRITE_SCRIPT = """
local ttl_ms = tonumber(ARGV[1])
local max_mps = tonumber(ARGV[2])
local confirm = tonumber(ARGV[4])
local channel = ARGV[5]
local t = redis.call('TIME')
local seen = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
local sin, cos, asin, sqrt, min, fmt = math.sin, math.cos, math.asin, math.sqrt, math.min, string.format
local rad = math.pi / 180
local function metres_between(alat, alng, blat, blng)
  local s1 = sin((blat - alat) * rad / 2)
  local s2 = sin((blng - alng) * rad / 2)
  local h = s1 * s1 + cos(alat * rad) * cos(blat * rad) * s2 * s2
  return 12742017.6 * asin(sqrt(min(1, h)))
end
local function span(x, unit, big, bigunit)
  if x >= big then return fmt('%.0f %s', x / big, bigunit) end
  if x >= 10 then return fmt('%.0f %s', x, unit) end
  return fmt('%.1f %s', x, unit)
end
local A = cjson.decode(ARGV[3])
local out = {}
local accepted, ooo, jumps, relocated = 0, 0, 0, 0
for i = 1, #A, 11 do
  local id, tenant = A[i], A[i + 1]
  local lat, lng = tonumber(A[i + 2]), tonumber(A[i + 3])
  local ts = tonumber(A[i + 7])
  local cell, battery = A[i + 9], A[i + 10]
  local lkey = 'driver:location:' .. id
  local prev = redis.call('HMGET', lkey, 'ts', 'lat', 'lng', 'tenant', 'cell', 'battery',
    'cand_ts', 'cand_lat', 'cand_lng', 'cand_n')
  local outcome = 'a'
  local prev_ts = tonumber(prev[1])
  if prev_ts then
    if ts <= prev_ts then
      outcome = 'o'
    else
      local plat, plng = tonumber(prev[2]), tonumber(prev[3])
      if plat and plng then
        local metres = metres_between(plat, plng, lat, lng)
        if metres > max_mps * (ts - prev_ts) then
          -- a jump: does it agree with the fixes refused just before it?
          local cts = tonumber(prev[7])
          local n = 1
          if cts and ts > cts then
            local clat, clng = tonumber(prev[8]), tonumber(prev[9])
            if metres_between(clat, clng, lat, lng) <= max_mps * (ts - cts) then
              n = tonumber(prev[10]) + 1
            end
          end
          if n >= confirm then
            outcome = 'r'
          else
            outcome = 'j'
            if not cts or ts > cts then
              redis.call('HSET', lkey, 'cand_ts', A[i + 7], 'cand_lat', A[i + 2],
                'cand_lng', A[i + 3], 'cand_n', n)
            end
            redis.call('PUBLISH', channel, '{"tenant_id":"' .. tenant .. '","driver_id":"' .. id
              .. '","reason":"implausible_jump","message":"position refused: '
              .. span(metres, 'm', 1000, 'km') .. ' from the last fix, '
              .. span(ts - prev_ts, 's', 3600, 'h') .. ' earlier (faster than '
              .. fmt('%.0f', max_mps * 3.6) .. ' km/h)","recorded_at":' .. A[i + 7] .. '}')
          end
        end
      end
    end
  end
  if outcome == 'a' or outcome == 'r' then
    accepted = accepted + 1
    if outcome == 'r' then relocated = relocated + 1 end
    local st = redis.call('HMGET', 'driver:state:' .. id, 'status', 'tenant')
    local status = st[1] or 'offline'
    local indexed = status == 'available' and st[2] == tenant
    if battery ~= '' then
      redis.call('HSET', lkey, 'lat', A[i + 2], 'lng', A[i + 3], 'speed', A[i + 4],
        'heading', A[i + 5], 'accuracy', A[i + 6], 'ts', A[i + 7], 'seen_ms', seen,
        'tenant', tenant, 'vehicle', A[i + 8], 'status', status, 'cell', cell,
        'battery', battery)
    else
      redis.call('HSET', lkey, 'lat', A[i + 2], 'lng', A[i + 3], 'speed', A[i + 4],
        'heading', A[i + 5], 'accuracy', A[i + 6], 'ts', A[i + 7], 'seen_ms', seen,
        'tenant', tenant, 'vehicle', A[i + 8], 'status', status, 'cell', cell)
      if prev[6] then redis.call('HDEL', lkey, 'battery') end
    end
    if prev[7] then redis.call('HDEL', lkey, 'cand_ts', 'cand_lat', 'cand_lng', 'cand_n') end
    redis.call('PEXPIRE', lkey, ttl_ms)
    if prev[4] and prev[5] and (prev[5] ~= cell or prev[4] ~= tenant) then
      redis.call('ZREM', 'drivers:available:' .. prev[4] .. ':' .. prev[5], id)
    end
    if indexed then
      redis.call('ZADD', 'drivers:available:' .. tenant .. ':' .. cell, seen, id)
    elseif prev[5] and prev[5] == cell and prev[4] == tenant then
      redis.call('ZREM', 'drivers:available:' .. tenant .. ':' .. cell, id)
    end
  elseif outcome == 'o' then
    ooo = ooo + 1
  else
    jumps = jumps + 1
  end
  out[#out + 1] = outcome
end
if accepted > 0 then redis.call('HINCRBY', KEYS[1], 'accepted', accepted) end
if relocated > 0 then redis.call('HINCRBY', KEYS[1], 'relocated', relocated) end
if ooo > 0 then redis.call('HINCRBY', KEYS[1], 'out_of_order', ooo) end
if jumps > 0 then redis.call('HINCRBY', KEYS[1], 'implausible_jump', jumps) end
return {table.concat(out), seen}
"""

# The one place a driver's status is written in Redis. Every script that changes a status
# (the status script below, and the claim scripts of dispatch.claims, which must change it
# inside their own atomic step) starts with this fragment and calls ``set_status``: it stamps
# the state hash, mirrors the status into the live location hash and keeps the driver's cell
# of the availability index in step (in the index only when 'available' and the location is
# the state's tenant). Returns 1 when the driver is now in the index.
SET_STATUS_LUA = """
local function set_status(id, status, tenant)
  local t = redis.call('TIME')
  local now = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
  redis.call('HSET', 'driver:state:' .. id, 'status', status, 'updated_ms', now)
  local lkey = 'driver:location:' .. id
  local loc = redis.call('HMGET', lkey, 'tenant', 'cell', 'seen_ms')
  if not (loc[1] and loc[2] and loc[3]) then return 0 end
  redis.call('HSET', lkey, 'status', status)
  local zkey = 'drivers:available:' .. loc[1] .. ':' .. loc[2]
  if status == 'available' and loc[1] == tenant then
    redis.call('ZADD', zkey, loc[3], id)
    return 1
  end
  redis.call('ZREM', zkey, id)
  return 0
end
"""

# ARGV: driver_id, new status, expected status ('' = any), tenant ('' = keep),
# vehicle ('' = keep), '1' to create the state hash when missing.
# Returns {code, previous status or '', indexed}: code 1 applied, 0 expectation failed,
# -1 no state hash.
STATUS_SCRIPT = SET_STATUS_LUA + """
local id, status, expect, tenant, vehicle = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local skey = 'driver:state:' .. id
local cur = redis.call('HMGET', skey, 'status', 'tenant')
if not cur[1] and ARGV[6] ~= '1' then return {-1, '', 0} end
local previous = cur[1] or ''
if expect ~= '' and (cur[1] or 'offline') ~= expect then return {0, previous, 0} end
if tenant ~= '' then redis.call('HSET', skey, 'tenant', tenant) else tenant = cur[2] end
if vehicle ~= '' then redis.call('HSET', skey, 'vehicle', vehicle) end
return {1, previous, set_status(id, status, tenant)}
"""

# ARGV: ttl_ms, tenant, cells... Returns a flat list: id, lat, lng, vehicle, seen_ms, ...
AVAILABLE_SCRIPT = """
local ttl_ms, tenant = tonumber(ARGV[1]), ARGV[2]
local t = redis.call('TIME')
local stale = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - ttl_ms
local out = {}
for i = 3, #ARGV do
  local zkey = 'drivers:available:' .. tenant .. ':' .. ARGV[i]
  redis.call('ZREMRANGEBYSCORE', zkey, '-inf', stale)
  local ids = redis.call('ZRANGEBYSCORE', zkey, '(' .. stale, '+inf')
  for _, id in ipairs(ids) do
    local h = redis.call('HMGET', 'driver:location:' .. id,
      'lat', 'lng', 'vehicle', 'seen_ms', 'status', 'tenant')
    if h[1] and h[5] == 'available' and h[6] == tenant then
      out[#out + 1] = id
      out[#out + 1] = h[1]
      out[#out + 1] = h[2]
      out[#out + 1] = h[3]
      out[#out + 1] = h[4]
    end
  end
end
return out
"""

_dumps = codec.dumps   # the script reads the fields with cjson
_FLOAT_FIELDS = frozenset({"lat", "lng", "speed", "heading", "accuracy", "ts", "battery"})


@dataclass
class BatchOutcome:
    """What happened to each ping of a batch (``outcomes[i]`` is for ``pings[i]``)."""

    accepted: int = 0                                    # relocated ones included
    relocated: int = 0
    out_of_order: int = 0
    implausible_jump: int = 0
    accepted_pings: list[DriverPing] = field(default_factory=list)
    # accepted | relocated | out_of_order | implausible_jump
    outcomes: list[str] = field(default_factory=list)
    redis_now_ms: int = 0                                # Redis TIME at the (last) write

    @property
    def counts(self) -> dict[str, int]:
        return {
            "accepted": self.accepted,
            "out_of_order": self.out_of_order,
            "implausible_jump": self.implausible_jump,
        }


class LocationStore:
    """Live positions, status and the availability index (see the module doc for the keys)."""

    def __init__(self, redis: Redis, settings: StreamSettings, *,
                 jump_confirm_fixes: int = JUMP_CONFIRM_FIXES) -> None:
        if not isinstance(jump_confirm_fixes, int) or jump_confirm_fixes < 2:
            raise ValueError(f"jump_confirm_fixes must be an integer >= 2, got {jump_confirm_fixes!r}")
        self.redis = redis
        self.settings = settings
        self.ttl_ms = int(settings.location_ttl_s * 1000)
        self.resolution = settings.h3_resolution
        self._max_mps = repr(settings.max_speed_kmh / 3.6)
        self._confirm = str(jump_confirm_fixes)
        self._write = redis.register_script(WRITE_SCRIPT)
        self._status = redis.register_script(STATUS_SCRIPT)
        self._available = redis.register_script(AVAILABLE_SCRIPT)

    # -- ingest -------------------------------------------------------------------------------

    async def write_batch(self, pings: Sequence[DriverPing]) -> BatchOutcome:
        """Apply pings in order; one script call per WRITE_CHUNK pings, all in one round trip.

        Raises redis errors unchanged: then nothing is known about which pings landed, and the
        caller retries the whole batch (replays are harmless: see the module doc).
        """
        result = BatchOutcome()
        if not pings:
            return result
        to_cell = h3.latlng_to_cell
        res = self.resolution
        ttl = str(self.ttl_ms)
        keys = [INGEST_COUNTS_KEY]
        pipe = self.redis.pipeline(transaction=False)
        for start in range(0, len(pings), WRITE_CHUNK):
            fields: list[str] = []
            extend = fields.extend
            for p in pings[start:start + WRITE_CHUNK]:
                lat = p.lat
                lng = p.lng
                battery = p.battery
                extend((
                    p.driver_id, p.tenant_id, repr(lat), repr(lng), repr(p.speed_mps),
                    repr(p.heading_deg), repr(p.accuracy_m), repr(p.ts), p.vehicle_type,
                    to_cell(lat, lng, res), "" if battery is None else repr(battery),
                ))
            # One JSON argument (cjson in the script) instead of 11 per ping: redis-py's
            # per-argument encoding was a third of the Python time of a batch.
            await self._write(keys=keys, client=pipe, args=[
                ttl, self._max_mps, _dumps(fields), self._confirm, DRIVER_NOTICES_CHANNEL])
        replies = await pipe.execute()
        codes = "".join(as_text(reply[0]) for reply in replies)
        result.redis_now_ms = int(as_text(replies[-1][1]))
        accepted = result.accepted_pings
        outcomes = result.outcomes
        for ping, code in zip(pings, codes, strict=True):
            outcomes.append(OUTCOMES[code])
            if code == "a" or code == "r":
                accepted.append(ping)
        result.accepted = len(accepted)
        result.relocated = codes.count("r")
        result.out_of_order = codes.count("o")
        result.implausible_jump = codes.count("j")
        return result

    async def record_latencies(self, latencies_ms: Iterable[float]) -> None:
        """Append ingest latency samples (ms) to INGEST_LATENCY_KEY, keeping the newest ones."""
        samples = [f"{x:.1f}" for x in latencies_ms]
        if not samples:
            return
        pipe = self.redis.pipeline(transaction=False)
        pipe.lpush(INGEST_LATENCY_KEY, *samples)
        pipe.ltrim(INGEST_LATENCY_KEY, 0, LATENCY_SAMPLES_MAX - 1)
        await pipe.execute()

    async def count(self, **increments: int) -> None:
        """Add to the ingest counters (``dead_letter=3``, ``pg_written=10``...)."""
        pipe = self.redis.pipeline(transaction=False)
        for name, n in increments.items():
            if n:
                pipe.hincrby(INGEST_COUNTS_KEY, name, n)
        if len(pipe):
            await pipe.execute()

    # -- reads --------------------------------------------------------------------------------

    async def get(self, driver_id: str) -> dict[str, Any] | None:
        """The live location hash, typed (floats, ``seen_ms`` int), or None when expired."""
        raw = await self.redis.hgetall(location_key(canonical_uuid(driver_id, "driver_id")))
        if not raw:
            return None
        out: dict[str, Any] = {}
        for k, v in raw.items():
            name, value = as_text(k), as_text(v)
            if name in _CANDIDATE_FIELDS:
                continue
            if name in _FLOAT_FIELDS:
                out[name] = float(value)
            elif name == "seen_ms":
                out[name] = int(value)
            else:
                out[name] = value
        return out

    async def status(self, driver_id: str) -> str:
        """offline | available | busy (``offline`` for a driver that never started a shift)."""
        value = await self.redis.hget(state_key(canonical_uuid(driver_id, "driver_id")), "status")
        return "offline" if value is None else as_text(value)

    async def available_in_cells(
        self, tenant_id: str, cells: Iterable[str]
    ) -> list[tuple[str, float, float, str, int]]:
        """Available, fresh drivers of a tenant in these cells: (driver_id, lat, lng, vehicle, seen_ms).

        One script call (one round trip, Redis's own clock for freshness); stale index members
        are trimmed on the way.
        """
        cells = list(cells)
        if not cells:
            return []
        tenant = canonical_uuid(tenant_id, "tenant_id")
        flat = await self._available(args=[self.ttl_ms, tenant, *cells])
        return [
            (as_text(flat[i]), float(flat[i + 1]), float(flat[i + 2]), as_text(flat[i + 3]),
             int(flat[i + 4]))
            for i in range(0, len(flat), 5)
        ]

    def cell_of(self, lat: float, lng: float) -> str:
        """The index cell of a position (H3 at the configured resolution)."""
        return cell_of(lat, lng, self.resolution)

    def cells_around(self, lat: float, lng: float, k: int = 1) -> list[str]:
        """The index cell of a position and its k rings, for ``available_in_cells``."""
        return disk(self.cell_of(lat, lng), k)

    # -- status -------------------------------------------------------------------------------

    async def start_shift(self, tenant_id: str, driver_id: str, vehicle_type: str) -> bool:
        """The driver is available for the tenant; indexed at once if it has a fresh location.

        Returns whether it is in the availability index now.
        """
        tenant = canonical_uuid(tenant_id, "tenant_id")
        if not isinstance(vehicle_type, str) or not vehicle_type:
            raise ValueError("vehicle_type must be a non-empty string")
        _, _, indexed = await self._change(driver_id, "available", tenant=tenant,
                                           vehicle=vehicle_type, create=True)
        return bool(indexed)

    async def end_shift(self, driver_id: str) -> None:
        """The driver is offline and out of the index (no-op for a driver never on shift)."""
        await self._change(driver_id, "offline")

    async def set_status(self, driver_id: str, status: str, *, expect: str | None = None) -> bool:
        """Change status (``busy`` leaves the index, ``available`` re-enters it when fresh).

        With ``expect``, the change is a compare-and-set: it happens only when the current
        status is ``expect`` (e.g. ``set_status(d, "busy", expect="available")`` assigns a
        driver at most once). Returns whether the change was applied. Raises
        UnknownDriverState when the driver never started a shift.
        """
        if expect is not None and expect not in STATUSES:
            raise InvalidStatus(f"expect must be one of {', '.join(STATUSES)}, got {expect!r}")
        code, _, _ = await self._change(driver_id, status, expect=expect or "")
        if code == -1:
            raise UnknownDriverState(
                f"driver {driver_id} has no status yet; it becomes available with start_shift"
            )
        return code == 1

    async def _change(self, driver_id: str, status: str, *, expect: str = "", tenant: str = "",
                      vehicle: str = "", create: bool = False) -> tuple[int, str, int]:
        if status not in STATUSES:
            raise InvalidStatus(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        driver = canonical_uuid(driver_id, "driver_id")
        code, previous, indexed = await self._status(
            args=[driver, status, expect, tenant, vehicle, "1" if create else "0"]
        )
        return int(code), as_text(previous), int(indexed)
