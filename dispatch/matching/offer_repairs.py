"""Repairs of offer rounds that a failure left half-done: the Redis half of an offer and the
database half disagree, and nothing in flight would ever bring them together again.

An offer is written in two stores (``dispatch.matching.offers``: deadline and claim in Redis,
then the ``deliveries`` transition), and no transaction spans both. When the database step
fails (its session cut, the shard away) the Redis step is taken back at once where the engine
still knows what it did (``_unoffer``, ``_reopen``); where it cannot (the process died, the
undo failed too), the dispatcher's periodic sweep finds the delivery by its age in the
database and asks here whether anything is still in flight (``drop_orphaned_round``,
``release_lost_offer``). Undoing rather than retrying the write: a retry would hold the
driver's slot for an offer the driver was never sent.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

from dispatch.deliveries.state import DeliveryEvent, IllegalTransition
from dispatch.matching.keys import delivery_driver_key, delivery_offer_key, round_key, tried_key
from dispatch.matching.terms import offer_id

if TYPE_CHECKING:
    from dispatch.matching.offers import OfferEngine

SYSTEM_ACTOR = "system:offers"


def member(delivery: str, driver: str) -> str:
    """A deadline's member in the deadlines ZSET."""
    return f"{delivery}|{driver}"


class OfferRepairs:
    """Mixed into ``OfferEngine``: the repairs use its Redis, claims, deadlines and transitions."""

    async def drop_orphaned_round(self: OfferEngine, delivery_id: str) -> bool:
        """Delete the round of a delivery when nothing is in flight for it: a round is kept
        while an offer is open (its deadline sweeps it on) or a driver holds the delivery, and
        is deleted after the accept or the give-up. A round left with neither (an engine that
        failed between writing the round and making or closing an offer, e.g. its database
        session was cut) would keep the pending sweep away forever. True when one was dropped;
        the caller dispatches the delivery afresh."""
        delivery = offer_id(delivery_id, "delivery_id")
        if not await self.redis.exists(round_key(delivery)):
            return False
        if await self.redis.exists(delivery_offer_key(delivery), delivery_driver_key(delivery)):
            return False
        await self.redis.delete(round_key(delivery), tried_key(delivery))
        return True

    async def release_lost_offer(self: OfferEngine, tenant_id: str, delivery_id: str) -> bool:
        """Make a delivery the database calls ``offered`` pending again when Redis has no open
        offer or driver for it: the offer ended (declined, timed out) but the transition that
        records it failed, so no deadline is left to move the round on. True when released
        (its round is dropped too); the caller dispatches the delivery afresh."""
        delivery = offer_id(delivery_id, "delivery_id")
        if await self.redis.exists(delivery_offer_key(delivery), delivery_driver_key(delivery)):
            return False
        try:
            await self._transition(offer_id(tenant_id, "tenant_id"), delivery, DeliveryEvent.OFFER_TIMEOUT,
                                   actor=SYSTEM_ACTOR, reason="offer lost")
        except IllegalTransition:
            return False   # it moved on meanwhile
        await self.redis.delete(round_key(delivery), tried_key(delivery))
        return True

    async def _unoffer(self: OfferEngine, delivery: str, driver: str) -> None:
        """Undo an offer's Redis steps (deadline, claim, attempt, tried driver)."""
        with contextlib.suppress(Exception):   # the failure being raised is the one to report
            if await self.redis.zrem(self.deadlines, member(delivery, driver)):
                await self.claims.decline(driver, delivery)
                await self.redis.hincrby(round_key(delivery), "attempts", -1)
                await self.redis.srem(tried_key(delivery), driver)

    async def _reopen(self: OfferEngine, driver: str, delivery: str) -> None:
        """Put back an offer whose accept the database did not record, with a fresh deadline."""
        with contextlib.suppress(Exception):
            await self.claims.release(driver, delivery)
            if await self.claims.offer(driver, delivery):
                await self.redis.zadd(self.deadlines, {member(delivery, driver): round(
                    (time.time() + self.offer_timeout_s) * 1000)})
