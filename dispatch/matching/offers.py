"""Offering a delivery to drivers one at a time: offer, accept, decline, timeout, give up.

A *round* offers one delivery to its ranked candidates in order. Each offer is a claim
(``dispatch.claims``), a deadline, a ``deliveries`` transition and a notification; an accept
assigns the delivery, a decline or a passed deadline moves on to the next candidate, and after
``max_attempts`` offers (or when no candidate is left) the delivery becomes ``unassigned``
with a reason and waits in ``deliveries:unassigned:{tenant}`` for ``retry_unassigned``.

Nothing lives in a Python dict: a restarted engine (or any other engine sharing the Redis)
finds the round, the tried drivers and the pending deadlines where this one left them.

Keys
----

``delivery:round:{delivery_id}`` HASH, TTL one day
    The round: tenant, job, pay, dropoff ETA, candidates (in offer order), attempts made.
``delivery:tried:{delivery_id}`` SET of driver ids, TTL one day
    Candidates already taken by this round (``SADD`` returning 1 is what reserves one, so two
    engines advancing the same round never offer it to the same driver).
``offers:deadlines:{app_id}`` ZSET, member ``delivery_id|driver_id``, score deadline (ms)
    Open offers of every engine of a deployment. Whoever removes a member owns that offer's
    outcome: the reply path with ``ZREM``, the sweeper with one script that reads and removes
    the due members, so an offer times out once however many engines sweep.
``deliveries:unassigned:{tenant_id}`` SET of delivery ids
    Deliveries given up, for ``retry_unassigned`` when drivers free up.
``deliveries:unassigned:tenants`` SET of tenant ids
    Tenants that may have unassigned deliveries (the dispatcher's periodic retry reads it).

The database guards capacity (``dispatch.deliveries.store``): an ``offer`` or ``accept``
transition for a driver who already carries ``capacity`` active deliveries raises
``DriverAtCapacity``. Redis thought the driver free (its claims were lost), so the engine
repairs the driver's claims from the database's list (``DriverClaims.restore``: the driver
goes busy) and moves on to the next candidate, as for a decline.

Order of writes for one offer: deadline, claim, transition, notification. A crash after the
deadline is written is therefore always found by a sweep, which tolerates the steps that did
not happen (a missing claim, a delivery still ``pending``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from redis.asyncio import Redis

from dispatch.deliveries.state import DeliveryEvent, IllegalTransition
from dispatch.deliveries.store import DriverAtCapacity, UnknownDelivery, UnknownDriver
from dispatch.deliveries.transitions import DeliveryTransitions
from dispatch.matching.bundle_offers import BundleRounds, job_from_json, job_json
from dispatch.matching.claims import BUNDLE_PREFIX, DriverClaims
from dispatch.matching.keys import (
    UNASSIGNED_TENANTS_KEY,
    deadlines_key,
    delivery_driver_key,
    delivery_offer_key,
    round_key,
    tried_key,
    unassigned_key,
)
from dispatch.matching.offer_repairs import SYSTEM_ACTOR, OfferRepairs
from dispatch.matching.offer_repairs import member as _member
from dispatch.matching.ranking import Job
from dispatch.matching.terms import (
    BundleOffer,
    InvalidOffer,
    Offer,
    OfferCandidate,
    OfferNotHeld,
    RoundInProgress,
    RoundOutcome,
    eta_s,
    offer_id,
)
from streams.replies import as_text

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_OFFER_TIMEOUT_S",
    "Notifier",
    "OfferEngine",
    "OfferNotHeld",
    "RoundInProgress",
    "WebsocketNotifier",
]

log = logging.getLogger(__name__)

DEFAULT_OFFER_TIMEOUT_S = 20.0
DEFAULT_MAX_ATTEMPTS = 5
ROUND_TTL_S = 86_400


# Called once a driver's accept is recorded: (tenant_id, delivery_id, driver_id, job), and for
# each delivery of a bundle with ``stop=(bundle_id, k, n)`` (its place in the drop-off order).
OnAssigned = Callable[..., Awaitable[None]]


# KEYS: deadlines. ARGV: now (ms), max members. Read and remove in one step: a member is
# returned to exactly one caller.
POP_DUE_SCRIPT = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return due
"""


