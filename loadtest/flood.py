"""`wakala bench flood`: a hostile crowd against a running engine while real users go on.

Set-up (not measured): the bench tenant with a vendor, customers and drivers
(``loadtest.flood_legit``); the engine as in production (`wakala engine api`, one process
unless ``workers`` says otherwise) on location topics of this run only. The legitimate
workload (customers browsing, ordering, paying and reading; drivers pinging on the
websocket) speaks from 127.0.0.1 and runs from start to end; the flood speaks from other
loopback addresses (``source_ips`` of them, 127.0.0.2 up), as a crowd of attackers would, so
a per-address limit in the engine meets the attackers and not the users. The engine's REST
rate limit per user is lifted (the users are not what is measured); every other limit is
the engine's default unless ``auth_failure_limit`` or ``engine_env`` say otherwise.

Phases, in order, each filing the legitimate calls' latencies under its name:

``baseline``  no flood: the legitimate p99 the rest is compared with, measured in the same run.
``tokens``    ``tokens`` requests, each with a fresh well-formed bearer token no tenant issued:
              ``wkd_`` tokens on ``POST /v1/drivers/locations``, ``POST /v1/drivers/shift`` and the
              driver websocket (a share ``ws_share`` of attempts, one connection each), ``wku_``
              tokens on ``GET``/``POST /v1/orders``; the tenant part random or, for a share
              ``real_tenant_share``, the bench tenant's (a real shard is asked). ``concurrency``
              keep-alive connections. The engine's RSS before and after gives ``rss_growth_mb``.
``bodies``    ``body_mb`` MB bodies without a token, declared (Content-Length) and chunked, on
              the driver shift, locations and delivery-event routes, order placement and the
              payment callback, ``body_parallel`` at once, in rounds for at least ``bodies_s``.
``headers``   request targets of 16 KB (REST and websocket upgrade) and 64 KB headers.
``slow``      ``slow_clients`` slowloris connections (a header line a second), websockets
              opened without a token that never send or read, and drivers (real tokens) who
              ping fast and never read their acks, all for ``slow_s`` seconds.

Engine memory is read from ``/proc/<pid>/status`` (VmRSS; VmHWM for the peak) of the engine
process and its children, sampled every 0.25 s with its open descriptors (held sockets). The
load generator is raw asyncio (``loadtest.flood_clients``): it shares the cores with the
engine, so its own CPU during the token flood is reported beside the engine's. With
``profile`` set, py-spy samples the engine during the token flood (``loadtest.flood_profile``). The targets are the issue's: RSS growth at most
50 MB over 100,000 random tokens, and the legitimate p99 during the flood within 2x of the
baseline; both are printed with whether this run met them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import secrets
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from loadtest.flood_clients import (
    RawConnection,
    http_request,
    never_reading_driver,
    oversized_body,
    random_token,
    silent_websocket,
    slowloris,
    websocket_attempt,
)
from loadtest.flood_legit import LegitWorkload, Population, populate
from loadtest.flood_profile import Profiler
from loadtest.flood_report import FLOOD_PHASES, figures_of, print_figures
from loadtest.ingest import _children, _cpu_seconds, _delete_topics, fresh_streams
from loadtest.processes import free_port, spawn_wakala, stop
from schema.errors import WakalaError
from schema.settings import PostgresSettings

__all__ = ["FloodBench", "FloodSettingError", "run_flood_bench"]

LOG = ".wakala/bench-flood.log"


@dataclass(frozen=True)
class FloodBench:
    tokens: int = 100_000
    concurrency: int = 64                 # keep-alive connections of the token flood
    source_ips: int = 16                  # attacker addresses, 127.0.0.2 up
    ws_share: float = 0.05                # token attempts made as a websocket upgrade
    real_tenant_share: float = 0.5        # tokens whose tenant part is the bench tenant's
    body_mb: float = 50.0
    body_parallel: int = 3
    bodies_s: float = 10.0                # rounds of oversized bodies are repeated for at least this long
    slow_clients: int = 200
    stuck_drivers: int = 10
    slow_s: float = 20.0
    baseline_s: float = 30.0
    duration_s: float = 600.0             # the token phase stops here even if tokens remain
    customers: int = 4
    drivers: int = 5
    workers: int = 1                      # engine api processes
    auth_failure_limit: int | None = None  # WAKALA_AUTH_FAILURE_LIMIT for the engine (None: its default)
    postgres: PostgresSettings | None = None   # the databases (default: from the environment)
    engine_env: dict[str, str] = field(default_factory=dict)   # more WAKALA_* for the engine
    profile: str | None = None            # py-spy raw output of the engine during the token flood

    def __post_init__(self) -> None:
        for name, lo, hi in LIMITS:
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int | float) and lo <= value <= hi):
                raise FloodSettingError(f"{name} must be between {lo:,} and {hi:,}, got {value!r}")


class FloodSettingError(WakalaError):
    """A bench setting out of range (named, with the range)."""


# (field, lowest, highest): what the bench can run (NaN fails every comparison, so it is refused)
LIMITS = (("tokens", 1, 10_000_000), ("concurrency", 1, 4096), ("source_ips", 1, 250), ("ws_share", 0, 1),
          ("real_tenant_share", 0, 1), ("body_mb", 0.001, 4096), ("body_parallel", 1, 256),
          ("bodies_s", 0, 3600), ("slow_clients", 0, 20_000), ("stuck_drivers", 0, 1000), ("slow_s", 0, 3600),
          ("baseline_s", 1, 3600), ("duration_s", 1, 86_400), ("customers", 1, 1000), ("drivers", 0, 1000),
          ("workers", 1, 64), ("auth_failure_limit", 1, 1_000_000))


def read_rss_mb(pids: list[int], field_name: str = "VmRSS") -> float:
    """Sum of one /proc/<pid>/status memory field (kB) over live processes, in MB."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith(field_name + ":"):
                        total += int(line.split()[1])
                        break
        except (OSError, ValueError, IndexError):
            pass
    return round(total / 1024, 1)


