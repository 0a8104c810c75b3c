"""The learned ETA model, shared by every engine and location worker through Redis.

``geo.eta_model`` is the model (pure: the prior, the four nested corrections, handovers,
bounded updates); this keeps its sums in one Redis hash so that every engine learns from
every leg and a restart forgets nothing, and follows each delivery's legs until they end:

``eta:model`` HASH
    the sums ``geo.eta_model.travel_increments`` / ``handover_increments`` return, each
    ``HINCRBYFLOAT``-ed in one transaction per observation, so concurrent observers never lose
    one and a reader never sees half a leg.
``eta:leg:{delivery_id}`` HASH, TTL one day
    ``pickup:start`` / ``dropoff:start`` (``lat,lng,t``: the driver's first fix on that leg and
    when the leg started, set once with ``HSETNX`` by whichever worker saw it first),
    ``dropoff:after`` (when the driver picked the order up) and ``pickup:arrived`` /
    ``dropoff:arrived`` (when the fix inside the geofence reached the gateway, set once).

What is learned, and from what:

* **travel**, pickup and dropoff legs: from the start of the leg to the fix that entered the
  fence (the location worker's ``Tracker``), over the distance from the leg's first fix to
  that one. Every time is on the server's clock (the gateway's receive time of a fix, the
  engine's time of an assignment or a pick-up), never a phone's. A leg starts at the
  assignment (pickup) or the pick-up (dropoff), or at its first fix if that came later: a
  location worker running behind hands the tracker fixes taken *before* the status changed
  (the driver still waiting at the counter), and timing the leg from such a fix counted the
  wait as driving (a replay measured a spurious 80 s "overhead" per leg that way).
* **shop handover**: from the pickup arrival to the driver's "picked up" (the dispatcher);
  **door handover**: from the dropoff arrival to "delivered".

Durations are wall seconds times ``time_scale`` (a replay faster than real time:
``EngineSettings.sim_time_scale``), so the model learns simulated seconds.

Learning is best effort: a rejected leg (``None`` from the pure side) or a Redis error while
learning is logged and counted, never an error for the driver whose delivery it was.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import UTC, datetime

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from dispatch.matching.keys import CALIBRATION_KEY, eta_leg_key
from geo.eta_model import EtaModel, handover_increments, travel_increments
from streams.replies import as_text

__all__ = ["LEGS", "LEG_TTL_S", "CalibrationStore"]

log = logging.getLogger(__name__)

LEGS = ("pickup", "dropoff")
LEG_TTL_S = 86_400
_HANDOVER_LEG = {"shop": "pickup", "door": "dropoff"}


class CalibrationStore:
    def __init__(self, redis: Redis, *, key: str = CALIBRATION_KEY, cache_s: float = 10.0,
                 time_scale: float = 1.0) -> None:
        if not (time_scale > 0 and math.isfinite(time_scale)):
            raise ValueError(f"time_scale must be a positive finite number, got {time_scale!r}")
        self.redis = redis
        self.key = key
        self.cache_s = cache_s
        # A replay faster than real time: legs take 1/scale of their simulated duration on the
        # wall clock; the model learns simulated seconds.
        self.time_scale = time_scale
        self.model = EtaModel()
        self.counts = {"travel": 0, "handover": 0, "rejected": 0, "failed": 0}
        self._loaded_at = -math.inf

    # -- reading ----------------------------------------------------------------------------------

    async def load(self) -> EtaModel:
        raw = await self.redis.hgetall(self.key)
        model = EtaModel({as_text(k): as_text(v) for k, v in raw.items()})
        if model.rejected:
            log.warning("ignored %d malformed ETA model fields, e.g. %.60r",
                        len(model.rejected), model.rejected[0])
        self.model = model
        self._loaded_at = time.monotonic()
        return model

    async def current(self) -> EtaModel:
        """The model, re-read from Redis at most every ``cache_s`` seconds."""
        if time.monotonic() - self._loaded_at > self.cache_s:
            await self.load()
        return self.model

    # -- learning ---------------------------------------------------------------------------------

    async def _add(self, increments: dict[str, float] | None, what: str) -> bool:
        if increments is None:
            self.counts["rejected"] += 1
            return False
        async with self.redis.pipeline(transaction=True) as pipe:
            for field, amount in increments.items():
                pipe.hincrbyfloat(self.key, field, amount)
            await pipe.execute()
        self.counts[what] += 1
        self._loaded_at = -math.inf   # the next current() reads it
        return True

    async def observe_travel(self, start: tuple[float, float], end: tuple[float, float],
                             vehicle_type: str, started_at: float, wall_s: float) -> bool:
        """One completed leg from ``start`` to ``end`` (lat, lng) that began at epoch
        ``started_at`` and took ``wall_s`` wall seconds. False when rejected as implausible;
        ValueError for values that are not a leg."""
        if not math.isfinite(started_at):
            raise ValueError(f"started_at must be a finite epoch time, got {started_at!r}")
        at = datetime.fromtimestamp(started_at, UTC)
        return await self._add(travel_increments(start, end, vehicle_type, at,
                                                 wall_s * self.time_scale), "travel")

    async def observe_handover(self, kind: str, wall_s: float) -> bool:
        """One handover at the ``shop`` or the ``door`` that took ``wall_s`` wall seconds."""
        return await self._add(handover_increments(kind, wall_s * self.time_scale), "handover")

    # -- following a delivery's legs ----------------------------------------------------------------

    @staticmethod
    def queue_start(pipe: Pipeline, delivery_id: str, leg: str, lat: float, lng: float,
                    started_at: float) -> None:
        """Queue, on the caller's pipeline, the driver's first fix on ``leg`` and when the leg
        started (server clock; see the module docstring). Kept if already set."""
        key = eta_leg_key(delivery_id)
        pipe.hsetnx(key, f"{leg}:start", f"{lat!r},{lng!r},{started_at!r}")
        pipe.expire(key, LEG_TTL_S)

    async def arrived(self, delivery_id: str, leg: str, vehicle_type: str,
                      lat: float, lng: float, received_at: float) -> bool:
        """The driver's fix at (lat, lng), received by the gateway at ``received_at``, entered
        the ``leg``'s fence: learn the leg's travel time if its start is known. Once per
        delivery and leg, whichever worker gets here first. True when a leg was learned."""
        if leg not in LEGS:
            raise ValueError(f"leg must be one of {', '.join(LEGS)}, got {leg!r}")
        key = eta_leg_key(delivery_id)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hget(key, f"{leg}:start")
                pipe.hget(key, f"{leg}:after")
                pipe.hsetnx(key, f"{leg}:arrived", repr(received_at))
                pipe.expire(key, LEG_TTL_S)
                start, after, first, _ = await pipe.execute()
            if not first or start is None:
                return False
            try:
                s_lat, s_lng, s_t = (float(p) for p in as_text(start).split(","))
                if after is not None:
                    s_t = max(s_t, float(as_text(after)))
            except ValueError:
                log.warning("ignored a malformed %s start of delivery %s", leg, delivery_id)
                return False
            return await self.observe_travel((s_lat, s_lng), (lat, lng), vehicle_type, s_t,
                                             received_at - s_t)
        except (ValueError, redis_errors.RedisError) as exc:
            self.counts["failed"] += 1
            log.warning("could not learn the %s leg of delivery %s: %s", leg, delivery_id, exc)
            return False

    async def handed_over(self, delivery_id: str, kind: str, at: float) -> bool:
        """The driver picked the order up (``shop``) or delivered it (``door``) at epoch ``at``
        (server clock): learn the handover from the fence arrival before it. The pick-up
        starts the dropoff leg; the door ends the delivery's legs (its hash is deleted). True
        when a handover was learned."""
        if kind not in _HANDOVER_LEG:
            raise ValueError(f"kind must be one of {', '.join(_HANDOVER_LEG)}, got {kind!r}")
        key = eta_leg_key(delivery_id)
        try:
            arrived = await self.redis.hget(key, f"{_HANDOVER_LEG[kind]}:arrived")
            if kind == "door":
                await self.redis.delete(key)
            else:   # the dropoff leg starts now, whatever fix the tracker sees first
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.hset(key, "dropoff:after", repr(at))
                    pipe.expire(key, LEG_TTL_S)
                    await pipe.execute()
            if arrived is None:
                return False
            return await self.observe_handover(kind, at - float(as_text(arrived)))
        except (ValueError, redis_errors.RedisError) as exc:
            self.counts["failed"] += 1
            log.warning("could not learn the %s handover of delivery %s: %s", kind, delivery_id, exc)
            return False
