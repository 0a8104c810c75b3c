"""The dispatcher: from a new delivery to a delivered one, inside the running engine.

Flow
----
1. ``dispatch.deliveries.create_delivery`` writes a ``created`` event to the tenant's outbox;
   the relay (``OutboxRelay.run``) publishes it on ``delivery-events``.
2. ``Dispatcher.run`` consumes ``delivery-events`` (every engine reads every partition; the
   first to claim an event in Redis handles it; a failed event is retried before the read
   position passes it, and one that keeps failing is parked: ``dispatch.matching.consumer``).
   ``created`` starts matching:
   greedy (each delivery at once: ``nearest`` drivers, ETAs, an offer round) or batch (every
   ``window_s`` the window's deliveries of a tenant are solved together with
   ``assign_batch``; each round then starts with its optimal driver). Batch mode also
   bundles: ready deliveries of one vendor going the same way are offered to one driver as
   one offer (``bundle_dispatch``, ``bundle_policy``, ``bundle_offers``), and a delivery
   may be held briefly for a partner about to be ready (never beyond ``bundle_max_hold_s``).
3. Offers, accept/decline/timeout and giving up belong to ``dispatch.offers.OfferEngine``;
   an accept calls ``on_assigned`` here, which writes the ``dispatch.active`` hash the
   location stream tracks (geofence arrival at pickup, live ETAs: ``dispatch.tracking``).
4. The driver confirms pick-up and delivery (``driver_update``, from the websocket or HTTP);
   delivery or failure frees the driver (``claims.release``), teaches the shared ETA model
   the handover at the counter or the door (``calibration``; the location worker's tracker
   teaches it the drives), and retries the tenant's unassigned deliveries.
5. Unassigned deliveries are retried when a driver frees up (a ``deliver``/``fail``/
   ``cancel`` event on the topic, from any engine), when a driver starts a shift
   (``retry_soon``), and every ``retry_interval_s`` as a backstop.

Nearest drivers come from the process's availability replica when one is given
(``replica``: ``dispatch.matching.fleet_replica``, kept fresh while ``run`` runs), else from
the Redis index, else PostGIS (``dispatch.matching.nearest``). The replica only proposes:
every offer is a claim, so a driver it still shows after a claim elsewhere is refused and the
round offers the next one.

Where the seed is silent: the driver's pay is the order's ``delivery_fee``; the maximum
pickup distance is the vendor's ``delivery_radius``; an order asks for cold storage or
particular vehicles with ``orders.metadata`` keys ``needs_cold_storage`` (bool) and
``vehicle_types`` (list). Every step checks the delivery's state first, so an event handled
twice is harmless, and a pending delivery that no round is working on is picked up by the
periodic sweep. Redis losing its data is repaired from Postgres by
``dispatch.matching.recovery``; the database itself refuses a driver beyond capacity
(``dispatch.deliveries.store``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from redis.asyncio import Redis

from dispatch.core.cache import Cache
from dispatch.core.errors import ILLEGAL_TRANSITION, INVALID_VALUE, UNKNOWN_DELIVERY
from dispatch.core.ids import canonical_uuid, parse_uuid
from dispatch.core.metrics import MATCHING_CANDIDATES, MATCHING_SECONDS
from dispatch.deliveries.reports import DriverUpdate, DriverUpdateRefused, parse_driver_update
from dispatch.deliveries.state import DeliveryEvent, DeliveryState, IllegalTransition, InvalidFact
from dispatch.deliveries.store import CREATED_EVENT, UnknownDelivery, transition
from dispatch.identity.drivers import VEHICLE_TYPES
from dispatch.matching import active
from dispatch.matching.assignment import assign_batch
from dispatch.matching.bundle_dispatch import plan_window
from dispatch.matching.bundle_offers import BundleLeg
from dispatch.matching.bundle_policy import DEFAULT_RULES
from dispatch.matching.bundles import BundleRules
from dispatch.matching.calibration import CalibrationStore
from dispatch.matching.claims import DriverClaims
from dispatch.matching.consumer import EventConsumer
from dispatch.matching.fleet_replica import FleetReplica
from dispatch.matching.keys import (
    delivery_offer_key,
    held_key,
    round_key,
    tried_key,
)
from dispatch.matching.nearest import DriverFacts, load_driver_facts, nearest
from dispatch.matching.offers import OfferEngine, RoundInProgress
from dispatch.matching.ranking import Job, RankedCandidate
from dispatch.matching.terms import OfferCandidate, RoundOutcome
from geo import CIRCUITY
from schema.db import TenantDatabase
from schema.errors import WakalaError
from streams.keys import state_key
from streams.location_store import LocationStore
from streams.replies import as_text

__all__ = ["DispatchJob", "Dispatcher", "DriverUpdateRefused", "parse_driver_update"]

log = logging.getLogger(__name__)

JOB_SQL = """
SELECT d.status, d.order_id,
       ST_Y(d.pickup_location::geometry) AS pickup_lat, ST_X(d.pickup_location::geometry) AS pickup_lng,
       ST_Y(d.dropoff_location::geometry) AS dropoff_lat, ST_X(d.dropoff_location::geometry) AS dropoff_lng,
       coalesce(o.delivery_fee, 0) AS pay, coalesce(o.metadata, '{}'::jsonb) AS order_metadata,
       coalesce(v.delivery_radius, 5000) AS max_pickup_m, o.vendor_id::text AS vendor_id,
       extract(epoch FROM o.created_at)::float8 AS placed_s, extract(epoch FROM d.created_at)::float8 AS ready_s
