"""Offering a bundle: several ready deliveries of one pickup, one offer, one answer.

A bundle round is a round (``dispatch.matching.offers``) whose subject is a bundle: its
deliveries in drop-off order, offered together to one ranked candidate at a time. Decline
or timeout moves the bundle to the next candidate; accept takes every delivery at once.

Atomic accept, in both stores:

* Redis: ``DriverClaims.accept_bundle`` claims every delivery in one Lua script, all or none,
  and capacity counts each delivery (a driver with one free slot cannot take two).
* Postgres: the ``accept`` of every delivery and its place in the sequence
  (``deliveries.bundle_id``, ``bundle_seq``, ``bundle_size``) are one transaction
  (``PostgresTransitions.together``): the capacity guard counts the deliveries accepted
  earlier in that transaction, and a failure leaves none assigned. When the database refuses
  or fails, the Redis claims are taken back as ``offer_repairs`` does for one delivery: at
  capacity the bundle moves on, a delivery gone (cancelled) dissolves the bundle, any other
  failure re-opens the offer so the driver's retry succeeds.

A bundle that finds no taker (``max_attempts`` offers, or no candidate left) or loses a
delivery is *dissolved*: its round is dropped and ``on_dissolved`` (the dispatcher) offers
the deliveries still pending one by one, as if they had never been bundled. Without the hook
the dispatcher's pending sweep finds them by their age.

Keys (``dispatch.matching.keys``): ``bundle:round:{bundle_id}`` HASH (tenant, legs, candidates,
attempts; TTL one day), ``bundle:tried:{bundle_id}`` SET; the driver's offer key holds
``bundle:{bundle_id}`` and each delivery's offer key the driver (``claims``); the deadline's
member in ``offers:deadlines:{app_id}`` is ``bundle:{bundle_id}|{driver_id}``, so the one
sweeper of every engine times bundles out too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from dispatch.deliveries.state import DeliveryEvent, IllegalTransition
from dispatch.deliveries.store import DriverAtCapacity, UnknownDelivery, UnknownDriver
from dispatch.matching.claims import BUNDLE_PREFIX
from dispatch.matching.keys import (
    bundle_round_key,
    bundle_tried_key,
    delivery_driver_key,
    delivery_offer_key,
    round_key,
)
from dispatch.matching.offer_repairs import SYSTEM_ACTOR
from dispatch.matching.ranking import Job
from dispatch.matching.terms import (
    BundleOffer,
    BundleStop,
    InvalidOffer,
    OfferCandidate,
    OfferNotHeld,
    RoundInProgress,
    RoundOutcome,
    eta_s,
    offer_id,
)
from streams.replies import as_text

if TYPE_CHECKING:
    from dispatch.matching.offers import OfferEngine

__all__ = ["MAX_STOPS", "BundleLeg", "BundleRounds", "OnDissolved", "bundle_member", "job_from_json", "job_json"]

log = logging.getLogger(__name__)

MAX_STOPS = 10            # deliveries in one bundle at most (the schema's bundle_size check)
ROUND_TTL_S = 86_400

# Called with (tenant_id, delivery ids) when a bundle is dropped: offer them one by one.
OnDissolved = Callable[[str, tuple[str, ...]], Awaitable[None]]
_ABANDON = (IllegalTransition, UnknownDelivery, UnknownDriver)


@dataclass(frozen=True, slots=True)
class BundleLeg:
    """One delivery of a bundle, in drop-off order: its job, its pay and the seconds from the
    pickup to its door through the stops before it (what its offer transition records)."""

    delivery_id: str
    job: Job
    pay: Decimal
    dropoff_eta_s: int


@dataclass(frozen=True, slots=True)
class _BundleRound:
    tenant_id: str
    legs: tuple[BundleLeg, ...]
    candidates: tuple[OfferCandidate, ...]
    attempts: int

    @property
    def ids(self) -> list[str]:
        return [leg.delivery_id for leg in self.legs]


def bundle_member(bundle_id: str, driver_id: str) -> str:
    """A bundle offer's member in the deadlines ZSET."""
    return f"{BUNDLE_PREFIX}{bundle_id}|{driver_id}"


def job_json(job: Job) -> str:
    fields = asdict(job)
    fields["vehicle_types"] = None if job.vehicle_types is None else sorted(job.vehicle_types)
    return json.dumps(fields)


def job_from_json(raw: str) -> Job:
    fields = json.loads(raw)
    types = fields["vehicle_types"]
    fields["vehicle_types"] = None if types is None else frozenset(types)
    return Job(**fields)


