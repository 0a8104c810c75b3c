"""Fault: kill -9 of the location worker, restarted after 5 s.

Pings pile up in the broker while it is away and are worked off from the committed offsets.
Asserted after the replay (``rig.judge``): every acknowledged order exists once, no
driver above capacity, stock consistent, nothing stuck, drivers available again within 30 s,
delivered within 10 % of the fault-free baseline.
"""

import pytest

from tests.integration.faults.rig import Rig, judge, outage, settle, small_city


@pytest.mark.timeout(400)
async def test_the_city_rides_out_a_kill_of_worker(platform, tmp_path, baseline):
    async with Rig(platform, tmp_path / "rig") as rig:
        async def fault(rig, replay):
            return await outage(rig, replay, "worker", down_s=5.0)

        outcome = await rig.replay(small_city(), fault, label="fault")
        found = await settle(rig, outcome)
    base = await baseline.summary()   # made beside this test's replay or another's
    judge(rig, outcome, found, base, outcome.fault)
