"""Simulated time for a replay: ``speed`` simulated seconds pass per wall second.

Everything the scenario says (order times, preparation, reply delays, driving) is in
simulated seconds; only the engine's clocks (fix timestamps, request times) stay on the wall.
"""

from __future__ import annotations

import asyncio
import time

__all__ = ["SimClock"]


class SimClock:
    def __init__(self, speed: float, stop: asyncio.Event | None = None) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be positive, got {speed!r}")
        self.speed = speed
        self.stop = stop or asyncio.Event()
        self.started = time.monotonic()

    def now(self) -> float:
        """Simulated seconds since the start."""
        return (time.monotonic() - self.started) * self.speed

    def wall(self, sim_s: float) -> float:
        """How many wall seconds ``sim_s`` simulated seconds take."""
        return sim_s / self.speed

    async def sleep(self, sim_s: float) -> bool:
        """Sleep ``sim_s`` simulated seconds; False when the replay was stopped meanwhile."""
        if sim_s > 0:
            try:
                await asyncio.wait_for(self.stop.wait(), sim_s / self.speed)
            except TimeoutError:
                pass
        return not self.stop.is_set()

    async def until(self, sim_t: float) -> bool:
        """Sleep until simulated time ``sim_t``; False when the replay was stopped meanwhile."""
        return await self.sleep(sim_t - self.now())