def open_fds(pids: list[int]) -> int:
    """File descriptors the processes hold (sockets included), from /proc/<pid>/fd."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{pid}/fd"))
    return total


class RssWatch:
    """Samples the engine's RSS (and open descriptors) every ``every_s`` s; the peaks per phase."""

    def __init__(self, pid: int, every_s: float = 0.25) -> None:
        self.pid, self.every_s = pid, every_s
        self.phase = "start"
        self.peak: dict[str, float] = defaultdict(float)
        self.fds: dict[str, int] = defaultdict(int)
        self._task: asyncio.Task | None = None

    def pids(self) -> list[int]:
        return [self.pid, *_children(self.pid)]

    def now(self) -> float:
        return read_rss_mb(self.pids())

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            rss = self.now()
            self.peak[self.phase] = max(self.peak[self.phase], rss)
            self.fds[self.phase] = max(self.fds[self.phase], open_fds(self.pids()))
            await asyncio.sleep(self.every_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def _sources(n: int) -> list[str]:
    return [f"127.0.0.{2 + i}" for i in range(max(1, min(n, 250)))]


def _token_requests(bench: FloodBench, tenant_hex: str, seed: int = 1):
    """(kind, request bytes or a websocket's headers) for each flood token, endlessly; the kind
    names the route and whether the token's tenant part is the bench tenant's (``real``) or random."""
    rng = random.Random(seed)
    bodies = {"driver_locations": b'{"pings":[]}', "driver_shift": b'{"action":"start"}', "rest_post": b"{}"}
    routes = (("driver_locations", "POST", "/v1/drivers/locations", "wkd"),
              ("driver_shift", "POST", "/v1/drivers/shift", "wkd"),
              ("rest_get", "GET", "/v1/orders", "wku"),
              ("rest_post", "POST", "/v1/orders", "wku"))
    while True:
        real = rng.random() < bench.real_tenant_share
        tenant = tenant_hex if real else None
        which = "real" if real else "random"
        if rng.random() < bench.ws_share:
            yield f"driver_ws/{which}", {"Authorization": f"Bearer {random_token('wkd', rng, tenant)}"}
            continue
        kind, method, path, prefix = routes[rng.randrange(len(routes))]
        headers = {"Authorization": f"Bearer {random_token(prefix, rng, tenant)}"}
        if method == "POST":
            headers["Content-Type"] = "application/json"
        yield f"{kind}/{which}", http_request(method, path, headers, bodies.get(kind, b""))


async def _token_flood(addr: tuple[str, int], bench: FloodBench, tenant_hex: str,
                       counts: Counter[str], by_route: dict[str, Counter[str]]) -> tuple[int, float]:
    """Send ``bench.tokens`` token attempts (or stop at ``duration_s``); (sent, seconds)."""
    requests = _token_requests(bench, tenant_hex)
    sources = _sources(bench.source_ips)
    budget = itertools.count()
    deadline = time.monotonic() + bench.duration_s
    sent = 0

    async def worker(i: int) -> None:
        nonlocal sent
        conn = RawConnection(addr, sources[i % len(sources)])
        try:
            while next(budget) < bench.tokens and time.monotonic() < deadline:
                kind, data = next(requests)
                if kind.startswith("driver_ws"):
                    result = await websocket_attempt(addr, sources[sent % len(sources)], "/v1/drivers/stream", data)
                else:
                    result = await conn.request(data)
                sent += 1
                counts[result] += 1
                by_route[kind][result] += 1
        finally:
            conn.close()

    started = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(bench.concurrency)))
    return sent, time.monotonic() - started


