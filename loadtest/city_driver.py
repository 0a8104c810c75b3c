"""One driver of a replayed city: a phone app on the engine's driver websocket.

It starts its shift when the scenario says, pings every ``ping_interval_s`` (simulated) with
GPS noise and the occasional dropout, drifts around its home spot while idle, answers offers
after a human delay (accepting with its own probability, sometimes not answering at all),
and drives an accepted job along a street path: to the shop, waits for the handover, picks up,
to the customer, delivers (or, rarely, fails: nobody home). The engine's geofence sees it
arrive; nothing here tells the engine where the driver "is" except the fixes themselves.

A driver given a ``tracker`` (``loadtest.tracker_phone``: a request shape and a tracker key)
reports its fixes through ``/v1/trackers/osmand`` instead, whether or not the app's socket is
up (a tracker is another device), and sends no ping over the websocket, which it keeps for
the shift and offers. Pings are counted per channel (``pings_ws``, ``pings_osmand``) and in
``pings_sent``; refusals by reason alike for both.

Time: movement and delays are simulated seconds (``SimClock``); fix timestamps are the wall
clock, as a phone's would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h3
import httpx
import websockets

from loadtest import movement
from loadtest.city_report import ReplayMetrics
from loadtest.provision import ApiCaller, ApiFailed
from loadtest.reconnect import PERMANENT_CLOSE_CODES, Backoff
from loadtest.sim_clock import SimClock
from loadtest.tracker_phone import OSMAND_PATH, send_fix, tracker_request

__all__ = ["CityDriver", "Job"]

IGNORE_OFFER_SHARE = 0.03        # offers a driver never answers (phone in a pocket): they time out
FAIL_AT_DOOR_SHARE = 0.02        # deliveries failed at the door (nobody home)
HANDOVER_S = (30.0, 150.0)       # simulated seconds at the shop counter and at the door
IDLE_PAUSE_S = (60.0, 420.0)     # parked between drifts while idle
IDLE_SPEED_SHARE = 0.5           # drifting is slower than driving a job
PICK_UP_RETRY_S = 0.3            # wall seconds between pick-up attempts while the geofence catches up
PICK_UP_PATIENCE_S = 20.0        # wall seconds of refused pick-ups before the driver gives up on the job
UPDATE_PATIENCE_S = 60.0         # wall seconds a delivery update is retried while the socket is down
CONNECTION_CLOSED = "connection_closed"
ILLEGAL_TRANSITION = "illegal_transition"
# Replies that mean "not now": the update is sent again (a closed socket, a service away, a limit).
TRANSIENT_REASONS = frozenset({CONNECTION_CLOSED, "unavailable", "rate_limited"})


@dataclass
class Job:
    delivery_id: str
    offer: dict
    accepted_wall: float


class CityDriver:
    def __init__(self, spec: dict, driver_id: str, token: str, *, addr: str, api: ApiCaller,
                 clock: SimClock, metrics: ReplayMetrics, readied: dict[str, tuple[str, float]],
                 on_job_end: Callable[[str, str], None], resolution: int = 8,
                 window_s: float = math.inf, tracker: tuple[str, str] | None = None,
                 http: httpx.AsyncClient | None = None) -> None:
        self.spec, self.driver_id, self.token = spec, driver_id, token
        self.addr, self.api, self.clock, self.metrics = addr, api, clock, metrics
        self.readied = readied            # delivery id -> (order key, monotonic time it was marked ready)
        self.on_job_end = on_job_end      # (delivery id, outcome)
        self.resolution = resolution
        if tracker is not None and http is None:
            raise ValueError("a driver with a tracker needs an HTTP client for its fixes")
        self.tracker, self.http = tracker, http   # (request shape, tracker key): fixes go over OsmAnd
        self.channel = "ws" if tracker is None else "osmand"
        # A shift that lasts to the end of the scenario's window lasts to the end of the replay:
        # orders readied late still need drivers while the replay drains.
        self.shift_end_s = spec["shift_end_s"] if spec["shift_end_s"] < window_s else math.inf
        self.rng = random.Random(spec["seed"])
        self.home = (float(spec["home"][0]), float(spec["home"][1]))
        self.position = self.home
        self.heading = 0.0
        self.speed_mps = float(spec["speed_mps"])
        self.path: movement.Path | None = None
        self.path_started = 0.0           # simulated
        self.parked_until = 0.0           # simulated
        self.arrived = asyncio.Event()
        self.job: Job | None = None
        self.online = False
        self._ws: Any = None
        self._reader: asyncio.Task | None = None
        self.connected = asyncio.Event()   # the socket is open and the gateway said "ready"
        self._backoff = Backoff(base_s=0.25, cap_s=4.0, rng=random.Random(spec["seed"] + 1))
        self._next_attempt = 0.0           # monotonic: no reconnect attempt before this
        self._seq = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._tasks: set[asyncio.Task] = set()
        self._dropout_until = 0.0

    # -- the shift ------------------------------------------------------------------------------

    async def run(self) -> None:
        spec, clock = self.spec, self.clock
        if not await clock.until(spec["shift_start_s"]):
            return
        if await self._connect() != "ready":
            self.metrics.counters["driver_connect_failed"] += 1
            return
        try:
            await self._shift("start")
            self.online = True
            while not clock.stop.is_set():
                if self.job is None and clock.now() >= self.shift_end_s:
                    break
                began = clock.now()
                self._move()
                if self.tracker is not None:   # the tracker reports whether the app is connected or not
                    await self._ping()
                elif self.connected.is_set():
                    try:
                        await self._ping()
                    except websockets.ConnectionClosed:
                        self._lost()
                if not self.connected.is_set() and time.monotonic() >= self._next_attempt \
                        and not await self._reconnect():
                    break
                # on the phone's timer: the time a fix took to send (an HTTP round trip for a
                # tracker) comes off the wait, so both channels report at the same cadence
                if not await clock.sleep(max(0.0, spec["ping_interval_s"] - (clock.now() - began))):
                    break
        except (ApiFailed, httpx.HTTPError, TimeoutError) as exc:
            self.metrics.counters[f"driver_lost:{type(exc).__name__}"] += 1
        finally:
            self.online = False
            for task in self._tasks:
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._shift("end"), 5)
            if self._reader is not None:
                self._reader.cancel()
            with contextlib.suppress(Exception):
                await self._ws.close()

    async def _shift(self, action: str) -> None:
        await self.api("POST", "/v1/drivers/shift", self.token, {"action": action})

    # -- the phone's radio ------------------------------------------------------------------------

    async def _connect(self) -> str:
        """Open the driver socket with the token and wait for the gateway's first frame:
        ``ready``, ``refused`` (the token is no good: do not try again) or ``failed``."""
        try:
            ws = await websockets.connect(
                f"ws://{self.addr}/v1/drivers/stream", compression=None, open_timeout=10,
                additional_headers={"Authorization": f"Bearer {self.token}"})
        except (OSError, TimeoutError, websockets.WebSocketException):
            return "failed"
        first: asyncio.Future = asyncio.get_running_loop().create_future()   # the gateway's "ready"
        self._ws = ws
        self._reader = asyncio.create_task(self._read(ws, first))
        try:
            ready = await asyncio.wait_for(asyncio.shield(first), 15)
        except TimeoutError:
            ready = {"type": "timeout"}
        if ready.get("type") == "ready":
            self.connected.set()
            self._backoff.reset()
            return "ready"
        self._reader.cancel()
        with contextlib.suppress(Exception):
            await ws.close()
        code = getattr(ws.close_code, "real", ws.close_code)
        return "refused" if code in PERMANENT_CLOSE_CODES else "failed"

    def _lost(self) -> None:
        if self.connected.is_set():
            self.connected.clear()
            self._next_attempt = time.monotonic() + self._backoff.next()

    async def _reconnect(self) -> bool:
        """One reconnect attempt (the loop calls again after the backoff); False: give up."""
        self.metrics.counters["driver_reconnect_attempts"] += 1
        outcome = await self._connect()
        if outcome == "ready":
            self.metrics.counters["driver_reconnects"] += 1
            return True
        if outcome == "refused":
            self.metrics.counters["driver_refused_on_reconnect"] += 1
            return False
        self._next_attempt = time.monotonic() + self._backoff.next()
        return True

    async def _read(self, ws: Any, first: asyncio.Future) -> None:
        try:
            async for raw in ws:
                frame = json.loads(raw)
                if not first.done():
                    first.set_result(frame)
                    continue
                kind = frame.get("type")
                if kind == "offer":
                    self._spawn(self._answer(frame))
                elif kind == "ack":
                    if not frame.get("accepted", 1):
                        self._refused(None)
                elif (waiter := self._waiting.pop(frame.get("seq"), None)) is not None:
                    if not waiter.done():
                        waiter.set_result(frame)
                elif kind == "error":
                    self._refused(frame.get("reason"))
        except websockets.ConnectionClosed:
            pass
        finally:
            if not first.done():
                first.set_result({"type": "closed"})
            elif ws is self._ws:
                self._lost()
            for waiter in self._waiting.values():
                if not waiter.done():
                    waiter.set_result({"type": "error", "reason": CONNECTION_CLOSED})

    async def _request(self, frame: dict, timeout_s: float = 15.0) -> dict:
        """A frame that expects a reply; while the socket is down, waits (up to ``timeout_s``)
        for the reconnect, and answers ``connection_closed`` if it does not come."""
        try:
            await asyncio.wait_for(self.connected.wait(), timeout_s)
        except TimeoutError:
            return {"type": "error", "reason": CONNECTION_CLOSED}
        seq = next(self._seq)
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[seq] = waiter
        try:
            await self._ws.send(json.dumps({**frame, "seq": seq}))
            return await asyncio.wait_for(waiter, timeout_s)
        except websockets.ConnectionClosed:
            self._lost()
            return {"type": "error", "reason": CONNECTION_CLOSED}
        finally:
            self._waiting.pop(seq, None)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(self._counted(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _counted(self, coro: Any) -> None:
        """An offer or a job ends with the phone's connection or a timeout: counted, not raised
        into a task nobody awaits."""
        try:
            await coro
        except (websockets.ConnectionClosed, ApiFailed, httpx.HTTPError, TimeoutError) as exc:
            self.metrics.counters[f"driver_task_lost:{type(exc).__name__}"] += 1

    # -- moving -----------------------------------------------------------------------------------

    def _move(self) -> None:
        now = self.clock.now()
        if self.path is not None:
            elapsed = now - self.path_started
            lat, lng, heading = self.path.at(elapsed)
            self.position, self.heading = (lat, lng), heading
            if self.path.done(elapsed):
                self.path = None
                self.arrived.set()
                self.parked_until = now + self.rng.uniform(*IDLE_PAUSE_S)
        elif self.job is None and now >= self.parked_until:
            target = movement.wander(self.home, self.rng)
            self._go(target, self.speed_mps * IDLE_SPEED_SHARE)

    def _go(self, target: tuple[float, float], speed_mps: float) -> None:
        self.path = movement.Path(movement.street_path(self.position, target, self.rng), speed_mps)
        self.path_started = self.clock.now()
        self.arrived.clear()

    async def _ping(self) -> None:
        now = self.clock.now()
        if now < self._dropout_until:
            self.metrics.counters["pings_dropped_out"] += 1
            return
        if self.rng.random() < movement.DROPOUT_PROBABILITY:
            self._dropout_until = now + movement.dropout_s(self.rng)
            self.metrics.counters["pings_dropped_out"] += 1
            return
        lat, lng, accuracy = movement.gps_fix(*self.position, self.rng)
        speed = self.path.speed_mps if self.path is not None else 0.0
        if self.tracker is not None:
            if not await self._report(lat, lng, accuracy, speed):
                return
        else:
            await self._ws.send(json.dumps({
                "type": "ping", "seq": next(self._seq), "driver_id": self.driver_id, "lat": lat, "lng": lng,
                "accuracy": round(accuracy, 1), "speed": round(speed, 2),
                "heading": round(self.heading, 1), "timestamp": time.time()}))
        self.metrics.counters["pings_sent"] += 1
        self.metrics.counters[f"pings_{self.channel}"] += 1
        self.metrics.supply_cells[h3.latlng_to_cell(lat, lng, self.resolution)] += 1

    async def _report(self, lat: float, lng: float, accuracy: float, speed: float) -> bool:
        """One fix through the OsmAnd route; False if it never reached the engine (counted)."""
        shape, key = self.tracker
        request = tracker_request(shape, key, lat=lat, lng=lng, accuracy_m=accuracy, speed_mps=speed,
                                  heading=self.heading, timestamp=time.time(),
                                  battery=max(0.05, 0.95 - 0.1 * self.clock.now() / 3600))
        try:
            accepted, reason, ms = await asyncio.wait_for(send_fix(self.http, request), 10)
        except (httpx.HTTPError, TimeoutError) as exc:
            self.metrics.counters[f"tracker_fix_lost:{type(exc).__name__}"] += 1
            return False
        self.metrics.record_api(f"{request.method} {OSMAND_PATH}", ms)
        if not accepted:
            self._refused(reason)
        return True

    def _refused(self, reason: str | None) -> None:
        """A fix the engine did not take (the channel's own reply), by reason when it gave one."""
        self.metrics.counters["pings_refused"] += 1
        self.metrics.counters[f"pings_refused_{self.channel}"] += 1
        if reason is not None:
            self.metrics.counters[f"refused:{reason}"] += 1

    # -- offers and jobs --------------------------------------------------------------------------

    async def _answer(self, offer: dict) -> None:
        metrics, rng = self.metrics, self.rng
        metrics.counters["offers"] += 1
        roll = rng.random()
        if roll < IGNORE_OFFER_SHARE:
            metrics.counters["offers_ignored"] += 1
            return
        delay = min(rng.expovariate(1.0 / self.spec["reply_delay_s"]), 4 * self.spec["reply_delay_s"])
        if not await self.clock.sleep(delay):
            return
        accept = (self.job is None and rng.random() < self.spec["accept_probability"]
                  and self.clock.now() < self.shift_end_s)
        delivery_id = offer["delivery_id"]
        reply = await self._request({"type": "offer_reply", "delivery_id": delivery_id, "accept": accept})
        for _ in range(3):   # the socket went down under the reply: say it again once it is back
            if reply.get("reason") not in TRANSIENT_REASONS or self.clock.stop.is_set():
                break
            metrics.counters["offer_reply_retries"] += 1
            reply = await self._request({"type": "offer_reply", "delivery_id": delivery_id, "accept": accept})
        if not accept:
            metrics.counters["offers_declined"] += 1
            return
        if reply.get("status") != "assigned":
            metrics.counters[f"offer_lost:{reply.get('reason', reply.get('type'))}"] += 1
            return
        metrics.counters["offers_accepted"] += 1
        self.job = Job(delivery_id, offer, time.monotonic())
        key, ready = self.readied.get(delivery_id, (delivery_id, None))
        if ready is not None:
            metrics.record_time_to_assign((time.monotonic() - ready) * self.clock.speed)
        metrics.record_order(key, "assigned")
        self._spawn(self._work(self.job))

    async def _work(self, job: Job) -> None:
        outcome = "abandoned"
        try:
            outcome = await self._drive_job(job)
        finally:
            self.job = None
            self.on_job_end(job.delivery_id, outcome)

    async def _drive_job(self, job: Job) -> str:
        metrics, clock, rng, offer = self.metrics, self.clock, self.rng, job.offer
        pickup = (offer["pickup"]["lat"], offer["pickup"]["lng"])
        dropoff = (offer["dropoff"]["lat"], offer["dropoff"]["lng"])
        self._go(pickup, self.speed_mps)
        if not await self._arrival():
            return "stopped"
        at_shop = time.monotonic()
        if offer.get("pickup_eta_s") is not None:
            metrics.record_pickup_eta(float(offer["pickup_eta_s"]), (at_shop - job.accepted_wall) * clock.speed)
        if not await clock.sleep(rng.uniform(*HANDOVER_S)):
            return "stopped"
        if not await self._update(job.delivery_id, {"event": "pick_up"}):
            # The app never confirmed the pick-up (the geofence missed the driver): the driver
            # reports the job as failed rather than leaving it assigned forever.
            ok = await self._update(job.delivery_id, {"event": "fail", "reason": "pick-up not confirmed"})
            return "failed" if ok else "pick_up_refused"
        metrics.record_order(self.readied.get(job.delivery_id, (job.delivery_id,))[0], "picked_up")
        picked = time.monotonic()
        self._go(dropoff, self.speed_mps)
        if not await self._arrival():
            return "stopped"
        if offer.get("dropoff_eta_s") is not None:
            metrics.record_dropoff_eta(float(offer["dropoff_eta_s"]), (time.monotonic() - picked) * clock.speed)
        if not await clock.sleep(rng.uniform(*HANDOVER_S) / 2):
            return "stopped"
        if rng.random() < FAIL_AT_DOOR_SHARE:
            ok = await self._update(job.delivery_id, {"event": "fail", "reason": "nobody home"})
            if ok:
                metrics.counters["orders_failed_at_door"] += 1   # the scenario's doing, not the engine's
            return "failed" if ok else "fail_refused"
        ok = await self._update(job.delivery_id, {"event": "deliver", "proof_of_delivery": {
            "code": f"{rng.randrange(10000):04d}", "received_by": "customer"}})
        return "delivered" if ok else "deliver_refused"

    async def _arrival(self) -> bool:
        stop = asyncio.create_task(self.clock.stop.wait())
        arrived = asyncio.create_task(self.arrived.wait())
        try:
            await asyncio.wait({stop, arrived}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            arrived.cancel()
        return self.arrived.is_set() and not self.clock.stop.is_set()

    async def _update(self, delivery_id: str, body: dict) -> bool:
        """A delivery_update; pick-up is retried while the engine has not yet seen the driver
        inside the shop's geofence (its fixes are a ping interval behind). Any update is sent
        again while the socket is down or the engine says ``unavailable`` (for up to
        ``UPDATE_PATIENCE_S``); when an update whose reply was lost with the socket is then
        refused as an illegal transition, the first one took effect."""
        started = time.monotonic()
        backoff = Backoff(base_s=0.25, cap_s=4.0, rng=random.Random(self.rng.random()))
        reply_lost = False
        while True:
            reply = await self._request({"type": "delivery_update", "delivery_id": delivery_id, **body})
            if reply.get("type") == "delivery_update":
                return True
            reason = reply.get("reason")
            waited = time.monotonic() - started
            if reason in TRANSIENT_REASONS and waited < UPDATE_PATIENCE_S and not self.clock.stop.is_set():
                reply_lost = reply_lost or reason == CONNECTION_CLOSED
                self.metrics.counters["update_retries"] += 1
                await asyncio.sleep(backoff.next())
                continue
            if reason == ILLEGAL_TRANSITION and reply_lost:
                self.metrics.counters[f"update_took_effect_before_loss:{body['event']}"] += 1
                return True
            self.metrics.counters[f"update_refused:{body['event']}:{reason}"] += 1
            if body["event"] != "pick_up" or waited > PICK_UP_PATIENCE_S or self.clock.stop.is_set():
                return False
            await asyncio.sleep(PICK_UP_RETRY_S)