# KEYS: a tenant's unassigned set, the tenants set. ARGV: tenant. 1 if it has deliveries waiting.
_KEEP_IF_WAITING = """
if redis.call('SCARD', KEYS[1]) > 0 then return 1 end
redis.call('SREM', KEYS[2], ARGV[1])
return 0
"""


@dataclass(frozen=True, slots=True)
class _Round:
    tenant_id: str
    job: Job
    pay: Decimal
    dropoff_eta_s: int
    candidates: tuple[OfferCandidate, ...]
    attempts: int


# -- ports --------------------------------------------------------------------------------------


class Notifier(Protocol):
    async def send_offer(self, driver_id: str, offer: Offer | BundleOffer) -> bool:
        """Deliver the offer; False when the driver is not connected here."""


class WebsocketNotifier:
    """Sends the offer frame on every open driver websocket of this process.

    ``state.driver_ids`` (driver_id -> sockets) is maintained by ``dispatch.gateway``.
    """

    def __init__(self, state: Any) -> None:
        self.state = state

    async def send_offer(self, driver_id: str, offer: Offer | BundleOffer) -> bool:
        return await self.send_frame(driver_id, offer.frame())

    async def send_frame(self, driver_id: str, frame: dict[str, Any]) -> bool:
        sent = False
        for ws in list(self.state.driver_ids.get(driver_id, ())):
            try:
                await ws.send_json(frame)
                sent = True
            except Exception:  # a socket closing under us is "not connected", not an error
                log.debug("frame to %s not sent on a closing socket", driver_id, exc_info=True)
        return sent


# -- the engine ---------------------------------------------------------------------------------


# The delivery cannot take the round's transitions any more (cancelled meanwhile, unknown).
_ABANDON = (IllegalTransition, UnknownDelivery, UnknownDriver)