BODY_ROUTES = ("/v1/drivers/shift", "/v1/drivers/locations",
               "/v1/drivers/deliveries/00000000-0000-4000-8000-000000000000/events",
               "/v1/orders", "/v1/payments/callback")


async def _bodies(addr: tuple[str, int], bench: FloodBench, counts: Counter[str],
                  by_route: dict[str, Counter[str]]) -> tuple[int, float]:
    size = int(bench.body_mb * 1024 * 1024)
    sources = _sources(bench.source_ips)
    gate = asyncio.Semaphore(bench.body_parallel)
    poured = 0

    async def one(i: int, path: str, chunked: bool) -> None:
        nonlocal poured
        async with gate:
            result, sent = await oversized_body(addr, sources[i % len(sources)], "POST", path, size, chunked=chunked)
        poured += sent
        counts[result] += 1
        by_route[f"{path.split('/v1/')[1][:24]} {'chunked' if chunked else 'declared'}"][result] += 1

    started = time.monotonic()
    jobs = [(path, chunked) for path in BODY_ROUTES for chunked in (False, True)]
    rounds = 0
    while rounds == 0 or time.monotonic() - started < bench.bodies_s:
        await asyncio.gather(*(one(i, p, c) for i, (p, c) in enumerate(jobs)))
        rounds += 1
    return poured, time.monotonic() - started


async def _headers(addr: tuple[str, int], bench: FloodBench, counts: Counter[str],
                   by_route: dict[str, Counter[str]], rounds: int = 10) -> None:
    sources = _sources(bench.source_ips)
    long_query = "q=" + "a" * 16_384
    pad = {"X-Pad": "p" * 65_536}

    async def rest(i: int, data: bytes, label: str) -> None:
        conn = RawConnection(addr, sources[i % len(sources)], timeout_s=10)
        try:
            result = await conn.request(data)
        finally:
            conn.close()
        counts[result] += 1
        by_route[label][result] += 1

    async def ws(i: int, target: str, headers: dict[str, str], label: str) -> None:
        result = await websocket_attempt(addr, sources[i % len(sources)], target, headers, timeout_s=10)
        counts[result] += 1
        by_route[label][result] += 1

    jobs = []
    for i in range(rounds):
        jobs += [rest(i, http_request("GET", f"/v1/orders?{long_query}"), "16 KB target: GET /v1/orders"),
                 rest(i, http_request("GET", "/v1/orders", pad), "64 KB header: GET /v1/orders"),
                 ws(i, f"/v1/drivers/stream?{long_query}", {}, "16 KB target: driver websocket"),
                 ws(i, "/v1/drivers/stream", pad, "64 KB header: driver websocket")]
    await asyncio.gather(*jobs)