def _legs_json(legs: Sequence[BundleLeg]) -> str:
    return json.dumps([[leg.delivery_id, job_json(leg.job), str(leg.pay), leg.dropoff_eta_s] for leg in legs])


def _legs_from_json(raw: str) -> tuple[BundleLeg, ...]:
    return tuple(BundleLeg(d, job_from_json(job), Decimal(pay), int(eta)) for d, job, pay, eta in json.loads(raw))


def _outside(exc: DriverAtCapacity, ids: Sequence[str]) -> DriverAtCapacity:
    """The refusal with the driver's active deliveries as committed: the bundle's own, counted
    inside the transaction that rolled back, are not the driver's."""
    return DriverAtCapacity(exc.driver_id, [a for a in exc.active if a not in ids], exc.capacity)


class BundleRounds:
    """Mixed into ``OfferEngine``: bundle rounds over its Redis, claims, notifier and transitions."""

    on_dissolved: OnDissolved | None = None

    async def start_bundle(self: OfferEngine, bundle_id: str, legs: Sequence[BundleLeg],
                           candidates: Sequence[OfferCandidate]) -> RoundOutcome:
        """Record a bundle round and offer it to its first candidate that can take it all.

        ``legs`` in drop-off order, 2 to ``MAX_STOPS`` deliveries of one tenant and one pickup.
        Raises ``RoundInProgress`` when any of them already has an open offer, a driver or a
        round of its own (the caller offers the others one by one)."""
        bundle = offer_id(bundle_id, "bundle_id")
        legs = tuple(BundleLeg(offer_id(leg.delivery_id, "delivery_id"), leg.job, leg.pay,
                               eta_s(leg.dropoff_eta_s, "dropoff_eta_s")) for leg in legs)
        ids = [leg.delivery_id for leg in legs]
        if not 2 <= len(ids) <= MAX_STOPS or len(set(ids)) != len(ids):
            raise InvalidOffer(f"a bundle holds 2 to {MAX_STOPS} distinct deliveries, got {len(ids)}")
        tenant = offer_id(legs[0].job.tenant_id, "tenant_id")
        pickup = (legs[0].job.pickup_lat, legs[0].job.pickup_lng)
        for leg in legs:
            if leg.job.tenant_id != legs[0].job.tenant_id or (leg.job.pickup_lat, leg.job.pickup_lng) != pickup:
                raise InvalidOffer("the deliveries of a bundle share one tenant and one pickup")
            if not isinstance(leg.pay, Decimal) or not leg.pay.is_finite() or leg.pay < 0:
                raise InvalidOffer(f"pay must be a non-negative, finite Decimal, got {leg.pay!r}")
        listed = tuple(OfferCandidate(offer_id(c.driver_id, "driver_id"), eta_s(c.pickup_eta_s, "pickup_eta_s"))
                       for c in candidates)
        for d in ids:
            if await self.redis.exists(delivery_offer_key(d), delivery_driver_key(d), round_key(d)):
                raise RoundInProgress(f"delivery {d} already has an open offer, a driver or a round")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(bundle_round_key(bundle), mapping={
                "tenant": tenant, "legs": _legs_json(legs), "attempts": "0",
                "candidates": json.dumps([[c.driver_id, c.pickup_eta_s] for c in listed])})
            pipe.expire(bundle_round_key(bundle), ROUND_TTL_S)
            await pipe.execute()
        return await self._bundle_advance(bundle)

    async def _bundle_reply(self: OfferEngine, driver: str, bundle: str, accept: bool, *,
                            named_delivery: str | None, named_bundle: str | None) -> RoundOutcome:
        """The driver's answer to its open bundle offer ``bundle``; the reply may name the bundle
        or any of its deliveries. Raises OfferNotHeld, changing nothing, for anything else."""
        stored = await self._bundle_round(bundle)
        if (stored is None or (named_bundle is not None and named_bundle != bundle)
                or (named_delivery is not None and named_delivery not in stored.ids)):
            raise OfferNotHeld(f"driver {driver} holds no offer of {named_bundle or named_delivery}")
        if not await self.redis.zrem(self.deadlines, bundle_member(bundle, driver)):
            raise OfferNotHeld(f"the offer of bundle {bundle} has just timed out")
        ids = stored.ids
        if not accept:
            await self.claims.decline_bundle(driver, bundle, ids)
            await self._bundle_closed(stored, DeliveryEvent.DECLINE, actor=driver)
            return await self._bundle_advance(bundle)
        if not await self.claims.accept_bundle(driver, bundle, ids):
            # Expired, withdrawn, or no room any more for every delivery: none was claimed.
            await self._bundle_closed(stored, DeliveryEvent.OFFER_TIMEOUT, reason="bundle no longer open")
            await self._bundle_advance(bundle)
            raise OfferNotHeld(f"the offer of bundle {bundle} is no longer open (it needs {len(ids)} free slots)")
        try:
            await self._together(stored.tenant_id, [(d, DeliveryEvent.ACCEPT, {}) for d in ids],
                                 actor=driver, bundle_id=bundle)
        except DriverAtCapacity as exc:
            await self._release_all(driver, ids)
            await self._at_capacity(_outside(exc, ids))
            await self._bundle_closed(stored, DeliveryEvent.DECLINE, reason="driver at capacity")
            await self._bundle_advance(bundle)
            raise OfferNotHeld(f"you already carry {len(exc.active)} active deliveries; bundle {bundle} "
                          "goes to another driver") from None
        except _ABANDON as exc:
            await self._release_all(driver, ids)
            await self._bundle_closed(stored, DeliveryEvent.DECLINE, reason="bundle dissolved")
            return await self._dissolve(bundle, stored, f"bundle dissolved: {exc}", "abandoned")
        except Exception:
            await self._bundle_reopen(driver, bundle, ids)   # the driver's retry of the accept succeeds
            raise
        if self.on_assigned is not None:
            for k, leg in enumerate(stored.legs, start=1):
                await self.on_assigned(stored.tenant_id, leg.delivery_id, driver, leg.job,
                                       stop=(bundle, k, len(ids)))
        await self.redis.delete(bundle_round_key(bundle), bundle_tried_key(bundle))
        log.info("bundle %s (%d deliveries) assigned to %s", bundle, len(ids), driver)
        return RoundOutcome(ids[0], "assigned", driver, bundle_id=bundle, delivery_ids=tuple(ids))

    async def _bundle_timeout(self: OfferEngine, bundle: str, driver: str) -> RoundOutcome:
        """A bundle offer's deadline passed (the sweeper popped it): move the bundle on."""
        stored = await self._bundle_round(bundle)
        if stored is None:
            return RoundOutcome(bundle, "abandoned", None, "no bundle round recorded", bundle_id=bundle)
        await self.claims.decline_bundle(driver, bundle, stored.ids)
        await self._bundle_closed(stored, DeliveryEvent.OFFER_TIMEOUT)
        return await self._bundle_advance(bundle)

    async def _bundle_advance(self: OfferEngine, bundle: str) -> RoundOutcome:
        """Offer the bundle to the next untried candidate with room for all of it, or dissolve it."""
        stored = await self._bundle_round(bundle)
        if stored is None:
            return RoundOutcome(bundle, "abandoned", None, "no bundle round recorded", bundle_id=bundle)
        ids, attempts = stored.ids, stored.attempts
        for candidate in stored.candidates:
            if attempts >= self.max_attempts:
                break
            driver = candidate.driver_id
            if not await self.redis.sadd(bundle_tried_key(bundle), driver):
                continue
            await self.redis.expire(bundle_tried_key(bundle), ROUND_TTL_S)
            member = bundle_member(bundle, driver)
            deadline = time.time() + self.offer_timeout_s
            await self.redis.zadd(self.deadlines, {member: round(deadline * 1000)})
            if not await self.claims.offer_bundle(driver, bundle, ids):
                await self.redis.zrem(self.deadlines, member)   # busy, offline, no room for all
                continue
            attempts = await self.redis.hincrby(bundle_round_key(bundle), "attempts", 1)
            steps = [(leg.delivery_id, DeliveryEvent.OFFER,
                      {"driver_id": driver, "estimated_duration_s": leg.dropoff_eta_s}) for leg in stored.legs]
            try:
                await self._together(stored.tenant_id, steps, actor=SYSTEM_ACTOR)
            except DriverAtCapacity as exc:
                await self._unoffer_bundle(bundle, driver, ids, untry=False)
                await self._at_capacity(_outside(exc, ids))
                continue
            except _ABANDON as exc:
                await self._unoffer_bundle(bundle, driver, ids, untry=False)
                return await self._dissolve(bundle, stored, f"bundle dissolved: {exc}", "abandoned")
            except Exception:
                await self._unoffer_bundle(bundle, driver, ids, untry=True)
                raise
            first = stored.legs[0].job
            offer = BundleOffer(bundle, stored.tenant_id, (first.pickup_lat, first.pickup_lng), tuple(
                BundleStop(leg.delivery_id, k, (leg.job.dropoff_lat, leg.job.dropoff_lng), leg.pay, leg.dropoff_eta_s)
                for k, leg in enumerate(stored.legs, start=1)), candidate.pickup_eta_s, deadline)
            if await self.notifier.send_offer(driver, offer):
                return RoundOutcome(ids[0], "offered", driver, bundle_id=bundle, delivery_ids=tuple(ids))
            if await self.redis.zrem(self.deadlines, member):   # not connected: nobody can answer
                await self.claims.decline_bundle(driver, bundle, ids)
                await self._bundle_closed(stored, DeliveryEvent.DECLINE, reason="driver not connected")
        reason = (f"no driver accepted the bundle after {attempts} offers" if attempts >= self.max_attempts
                  else f"no driver with room for the bundle left after {attempts} offers")
        return await self._dissolve(bundle, stored, reason, "unassigned")

    # -- steps ----------------------------------------------------------------------------------

    async def _dissolve(self: OfferEngine, bundle: str, stored: _BundleRound, reason: str,
                        status: Any) -> RoundOutcome:
        """Drop the bundle; its deliveries still pending are offered one by one (``on_dissolved``)."""
        await self.redis.delete(bundle_round_key(bundle), bundle_tried_key(bundle))
        log.info("bundle %s dissolved: %s", bundle, reason)
        if self.on_dissolved is not None:
            await self.on_dissolved(stored.tenant_id, tuple(stored.ids))
        return RoundOutcome(stored.ids[0], status, None, reason, bundle_id=bundle, delivery_ids=tuple(stored.ids))

    async def _bundle_closed(self: OfferEngine, stored: _BundleRound, event: DeliveryEvent, *,
                             actor: str = SYSTEM_ACTOR, reason: str | None = None) -> None:
        """Record that the offer ended without an accept, delivery by delivery: one that moved on
        meanwhile (cancelled) must not keep the others ``offered``."""
        for d in stored.ids:
            try:
                await self._transition(stored.tenant_id, d, event, actor=actor, reason=reason)
            except (IllegalTransition, UnknownDelivery):
                log.info("delivery %s of a bundle was not 'offered' at %s", d, event.value)

    async def _together(self: OfferEngine, tenant: str, steps: list[tuple[str, DeliveryEvent, dict[str, Any]]],
                        *, actor: str, bundle_id: str | None = None) -> None:
        if self.transitions is None:
            return
        together = getattr(self.transitions, "together", None)
        if together is None:
            raise TypeError("bundle offers need transitions with together() (one transaction for all)")
        await together(tenant, steps, actor=actor, bundle_id=bundle_id)

    async def _release_all(self: OfferEngine, driver: str, ids: Sequence[str]) -> None:
        for d in ids:
            await self.claims.release(driver, d)

    async def _unoffer_bundle(self: OfferEngine, bundle: str, driver: str, ids: list[str], *, untry: bool) -> None:
        """Undo a bundle offer's Redis steps (deadline, claims, the attempt; the tried driver too
        when the database failed, so a retry finds the round as it was)."""
        with contextlib.suppress(Exception):   # the failure being handled is the one to report
            await self.redis.zrem(self.deadlines, bundle_member(bundle, driver))
            await self.claims.decline_bundle(driver, bundle, ids)
            await self.redis.hincrby(bundle_round_key(bundle), "attempts", -1)
            if untry:
                await self.redis.srem(bundle_tried_key(bundle), driver)

    async def _bundle_reopen(self: OfferEngine, driver: str, bundle: str, ids: list[str]) -> None:
        """Put back a bundle offer whose accept the database did not record, with a fresh deadline."""
        with contextlib.suppress(Exception):
            await self._release_all(driver, ids)
            if await self.claims.offer_bundle(driver, bundle, ids):
                await self.redis.zadd(self.deadlines, {bundle_member(bundle, driver): round(
                    (time.time() + self.offer_timeout_s) * 1000)})

    async def _bundle_round(self: OfferEngine, bundle: str) -> _BundleRound | None:
        raw = await self.redis.hgetall(bundle_round_key(bundle))
        if not raw:
            return None
        fields = {as_text(k): as_text(v) for k, v in raw.items()}
        return _BundleRound(
            tenant_id=fields["tenant"], legs=_legs_from_json(fields["legs"]),
            candidates=tuple(OfferCandidate(d, int(eta)) for d, eta in json.loads(fields["candidates"])),
            attempts=int(fields.get("attempts", "0")))
