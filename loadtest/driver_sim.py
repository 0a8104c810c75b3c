"""A driver's phone, simulated: shift, websocket pings along a route, offers and replies.

Used by the end-to-end tests (the city replay has its own, ``loadtest.city_driver``, which
moves along street paths with GPS noise): it speaks only the public driver interfaces
(``/v1/drivers/shift``, the ``/v1/drivers/stream`` websocket).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import websockets

from geo import distance_m

__all__ = ["SimulatedDriver", "fix"]


def fix(driver_id: str, lat: float, lng: float, ts: float, *, speed: float = 8.0, heading: float = 90.0) -> dict:
    return {"type": "ping", "driver_id": driver_id, "lat": lat, "lng": lng, "accuracy": 5.0,
            "speed": speed, "heading": heading, "timestamp": ts}


class SimulatedDriver:
    """One driver's app: ``async with SimulatedDriver(addr, id, token) as d`` connects the
    websocket and starts the shift; offers land in ``d.offers``, replies in ``d.replies``."""

    def __init__(self, addr: str, driver_id: str, token: str, *, speed_mps: float = 20.0,
                 clock_lead_s: float = 110.0) -> None:
        self.addr, self.driver_id, self.token = addr, driver_id, token
        self.speed_mps = speed_mps
        self.frames: list[dict] = []
        self.offers: asyncio.Queue = asyncio.Queue()
        self.replies: asyncio.Queue = asyncio.Queue()
        self.ws: Any = None
        self._reader: asyncio.Task | None = None
        # The phone's clock for its fixes: starts ``clock_lead_s`` in the (still live: keep it
        # under the engine's location TTL) past, so a drive at a plausible speed, faster than
        # real time, stamps no fix too far in the future.
        self.clock_lead_s = clock_lead_s
        self.at = time.time() - clock_lead_s

    async def __aenter__(self) -> SimulatedDriver:
        self.ws = await websockets.connect(f"ws://{self.addr}/v1/drivers/stream",
                                           additional_headers={"Authorization": f"Bearer {self.token}"})
        ready = json.loads(await self.ws.recv())
        if ready.get("type") != "ready":
            raise RuntimeError(f"the gateway refused the driver: {ready}")
        self._reader = asyncio.create_task(self._read())
        async with httpx.AsyncClient(base_url=f"http://{self.addr}") as http:
            resp = await http.post("/v1/drivers/shift", json={"action": "start"},
                                   headers={"Authorization": f"Bearer {self.token}"})
            resp.raise_for_status()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
        await self.ws.close()

    async def _read(self) -> None:
        async for raw in self.ws:
            frame = json.loads(raw)
            self.frames.append(frame)
            if frame.get("type") == "offer":
                await self.offers.put(frame)
            elif frame.get("type") in ("offer_reply", "delivery_update", "error"):
                await self.replies.put(frame)

    async def ping(self, lat: float, lng: float, after_s: float = 1.0) -> None:
        # never further behind real time than we started (a long wait must not make fixes stale)
        self.at = max(self.at + after_s, time.time() - self.clock_lead_s)
        await self.ws.send(json.dumps(fix(self.driver_id, lat, lng, self.at)))

    async def drive(self, start: tuple[float, float], end: tuple[float, float], steps: int = 6,
                    pause_s: float = 0.05, *, realtime: bool = False) -> None:
        """Pings along a straight line at ``speed_mps``, one per step; ``realtime`` waits each
        step's travel time, otherwise the phone's clock runs ahead of the wall clock."""
        step_s = max(distance_m(*start, *end) / steps / self.speed_mps, 0.5)
        for i in range(1, steps + 1):
            f = i / steps
            await self.ping(start[0] + (end[0] - start[0]) * f, start[1] + (end[1] - start[1]) * f, step_s)
            await asyncio.sleep(step_s if realtime else pause_s)

    async def send(self, frame: dict, timeout_s: float = 15.0) -> dict:
        """Send a frame and wait for its reply (offer_reply, delivery_update or error)."""
        await self.ws.send(json.dumps(frame))
        return await asyncio.wait_for(self.replies.get(), timeout_s)
