"""Tracking from the location stream: geofence arrivals and live ETAs of assigned deliveries.

The location worker (``streams.app``) hands every batch of landed pings to
``Tracker.on_pings``. For the newest ping of each driver with an active delivery
(``dispatch.active``, the Redis copy the dispatcher keeps):

* **pickup arrival** — status ``assigned`` and the driver within ``pickup_radius_m`` of the
  pickup: the first ping to set ``arrived_pickup_ms`` (``active.mark_once``) applies
  ``arrive_pickup`` in Postgres (actor ``system:geofence``) and moves the hot copy to
  ``at_pickup``. However many pings, batches or workers repeat the arrival, it is applied once;
  a delivery that moved on meanwhile (cancelled, or the driver tapped "arrived") is logged;
  any other failure un-marks it so a later ping tries again.
* **dropoff arrival** — status ``picked_up`` and within ``dropoff_radius_m`` of the dropoff:
  once, an ``arrived_dropoff`` outbox event (``deliveries.record_event``, only while still
  ``picked_up``). It changes no state: delivering stays the driver's act, with proof.
* **ETA** — the time left, written to ``delivery:tracking:{id}`` (JSON, TTL 60 s) and
  published on the channel of the same name, one pipeline for the batch. The document also
  carries the ping's ``received_at`` (gateway accept time), so the tracking hub
  (``dispatch.hub``) and its benchmark can measure ping-to-watcher latency.

Fences are ``geo.Geofence`` circles (shapely polygons in a local azimuthal-equidistant
plane, prepared), built once per delivery and leg and kept in a bounded cache: building one
costs ~45 µs, testing a point against a prepared one a few µs, so a batch only pays for the
deliveries it has not seen before. Polygon fences (vendor premises) slot in at ``_fence``.

ETAs are arrivals (at the shop, at the door) from ``geo.eta_model.EtaModel``, the learned
model every engine shares (the worker passes the ``dispatch.matching.calibration`` store, so
customers see the ETAs the dispatcher offered on), at the current time of day:

* ``assigned``: to pickup = leg(driver → pickup); to dropoff = that + the shop handover
  (``pickup_done_s``: the order is ready, a delivery opens only then) + leg(pickup → dropoff);
* ``at_pickup``: to dropoff = what is left of the shop handover (its expectation less the time
  since the fence saw the driver arrive) + leg(pickup → dropoff);
* ``picked_up``: to dropoff = leg(driver → dropoff).

The tracker also feeds the model: with a store, the first fix of a driver on each leg is
queued as the leg's start (``CalibrationStore.queue_start``, in the batch's one pipeline; an
in-process LRU keeps it to once per delivery and leg), timed no earlier than the assignment,
and a fence arrival learns the leg (``CalibrationStore.arrived``; times are the gateway's
receive times, see there).

Cost, measured with a throwaway script (``on_pings`` over one batch of 1,000 pings of 1,000
distinct drivers, local Redis 7, hiredis, 200 timed calls after 20 warm-up ones, three runs, on
this 2-core development machine shared with other work): median **1.9 ms** (p95 2.3-3.2 ms)
when none of the drivers has an active delivery — one round trip, the ``active.for_drivers``
script; median **5.1 ms** (p95 6.5-8.4 ms) with 50 of them on an ``assigned`` delivery and no
arrival — that script plus one SET/PUBLISH pipeline of 100 commands. An arrival adds a Redis
call and a Postgres transaction for that delivery only.

A driver id never crosses tenants: a delivery whose tenant is not the ping's is ignored, as
are unreadable ``delivery:active:*`` hashes. ``on_pings`` does not raise for one bad delivery
(it logs and counts it in ``failed``); a Redis outage does raise.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from dispatch.deliveries.state import (
    ARRIVED_DROPOFF_EVENT,
    DeliveryEvent,
    DeliveryState,
    IllegalTransition,
)
from dispatch.deliveries.store import UnknownDelivery, record_event
from dispatch.deliveries.transitions import DeliveryTransitions
from dispatch.matching import active
from dispatch.matching.active import ActiveDelivery
from dispatch.matching.calibration import CalibrationStore
from dispatch.matching.stops import earlier_stops, through_stops
from geo.eta_model import EtaModel
from geo.geofence import Geofence
from schema.db import TenantDatabase
from streams.keys import tracking_key
from streams.records import DriverPing

__all__ = ["GEOFENCE_ACTOR", "TRACKING_TTL_S", "Tracker", "TrackingOutcome", "remaining_etas"]

log = logging.getLogger(__name__)

TRACKING_TTL_S = 60
GEOFENCE_ACTOR = "system:geofence"
DEFAULT_RADIUS_M = 75.0
FENCE_CACHE = 20_000   # fences kept (two per active delivery); ~2 KB each
STARTS_CACHE = 20_000  # (delivery, leg) starts already queued by this process
_PRIOR = EtaModel()
_LEG_OF = {"assigned": "pickup", "picked_up": "dropoff"}   # the leg a status drives
_ARRIVED_PICKUP = "arrived_pickup_ms"
_ARRIVED_DROPOFF = "arrived_dropoff_ms"


@dataclass(slots=True)
class TrackingOutcome:
    tracked: int = 0            # deliveries matched to a ping of their driver and tenant
    arrived_pickup: int = 0     # arrive_pickup transitions applied
    arrived_dropoff: int = 0    # arrived_dropoff arrivals marked (and recorded, with a db)
    etas_written: int = 0       # tracking documents written and published
    failed: int = 0             # deliveries skipped after an unexpected error (logged)

    @property
    def counts(self) -> dict[str, int]:
        return asdict(self)


def remaining_etas(status: str, driver: tuple[float, float], delivery: ActiveDelivery,
                   at: datetime, model: EtaModel | None = None, *, waited_at_shop_s: float = 0.0,
                   ) -> tuple[float | None, float]:
    """(seconds to pickup or None once at/after it, seconds to dropoff) for a delivery in
    ``status`` whose driver is at ``driver`` (lat, lng). ``model`` None is the prior.
    ``waited_at_shop_s``: time since the pickup arrival (``at_pickup``). Pure; see the module
    docstring."""
    model = _PRIOR if model is None else model
    vehicle = delivery.vehicle_type

    def leg(start: tuple[float, float], end: tuple[float, float]) -> float:
        return model.leg_s(start, end, vehicle, at)

    if status == "assigned":
        to_pickup = leg(driver, delivery.pickup)
        return to_pickup, model.pickup_done_s(to_pickup) + leg(delivery.pickup, delivery.dropoff)
    if status == "at_pickup":
        return None, (model.pickup_done_s(0.0, waited_s=waited_at_shop_s)
                      + leg(delivery.pickup, delivery.dropoff))
    if status == "picked_up":
        return None, leg(driver, delivery.dropoff)
    raise ValueError(f"status {status!r} is not tracked; expected one of "
                     f"{', '.join(sorted(active.TRACKED_STATUSES))}")


def _check_radius(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            0 < value and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number of metres, got {value!r}")
    return float(value)


class Tracker:
    """Arrivals and ETAs of the active deliveries of the drivers in each batch of pings.

    ``transitions=None`` (no Postgres) leaves pickup arrivals alone; ``db=None`` marks dropoff
    arrivals in Redis without recording an event. Both still get ETAs. ``calibration`` is a
    fixed model or the ``CalibrationStore`` every engine shares (re-read at most every
    ``cache_s``, only by batches with an active delivery). ``clock`` (epoch seconds) is for
    tests.
    """

    def __init__(self, redis: Redis, transitions: DeliveryTransitions | None, *,
                 db: TenantDatabase | None, pickup_radius_m: float = DEFAULT_RADIUS_M,
                 dropoff_radius_m: float = DEFAULT_RADIUS_M,
                 calibration: EtaModel | CalibrationStore | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.transitions = transitions
        self.db = db
        self.pickup_radius_m = _check_radius("pickup_radius_m", pickup_radius_m)
        self.dropoff_radius_m = _check_radius("dropoff_radius_m", dropoff_radius_m)
        self.calibration = calibration
        self.clock = clock
        self._fences: OrderedDict[tuple[str, str], Geofence] = OrderedDict()
        self._started: OrderedDict[tuple[str, str], None] = OrderedDict()

    def _fence(self, delivery: ActiveDelivery, leg: str) -> Geofence:
        """The delivery's pickup or dropoff fence, built once (LRU of ``FENCE_CACHE`` fences)."""
        key = (delivery.delivery_id, leg)
        fence = self._fences.get(key)
        if fence is None:
            centre, radius = ((delivery.pickup, self.pickup_radius_m) if leg == "pickup"
                              else (delivery.dropoff, self.dropoff_radius_m))
            fence = self._fences[key] = Geofence.circle(*centre, radius)
            if len(self._fences) > FENCE_CACHE:
                self._fences.popitem(last=False)
        else:
            self._fences.move_to_end(key)
        return fence

    async def on_pings(self, pings: Sequence[DriverPing]) -> TrackingOutcome:
        outcome = TrackingOutcome()
        newest: dict[str, DriverPing] = {}
        for ping in pings:
            seen = newest.get(ping.driver_id)
            if seen is None or ping.ts > seen.ts:
                newest[ping.driver_id] = ping
        deliveries = await active.for_drivers(self.redis, newest)
        if not deliveries:
            return outcome
        now_s = self.clock()
        at = datetime.fromtimestamp(now_s, UTC)
        store = self.calibration if isinstance(self.calibration, CalibrationStore) else None
        model = await store.current() if store is not None else self.calibration
        scale = store.time_scale if store is not None else 1.0
        documents: list[tuple[str, str]] = []
        starts: list[tuple[str, str, DriverPing, float]] = []
        before = earlier_stops(deliveries)   # a bundle's open stops before each of its deliveries
        for delivery in deliveries:
            ping = newest.get(delivery.driver_id)
            if ping is None or ping.tenant_id != delivery.tenant_id:
                continue   # the hash names another driver, or the id is another tenant's
            outcome.tracked += 1
            try:
                status = await self._arrivals(delivery, ping, int(now_s * 1000), outcome)
                if status is not None:
                    documents.append((delivery.delivery_id,
                                      _document(delivery, status, ping, at, now_s, model, scale,
                                                before.get(delivery.delivery_id, ()))))
                    if store is not None and status in _LEG_OF and self._first_start(
                            delivery.delivery_id, _LEG_OF[status]):
                        # a leg starts at the assignment (pickup) or its first fix if later;
                        # the pick-up time bounds the dropoff leg (CalibrationStore.arrived)
                        starts.append((delivery.delivery_id, _LEG_OF[status], ping, max(
                            ping.received_at, delivery.assigned_ms / 1000 if status == "assigned" else 0.0)))
            except (redis_errors.ConnectionError, redis_errors.TimeoutError):
                raise
            except ValueError as exc:   # bad data in the hash (an unknown vehicle type, ...)
                outcome.failed += 1
                log.warning("not tracking delivery %s: %s", delivery.delivery_id, exc)
            except Exception:
                outcome.failed += 1
                log.exception("tracking delivery %s of driver %s failed; going on",
                              delivery.delivery_id, delivery.driver_id)
        if documents or starts:
            async with self.redis.pipeline(transaction=False) as pipe:
                for delivery_id, body in documents:
                    key = tracking_key(delivery_id)
                    pipe.set(key, body, ex=TRACKING_TTL_S)
                    pipe.publish(key, body)
                for delivery_id, leg, ping, started_at in starts:
                    CalibrationStore.queue_start(pipe, delivery_id, leg, ping.lat, ping.lng, started_at)
                await pipe.execute()
            outcome.etas_written = len(documents)
        return outcome

    def _first_start(self, delivery_id: str, leg: str) -> bool:
        """Whether this process has not yet queued the start of ``leg`` (then it now has)."""
        key = (delivery_id, leg)
        if key in self._started:
            return False
        self._started[key] = None
        if len(self._started) > STARTS_CACHE:
            self._started.popitem(last=False)
        return True

    async def _learn_arrival(self, delivery: ActiveDelivery, leg: str, ping: DriverPing) -> None:
        if isinstance(self.calibration, CalibrationStore):
            await self.calibration.arrived(delivery.delivery_id, leg, delivery.vehicle_type,
                                           ping.lat, ping.lng, ping.received_at)

    async def _arrivals(self, delivery: ActiveDelivery, ping: DriverPing, now_ms: int,
                        outcome: TrackingOutcome) -> str | None:
        """Act on a fence the ping is in; the status to report, None if the delivery moved on."""
        status = delivery.status
        transitions = self.transitions
        if (status == "assigned" and transitions is not None
                and delivery.arrived_pickup_ms is None
                and self._fence(delivery, "pickup").contains(ping.lat, ping.lng)):
            if not await active.mark_once(self.redis, delivery.delivery_id, _ARRIVED_PICKUP, now_ms):
                return status
            if not await self._arrive_pickup(transitions, delivery):
                return None
            outcome.arrived_pickup += 1
            await self._learn_arrival(delivery, "pickup", ping)
            return "at_pickup"
        if (status == "picked_up" and delivery.arrived_dropoff_ms is None
                and self._fence(delivery, "dropoff").contains(ping.lat, ping.lng)):
            if await active.mark_once(self.redis, delivery.delivery_id, _ARRIVED_DROPOFF, now_ms):
                if not await self._arrive_dropoff(delivery, ping):
                    return None
                outcome.arrived_dropoff += 1
                await self._learn_arrival(delivery, "dropoff", ping)
        return status

    async def _arrive_pickup(self, transitions: DeliveryTransitions,
                             delivery: ActiveDelivery) -> bool:
        try:
            await transitions(delivery.tenant_id, delivery.delivery_id,
                                   DeliveryEvent.ARRIVE_PICKUP, actor=GEOFENCE_ACTOR)
        except (IllegalTransition, UnknownDelivery) as exc:
            log.info("delivery %s moved on before its pickup arrival: %s", delivery.delivery_id, exc)
            return False
        except BaseException:
            await self._unmark(delivery, _ARRIVED_PICKUP)
            raise
        await active.set_status(self.redis, delivery.delivery_id, DeliveryState.AT_PICKUP.value)
        return True

    async def _arrive_dropoff(self, delivery: ActiveDelivery, ping: DriverPing) -> bool:
        if self.db is None:
            return True
        fact = {"lat": ping.lat, "lng": ping.lng,
                "at": datetime.fromtimestamp(ping.ts, UTC).isoformat()}
        try:
            recorded = await record_event(self.db, delivery.tenant_id, delivery.delivery_id,
                                          ARRIVED_DROPOFF_EVENT, fact,
                                          while_in=(DeliveryState.PICKED_UP,))
        except BaseException:
            await self._unmark(delivery, _ARRIVED_DROPOFF)
            raise
        if not recorded:
            log.info("delivery %s moved on before its dropoff arrival", delivery.delivery_id)
        return recorded

    async def _unmark(self, delivery: ActiveDelivery, field: str) -> None:
        try:
            await active.unmark(self.redis, delivery.delivery_id, field)
        except Exception:  # noqa: BLE001 - the original error is the one worth raising
            log.warning("could not un-mark %s of delivery %s; its arrival will not be retried",
                        field, delivery.delivery_id)


