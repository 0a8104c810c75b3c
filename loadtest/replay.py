"""`wakala loadtest replay SCENARIO --speed 10x`: a whole city through the engine's public doors.

The replay starts an engine (``wakala engine all``) unless given one (``--engine HOST:PORT``),
sets up the scenario's city (``loadtest.provision``), then plays the scenario's clock
``speed`` times faster than real time:

- customers place their orders through the REST API at the scenario's times (cards are paid
  through the signed payment callback), and a share of them watch the tracking link over its
  websocket, timing every position from the engine's acceptance of the fix to their screen;
- vendors accept after their delay and mark the order ready after their preparation time,
  which hands it to the matcher;
- drivers (``loadtest.city_driver``) ping over the driver websocket, answer offers, drive,
  pick up and deliver; with ``osmand_share`` that share of them reports positions through the
  OsmAnd route instead (``loadtest.tracker_phone``), keeping the websocket for offers;
- a sampler reads the broker lag of the location worker and the dispatcher.

When the scenario's window is over, deliveries still under way get ``drain_s`` wall seconds to
finish; then everyone goes home and the report is written (``loadtest.city_report``). Ctrl-C
stops at once, cleanly, with a partial report.

With ``whatsapp`` the replay also starts a fake Graph API and turns the engine's WhatsApp
channel on against it (``loadtest.whatsapp_tally``); the report counts the messages by
template and status, from the tenants' notifications and from the fake. Only with an engine
the replay starts: a running engine's settings are not the replay's to change.

An engine the replay starts runs the simulated clock's way: ``WAKALA_SIM_TIME_SCALE`` (ETA
calibration in simulated seconds), a speed limit on fixes raised by the same factor (a
motorbike at 10 m/s covers 100 m of city per wall second at 10x), offer timeouts and retries
shortened by it, and a per-caller API limit high enough for one admin provisioning a city.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h3
import httpx
import websockets

from dispatch.api import SIGNATURE_HEADER, sign
from dispatch.matching.keys import dispatcher_offsets_key
from loadtest import city as city_scenario
from loadtest import whatsapp_tally
from loadtest.city_driver import CityDriver
from loadtest.city_report import ReplayMetrics, print_report
from loadtest.processes import free_port, spawn_wakala, stop, streams_env, wait_healthy
from loadtest.provision import ApiCaller, ApiFailed, City, add_customer, provision
from loadtest.reconnect import PERMANENT_CLOSE_CODES, Backoff, RetryingApi
from loadtest.sim_clock import SimClock
from loadtest.tracker_phone import parse_share, tracker_drivers
from loadtest.whatsapp_tally import WHATSAPP_NEEDS_OWN_ENGINE
from schema.db import TenantDatabase
from schema.errors import WakalaError
from schema.settings import PostgresSettings
from streams.keys import ingest_offsets_key
from streams.settings import StreamSettings

__all__ = ["WHATSAPP_NEEDS_OWN_ENGINE", "ReplayOptions", "parse_share", "parse_speed", "run_replay"]

TERMINAL = ("delivered", "failed", "cancelled")
LAG_SAMPLE_S = 2.0


def parse_speed(text: str) -> float:
    """``10x``, ``10`` or ``2.5x`` -> 10.0 / 2.5; a clear ValueError otherwise."""
    raw = str(text).strip().lower().removesuffix("x")
    try:
        speed = float(raw)
    except ValueError:
        raise ValueError(f"speed must look like 10x, got {text!r}") from None
    if not 0.1 <= speed <= 100:
        raise ValueError(f"speed must be between 0.1x and 100x, got {text!r}")
    return speed


@dataclass(frozen=True)
class ReplayOptions:
    scenario: Path
    speed: float = 10.0
    report_dir: Path | None = None        # default .wakala/reports/replay-<time>
    engine: str | None = None             # HOST:PORT of a running engine; None starts one
    drain_s: float = 90.0                 # wall seconds for deliveries under way after the window
    progress: bool = True
    max_wall_s: float | None = None       # stop (as Ctrl-C would) after this long
    postgres: PostgresSettings | None = None   # default: WAKALA_* from the environment
    streams: StreamSettings | None = None      # default: WAKALA_* from the environment
    secret: str | None = None             # payment callback secret of a given engine (default: env)
    osmand_share: float = 0.0             # share of the drivers whose fixes go through the OsmAnd route
    whatsapp: bool = False                # a fake Graph API and the engine's WhatsApp channel on
    whatsapp_receipts: bool = True        # the fake sends signed status webhooks back to the engine
    whatsapp_settle_s: float = 30.0       # wall seconds the last messages get before they are counted

    def __post_init__(self) -> None:
        parse_share(self.osmand_share)    # a ValueError naming --osmand-share


def engine_env(speed: float, port: int, secret: str, base: dict[str, str] | None = None,
               postgres: PostgresSettings | None = None, streams: StreamSettings | None = None,
               extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an engine that runs at the replay's clock (see the module doc), on
    the databases of ``postgres`` and the broker, topics and group of ``streams`` when given,
    with ``extra`` (the WhatsApp channel's settings) on top."""
    env = dict(os.environ if base is None else base)
    if postgres is not None:
        env["WAKALA_CONTROL_DSN"] = postgres.control.url()
        env["WAKALA_SHARD_DATABASES"] = ",".join(postgres.shard_databases)
    if streams is not None:
        env.update(streams_env(streams))
    env.update({
        "WAKALA_HTTP_PORT": str(port),
        "WAKALA_SIM_TIME_SCALE": f"{speed:g}",
        "WAKALA_MAX_SPEED_KMH": f"{min(2000.0, 250.0 * max(speed, 1.0)):g}",
        "WAKALA_OFFER_TIMEOUT_S": str(max(2, round(20 / speed))),
        "WAKALA_RETRY_INTERVAL_S": str(max(1, round(10 / speed))),
        "WAKALA_PAYMENT_WEBHOOK_SECRET": secret,
        "WAKALA_API_RATE_LIMIT": "1000000",
        # a driver's pings and actions come ``speed`` times as often as in real time
        "WAKALA_PING_RATE_LIMIT": str(round(60 * max(speed, 1.0))),
        "WAKALA_DRIVER_ACTION_LIMIT": str(round(30 * max(speed, 1.0))),
    })
    env.update(extra or {})
    return env


