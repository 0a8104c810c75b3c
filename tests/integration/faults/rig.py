"""The fault tests' rig: an engine of its own, with its own Redis and broker, that can be broken.

Each fault test starts, on spare ports of this machine:

- a ``redis-server`` with no persistence (a restart comes back empty, as a lost cache would);
- a memory-only ``tansu`` broker (a restart comes back with no topics and no offsets);
- the engine as two processes, ``wakala engine api`` (REST, sockets, dispatcher) and
  ``wakala engine worker`` (the location worker), so either can be killed on its own;

and runs a small city replay (``loadtest.replay``) through it while one fault is injected.
The databases are the test's own (the ``platform`` fixture). The shared Redis and broker of
the machine are never touched. Everything the rig starts is killed when it closes.

Afterwards :func:`invariants` reads what must hold whatever happened, from PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from dispatch.ops.broker import find_tansu_binary
from dispatch.ops.checks import check_kafka
from geo import distance_m
from loadtest import city
from loadtest.processes import free_port, spawn_wakala, streams_env, wait_healthy
from loadtest.replay import Replay, ReplayOptions, engine_env, run_replay
from schema.db import TenantDatabase
from schema.settings import PostgresSettings
from schema.tenants import list_tenants
from streams.settings import StreamSettings

SPEED = 30.0   # fast drivers then cover ~370 m per wall second, under the 2000 km/h cap
FINAL = ("delivered", "failed", "cancelled")
ACTIVE = ("assigned", "at_pickup", "picked_up")
AVAILABLE_AGAIN_S = 30.0


def small_city(seed: int = 11, orders: float = 40.0, tenant_suffix: str = "") -> city.Scenario:
    """A few simulated minutes, one tenant, ten drivers, a dozen or so orders, all placed in
    the first half of the window, quick to prepare and near their shop, so every one can end
    during the drain."""
    config = city.CityConfig(seed=seed, start_s=12 * 3600 + 1800, duration_s=360, tenants=1, vendors=3,
                             drivers=10, customers=30, orders_per_day=1.0)
    config = replace(config, orders_per_day=orders / city.expected_orders(config))
    scenario = city.generate(config)
    scenario.orders[:] = [o for o in scenario.orders if o["t"] <= 180 and distance_m(
        scenario.customer(o["customer"])["lat"], scenario.customer(o["customer"])["lng"],
        scenario.vendor(o["vendor"])["lat"], scenario.vendor(o["vendor"])["lng"]) <= 2600]
    scenario.header["counts"]["orders"] = len(scenario.orders)
    for vendor in scenario.vendors:
        vendor["prep_s"] = min(vendor["prep_s"], 120)
        vendor["accept_delay_s"] = min(vendor["accept_delay_s"], 20)
    for driver in scenario.drivers:   # fewer pings: five rigs share two cores in `make test`
        driver["ping_interval_s"] = max(driver["ping_interval_s"], 6.0)
    for tenant in scenario.tenants:   # a baseline in the same databases is a tenant of its own
        tenant["slug"] += tenant_suffix
        tenant["name"] += tenant_suffix
    return scenario


def _spawn(argv: list[str], log_path: Path, cwd: Path) -> subprocess.Popen:
    """A service of the rig in a session of its own (a kill reaches all of it), output to a log."""
    with log_path.open("ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True,
                                env={**os.environ, "NO_COLOR": "1"})


@dataclass
class Rig:
    """The engine under test and the services it uses; see the module doc."""

    pg: PostgresSettings
    workdir: Path
    speed: float = SPEED
    redis_port: int = field(default_factory=free_port)
    broker_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    secret: str = field(default_factory=lambda: os.urandom(16).hex())
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    events: list[tuple[float, str]] = field(default_factory=list)   # (monotonic, what happened)

    @property
    def streams(self) -> StreamSettings:
        return replace(StreamSettings.from_env(), kafka_bootstrap=f"127.0.0.1:{self.broker_port}",
                       redis_url=f"redis://127.0.0.1:{self.redis_port}/0", app_id="wakala-faults")

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def note(self, what: str) -> None:
        self.events.append((time.monotonic(), what))

    # -- services -------------------------------------------------------------------------------

    async def start_redis(self) -> None:
        self.procs["redis"] = _spawn(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)], self.workdir / "redis.log", self.workdir)
        client = aioredis.from_url(self.streams.redis_url)
        try:
            for _ in range(100):
                with contextlib.suppress(Exception):
                    if await client.ping():
                        self.note("redis up")
                        return
                await asyncio.sleep(0.1)
        finally:
            await client.aclose()
        raise RuntimeError(f"redis-server on {self.redis_port} did not answer; see {self.workdir}/redis.log")

    async def start_broker(self) -> None:
        listener = f"tcp://127.0.0.1:{self.broker_port}"
        self.procs["broker"] = _spawn(
            [str(find_tansu_binary()), "broker", "--listener-url", listener, "--advertised-listener-url",
             listener, "--storage-engine", "memory://tansu/"], self.workdir / "broker.log", self.workdir)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if (await check_kafka(self.streams.kafka_bootstrap, time_limit=2.0)).ok:
                self.note("broker up")
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"tansu on {self.broker_port} did not answer; see {self.workdir}/broker.log")

    def engine_env(self) -> dict[str, str]:
        env = engine_env(self.speed, self.http_port, self.secret, postgres=self.pg)
        env.update(streams_env(self.streams))
        env["PYTHONUNBUFFERED"] = "1"
        # small pools: four rigs run side by side on a server of 100 connections shared by all
        env["WAKALA_PG_WRITE_POOL_SIZE"] = env["WAKALA_PG_READ_POOL_SIZE"] = "2"
        return env

    def start_worker(self) -> None:
        self.procs["worker"] = spawn_wakala(["engine", "worker", "--log-level", "warn"], self.engine_env(),
                                            str(self.workdir / f"worker-{len(self.events)}.log"))
        self.note("worker started")

    async def start_api(self) -> None:
        import httpx

        self.procs["api"] = spawn_wakala(["engine", "api", "--log-level", "warn"], self.engine_env(),
                                         str(self.workdir / f"api-{len(self.events)}.log"))
        async with httpx.AsyncClient(base_url=f"http://{self.addr}", timeout=5) as http:
            if not await wait_healthy(http, within_s=60):
                raise RuntimeError(f"the engine API did not answer /healthz; see {self.workdir}")
        self.note("api up")

    async def __aenter__(self) -> Rig:
        self.pg = replace(self.pg, write_pool_size=2, read_pool_size=2)   # the test's own (provisioning, checks)
        self.workdir.mkdir(parents=True, exist_ok=True)
        await self.start_redis()
        await self.start_broker()
        self.start_worker()
        await self.start_api()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for name in ("api", "worker", "broker", "redis"):
            proc = self.procs.pop(name, None)
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await asyncio.to_thread(proc.wait)

    # -- faults ---------------------------------------------------------------------------------

    async def kill(self, name: str) -> None:
        """kill -9 of one of the rig's processes (its whole session: nothing of it survives)."""
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.to_thread(proc.wait)
        self.note(f"{name} killed")

    async def restart(self, name: str) -> None:
        if name == "redis":
            await self.start_redis()
        elif name == "broker":
            await self.start_broker()
        elif name == "worker":
            self.start_worker()
        else:
            await self.start_api()

    async def terminate_db_sessions(self, for_s: float = 10.0, every_s: float = 0.5) -> int:
        """``pg_terminate_backend`` of the engine's sessions (the application role on this
        test's databases) every ``every_s`` for ``for_s``; how many were ended."""
        databases = [self.pg.control.database, *self.pg.shard_databases]
        admin = await asyncpg.connect(self.pg.control.with_database("postgres").url())
        ended = 0
        self.note("db sessions terminated from now")
        try:
            until = time.monotonic() + for_s
            while time.monotonic() < until:
                ended += await admin.fetchval(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = ANY($1::text[]) AND usename = $2 AND pid <> pg_backend_pid()",
                    databases, self.pg.app_role)
                await asyncio.sleep(every_s)
        finally:
            await admin.close()
        self.note("db sessions left alone again")
        return ended

    async def available_drivers(self, tenant_ids: list[str]) -> int:
        """Drivers the engine's Redis indexes as available now (0 while Redis is away)."""
        client = aioredis.from_url(self.streams.redis_url, socket_timeout=2, socket_connect_timeout=2)
        try:
            members: set[bytes] = set()
            fresh_ms = (time.time() - self.streams.location_ttl_s) * 1000
            for tenant_id in tenant_ids:   # a zset per cell, scored by when the driver was seen
                async for key in client.scan_iter(match=f"drivers:available:{tenant_id}:*", count=500):
                    members.update(await client.zrangebyscore(key, fresh_ms, "+inf"))
            return len(members)
        except Exception:  # noqa: BLE001 - Redis down or restarting: none are available
            return 0
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()

    # -- the replay ----------------------------------------------------------------------------

    async def replay(self, scenario: city.Scenario, fault=None, *, label: str = "replay") -> Outcome:
        """Run ``scenario`` through the engine; ``fault(rig, replay)`` runs beside it."""
        path = self.workdir / f"{label}.jsonl"
        city.write(scenario, path)
        holder: list[Replay] = []
        running = asyncio.Event()
        options = ReplayOptions(scenario=path, speed=self.speed, report_dir=self.workdir / f"{label}-report",
                                engine=self.addr, drain_s=60, progress=False, max_wall_s=150,
                                postgres=self.pg, streams=self.streams, secret=self.secret)
        injected = None
        task = asyncio.create_task(run_replay(options, announce=lambda line: None, observe=lambda r: (holder.append(r), running.set())))
        try:
            if fault is not None:
                started = asyncio.create_task(running.wait())
                await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
                started.cancel()
                if not holder:   # the replay failed before it began: its error says why
                    await task
                injected = asyncio.create_task(fault(self, holder[0]))
            summary = await task
            fault_result = await injected if injected is not None else None
        finally:
            for pending in (task, injected):
                if pending is not None and not pending.done():
                    pending.cancel()
                    with contextlib.suppress(BaseException):
                        await pending
        return Outcome(summary=summary, replay=holder[0], fault=fault_result)


