"""Fault: the engine's PostgreSQL sessions terminated every 0.5 s for 10 s.

``pg_terminate_backend`` of every session of the application role on this test's databases,
in a loop: pools must reconnect, a request that loses its connection answers 503 with
Retry-After (rolled back) and the replay's apps retry it with the same Idempotency-Key.
Asserted after the replay as for the other faults (``rig.judge``).
"""

import time

import pytest

from tests.integration.faults.rig import (
    AVAILABLE_AGAIN_S,
    Rig,
    drivers_back_within,
    fleet_on_shift,
    judge,
    settle,
    small_city,
)


@pytest.mark.timeout(400)
async def test_the_city_rides_out_its_database_sessions_being_terminated(platform, tmp_path, baseline):
    async with Rig(platform, tmp_path / "rig") as rig:
        async def fault(rig, replay):
            before = await fleet_on_shift(rig, replay)
            started = time.monotonic()
            ended = await rig.terminate_db_sessions(for_s=10.0, every_s=0.5)
            assert ended > 0, "no engine session was found to terminate: the fault did not happen"
            back = await drivers_back_within(rig, replay, before, AVAILABLE_AGAIN_S)
            return None if back is None else time.monotonic() - started

        outcome = await rig.replay(small_city(), fault, label="fault")
        found = await settle(rig, outcome)
    base = await baseline.summary()   # made beside this test's replay or another's
    judge(rig, outcome, found, base, outcome.fault)