async def _slow(addr: tuple[str, int], bench: FloodBench, population: Population, counts: Counter[str],
                by_route: dict[str, Counter[str]]) -> dict[str, float | None]:
    sources = _sources(bench.source_ips)
    until = time.time() + bench.slow_s
    closes: dict[str, list[float]] = defaultdict(list)
    stuck_frames: list[int] = []

    async def loris(i: int) -> None:
        result, took = await slowloris(addr, sources[i % len(sources)], "/v1/orders", until)
        counts[result] += 1
        by_route["slowloris headers"][result] += 1
        if result != "held_open":
            closes["slowloris"].append(took)

    async def silent(i: int) -> None:
        result, took = await silent_websocket(addr, sources[i % len(sources)], until)
        counts[result] += 1
        by_route["websocket, no token, never reads"][result] += 1
        if result != "held_open":
            closes["silent websocket"].append(took)

    async def stuck(i: int, driver_id: str, token: str) -> None:
        # real drivers on an address of their own: the attackers' addresses are over their
        # refusal budget by now, and a throttled upgrade is not what this measures
        result, frames = await never_reading_driver(addr, f"127.0.1.{1 + i % 250}", token, driver_id, until)
        by_route["driver websocket, never reads"][result] += 1   # a real driver: not a refusal
        stuck_frames.append(frames)

    await asyncio.gather(*(loris(i) for i in range(bench.slow_clients)),
                         *(silent(i) for i in range(max(1, bench.slow_clients // 10))),
                         *(stuck(i, d, t) for i, (d, t) in enumerate(population.stuck_drivers)))
    return {**{f"{name}_median_s_to_close": round(sorted(v)[len(v) // 2], 1) if v else None
               for name, v in (("slowloris", closes["slowloris"]), ("silent_ws", closes["silent websocket"]))},
            "stuck_driver_frames_sent": stuck_frames}


def _engine_env(bench: FloodBench, port: int, streams, payment_secret: str) -> dict[str, str]:
    env = dict(os.environ, WAKALA_HTTP_PORT=str(port), WAKALA_PAYMENT_WEBHOOK_SECRET=payment_secret,
               WAKALA_LOCATIONS_TOPIC=streams.locations_topic,
               WAKALA_DEAD_LETTERS_TOPIC=streams.dead_letters_topic, WAKALA_APP_ID=streams.app_id,
               WAKALA_API_RATE_LIMIT="1000000")   # the legitimate mix is not what is being limited
    if bench.postgres is not None:
        env["WAKALA_CONTROL_DSN"] = bench.postgres.control.url()
        env["WAKALA_SHARD_DATABASES"] = ",".join(bench.postgres.shard_databases)
    if bench.auth_failure_limit is not None:
        env["WAKALA_AUTH_FAILURE_LIMIT"] = str(bench.auth_failure_limit)
    env.update(bench.engine_env)
    return env


def _loadavg() -> float:
    """The machine's 1-minute load average: how busy the shared cores were besides this bench."""
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


async def run_flood_bench(bench: FloodBench) -> dict:
    pg = bench.postgres or PostgresSettings.from_env()
    streams = fresh_streams()
    print(f"preparing the bench tenant, {bench.customers} customers, {bench.drivers} drivers ...", flush=True)
    population = await populate(pg, bench.customers, bench.drivers, bench.stuck_drivers)
    port, secret = free_port(), secrets.token_hex(16)
    addr = ("127.0.0.1", port)
    os.makedirs(".wakala", exist_ok=True)
    engine = spawn_wakala(["engine", "api", "--workers", str(bench.workers)],
                          _engine_env(bench, port, streams, secret), LOG)
    legit = LegitWorkload(f"127.0.0.1:{port}", population, secret)
    rss = RssWatch(engine.pid)
    counts: dict[str, Counter[str]] = {p: Counter() for p in FLOOD_PHASES}
    by_route: dict[str, Counter[str]] = defaultdict(Counter)
    marks: dict[str, float] = {}
    profiler = Profiler(engine.pid, bench.profile) if bench.profile else None
    profile: tuple[int, list, list] = (0, [], [])
    try:
        await _wait_ready(addr, engine)
        rss.start()
        legit.start()
        await asyncio.sleep(3)   # connections made, caches warm: not measured
        legit.phase = rss.phase = "baseline"
        marks["loadavg_start"] = _loadavg()
        print(f"baseline: the legitimate workload alone for {bench.baseline_s:g} s ...", flush=True)
        await asyncio.sleep(bench.baseline_s)
        _check_alive(engine)

        legit.phase = rss.phase = "tokens"
        marks["rss_before_tokens"] = rss.now()
        print(f"token flood: {bench.tokens:,} random tokens on {bench.concurrency} connections ...", flush=True)
        if profiler is not None:
            profiler.start()
        cpu0 = (_cpu_seconds(rss.pids()), _cpu_seconds([os.getpid()]))
        token_sent, token_s = await _token_flood(addr, bench, population.tenant_id.replace("-", ""),
                                                 counts["tokens"], by_route)
        marks["rss_after_tokens"] = rss.now()
        marks["engine_cores"] = (_cpu_seconds(rss.pids()) - cpu0[0]) / max(token_s, 1e-9)
        marks["generator_cores"] = (_cpu_seconds([os.getpid()]) - cpu0[1]) / max(token_s, 1e-9)
        if profiler is not None:
            profile = await asyncio.to_thread(profiler.stop)
        _check_alive(engine)

        legit.phase = rss.phase = "bodies"
        print(f"oversized bodies: rounds of {len(BODY_ROUTES) * 2} x {bench.body_mb:g} MB, {bench.body_parallel} "
              f"at once, for {bench.bodies_s:g} s ...", flush=True)
        poured, bodies_s = await _bodies(addr, bench, counts["bodies"], by_route)
        _check_alive(engine)

        legit.phase = rss.phase = "headers"
        await _headers(addr, bench, counts["headers"], by_route)

        legit.phase = rss.phase = "slow"
        print(f"slow clients: {bench.slow_clients} slowloris, never-reading websockets, {bench.slow_s:g} s ...",
              flush=True)
        slow = await _slow(addr, bench, population, counts["slow"], by_route)
        legit.phase = rss.phase = "after"
        await asyncio.sleep(1)
        _check_alive(engine)
        marks["rss_end"] = rss.now()
        marks["loadavg_end"] = _loadavg()
        marks["rss_hwm"] = read_rss_mb(rss.pids(), "VmHWM")
    finally:
        await legit.stop()
        await rss.stop()
        stop(engine)
        await _delete_topics(streams)

    figures = figures_of(bench, legit, rss.peak, counts, marks, token_sent, token_s, poured, bodies_s, slow)
    figures["engine_open_fds_peak_by_phase"] = {p: rss.fds.get(p) for p in ("baseline", *FLOOD_PHASES)}
    if profiler is not None:
        figures["profile_samples"] = profile[0]
        figures["profile_top_self_pct"] = {frame: own for frame, own, _ in profile[1][:8]}
        figures["profile_own_code_pct"] = {frame: share for frame, share, _ in profile[2][:8]}
    print_figures(bench, figures, by_route, profile, profiler.note if profiler else "")
    return figures


async def _wait_ready(addr: tuple[str, int], engine) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=f"http://{addr[0]}:{addr[1]}", timeout=5) as http:
        for _ in range(300):
            with contextlib.suppress(httpx.TransportError):
                if (await http.get("/healthz")).status_code == 200:
                    return
            _check_alive(engine)
            await asyncio.sleep(0.2)
    raise RuntimeError(f"the engine did not answer /healthz in 60 s; see {LOG}")


def _check_alive(engine) -> None:
    if engine.poll() is not None:
        raise RuntimeError(f"the engine exited ({engine.returncode}) during the flood; see {LOG}")
