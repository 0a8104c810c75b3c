"""The database guards a driver's capacity when Redis has lost the driver's claims.

Real Postgres and Redis: the offer and accept transitions lock the driver's row and count its
active deliveries; a driver Redis believes free but who carries a delivery is refused, the
delivery goes to the next driver, and the driver's claims are rebuilt from the database.
"""

from __future__ import annotations

import asyncio

import pytest

from dispatch.deliveries.store import DriverAtCapacity, transition
from dispatch.matching.keys import deliveries_key, delivery_driver_key
from dispatch.matching.offers import OfferNotHeld
from dispatch.matching.terms import RoundOutcome
from geo import destination
from tests.integration.matching.test_dispatcher import _driver, matcher
from tests.integration.matching.test_nearest import put_live
from tests.integration.test_dispatch_e2e import VENDOR

pytestmark = pytest.mark.timeout(90)


def _near(metres: float, bearing: float = 0.0) -> tuple[float, float]:
    return destination(*VENDOR, bearing, metres)


async def _wipe_claims(m, driver: str, deliveries: list[str]) -> None:
    """What a Redis restart does to a driver's claims, and the shift restarted afterwards."""
    await m.redis.delete(deliveries_key(driver), *(delivery_driver_key(d) for d in deliveries))
    await m.store.start_shift(m.tenant_id, driver, "motorbike")
    assert await m.store.status(driver) == "available"


async def test_two_accepts_of_one_driver_never_both_commit(platform, stream_settings):
    async with matcher(platform, stream_settings) as m:
        driver, _ = await _driver(m.db, m.tenant_id, 1)
        first, second = await m.delivery(VENDOR), await m.delivery(VENDOR)
        for d in (first, second):   # two offers may be open in the database; only one accept wins
            await transition(m.db, m.tenant_id, d, "offer", driver_id=driver)
        results = await asyncio.gather(*(transition(m.db, m.tenant_id, d, "accept") for d in (first, second)),
                                       return_exceptions=True)
        refused = [r for r in results if isinstance(r, DriverAtCapacity)]
        assert len(refused) == 1 and len([r for r in results if not isinstance(r, Exception)]) == 1
        winner = first if not isinstance(results[0], Exception) else second
        loser = second if winner == first else first
        assert refused[0].active == [winner] and refused[0].capacity == 1
        assert await m.status(winner) == ("assigned", driver)
        assert await m.status(loser) == ("offered", driver)     # nothing written by the refusal
        with pytest.raises(DriverAtCapacity):                    # and a new offer is refused too
            await transition(m.db, m.tenant_id, await m.delivery(VENDOR), "offer", driver_id=driver)
        # with a capacity of two, the second accept is allowed
        await transition(m.db, m.tenant_id, loser, "accept", capacity=2)
        assert await m.status(loser) == ("assigned", driver)


async def test_a_busy_driver_whose_claims_redis_lost_is_not_offered_a_second_job(platform, stream_settings):
    async with matcher(platform, stream_settings) as m:
        (busy, _), (free, _) = await _driver(m.db, m.tenant_id, 1), await _driver(m.db, m.tenant_id, 2)
        await put_live(m.store, m.tenant_id, [(busy, *_near(100), "motorbike")])
        first = await m.delivery(VENDOR)
        assert await m.dispatcher.dispatch(m.tenant_id, first) == RoundOutcome(first, "offered", busy)
        assert (await m.offers.reply(busy, first, True)).status == "assigned"
        await _wipe_claims(m, busy, [first])
        await put_live(m.store, m.tenant_id, [(free, *_near(900, 180.0), "motorbike")])

        second = await m.delivery(VENDOR)
        assert await m.dispatcher.dispatch(m.tenant_id, second) == RoundOutcome(second, "offered", free)

        assert [(d, o.delivery_id) for d, o in m.notifier.sent] == [(busy, first), (free, second)]
        assert await m.status(second) == ("offered", free)
        assert await m.dispatcher.claims.active_deliveries(busy) == {first}   # rebuilt from Postgres
        assert await m.store.status(busy) == "busy"


async def test_an_accept_by_a_driver_who_became_full_meanwhile_is_refused_and_goes_on(platform, stream_settings):
    async with matcher(platform, stream_settings) as m:
        (busy, _), (free, _) = await _driver(m.db, m.tenant_id, 1), await _driver(m.db, m.tenant_id, 2)
        await put_live(m.store, m.tenant_id, [(busy, *_near(100), "motorbike"),
                                              (free, *_near(900, 180.0), "motorbike")])
        second = await m.delivery(VENDOR)
        assert await m.dispatcher.dispatch(m.tenant_id, second) == RoundOutcome(second, "offered", busy)
        # meanwhile the database gives the driver another delivery that Redis never heard of
        first = await m.delivery(VENDOR)
        await transition(m.db, m.tenant_id, first, "offer", driver_id=busy, capacity=2)
        await transition(m.db, m.tenant_id, first, "accept", capacity=2)

        with pytest.raises(OfferNotHeld):
            await m.offers.reply(busy, second, True)

        assert await m.status(first) == ("assigned", busy)
        assert await m.status(second) == ("offered", free)   # the next driver got it
        assert [(d, o.delivery_id) for d, o in m.notifier.sent] == [(busy, second), (free, second)]
        assert await m.dispatcher.claims.active_deliveries(busy) == {first}
        assert await m.store.status(busy) == "busy"