def _document(delivery: ActiveDelivery, status: str, ping: DriverPing, at: datetime, now_s: float,
              model: EtaModel | None, time_scale: float = 1.0, before: Sequence[ActiveDelivery] = ()) -> str:
    waited = 0.0
    if status == "at_pickup" and delivery.arrived_pickup_ms is not None:
        waited = max(now_s - delivery.arrived_pickup_ms / 1000, 0.0) * time_scale
    eta_pickup, eta_dropoff = remaining_etas(status, (ping.lat, ping.lng), delivery, at, model,
                                             waited_at_shop_s=waited)
    if before:   # stop k of a bundle: through the open stops before it (dispatch.matching.stops)
        eta_dropoff = through_stops(before, replace(delivery, status=status), (ping.lat, ping.lng),
                                    lambda s, p, d: remaining_etas(s, p, d, at, model))
    stop = {} if delivery.stop is None else {"stop": delivery.stop, "stops": delivery.stops}
    return json.dumps({
        "delivery_id": delivery.delivery_id,
        "tenant_id": delivery.tenant_id,
        "status": status,
        "driver": {"id": ping.driver_id, "lat": ping.lat, "lng": ping.lng,
                   "heading_deg": ping.heading_deg, "speed_mps": ping.speed_mps, "ts": ping.ts},
        "eta_pickup_s": None if eta_pickup is None else round(eta_pickup),
        "eta_dropoff_s": round(eta_dropoff),
        "updated_at": round(now_s, 3),
        "received_at": ping.received_at,   # gateway accept time: the hub's end-to-end latency
        **stop,
    }, separators=(",", ":"))
