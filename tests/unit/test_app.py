"""The engine's shutdown steps are bounded: one that hangs is logged and abandoned."""

from __future__ import annotations

import asyncio
import logging
import time

from dispatch.app import _bounded


async def test_a_shutdown_step_that_ignores_its_cancellation_is_abandoned_and_named(caplog):
    release = asyncio.Event()

    async def stubborn() -> None:
        while True:
            try:
                await release.wait()
                return
            except asyncio.CancelledError:   # swallowed: the kind of task that hung shutdowns
                continue

    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="dispatch.app"):
        await _bounded("stubborn pool", stubborn(), timeout_s=0.2)
    assert time.monotonic() - started < 2
    assert any("stubborn pool did not stop" in r.getMessage() for r in caplog.records)
    release.set()   # let it end now, so no task outlives the test
    await asyncio.sleep(0.01)


async def test_a_failing_step_is_logged_and_the_stop_goes_on(caplog):
    async def broken() -> None:
        raise ConnectionError("redis went away")

    with caplog.at_level(logging.WARNING, logger="dispatch.app"):
        await _bounded("redis", broken(), timeout_s=1)
    assert any("redis failed" in r.getMessage() for r in caplog.records)