class OfferEngine(OfferRepairs, BundleRounds):
    """Runs offer rounds over ``DriverClaims``, a ``Notifier`` and the deliveries' transitions;
    bundle rounds (several deliveries, one offer) are ``dispatch.matching.bundle_offers``.

    ``claims.offer_ttl_s`` must be at least ``offer_timeout_s``: the claim's own expiry is the
    backstop for a crashed deployment, the deadline here is the timeout drivers see.
    Every engine of a deployment must use the same ``app_id`` (it names the deadlines key).
    ``transitions=None`` keeps no delivery state outside Redis (for callers without Postgres).
    """

    def __init__(self, claims: DriverClaims, notifier: Notifier, redis: Redis, *,
                 transitions: DeliveryTransitions | None = None,
                 offer_timeout_s: float = DEFAULT_OFFER_TIMEOUT_S,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS, app_id: str = "wakala",
                 on_assigned: OnAssigned | None = None) -> None:
        if (not isinstance(offer_timeout_s, int | float) or not math.isfinite(offer_timeout_s)
                or not 0.01 <= offer_timeout_s <= 3600):
            raise InvalidOffer(f"offer_timeout_s must be between 0.01 and 3600 s, got {offer_timeout_s!r}")
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or not 1 <= max_attempts <= 100:
            raise InvalidOffer(f"max_attempts must be an integer from 1 to 100, got {max_attempts!r}")
        if claims.offer_ttl_s < offer_timeout_s:
            raise InvalidOffer(f"claims.offer_ttl_s ({claims.offer_ttl_s} s) is shorter than "
                               f"offer_timeout_s ({offer_timeout_s} s): offers would vanish early")
        self.claims, self.notifier, self.redis = claims, notifier, redis
        self.transitions = transitions
        self.on_assigned = on_assigned
        self.offer_timeout_s = float(offer_timeout_s)
        self.max_attempts = max_attempts
        self.deadlines = deadlines_key(app_id)
        self._pop_due = redis.register_script(POP_DUE_SCRIPT)

    # -- public verbs ---------------------------------------------------------------------------

    async def start_round(self, job: Job, delivery_id: str, candidates: Sequence[OfferCandidate], *,
                          pay: Decimal, dropoff_eta_s: int) -> RoundOutcome:
        """Record the round and offer the delivery to its first candidate that can take it.

        Candidates already tried for this delivery are skipped and offers already made count
        towards ``max_attempts`` (``retry_unassigned`` resets both).
        """
        delivery = offer_id(delivery_id, "delivery_id")
        tenant = offer_id(job.tenant_id, "tenant_id")
        if not isinstance(pay, Decimal) or not pay.is_finite() or pay < 0:
            raise InvalidOffer(f"pay must be a non-negative, finite Decimal, got {pay!r}")
        eta_s(dropoff_eta_s, "dropoff_eta_s")
        listed = tuple(OfferCandidate(offer_id(c.driver_id, "driver_id"), eta_s(c.pickup_eta_s, "pickup_eta_s"))
                       for c in candidates)
        if await self.redis.exists(delivery_offer_key(delivery), delivery_driver_key(delivery)):
            raise RoundInProgress(f"delivery {delivery} already has an open offer or a driver")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(round_key(delivery), mapping={
                "tenant": tenant, "job": job_json(job), "pay": str(pay),
                "dropoff_eta_s": str(dropoff_eta_s),
                "candidates": json.dumps([[c.driver_id, c.pickup_eta_s] for c in listed]),
            })
            pipe.hsetnx(round_key(delivery), "attempts", "0")
            pipe.expire(round_key(delivery), ROUND_TTL_S)
            await pipe.execute()
        return await self._advance(delivery)

    async def reply(self, driver_id: str, delivery_id: str | None, accept: bool, *,
                    bundle_id: str | None = None) -> RoundOutcome:
        """The driver's answer. Raises OfferNotHeld, changing nothing, when the driver has no
        open offer of this delivery (or its deadline was just handled by a sweep). An open
        bundle offer is answered whole, named by ``bundle_id`` or any of its deliveries."""
        driver = offer_id(driver_id, "driver_id")
        held = await self.claims.offer_of(driver)
        if held is not None and held.startswith(BUNDLE_PREFIX):
            return await self._bundle_reply(
                driver, held[len(BUNDLE_PREFIX):], accept, named_bundle=bundle_id,
                named_delivery=None if delivery_id is None else offer_id(delivery_id, "delivery_id"))
        if delivery_id is None or bundle_id is not None:
            raise OfferNotHeld(f"driver {driver} holds no offer of bundle {bundle_id}")
        delivery = offer_id(delivery_id, "delivery_id")
        if held != delivery:
            raise OfferNotHeld(f"driver {driver} holds no offer of delivery {delivery}")
        if not await self.redis.zrem(self.deadlines, _member(delivery, driver)):
            raise OfferNotHeld(f"the offer of delivery {delivery} has just timed out")
        if accept:
            if await self.claims.accept(driver, delivery):
                tenant = await self._tenant(delivery)
                try:
                    await self._transition(tenant, delivery, DeliveryEvent.ACCEPT, actor=driver)
                except DriverAtCapacity as exc:
                    await self.claims.release(driver, delivery)
                    await self._at_capacity(exc)
                    await self._closed(delivery, driver, DeliveryEvent.DECLINE, reason="driver at capacity")
                    await self._advance(delivery)
                    raise OfferNotHeld(f"you already carry {len(exc.active)} active deliveries; "
                                       f"delivery {delivery} goes to another driver") from None
                except _ABANDON as exc:
                    await self.claims.release(driver, delivery)
                    return RoundOutcome(delivery, "abandoned", driver, str(exc))
                except Exception:
                    # The accept is not recorded: the offer opens again, so that the driver's
                    # retry of the same accept succeeds (or its deadline moves the round on),
                    # instead of Redis holding a delivery the database still calls offered.
                    await self._reopen(driver, delivery)
                    raise
                if self.on_assigned is not None and tenant is not None:
                    stored = await self._round(delivery)
                    if stored is not None:
                        await self.on_assigned(tenant, delivery, driver, stored.job)
                await self.redis.delete(round_key(delivery), tried_key(delivery))
                log.info("delivery %s assigned to %s (tenant %s)", delivery, driver, tenant)
                return RoundOutcome(delivery, "assigned", driver)
            # The claim expired or was withdrawn (driver went offline) after the check above.
            await self._closed(delivery, driver, DeliveryEvent.OFFER_TIMEOUT)
            await self._advance(delivery)
            raise OfferNotHeld(f"the offer of delivery {delivery} is no longer open")
        await self.claims.decline(driver, delivery)
        await self._closed(delivery, driver, DeliveryEvent.DECLINE, actor=driver)
        return await self._advance(delivery)

    async def sweep(self, now: float | None = None, *, limit: int = 100) -> list[RoundOutcome]:
        """Time out every offer whose deadline is at or before ``now`` (epoch s) and move each
        round on. Safe to run in any number of engines at once: each offer is handled once."""
        now_ms = round((time.time() if now is None else now) * 1000)
        due = await self._pop_due(keys=[self.deadlines], args=[now_ms, limit])
        outcomes = []
        for raw in due:
            delivery, _, driver = as_text(raw).partition("|")
            try:
                if delivery.startswith(BUNDLE_PREFIX):
                    outcomes.append(await self._bundle_timeout(delivery[len(BUNDLE_PREFIX):], driver))
                    continue
                await self.claims.decline(driver, delivery)
                await self._closed(delivery, driver, DeliveryEvent.OFFER_TIMEOUT)
                outcomes.append(await self._advance(delivery))
            except Exception:
                # One bad round must not stop the others. Its deadline is gone: the
                # dispatcher's sweep finds the delivery by its age (``offer_repairs``).
                log.exception("offer timeout of delivery %s (driver %s) failed", delivery, driver)
        return outcomes

    async def run_sweeper(self, interval_s: float = 0.5) -> None:
        """Sweep forever (until cancelled); the engine runs one of these per process."""
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis briefly away: try again next tick
                log.exception("offer sweep failed")
            await asyncio.sleep(interval_s)

    async def pending_deadlines(self) -> list[tuple[str, str, float]]:
        """(delivery_id, driver_id, deadline epoch s) of every open offer, soonest first (a
        bundle's as ``bundle:{bundle_id}``)."""
        rows = await self.redis.zrange(self.deadlines, 0, -1, withscores=True)
        out = []
        for member, score in rows:
            delivery, _, driver = as_text(member).partition("|")
            out.append((delivery, driver, score / 1000))
        return out

    async def unassigned(self, tenant_id: str) -> set[str]:
        return {as_text(m) for m in await self.redis.smembers(unassigned_key(offer_id(tenant_id, "tenant_id")))}

    async def retry_unassigned(
        self, tenant_id: str,
        candidates_for: Callable[[Job], Awaitable[Sequence[OfferCandidate]]], *, limit: int = 50,
    ) -> list[RoundOutcome]:
        """Start a fresh round for up to ``limit`` unassigned deliveries of the tenant.

        The hook to call when drivers free up. ``candidates_for(job)`` ranks the drivers now
        available (e.g. ``dispatch.nearest.nearest`` plus ETAs). A delivery whose round has
        expired (a day) cannot be rebuilt from Redis and is dropped from the set, logged.
        """
        tenant = offer_id(tenant_id, "tenant_id")
        popped = [as_text(raw) for raw in await self.redis.spop(unassigned_key(tenant), limit) or ()]
        outcomes = []
        # Popped and not yet out of ``unassigned``: back into the set however this ends, so a
        # failure part-way (the database or Redis away while ranking or transitioning) leaves
        # them for the next retry instead of losing them from the only list that retries them.
        back = list(popped)
        try:
            for delivery in popped:
                stored = await self._round(delivery)
                if stored is None:
                    log.warning("unassigned delivery %s has no stored round; not retried", delivery)
                    back.remove(delivery)
                    continue
                candidates = await candidates_for(stored.job)
                if not candidates:
                    continue  # nobody to offer it to yet: it waits, no churn of transitions
                try:
                    await self._transition(tenant, delivery, DeliveryEvent.RETRY, actor=SYSTEM_ACTOR)
                except _ABANDON as exc:
                    back.remove(delivery)
                    await self.redis.delete(round_key(delivery), tried_key(delivery))
                    outcomes.append(RoundOutcome(delivery, "abandoned", None, str(exc)))
                    continue
                # Pending now: from here a failure is the pending sweep's to repair.
                back.remove(delivery)
                # A fresh round: every driver may be asked again, and max_attempts counts anew
                # (deliveries.offer_attempts keeps the total across rounds).
                await self.redis.delete(tried_key(delivery))
                await self.redis.hset(round_key(delivery), "attempts", "0")
                outcomes.append(await self.start_round(stored.job, delivery, candidates,
                                                       pay=stored.pay, dropoff_eta_s=stored.dropoff_eta_s))
        finally:
            if back:
                await self.redis.sadd(unassigned_key(tenant), *back)
        return outcomes

    async def unassigned_tenants(self) -> list[str]:
        """Tenants that may have unassigned deliveries; a tenant whose set is empty is dropped."""
        out = []
        for raw in await self.redis.smembers(UNASSIGNED_TENANTS_KEY):
            tenant = as_text(raw)
            # check-and-remove in one step: a give_up landing in between keeps the tenant listed
            if await self.redis.eval(_KEEP_IF_WAITING, 2, unassigned_key(tenant), UNASSIGNED_TENANTS_KEY, tenant):
                out.append(tenant)
        return out

    # -- steps ----------------------------------------------------------------------------------

    async def _advance(self, delivery: str) -> RoundOutcome:
        """Offer to the next untried candidate, or give up."""
        stored = await self._round(delivery)
        if stored is None:
            return RoundOutcome(delivery, "abandoned", None, "no round recorded (expired or finished)")
        attempts = stored.attempts
        for candidate in stored.candidates:
            if attempts >= self.max_attempts:
                break
            if not await self.redis.sadd(tried_key(delivery), candidate.driver_id):
                continue  # tried before, or taken by another engine advancing this round
            await self.redis.expire(tried_key(delivery), ROUND_TTL_S)
            driver = candidate.driver_id
            member = _member(delivery, driver)
            deadline = time.time() + self.offer_timeout_s
            await self.redis.zadd(self.deadlines, {member: round(deadline * 1000)})
            if not await self.claims.offer(driver, delivery):
                await self.redis.zrem(self.deadlines, member)  # busy, offline or holds another offer
                continue
            attempts = await self.redis.hincrby(round_key(delivery), "attempts", 1)
            try:
                await self._transition(stored.tenant_id, delivery, DeliveryEvent.OFFER, actor=SYSTEM_ACTOR,
                                       driver_id=driver, estimated_duration_s=stored.dropoff_eta_s)
            except DriverAtCapacity as exc:   # busy in the database: not an attempt, the next one
                await self.redis.zrem(self.deadlines, member)
                await self.claims.decline(driver, delivery)
                attempts = await self.redis.hincrby(round_key(delivery), "attempts", -1)
                await self._at_capacity(exc)
                continue
            except _ABANDON as exc:
                await self.redis.zrem(self.deadlines, member)
                await self.claims.decline(driver, delivery)
                await self.redis.delete(round_key(delivery), tried_key(delivery))
                return RoundOutcome(delivery, "abandoned", None, str(exc))
            except Exception:
                # The database did not record the offer (its session cut, say): take the
                # Redis half back, so the delivery is not held for a whole offer timeout by an
                # offer nobody was sent, and the caller's retry finds the round as it was.
                await self._unoffer(delivery, driver)
                raise
            offer = Offer(delivery, stored.tenant_id, (stored.job.pickup_lat, stored.job.pickup_lng),
                          (stored.job.dropoff_lat, stored.job.dropoff_lng), stored.pay,
                          candidate.pickup_eta_s, stored.dropoff_eta_s, deadline)
            if await self.notifier.send_offer(driver, offer):
                return RoundOutcome(delivery, "offered", driver)
            # Not connected here: nobody can answer, so do not wait out the timeout.
            if await self.redis.zrem(self.deadlines, member):
                await self.claims.decline(driver, delivery)
                await self._closed(delivery, driver, DeliveryEvent.DECLINE, reason="driver not connected")
        if attempts >= self.max_attempts:
            reason = f"no driver accepted after {attempts} offers"
        else:
            reason = f"no available candidate left after {attempts} offers"
        return await self._give_up(stored.tenant_id, delivery, reason)

    async def _give_up(self, tenant: str, delivery: str, reason: str) -> RoundOutcome:
        try:
            await self._transition(tenant, delivery, DeliveryEvent.GIVE_UP, actor=SYSTEM_ACTOR, reason=reason)
        except _ABANDON as exc:
            await self.redis.delete(round_key(delivery), tried_key(delivery))
            return RoundOutcome(delivery, "abandoned", None, str(exc))
        await self.redis.sadd(unassigned_key(tenant), delivery)
        await self.redis.sadd(UNASSIGNED_TENANTS_KEY, tenant)
        log.info("delivery %s unassigned: %s", delivery, reason)
        return RoundOutcome(delivery, "unassigned", None, reason)

    async def _at_capacity(self, exc: DriverAtCapacity) -> None:
        """Redis thought the driver free; the database says it is full: repair its claims."""
        log.warning("%s; its Redis claims are rebuilt from the database", exc)
        try:
            await self.claims.restore(exc.driver_id, exc.active)
        except Exception:   # the refusal stands either way; the rebuild sweep repairs later
            log.exception("restoring the claims of driver %s failed", exc.driver_id)

    async def _closed(self, delivery: str, driver: str, event: DeliveryEvent, *,
                      actor: str = SYSTEM_ACTOR, reason: str | None = None) -> None:
        """Record that an offer ended without an accept. A delivery that never reached
        ``offered`` (the engine stopped between claim and transition) is left as it is."""
        tenant = await self._tenant(delivery)
        if tenant is None:
            return
        try:
            await self._transition(tenant, delivery, event, actor=actor, reason=reason)
        except IllegalTransition:
            log.info("delivery %s was not 'offered' at %s by %s", delivery, event.value, driver)

    async def _transition(self, tenant: str | None, delivery: str, event: DeliveryEvent, **kwargs: Any) -> None:
        if self.transitions is not None and tenant is not None:
            await self.transitions(tenant, delivery, event, **kwargs)

    async def _tenant(self, delivery: str) -> str | None:
        value = await self.redis.hget(round_key(delivery), "tenant")
        return None if value is None else as_text(value)

    async def _round(self, delivery: str) -> _Round | None:
        raw = await self.redis.hgetall(round_key(delivery))
        if not raw:
            return None
        fields = {as_text(k): as_text(v) for k, v in raw.items()}
        return _Round(
            tenant_id=fields["tenant"],
            job=job_from_json(fields["job"]),
            pay=Decimal(fields["pay"]),
            dropoff_eta_s=int(fields["dropoff_eta_s"]),
            candidates=tuple(OfferCandidate(d, int(eta)) for d, eta in json.loads(fields["candidates"])),
            attempts=int(fields.get("attempts", "0")),
        )
