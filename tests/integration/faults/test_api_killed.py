"""Fault: kill -9 of the API process (REST, sockets, dispatcher), restarted after 3 s.

Every driver socket and tracking socket drops, every call in flight fails: the replay's apps
reconnect and retry (with Idempotency-Key on unsafe calls), as real apps do.
Asserted after the replay (``rig.judge``): every acknowledged order exists once, no
driver above capacity, stock consistent, nothing stuck, drivers available again within 30 s,
delivered within 10 % of the fault-free baseline.
"""

import pytest

from tests.integration.faults.rig import Rig, judge, outage, settle, small_city


@pytest.mark.timeout(400)
async def test_the_city_rides_out_a_kill_of_api(platform, tmp_path, baseline):
    async with Rig(platform, tmp_path / "rig") as rig:
        async def fault(rig, replay):
            return await outage(rig, replay, "api", down_s=3.0)

        outcome = await rig.replay(small_city(), fault, label="fault")
        found = await settle(rig, outcome)
    base = await baseline.summary()   # made beside this test's replay or another's
    judge(rig, outcome, found, base, outcome.fault)
    # the fault was real: every socket dropped, and the apps came back on their own
    assert outcome.summary["driver_reconnects"] >= 1