FROM deliveries d JOIN orders o ON o.id = d.order_id JOIN vendors v ON v.id = o.vendor_id
WHERE d.id = $1
"""
# Pending and unchanged for a while (a decline or timeout makes a delivery pending again, and
# updates updated_at). With no round, 20 s: its created event may just be slow to arrive. With
# a round but nothing in flight, 5 s: a round moves on within milliseconds of a change, so one
# that has not is orphaned (``OfferEngine.drop_orphaned_round``). And offered for longer than
# an offer lasts ($1 seconds): an offer whose end the database did not record (a decline or a
# timeout whose transition failed) unless Redis still shows it open (``release_lost_offer``).
STRANDED_SQL = """
SELECT id, status, coalesce(updated_at, created_at) < now() - interval '20 seconds' AS long_idle
FROM deliveries
WHERE (status = 'pending' AND coalesce(updated_at, created_at) < now() - interval '5 seconds')
   OR (status = 'offered' AND coalesce(updated_at, created_at) < now() - make_interval(secs => $1))
ORDER BY created_at LIMIT 100
"""
# Events on delivery-events after which a driver may be free again.
_FREEING = frozenset({DeliveryEvent.DELIVER.value, DeliveryEvent.FAIL.value, DeliveryEvent.CANCEL.value})
DRIVER_ACTOR = "driver:{}"


@dataclass(frozen=True, slots=True)
class DispatchJob:
    """A delivery waiting for a driver, as the matcher sees it."""

    tenant_id: str
    delivery_id: str
    job: Job
    pay: Decimal
    status: str
    vendor_id: str = ""
    placed_s: float = 0.0     # epoch seconds: the order was placed
    ready_s: float = 0.0      # epoch seconds: the delivery was created (the order was ready)


def _vehicle_types(metadata: dict[str, Any]) -> frozenset[str] | None:
    wanted = metadata.get("vehicle_types")
    if not isinstance(wanted, list):
        return None
    return frozenset(v for v in wanted if isinstance(v, str) and v in VEHICLE_TYPES)


def _not_dispatched(delivery_id: str, exc: WakalaError) -> None:
    """A round that did not start: another engine's round is expected (info); anything else (the
    database away mid-round) is a warning, and the pending sweep dispatches it again later."""
    if isinstance(exc, RoundInProgress):
        log.info("delivery %s not dispatched: %s", delivery_id, exc)
    else:
        log.warning("delivery %s not dispatched (%s: %s); the pending sweep tries again", delivery_id,
                    type(exc).__name__, exc)


class Dispatcher:
    def __init__(self, db: TenantDatabase, redis: Redis, store: LocationStore, offers: OfferEngine, *,
                 mode: Literal["greedy", "batch"] = "greedy", window_s: float = 2.0, k: int = 10,
                 retry_interval_s: float = 10.0, calibration: CalibrationStore | None = None,
                 facts_ttl_s: float = 60.0, cache: Cache | None = None,
                 replica: FleetReplica | None = None, bundle_max_hold_s: float = 60.0,
                 bundle_rules: BundleRules = DEFAULT_RULES) -> None:
        if mode not in ("greedy", "batch"):
            raise ValueError(f"mode must be greedy or batch, got {mode!r}")
        self.db, self.redis, self.store, self.offers = db, redis, store, offers
        self.claims: DriverClaims = offers.claims
        self.mode, self.window_s, self.k = mode, window_s, k
        self.retry_interval_s = retry_interval_s
        self.calibration = calibration or CalibrationStore(redis)
        self.facts_ttl_s = facts_ttl_s
        self.cache = cache   # order views to invalidate when a driver's report moves the order
        # The in-process availability index (``nearest`` asks it first); ``run`` keeps it fresh.
        self.replica = replica
        self._facts: dict[str, tuple[float, dict[str, DriverFacts]]] = {}
        self._tasks: set[asyncio.Task] = set()
        self.bundle_max_hold_s, self.bundle_rules = bundle_max_hold_s, bundle_rules
        offers.on_assigned = self.on_assigned
        offers.on_dissolved = self._dissolved

    # -- matching -------------------------------------------------------------------------------

    async def job_for(self, tenant_id: str, delivery_id: str) -> DispatchJob | None:
        """The delivery as a matching job; None when it is unknown to the tenant."""
        async with self.db.tenant_transaction(tenant_id, readonly=True) as tx:
            row = await tx.fetchrow(JOB_SQL, parse_uuid(delivery_id, "delivery_id"))
        if row is None or row["pickup_lat"] is None or row["dropoff_lat"] is None:
            return None
        metadata = row["order_metadata"]
        if isinstance(metadata, str):
            metadata = json.loads(metadata)
        metadata = metadata if isinstance(metadata, dict) else {}
        job = Job(str(tenant_id), row["pickup_lat"], row["pickup_lng"], row["dropoff_lat"], row["dropoff_lng"],
                  _vehicle_types(metadata), metadata.get("needs_cold_storage") is True,
                  float(row["max_pickup_m"]))
        return DispatchJob(str(tenant_id), delivery_id, job, Decimal(row["pay"]), row["status"], row["vendor_id"],
                           row["placed_s"] or 0.0, row["ready_s"] or 0.0)

    async def _driver_facts(self, tenant_id: str) -> dict[str, DriverFacts]:
        cached = self._facts.get(tenant_id)
        if cached is not None and time.monotonic() - cached[0] < self.facts_ttl_s:
            return cached[1]
        facts = await load_driver_facts(self.db, tenant_id)
        self._facts[tenant_id] = (time.monotonic(), facts)
        return facts

    async def ranked(self, job: Job) -> list[RankedCandidate]:
        started = time.perf_counter()
        found = await nearest(self.store, self.db, job, k=self.k,
                              driver_facts=await self._driver_facts(job.tenant_id), replica=self.replica)
        MATCHING_SECONDS.observe(time.perf_counter() - started)
        MATCHING_CANDIDATES.observe(len(found.candidates))
        return found.candidates

    async def offer_candidates(self, job: Job, ranked: Sequence[RankedCandidate]) -> list[OfferCandidate]:
        """Pickup ETAs: arrival at the shop by the learned model (``geo.eta_model``)."""
        now = datetime.now(UTC)
        model, pickup = await self.calibration.current(), (job.pickup_lat, job.pickup_lng)
        return [OfferCandidate(r.driver_id, round(model.travel_s(r.distance_m / CIRCUITY, r.candidate.vehicle_type,
                                                                 now, pickup)))
                for r in ranked]

    async def candidates_for(self, job: Job) -> list[OfferCandidate]:
        return await self.offer_candidates(job, await self.ranked(job))

    async def dropoff_eta_s(self, job: Job, vehicle_type: str) -> int:
        model = await self.calibration.current()
        return round(model.leg_s((job.pickup_lat, job.pickup_lng), (job.dropoff_lat, job.dropoff_lng),
                                 vehicle_type, datetime.now(UTC)))

    async def _start(self, dj: DispatchJob, candidates: list[OfferCandidate],
                     vehicle_type: str) -> RoundOutcome:
        return await self.offers.start_round(dj.job, dj.delivery_id, candidates, pay=dj.pay,
                                             dropoff_eta_s=await self.dropoff_eta_s(dj.job, vehicle_type))

    async def dispatch(self, tenant_id: str, delivery_id: str) -> RoundOutcome | None:
        """Greedy: offer one pending delivery to its nearest drivers. None when it is not
        pending or a round is already under way (a replayed event)."""
        dj = await self.job_for(tenant_id, delivery_id)
        if dj is None or dj.status != DeliveryState.PENDING.value:
            return None
        ranked = await self.ranked(dj.job)
        vehicle = ranked[0].candidate.vehicle_type if ranked else "motorbike"
        try:
            return await self._start(dj, await self.offer_candidates(dj.job, ranked), vehicle)
        except WakalaError as exc:
            _not_dispatched(delivery_id, exc)
            return None

    async def dispatch_batch(self, tenant_id: str, delivery_ids: Sequence[str]) -> list[RoundOutcome]:
        """Batch: solve the window's pending deliveries of a tenant together, then start each
        round with its optimal driver followed by the rest of its own ranking. With room for
        more than one delivery per driver, a vendor's deliveries may go as one bundle (the
        unit's first delivery stands for it in the solve: they share the pickup) or wait."""
        jobs = [dj for d in dict.fromkeys(delivery_ids)
                if (dj := await self.job_for(tenant_id, d)) is not None and dj.status == DeliveryState.PENDING.value]
        if not jobs:
            return []
        rankings = [await self.ranked(dj.job) for dj in jobs]
        units: list[tuple[int, ...]] = [(i,) for i in range(len(jobs))]
        etas: dict[int, tuple[int, ...]] = {}
        if self.claims.capacity >= 2:
            units, etas = await plan_window(self, tenant_id, jobs, rankings)
        pool = {r.driver_id: r.candidate for ranking in rankings for r in ranking}
        chosen = {a.job_index: a.driver_id for a in assign_batch(
            [jobs[u[0]].job for u in units], list(pool.values()), at=datetime.now(UTC),
            model=await self.calibration.current())}
        outcomes = []
        for k, unit in enumerate(units):
            first = chosen.get(k)
            ordered = sorted(rankings[unit[0]], key=lambda r: r.driver_id != first)   # stable: the rest keep their order
            vehicle = ordered[0].candidate.vehicle_type if ordered else "motorbike"
            candidates = await self.offer_candidates(jobs[unit[0]].job, ordered)
            if len(unit) > 1:
                legs = [BundleLeg(jobs[i].delivery_id, jobs[i].job, jobs[i].pay, eta)
                        for i, eta in zip(unit, etas[k], strict=True)]
                try:
                    outcomes.append(await self.offers.start_bundle(str(uuid.uuid4()), legs, candidates))
                    continue
                except WakalaError as exc:   # one of them is in a round already: the others alone
                    log.info("bundle of %d deliveries not started (%s); offering them alone", len(unit), exc)
            for i in unit:
                try:
                    outcomes.append(await self._start(jobs[i], candidates if i == unit[0] else
                                                      await self.offer_candidates(jobs[i].job, ordered), vehicle))
                except WakalaError as exc:
                    _not_dispatched(jobs[i].delivery_id, exc)
        return outcomes

    def release_hold_later(self, tenant_id: str, delivery_id: str, wait_s: float) -> None:
        """Decide again on a delivery held for a bundle partner when its hold ends."""
        async def later() -> None:
            await asyncio.sleep(wait_s)
            await self.redis.delete(held_key(delivery_id))
            await self.dispatch_batch(tenant_id, [delivery_id])
        self._spawn(later(), f"held delivery {delivery_id}")

    async def _dissolved(self, tenant_id: str, delivery_ids: tuple[str, ...]) -> None:
        """A bundle found no taker or lost a delivery: offer the rest one by one, in the background."""
        for d in delivery_ids:
            self._spawn(self.dispatch(tenant_id, d), f"dispatch {d} after its bundle")

    async def retry(self, tenant_id: str) -> list[RoundOutcome]:
        """Offer the tenant's unassigned deliveries again, to the drivers available now."""
        return await self.offers.retry_unassigned(tenant_id, self.candidates_for)

    def retry_soon(self, tenant_id: str) -> None:
        """``retry`` in the background (a driver just started a shift)."""
        self._spawn(self.retry(tenant_id), f"retry {tenant_id}")

    def _spawn(self, coro, what: str) -> None:
        async def guarded() -> None:
            try:
                await coro
            except Exception:
                log.exception("%s failed", what)
        task = asyncio.get_running_loop().create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- after the accept -----------------------------------------------------------------------

    async def on_assigned(self, tenant_id: str, delivery_id: str, driver_id: str, job: Job, *,
                          stop: tuple[str, int, int] | None = None) -> None:
        """Write the hot copy the tracker follows; ``stop`` = (bundle id, k, n) for a bundle's."""
        vehicle = await self.redis.hget(state_key(driver_id), "vehicle")
        bundle, k, n = stop if stop is not None else (None, None, None)
        await active.write(self.redis, active.ActiveDelivery(
            delivery_id, tenant_id, driver_id, as_text(vehicle) if vehicle else "motorbike", "assigned",
            (job.pickup_lat, job.pickup_lng), (job.dropoff_lat, job.dropoff_lng), round(time.time() * 1000),
            bundle_id=bundle, stop=k, stops=n))

    async def driver_update(self, tenant_id: str, driver_id: str, update: DriverUpdate) -> DeliveryState:
        """A driver reports pick-up, delivery or failure of their own delivery.

        Pick-up is accepted from ``assigned`` too (the driver is at the counter even when GPS
        did not show the arrival): the arrival is then recorded first, then the pick-up.
        """
        actor = DRIVER_ACTOR.format(driver_id)
        delivery = update.delivery_id
        facts: dict[str, Any] = {}
        if update.proof_of_delivery is not None:
            facts["proof_of_delivery"] = update.proof_of_delivery
        try:
            try:
                snap = await transition(self.db, tenant_id, delivery, update.event, actor=actor,
                                        reason=update.reason, driver_must_be=driver_id, cache=self.cache,
                                        **facts)
            except IllegalTransition as exc:
                if update.event is not DeliveryEvent.PICK_UP or exc.state is not DeliveryState.ASSIGNED:
                    raise
                await transition(self.db, tenant_id, delivery, DeliveryEvent.ARRIVE_PICKUP, actor=actor,
                                 driver_must_be=driver_id, cache=self.cache)
                snap = await transition(self.db, tenant_id, delivery, DeliveryEvent.PICK_UP, actor=actor,
                                        driver_must_be=driver_id, cache=self.cache)
        except UnknownDelivery:
            raise DriverUpdateRefused(404, UNKNOWN_DELIVERY, f"you have no delivery {delivery}",
                                      "delivery_id") from None
        except IllegalTransition as exc:
            raise DriverUpdateRefused(409, ILLEGAL_TRANSITION, str(exc), "event") from None
        except InvalidFact as exc:
            raise DriverUpdateRefused(422, INVALID_VALUE, str(exc)) from None
        state = snap.state
        if state is DeliveryState.PICKED_UP:
            await active.set_status(self.redis, delivery, state.value)
            await self.calibration.handed_over(delivery, "shop", time.time())   # best effort
        else:   # delivered or failed: the job is over
            await active.delete(self.redis, delivery)
            await self.claims.release(driver_id, delivery)
            if state is DeliveryState.DELIVERED:
                await self.calibration.handed_over(delivery, "door", time.time())
            self.retry_soon(tenant_id)
        return state

    async def forget(self, delivery_id: str) -> None:
        """Drop the Redis side of a delivery that has ended: the driver's slot (``release``
        makes a busy driver available), an open offer, the round and the tracked copy.
        Idempotent; run for every deliver/fail/cancel event, whoever caused it."""
        driver = await self.claims.driver_of(delivery_id)
        if driver is not None:
            await self.claims.release(driver, delivery_id)
        offered = await self.redis.get(delivery_offer_key(delivery_id))
        if offered is not None:
            await self.claims.decline(as_text(offered), delivery_id)
        await self.redis.delete(round_key(delivery_id), tried_key(delivery_id))
        await active.delete(self.redis, delivery_id)

    # -- the event loop -------------------------------------------------------------------------

    async def handle(self, events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Handle a batch of ``delivery-events`` messages (see ``dispatch.outbox.event_message``).

        Returns the events whose handling failed (Postgres or Redis away, a bug), for the
        caller to retry (``dispatch.matching.consumer``); the others are done. One failing
        event never stops the others of the batch. A failed retry of a tenant's unassigned
        deliveries fails no event: the periodic retry covers it.
        """
        created: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        freed: set[str] = set()
        ended: dict[str, list[dict[str, Any]]] = {}
        for event in events:
            try:
                tenant = canonical_uuid(event["tenant_id"], "tenant_id")
                delivery = canonical_uuid(event["delivery_id"], "delivery_id")
                kind = event["type"]
            except (KeyError, TypeError, ValueError):
                log.warning("ignored a malformed delivery event: %.200r", event)
                continue
            if kind == CREATED_EVENT:
                created.setdefault(tenant, []).append((delivery, event))
            elif kind in _FREEING:
                freed.add(tenant)
                ended.setdefault(delivery, []).append(event)
        failed: list[dict[str, Any]] = []
        for delivery, its in ended.items():   # however it ended (driver, vendor, customer, operator)
            try:
                await self.forget(delivery)
            except Exception:
                log.exception("freeing the driver of ended delivery %s failed; will retry", delivery)
                failed += its
        for tenant, items in created.items():
            if self.mode == "batch":
                try:
                    await self.dispatch_batch(tenant, [d for d, _ in items])
                except Exception:
                    log.exception("batch dispatch of %d deliveries of %s failed; will retry", len(items), tenant)
                    failed += [e for _, e in items]
                continue
            results = await asyncio.gather(*(self.dispatch(tenant, d) for d, _ in items), return_exceptions=True)
            for (delivery, event), result in zip(items, results, strict=True):
                if isinstance(result, Exception):
                    log.error("dispatching delivery %s failed (%s: %s); will retry", delivery,
                              result.__class__.__name__, result)
                    failed.append(event)
                elif isinstance(result, BaseException):
                    raise result
        for tenant in freed:
            try:
                await self.retry(tenant)
            except Exception:
                log.exception("retrying unassigned deliveries of %s failed; the periodic retry will", tenant)
        return failed

    async def run(self, bootstrap: str, topic: str, group: str, *, partitions: int = 1,
                  max_attempts: int = 8) -> None:
        """Consume ``delivery-events`` until cancelled; the periodic retry runs alongside.

        Every engine reads every partition (no consumer group: on tansu a group left uncleanly
        by a killed engine was seen to rebalance forever, starving the dispatcher). Each event
        is handled by the one engine that claims it first, the read position is shared in
        Redis, failed events are retried before the position passes them, and an event that
        keeps failing is parked: see ``dispatch.matching.consumer``. ``partitions``: how many
        the topic gets when it has to be (re)created (a broker restarted empty).
        """
        retries = asyncio.create_task(self._retry_forever(), name="unassigned-retry")
        if self.replica is not None:
            await self.replica.start()   # ready after its first resync; Redis answers until then
        try:
            await EventConsumer(self, bootstrap, topic, group, partitions=partitions,
                                max_attempts=max_attempts).run()
        finally:
            retries.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await retries
            if self.replica is not None:
                await self.replica.stop()
            for task in list(self._tasks):
                task.cancel()

    async def _sweep_pending(self) -> int:
        """Dispatch pending deliveries that no round is working on (a lost trigger). A tenant
        that fails is logged and the others are still swept."""
        started = 0
        for tenant_id in await self.db.active_tenant_ids():
            try:
                async with self.db.tenant_transaction(tenant_id, readonly=True) as tx:
                    rows = await tx.fetch(STRANDED_SQL, self.offers.offer_timeout_s + 10.0)
                for row in rows:
                    delivery = str(row["id"])
                    if row["status"] == "offered":
                        if not await self.offers.release_lost_offer(str(tenant_id), delivery):
                            continue   # still open in Redis: its deadline moves the round on
                        log.warning("delivery %s was offered with no open offer; dispatching it afresh",
                                    delivery)
                    elif await self.redis.exists(round_key(delivery)):
                        if not await self.offers.drop_orphaned_round(delivery):
                            continue   # an offer is open: its deadline moves the round on
                        log.warning("delivery %s was pending with a round but no open offer; dispatching "
                                    "it afresh", delivery)
                    elif not row["long_idle"] or await self.redis.exists(held_key(delivery)):
                        continue   # just created, or held for a bundle partner (its timer decides)
                    if await self.dispatch(str(tenant_id), delivery) is not None:
                        started += 1
            except Exception as exc:   # noqa: BLE001 - one tenant's fault is not the others'
                log.error("sweeping pending deliveries of tenant %s failed (%s: %s)", tenant_id,
                          exc.__class__.__name__, exc)
        return started

    async def _retry_forever(self) -> None:
        while True:
            await asyncio.sleep(self.retry_interval_s)
            try:
                for tenant in await self.offers.unassigned_tenants():
                    try:
                        await self.retry(tenant)
                    except Exception as exc:   # noqa: BLE001 - the next tenant still gets its retry
                        log.error("retrying unassigned deliveries of tenant %s failed (%s: %s)", tenant,
                                  exc.__class__.__name__, exc)
                if (swept := await self._sweep_pending()):
                    log.info("started %d offer rounds for pending deliveries that had none", swept)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("periodic retry of unassigned deliveries failed")
