"""Fault: kill -9 of Redis, restarted empty after 3 s.

Driver state, availability, claims and offsets are gone: the engine rebuilds them from the
next pings and PostgreSQL (open shifts, active deliveries), which is the capacity guard.
Asserted after the replay (``rig.judge``): every acknowledged order exists once, no
driver above capacity, stock consistent, nothing stuck, drivers available again within 30 s,
delivered within 10 % of the fault-free baseline.
"""

import pytest

from tests.integration.faults.rig import Rig, judge, outage, settle, small_city


@pytest.mark.timeout(400)
async def test_the_city_rides_out_a_kill_of_redis(platform, tmp_path, baseline):
    async with Rig(platform, tmp_path / "rig") as rig:
        async def fault(rig, replay):
            return await outage(rig, replay, "redis", down_s=3.0)

        outcome = await rig.replay(small_city(), fault, label="fault")
        found = await settle(rig, outcome)
    base = await baseline.summary()   # made beside this test's replay or another's
    judge(rig, outcome, found, base, outcome.fault)
