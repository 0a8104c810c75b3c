"""After Redis restarts empty, matching's state comes back from Postgres without drivers
restarting their shifts; a shift restarted after the loss keeps a busy driver busy.

Redis is a private ``redis-server`` on a spare port that the test kills with SIGKILL and starts
again without persistence (``tests.integration.streams.harness.private_redis``); Postgres is
this test's own databases.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace

import pytest

from dispatch.deliveries.store import transition
from dispatch.matching import active, recovery
from dispatch.matching.keys import redis_epoch_key
from dispatch.matching.terms import RoundOutcome
from geo import destination
from streams.keys import state_key
from tests.integration.matching.test_dispatcher import _driver, matcher
from tests.integration.matching.test_nearest import put_live
from tests.integration.private_services import private_redis
from tests.integration.streams.harness import eventually
from tests.integration.test_dispatch_e2e import VENDOR

pytestmark = pytest.mark.timeout(120)


async def _live(m, driver: str, metres: float, bearing: float = 0.0) -> None:
    """A driver on shift through the engine's own path, seen near the vendor."""
    assert await recovery.start_shift(m.db, m.dispatcher.claims, m.tenant_id, driver) == "available"
    await put_live(m.store, m.tenant_id, [(driver, *destination(*VENDOR, bearing, metres), "motorbike")])


async def carrying_one(m) -> tuple[str, str]:
    """Driver 1 on shift near the vendor, offered a first delivery and assigned it."""
    driver, _ = await _driver(m.db, m.tenant_id, 1)
    await _live(m, driver, 100)
    first = await m.delivery(VENDOR)
    assert await m.dispatcher.dispatch(m.tenant_id, first) == RoundOutcome(first, "offered", driver)
    assert (await m.offers.reply(driver, first, True)).status == "assigned"
    return driver, first


async def test_driver_state_and_claims_are_rebuilt_after_redis_restarts_empty(platform, stream_settings):
    async with private_redis() as server:
        settings = replace(stream_settings, redis_url=f"redis://127.0.0.1:{server.port}/0")
        async with matcher(platform, settings) as m:
            (busy, _), (free, _), (off, _) = [await _driver(m.db, m.tenant_id, n) for n in (1, 2, 3)]
            await _live(m, busy, 100)
            first = await m.delivery(VENDOR)
            assert await m.dispatcher.dispatch(m.tenant_id, first) == RoundOutcome(first, "offered", busy)
            assert (await m.offers.reply(busy, first, True)).status == "assigned"
            await _live(m, free, 900, 180.0)
            second = await m.delivery(VENDOR)
            assert await m.dispatcher.dispatch(m.tenant_id, second) == RoundOutcome(second, "offered", free)
            # the third driver exists but never started a shift

            server.kill()
            await server.start()   # empty: no state, no claims, no offer, no sentinel
            with contextlib.suppress(Exception):   # the pool's dead connection, whatever it raises
                await m.redis.ping()
            assert await m.store.status(busy) == "offline"

            rebuilt = []
            watcher = asyncio.create_task(recovery.watch_redis(
                m.db, m.redis, m.dispatcher.claims, app_id=settings.app_id, interval_s=0.1,
                on_rebuilt=rebuilt.append))
            try:
                await eventually(lambda: m.redis.exists(redis_epoch_key(settings.app_id)), within=30, every=0.1)
            finally:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)

            assert len(rebuilt) == 1 and rebuilt[0].tenants == [m.tenant_id]
            assert await m.store.status(busy) == "busy"
            assert await m.dispatcher.claims.active_deliveries(busy) == {first}
            assert await m.dispatcher.claims.driver_of(first) == busy
            tracked = await active.read(m.redis, first)
            assert tracked is not None and (tracked.driver_id, tracked.status) == (busy, "assigned")
            assert await m.store.status(free) == "available"
            assert await m.store.status(off) == "offline"
            # the open offer died with Redis: the delivery is pending again, for the pending sweep
            assert await m.status(second) == ("pending", None)
            # idempotent: a second rebuild changes nothing
            again = await recovery.rebuild(m.db, m.redis, m.dispatcher.claims)
            assert (again.reset, again.tracked) == (0, 0)
            assert await m.store.status(busy) == "busy"

            # pings come back: the busy driver is not indexed, the free one is offered work
            await put_live(m.store, m.tenant_id, [(free, *destination(*VENDOR, 180.0, 900), "motorbike")])
            assert await m.dispatcher.dispatch(m.tenant_id, second) == RoundOutcome(second, "offered", free)


async def test_a_shift_restarted_after_redis_lost_the_claims_keeps_a_busy_driver_busy(platform, stream_settings):
    async with private_redis() as server:
        settings = replace(stream_settings, redis_url=f"redis://127.0.0.1:{server.port}/0")
        async with matcher(platform, settings) as m:
            driver, first = await carrying_one(m)

            await server.restart()
            with contextlib.suppress(Exception):
                await m.redis.ping()

            # the driver's app starts the shift again: Postgres says it carries a delivery
            assert await recovery.start_shift(m.db, m.dispatcher.claims, m.tenant_id, driver) == "busy"
            assert await m.dispatcher.claims.active_deliveries(driver) == {first}
            second = await m.delivery(VENDOR)
            await put_live(m.store, m.tenant_id, [(driver, *destination(*VENDOR, 0.0, 100), "motorbike")])
            outcome = await m.dispatcher.dispatch(m.tenant_id, second)
            assert outcome is not None and outcome.status == "unassigned"   # nobody free: not offered
            assert [d for d, _ in m.notifier.sent] == [driver]             # only the first offer
            # the shift ends and starts again once the job is done: available
            await m.dispatcher.driver_update(m.tenant_id, driver, _update(first, "pick_up"))
            await m.dispatcher.driver_update(m.tenant_id, driver, _update(first, "deliver"))
            assert await recovery.end_shift(m.db, m.store, m.tenant_id, driver) == "offline"
            assert await recovery.start_shift(m.db, m.dispatcher.claims, m.tenant_id, driver) == "available"


def _update(delivery: str, event: str):
    from dispatch.deliveries.reports import parse_driver_update
    from tests.integration.test_dispatch_e2e import PROOF

    body = {"event": event, **({"proof_of_delivery": PROOF} if event == "deliver" else {})}
    return parse_driver_update(body, delivery)


async def test_the_reconcile_frees_a_driver_whose_release_was_lost(platform, stream_settings):
    async with matcher(platform, stream_settings) as m:
        (busy, _), (quiet, _) = await _driver(m.db, m.tenant_id, 1), await _driver(m.db, m.tenant_id, 2)
        await _live(m, busy, 100)
        await _live(m, quiet, 900, 180.0)
        first = await m.delivery(VENDOR)
        assert await m.dispatcher.dispatch(m.tenant_id, first) == RoundOutcome(first, "offered", busy)
        assert (await m.offers.reply(busy, first, True)).status == "assigned"
        # the delivery ends in Postgres, and the event that would free the driver is lost
        await transition(m.db, m.tenant_id, first, "cancel", actor="system:test", reason="shop closed")
        assert await m.store.status(busy) == "busy"
        await m.store.end_shift(quiet)   # its Redis status, gone some other way: not recreated
        await m.redis.delete(state_key(quiet))

        done = await recovery.rebuild(m.db, m.redis, m.dispatcher.claims, full=False)

        assert done.tenants == [m.tenant_id] and done.failed_tenants == 0
        assert await m.store.status(busy) == "available"
        assert await m.dispatcher.claims.active_deliveries(busy) == set()
        assert await m.dispatcher.claims.driver_of(first) is None
        assert await m.store.status(quiet) == "offline"