class Replay:
    def __init__(self, scenario: Any, options: ReplayOptions, addr: str, secret: str | None,
                 announce: Callable[[str], None]) -> None:
        self.scenario, self.options, self.addr, self.secret = scenario, options, addr, secret
        self.announce = announce
        header = scenario.header
        self.metrics = ReplayMetrics(scenario=str(options.scenario), seed=int(header["seed"]),
                                     speed=options.speed, started_at=time.time())
        self.metrics.counters["orders_planned"] = len(scenario.orders)
        self.resolution = int(header.get("h3_resolution", 8))
        self.clock = SimClock(options.speed)
        self.readied: dict[str, tuple[str, float]] = {}   # delivery id -> (order key, monotonic when ready)
        self.open: set[str] = set()                # deliveries readied and not ended
        self.drivers: list[CityDriver] = []
        self.city: City | None = None
        self.api: ApiCaller | None = None
        self.link_shown = False
        self.ctrl_c = asyncio.Event()              # set by Ctrl-C (the clock's stop is also set at a normal end)
        self.acknowledged: list[tuple[str, str]] = []   # (tenant id, order id) the API confirmed
        self._tasks: set[asyncio.Task] = set()

    # -- orders: customers and vendors -------------------------------------------------------------

    async def order(self, o: dict) -> None:
        api, city, metrics, clock = self.api, self.city, self.metrics, self.clock
        if not await clock.until(o["t"]):
            return
        customer = self.scenario.customer(o["customer"])
        vendor_spec = self.scenario.vendor(o["vendor"])
        vendor = city.vendors[o["vendor"]]
        key = f"{o['customer']}@{o['t']}"
        try:
            token = city.customers.get(o["customer"]) or await add_customer(city, api, customer)
            method = o.get("payment_method", "cash") if self.secret else "cash"
            placed = await api("POST", "/v1/orders", token, {
                "vendor_id": vendor.vendor_id,
                "lines": [{"product_id": vendor.products[line["product"]], "quantity": line["quantity"]}
                          for line in o["lines"]],
                "delivery_lat": customer["lat"], "delivery_lng": customer["lng"],
                "delivery_address": {"street": customer.get("street") or "at the pin"},
                "payment_method": method})
        except httpx.HTTPError as exc:   # the engine did not answer: the order never reached it
            metrics.counters["api_errors"] += 1
            metrics.counters[f"order_lost:{type(exc).__name__}"] += 1
            return
        except ApiFailed as exc:
            metrics.counters["orders_refused"] += 1
            metrics.counters[f"refused:{exc.reason}"] += 1
            metrics.record_order(key, "refused")
            return
        order_id = placed["id"]
        self.acknowledged.append((city.tenants[o["tenant"]], order_id))
        metrics.counters["orders_placed"] += 1
        metrics.record_order(key, "placed")
        metrics.demand_cells[h3.latlng_to_cell(customer["lat"], customer["lng"], self.resolution)] += 1
        try:
            if method != "cash":
                await self.pay(city.tenants[o["tenant"]], placed)
            if not await clock.sleep(vendor_spec["accept_delay_s"]):
                return
            try:
                await api("POST", f"/v1/vendor/orders/{order_id}/accept", vendor.token,
                          route="/v1/vendor/orders/{id}/accept")
            except ApiFailed as exc:
                # The replay accepts each order once, so this is a retry after the engine lost
                # its answer (and the key's claim ran out): accepted already, the shop goes on.
                if exc.status != 409 or exc.reason != "illegal_transition":
                    raise
                metrics.counters["accept_found_done"] += 1
            metrics.counters["orders_accepted_by_vendor"] += 1
            if not await clock.sleep(vendor_spec["prep_s"]):
                return
            ready = await api("POST", f"/v1/vendor/orders/{order_id}/ready", vendor.token,
                              route="/v1/vendor/orders/{id}/ready")
        except ApiFailed as exc:
            metrics.counters["api_errors"] += 1
            metrics.counters[f"order_stuck:{exc.route}:{exc.reason}"] += 1
            return
        except httpx.HTTPError as exc:
            metrics.counters["api_errors"] += 1
            metrics.counters[f"order_stuck:{type(exc).__name__}"] += 1
            return
        delivery_id = ready["delivery_id"]
        self.readied[delivery_id] = (key, time.monotonic())
        self.open.add(delivery_id)
        metrics.counters["orders_ready"] += 1
        if o.get("watch"):
            await self.watch(order_id, token)

    async def pay(self, tenant_id: str, placed: dict) -> None:
        raw = json.dumps({"tenant_id": tenant_id, "order_id": placed["id"],
                          "idempotency_key": f"replay-{placed['id']}", "amount": placed["total_amount"],
                          "status": "succeeded", "gateway": "replay",
                          "gateway_reference": f"RP-{placed['order_number']}"}).encode()
        await self.api("POST", "/v1/payments/callback", None, content=raw,
                       headers={SIGNATURE_HEADER: sign(self.secret, raw), "content-type": "application/json"})
        self.metrics.counters["payments"] += 1

    async def watch(self, order_id: str, token: str) -> None:
        """A customer on the tracking link until the delivery ends."""
        metrics = self.metrics
        try:
            link = await self.api("POST", f"/v1/orders/{order_id}/tracking-link", token,
                                  route="/v1/orders/{id}/tracking-link")
        except ApiFailed as exc:
            metrics.counters[f"tracking_link_refused:{exc.reason}"] += 1
            return
        except httpx.HTTPError as exc:
            metrics.counters[f"tracking_link_failed:{type(exc).__name__}"] += 1
            return
        if not self.link_shown:
            self.link_shown = True
            self.announce(f"Live tracking page of an order: http://{self.addr}{link['url']}")
        metrics.counters["watchers"] += 1
        backoff = Backoff(base_s=0.25, cap_s=4.0)
        url = f"ws://{self.addr}/v1/track/{link['token']}"
        lost = False
        while not self.clock.stop.is_set():
            code: object = None
            try:
                async with websockets.connect(url, compression=None, open_timeout=10) as ws:
                    backoff.reset()
                    if lost:
                        metrics.counters["watcher_reconnects"] += 1
                    lost = True
                    if await self._follow(ws):
                        return
                    code = ws.close_code
            except websockets.ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else None
            except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                metrics.counters[f"watcher_failed:{type(exc).__name__}"] += 1
            if self.clock.stop.is_set():
                return
            metrics.counters[f"watcher_closed:{code if code is not None else 'none'}"] += 1
            if code in PERMANENT_CLOSE_CODES:
                return
            # the page reconnects as a browser's would, after a jittered backoff
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.clock.stop.wait(), backoff.next())

    async def _follow(self, ws: Any) -> bool:
        """Frames until the delivery ends (True) or the socket closes (ConnectionClosed)."""
        metrics = self.metrics
        while not self.clock.stop.is_set():
            try:
                raw = await asyncio.wait_for(ws.recv(), 1.0)
            except TimeoutError:
                continue
            now = time.time()
            frame = json.loads(raw)
            metrics.counters["tracking_frames"] += 1
            if frame.get("type") == "position" and frame.get("received_at"):
                metrics.counters["tracking_positions"] += 1
                metrics.record_tracking((now - frame["received_at"]) * 1000)
            elif frame.get("type") == "status" and frame.get("status") in TERMINAL:
                return True
        return True

    def job_ended(self, delivery_id: str, outcome: str) -> None:
        metrics = self.metrics
        self.open.discard(delivery_id)
        if outcome in ("delivered", "failed"):
            metrics.counters[f"orders_{outcome}"] += 1
            metrics.record_order(self.readied.get(delivery_id, (delivery_id,))[0], outcome)
        else:
            metrics.counters[f"jobs_{outcome}"] += 1

    # -- instruments -----------------------------------------------------------------------------

    async def sample_lag(self, streams: StreamSettings) -> None:
        """Messages behind the newest, for the location worker's group and the dispatcher.

        The worker's committed offsets are read by a consumer of its group that is assigned
        partitions by hand: it fetches offsets and never joins (or disturbs) the group."""
        import redis.asyncio as aioredis
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=streams.kafka_bootstrap, group_id=streams.app_id,
                                    enable_auto_commit=False)
        redis = aioredis.from_url(streams.redis_url)
        try:
            await consumer.start()
            await consumer.topics()
            tps = {topic: [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
                   for topic in (streams.locations_topic, streams.delivery_events_topic)}
            consumer.assign(tps[streams.locations_topic])
            while not self.clock.stop.is_set():
                for label, topic in (("location-worker", streams.locations_topic),
                                     ("dispatcher", streams.delivery_events_topic)):
                    try:
                        ends = await consumer.end_offsets(tps[topic])
                        if label == "location-worker":
                            # The worker's landed offsets (written after each batch reaches Redis),
                            # not its commits, which trail by the commit interval: the real lag.
                            landed = {int(k): int(v) for k, v in
                                      (await redis.hgetall(ingest_offsets_key(streams.app_id, topic))).items()}
                            done = {tp.partition: max(landed.get(tp.partition, 0), await consumer.committed(tp) or 0)
                                    for tp in tps[topic]}
                        else:
                            key = dispatcher_offsets_key(f"{streams.app_id}-dispatcher", topic)
                            done = {int(k): int(v) for k, v in (await redis.hgetall(key)).items()}
                        lag = sum(max(0, end - done.get(tp.partition, 0)) for tp, end in ends.items())
                        self.metrics.record_broker_lag(label, lag)
                    except Exception:   # noqa: BLE001 - the broker away for a moment: no figure, no crash
                        self.metrics.counters[f"lag_unavailable:{label}"] += 1
                await self.clock.sleep(LAG_SAMPLE_S * self.clock.speed)
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()
            await redis.aclose()

    async def show_progress(self, duration_s: float) -> None:
        from tqdm import tqdm

        c = self.metrics.counters
        last_pings, last_at = 0, time.monotonic()
        with tqdm(total=int(duration_s), unit="sim s", disable=not self.options.progress, dynamic_ncols=True,
                  bar_format="{l_bar}{bar}| {n:.0f}/{total} sim s [{elapsed}<{remaining}] {postfix}") as bar:
            while not self.clock.stop.is_set():
                now = time.monotonic()
                rate = (c["pings_sent"] - last_pings) / max(now - last_at, 1e-6)
                last_pings, last_at = c["pings_sent"], now
                bar.n = min(self.clock.now(), duration_s)
                bar.set_postfix_str(
                    f"placed {c['orders_placed']} ready {c['orders_ready']} delivered {c['orders_delivered']} "
                    f"failed {c['orders_failed']} refused {c['orders_refused']} open {len(self.open)} "
                    f"drivers {sum(d.online for d in self.drivers)} pings/s {rate:.0f}", refresh=False)
                bar.refresh()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.clock.stop.wait(), 0.5)

    def _count(self, name: str) -> None:
        self.metrics.counters[name] += 1

    def spawn(self, coro: Any, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- the run ---------------------------------------------------------------------------------

    async def run(self, http: httpx.AsyncClient, pg: PostgresSettings, streams: StreamSettings) -> None:
        scenario, options = self.scenario, self.options
        self.announce(f"Setting up the city: {len(scenario.tenants)} tenants, {len(scenario.vendors)} vendors, "
                      f"{len(scenario.drivers)} drivers, {len({o['customer'] for o in scenario.orders})} "
                      "customers who order ...")
        trackers = tracker_drivers([d["key"] for d in scenario.drivers], options.osmand_share,
                                   int(scenario.header["seed"]))
        self.metrics.counters["osmand_drivers"] = len(trackers)
        self.city = await provision(scenario, pg, ApiCaller(http), trackers=trackers)
        self.api = RetryingApi(http, self.metrics.record_api, count=self._count, stop=self.clock.stop)
        busiest = max(self.city.vendors, key=lambda k: sum(o["vendor"] == k for o in scenario.orders))
        self.announce(f"Vendor order feed of {scenario.vendor(busiest)['name']}: "
                      f"http://{self.addr}/vendor#{self.city.vendors[busiest].token}")
        duration = float(scenario.header["duration_s"])
        self.clock = SimClock(options.speed, self.clock.stop)
        self.metrics.started_at = time.time()
        for spec in scenario.drivers:
            driver_id, token = self.city.drivers[spec["key"]]
            shape = trackers.get(spec["key"])
            self.drivers.append(CityDriver(spec, driver_id, token, addr=self.addr, api=self.api, clock=self.clock,
                                           metrics=self.metrics, readied=self.readied,
                                           on_job_end=self.job_ended, resolution=self.resolution,
                                           window_s=duration, http=http,
                                           tracker=None if shape is None else (shape, self.city.trackers[spec["key"]])))
        actors = [self.spawn(d.run(), f"driver-{d.spec['key']}") for d in self.drivers]
        actors += [self.spawn(self.order(o), f"order-{i}") for i, o in enumerate(scenario.orders)]
        self.spawn(self.sample_lag(streams), "broker-lag")
        self.spawn(self.show_progress(duration), "progress")
        self.announce(f"Replaying {duration / 60:.0f} simulated minutes at {options.speed:g}x "
                      f"(~{duration / options.speed / 60:.1f} wall minutes; Ctrl-C stops with a partial report)")
        stop = self.clock.stop
        deadline = None if options.max_wall_s is None else time.monotonic() + options.max_wall_s
        while not stop.is_set() and self.clock.now() < duration:
            if deadline is not None and time.monotonic() > deadline:
                self.metrics.interrupted = True
                stop.set()
            await self.clock.sleep(min(duration - self.clock.now(), self.clock.speed))
        drain_until = time.monotonic() + options.drain_s
        while not stop.is_set() and (self.open or self._orders_in_flight()) and time.monotonic() < drain_until:
            await self.clock.sleep(0.5 * self.clock.speed)
        self.metrics.counters["deliveries_open_at_end"] = len(self.open)
        stop.set()
        await asyncio.wait(actors, timeout=30)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.metrics.finish()

    def _orders_in_flight(self) -> bool:
        return any(t.get_name().startswith("order-") and not t.done() for t in self._tasks)

    async def count_whatsapp(self, pg: PostgresSettings, rig: whatsapp_tally.FakeRig) -> None:
        """The messages of the orders placed, once settled (at once after Ctrl-C)."""
        orders: dict[str, list[str]] = {}
        for tenant_id, order_id in self.acknowledged:
            orders.setdefault(tenant_id, []).append(order_id)
        async with TenantDatabase(pg) as db:
            self.metrics.whatsapp = await whatsapp_tally.settle(
                db, orders, rig.fake, within_s=0.0 if self.metrics.interrupted else self.options.whatsapp_settle_s,
                stop=self.ctrl_c)


async def run_replay(options: ReplayOptions, announce: Callable[[str], None] | None = None, *,
                     observe: Callable[[Replay], None] | None = None) -> dict:
    """Replay the scenario; print the report; returns its summary. ``observe`` is handed the
    running replay (a test that injects faults watches its clock and reads what it placed)."""
    from tqdm import tqdm

    say = announce or (tqdm.write if options.progress else print)
    scenario = city_scenario.read(options.scenario)
    pg, streams = options.postgres or PostgresSettings.from_env(), options.streams or StreamSettings.from_env()
    report_dir = options.report_dir or Path(".wakala", "reports", time.strftime("replay-%Y%m%d-%H%M%S"))
    engine = rig = None
    if options.engine:
        if options.whatsapp:
            raise WakalaError(WHATSAPP_NEEDS_OWN_ENGINE)
        addr = options.engine.removeprefix("http://").rstrip("/")
        secret = options.secret or os.environ.get("WAKALA_PAYMENT_WEBHOOK_SECRET")
        if not secret:
            say("WAKALA_PAYMENT_WEBHOOK_SECRET is not set here: card orders are replayed as cash")
    else:
        port, secret = free_port(), os.urandom(16).hex()
        addr = f"127.0.0.1:{port}"
        if options.whatsapp:
            rig = await whatsapp_tally.start_fake(addr, receipts=options.whatsapp_receipts)
            say(f"WhatsApp on, against a fake Graph API at {rig.fake.url} "
                f"(status webhooks {'on' if options.whatsapp_receipts else 'off'})")
        log_path = os.path.join(".wakala", "replay-engine.log")
        say(f"Starting the engine on http://{addr} (log {log_path}) ...")
        try:
            engine = spawn_wakala(["engine", "all"], engine_env(
                options.speed, port, secret, postgres=options.postgres, streams=options.streams,
                extra=None if rig is None else whatsapp_tally.whatsapp_env(rig)), log_path)
        except BaseException:
            if rig is not None:
                await rig.fake.stop()
            raise
    replay = Replay(scenario, options, addr, secret, say)
    if observe is not None:
        observe(replay)
    loop = asyncio.get_running_loop()

    def interrupted() -> None:
        replay.metrics.interrupted = True
        replay.clock.stop.set()
        replay.ctrl_c.set()
        say("Ctrl-C: stopping; the report covers what happened so far")
        loop.remove_signal_handler(signal.SIGINT)   # a second Ctrl-C stops at once
    loop.add_signal_handler(signal.SIGINT, interrupted)
    try:
        async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=30,
                                     limits=httpx.Limits(max_connections=64)) as http:
            if not await wait_healthy(http, within_s=60):
                raise WakalaError(f"the engine at {addr} did not answer /healthz"
                                   + ("" if engine is None else "; see .wakala/replay-engine.log"))
            await replay.run(http, pg, streams)
            if rig is not None:
                if not replay.metrics.interrupted:
                    say("Counting the WhatsApp messages once the last ones are sent ...")
                await replay.count_whatsapp(pg, rig)
    finally:
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(signal.SIGINT)
        if engine is not None and rig is not None:
            # in a thread: the fake answers from this loop the posts the stopping engine finishes
            await asyncio.to_thread(stop, engine)
        elif engine is not None:
            stop(engine)
        if rig is not None:   # after the engine: its posts in flight when it stops get their answers
            await rig.fake.stop()
        replay.metrics.finish()
    return print_report(replay.metrics, report_dir)
