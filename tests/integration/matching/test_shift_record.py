"""Shifts recorded in Postgres (``record_shift``): an end writes and reads nothing else; a start
that waited for the driver's row lock reads the delivery the lock holder assigned."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from dispatch.identity.drivers import UnknownShiftDriver, record_shift
from dispatch.matching import recovery
from tests.integration.matching.test_dispatcher import matcher
from tests.integration.matching.test_redis_recovery import _live, carrying_one
from tests.integration.test_dispatch_e2e import VENDOR, _driver

pytestmark = pytest.mark.timeout(60)


async def _on_shift(m, driver: str) -> bool:
    async with m.db.tenant_transaction(m.tenant_id, readonly=True) as tx:
        return await tx.fetchval("SELECT is_available FROM drivers WHERE id = $1", uuid.UUID(driver))


async def test_an_end_is_recorded_without_reading_deliveries_and_a_start_reads_them(platform, stream_settings):
    async with matcher(platform, stream_settings) as m:
        driver, first = await carrying_one(m)

        assert await record_shift(m.db, m.tenant_id, driver, False) == ("motorbike", [])
        assert await _on_shift(m, driver) is False
        assert await record_shift(m.db, m.tenant_id, driver, False) == ("motorbike", [])   # idempotent
        assert await record_shift(m.db, m.tenant_id, driver, True) == ("motorbike", [first])
        assert await _on_shift(m, driver) is True
        # through the engine's path: busy at capacity, offline at the end, busy again
        assert await recovery.start_shift(m.db, m.dispatcher.claims, m.tenant_id, driver) == "busy"
        assert await recovery.end_shift(m.db, m.store, m.tenant_id, driver) == "offline"
        assert await recovery.start_shift(m.db, m.dispatcher.claims, m.tenant_id, driver) == "busy"
        for on_shift in (True, False):
            with pytest.raises(UnknownShiftDriver):
                await record_shift(m.db, m.tenant_id, str(uuid.uuid4()), on_shift)


async def test_a_start_that_waited_for_the_drivers_row_reads_what_the_holder_assigned(platform, stream_settings):
    """An accept holds the driver's row (``FOR UPDATE``) while it assigns; a start arriving
    meanwhile waits, and its read of active deliveries must see the committed assignment."""
    async with matcher(platform, stream_settings) as m:
        driver, _ = await _driver(m.db, m.tenant_id, 1)
        await _live(m, driver, 100)
        delivery = await m.delivery(VENDOR)
        async with m.db.tenant_transaction(m.tenant_id) as tx:
            await tx.execute("SELECT id FROM drivers WHERE id = $1 FOR UPDATE", uuid.UUID(driver))
            await tx.execute("UPDATE deliveries SET status = 'assigned', driver_id = $1, assigned_at = now() "
                             "WHERE id = $2", uuid.UUID(driver), uuid.UUID(delivery))
            start = asyncio.create_task(record_shift(m.db, m.tenant_id, driver, True))
            await asyncio.sleep(0.5)
            assert not start.done()   # waiting for the driver's row
        assert await asyncio.wait_for(start, 10) == ("motorbike", [delivery])