@dataclass
class Outcome:
    summary: dict
    replay: Replay
    fault: object = None


async def wait_for_sim(replay: Replay, sim_s: float) -> None:
    """Until the replay's (restarted) clock reaches ``sim_s`` simulated seconds."""
    while not replay.drivers or replay.clock.now() < sim_s:
        if replay.clock.stop.is_set():
            return
        await asyncio.sleep(0.1)


async def fleet_on_shift(rig: Rig, replay: Replay, within_s: float = 20.0) -> int:
    """Wait until ``FAULT_AT_S`` and the fleet is on shift (half the drivers available, or
    ``within_s`` more wall seconds): a fault before the drivers are there tests nothing.
    Returns the drivers available then."""
    await wait_for_sim(replay, FAULT_AT_S)
    tenant_ids = list(replay.city.tenants.values())
    deadline = time.monotonic() + within_s
    while True:
        available = await rig.available_drivers(tenant_ids)
        if available >= len(replay.drivers) // 2 or time.monotonic() > deadline:
            return available
        await asyncio.sleep(0.2)


async def drivers_back_within(rig: Rig, replay: Replay, before: int, within_s: float = AVAILABLE_AGAIN_S) -> float | None:
    """Wall seconds until at least half of ``before`` (and at least one) drivers are indexed
    available again; None when that does not happen within ``within_s``."""
    tenant_ids = list(replay.city.tenants.values())
    started = time.monotonic()
    need = max(1, before // 2)
    rig.note(f"{before} drivers were available before the fault; waiting for {need}")
    while time.monotonic() - started < within_s:
        now = await rig.available_drivers(tenant_ids)
        rig.note(f"available {now}")
        if now >= need:
            return time.monotonic() - started
        await asyncio.sleep(0.5)
    return None


@dataclass
class Invariants:
    acknowledged: int
    missing: list[str]
    orders_in_db: int
    unknown_outcomes: int
    overlapping: list[tuple]
    bad_stock: list[tuple]
    reservation_mismatch: list[tuple]
    stuck: list[tuple]

    def problems(self) -> list[str]:
        found = []
        if self.missing:
            found.append(f"{len(self.missing)} acknowledged orders not in the database: {self.missing[:5]}")
        if not self.acknowledged <= self.orders_in_db <= self.acknowledged + self.unknown_outcomes:
            found.append(f"{self.orders_in_db} orders in the database for {self.acknowledged} acknowledged "
                         f"(+{self.unknown_outcomes} of unknown outcome): an order was placed twice")
        if self.overlapping:
            found.append(f"drivers above capacity (overlapping active deliveries): {self.overlapping[:5]}")
        if self.bad_stock:
            found.append(f"stock rows negative or over-reserved: {self.bad_stock[:5]}")
        if self.reservation_mismatch:
            found.append(f"reserved_quantity != active reservations: {self.reservation_mismatch[:5]}")
        if self.stuck:
            found.append(f"deliveries stuck in a non-final state: {self.stuck[:8]}")
        return found


OVERLAPS = """
SELECT a.driver_id::text, a.id::text, b.id::text
FROM deliveries a JOIN deliveries b ON a.driver_id = b.driver_id AND a.id < b.id
WHERE a.assigned_at IS NOT NULL AND b.assigned_at IS NOT NULL
  AND tstzrange(a.assigned_at, coalesce(a.delivered_at, a.failed_at, a.cancelled_at, 'infinity'))
   && tstzrange(b.assigned_at, coalesce(b.delivered_at, b.failed_at, b.cancelled_at, 'infinity'))
"""
BAD_STOCK = """
SELECT id::text, quantity, reserved_quantity FROM inventory
WHERE quantity < 0 OR reserved_quantity < 0 OR reserved_quantity > quantity
"""
RESERVATIONS = """
SELECT i.id::text, i.reserved_quantity, coalesce(r.held, 0)
FROM inventory i
LEFT JOIN (SELECT inventory_id, sum(quantity) AS held FROM inventory_reservations
           WHERE status = 'active' GROUP BY inventory_id) r ON r.inventory_id = i.id
WHERE i.reserved_quantity <> coalesce(r.held, 0)
"""
STUCK = """
SELECT id::text, status, driver_id::text, updated_at FROM deliveries
WHERE status NOT IN ('delivered', 'failed', 'cancelled')
"""


async def invariants(pg: PostgresSettings, outcome: Outcome) -> Invariants:
    """What must hold after any fault, read from the shards of the replay's tenants (the
    server is shared: when it has no connection to spare, wait for one)."""
    for attempt in range(20):
        try:
            return await _invariants(pg, outcome)
        except asyncpg.TooManyConnectionsError:
            if attempt == 19:
                raise
            await asyncio.sleep(3)
    raise AssertionError("unreachable")


async def _invariants(pg: PostgresSettings, outcome: Outcome) -> Invariants:
    replay = outcome.replay
    tenant_ids = set(replay.city.tenants.values())
    acknowledged = [order_id for _, order_id in replay.acknowledged]
    c = replay.metrics.counters
    unknown = sum(n for key, n in c.items() if key.startswith("order_lost:"))
    found = Invariants(len(acknowledged), [], 0, unknown, [], [], [], [])
    async with TenantDatabase(pg) as db:
        for tenant in (t for t in await list_tenants(pg) if str(t.id) in tenant_ids):
            async with db.tenant_transaction(tenant.id, readonly=True) as tx:
                present = {r[0] for r in await tx.fetch(
                    "SELECT id::text FROM orders WHERE id = ANY($1::uuid[])", acknowledged)}
                found.missing += [o for t, o in replay.acknowledged if t == str(tenant.id) and o not in present]
                found.orders_in_db += await tx.fetchval("SELECT count(*) FROM orders")
                found.overlapping += [tuple(r) for r in await tx.fetch(OVERLAPS)]
                found.bad_stock += [tuple(r) for r in await tx.fetch(BAD_STOCK)]
                found.reservation_mismatch += [tuple(r) for r in await tx.fetch(RESERVATIONS)]
                found.stuck += [tuple(r) for r in await tx.fetch(STUCK)]
    return found


FAULT_AT_S = 150.0    # simulated seconds into the replay: orders placed, drivers on shift
DELIVERED_TOLERANCE = 0.10


async def outage(rig: Rig, replay: Replay, name: str, down_s: float) -> float | None:
    """The common fault: kill -9 ``name`` at ``FAULT_AT_S``, restart it after ``down_s`` wall
    seconds; wall seconds from the kill until drivers are available again (None: not within
    ``AVAILABLE_AGAIN_S``)."""
    before = await fleet_on_shift(rig, replay)
    killed = time.monotonic()
    await rig.kill(name)
    await asyncio.sleep(down_s)
    await rig.restart(name)
    back = await drivers_back_within(rig, replay, before, AVAILABLE_AGAIN_S - (time.monotonic() - killed))
    return None if back is None else time.monotonic() - killed


async def settle(rig: Rig, outcome: Outcome) -> Invariants:
    """After the replay: the engine's retry interval (and then some), then the invariants."""
    await asyncio.sleep(max(1.0, 10 / rig.speed) + 2)
    return await invariants(rig.pg, outcome)


def judge(rig: Rig, outcome: Outcome, found: Invariants, base: dict, back_s: float | None) -> None:
    """Every assertion of a fault test, with what happened in the message."""
    s, b = outcome.summary, base
    story = (f"\nfault: delivered {s['orders_delivered']} of {s['orders_placed']} placed "
             f"({s['orders_planned']} planned), api errors {s['api_errors']}, retries {s['api_retries']}, "
             f"driver reconnects {s['driver_reconnects']}, watcher reconnects {s['watcher_reconnects']}; "
             f"baseline: delivered {b['orders_delivered']} of {b['orders_placed']}; drivers back after "
             f"{back_s if back_s is None else round(back_s, 1)} s; events "
             f"{[(round(t - rig.events[0][0], 1), what) for t, what in rig.events]}; counters "
             f"{ {k: v for k, v in sorted(outcome.replay.metrics.counters.items()) if ':' in k} }; "
             f"logs in {rig.workdir}")
    problems = found.problems()
    if back_s is None:
        problems.append(f"drivers not available again within {AVAILABLE_AGAIN_S:g} s of the fault")
    # Delivered, counting the scenario's own "nobody home" failures (a roll of each driver's dice,
    # 2 %, whose order depends on timing) as delivered: they reached the door, and one of them
    # in a dozen orders would otherwise decide the 10 % on chance alone.
    reached, expected = (x["orders_delivered"] + x.get("orders_failed_at_door", 0) for x in (s, b))
    if reached < (1 - DELIVERED_TOLERANCE) * expected:
        problems.append(f"delivered {s['orders_delivered']} (+{s.get('orders_failed_at_door', 0)} nobody home), "
                        f"more than {DELIVERED_TOLERANCE:.0%} below the baseline's {b['orders_delivered']} "
                        f"(+{b.get('orders_failed_at_door', 0)})")
    assert not problems, "; ".join(problems) + story
