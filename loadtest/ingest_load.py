"""One load step of `wakala bench ingest`: fresh client processes, a bounded ramp, one measured window.

The engine stays up across steps; each step spawns its own client processes (so their CPU,
failures and any crash belong to that step alone), connects the step's drivers at no more than
``connect_rate_per_s`` in total (waiting past the ramp's time limit, up to ``RAMP_GRACE_S``,
when the ramp's pace would finish in that time), and measures only once every driver is connected, has had
one upload interval to settle into its rhythm (each driver's first upload comes at a random
point of its first interval) and the worker has worked off the ramp's backlog (``_settle``). The window reads the worker's accepted-pings counter and latency
samples in Redis (cleared at the window start, taken out every ``DRAIN_EVERY_S``) and the CPU
of every part from /proc.

A client process that dies or stops refreshing its counters is reported, never quietly dropped:
the step counts it in ``dead_clients`` and fails, because the load it was offering is gone.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import queue
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

import redis.asyncio as aioredis

from loadtest.ingest_clients import COUNTERS, ClientPlan, client_process
from loadtest.ingest_steps import Step, StepResult
from loadtest.report import percentiles_ms
from streams.keys import INGEST_COUNTS_KEY, INGEST_LATENCY_KEY

_LIVE, _SENT, _ACKED, _FAILURES, _ERRORS, _HEARTBEAT = (
    COUNTERS.index(k) for k in ("live", "sent", "acked", "failures", "errors", "heartbeat"))
STALLED_AFTER_S = 10.0     # a client whose counters are older than this has a blocked loop
# The worker keeps only the newest LATENCY_SAMPLES_MAX samples (seconds of a busy window), so the
# window's samples are taken out as they come (read and delete in one transaction, none lost).
DRAIN_EVERY_S = 2.0
RAMP_GRACE_S = 60.0
SETTLE_MAX_S = 30.0


async def _accepted(redis: aioredis.Redis) -> int:
    return int(await redis.hget(INGEST_COUNTS_KEY, "accepted") or 0)


async def _settle(clients: _Clients, redis: aioredis.Redis, count_start: int, step: Step, upload_every_s: float,
                  engine_alive: Callable[[], None]) -> float:
    """Wait one upload interval (every driver has uploaded once), then until the worker has caught
    up with what the gateways acknowledged during the ramp (a backlog of at most one second of the
    offered load), for at most SETTLE_MAX_S more: a window that starts on a ramp's backlog measures
    the catching up, not the step. Returns the seconds waited."""
    t0 = time.monotonic()
    await asyncio.sleep(upload_every_s)
    while time.monotonic() - t0 < upload_every_s + SETTLE_MAX_S:
        engine_alive()
        clients.check(started=True)
        backlog = clients.total(_ACKED) - (await _accepted(redis) - count_start)
        if backlog <= step.offered_pings_per_s:
            break
        await asyncio.sleep(0.5)
    return time.monotonic() - t0


def _still_connecting(progress: list[tuple[float, int]], drivers: int, elapsed_s: float, limit_s: float) -> bool:
    """Past the ramp's limit, wait on only if, at the pace of the last 10 s, every driver would be
    connected within RAMP_GRACE_S of the limit: a slow gateway is measured at full load, one that
    cannot take the step's sockets in time (or is stuck) is not waited for."""
    time_left = limit_s + RAMP_GRACE_S - elapsed_s
    now, live = progress[-1]
    earlier = next(((t, n) for t, n in reversed(progress) if now - t >= 10.0), None)
    if time_left <= 0 or earlier is None or live <= earlier[1]:
        return False
    pace = (live - earlier[1]) / (now - earlier[0])
    return (drivers - live) / pace <= time_left


def _cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two snapshots by the processes alive at the second (a process
    born in between counts whole; one that exited in between is lost, e.g. a short Postgres backend)."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


async def _drain_latencies(redis: aioredis.Redis) -> list[float]:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.lrange(INGEST_LATENCY_KEY, 0, -1)
        pipe.delete(INGEST_LATENCY_KEY)
        samples, _ = await pipe.execute()
    return [float(x) for x in samples]


class _Clients:
    """The step's client processes and their shared counters."""

    def __init__(self, plan: ClientPlan, drivers: list[tuple[int, str, str]], processes: int) -> None:
        ctx = mp.get_context("spawn")
        self.results = ctx.Queue()
        self.stop_event = ctx.Event()
        self.counters = [ctx.Array("d", len(COUNTERS), lock=False) for _ in range(processes)]
        self.procs = [ctx.Process(target=client_process, daemon=True, name=f"ingest-client-{i}",
                                  args=(plan, drivers[i::processes], self.counters[i], self.stop_event,
                                        self.results))
                      for i in range(processes)]
        self.dead: dict[int, str] = {}

    def start(self) -> None:
        for proc in self.procs:
            proc.start()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid]

    def total(self, field: int) -> float:
        """A counter summed over the processes (a dead one's last published value included,
        except its live sockets, which died with it)."""
        return sum(arr[field] for i, arr in enumerate(self.counters) if field != _LIVE or i not in self.dead)

    def check(self, started: bool) -> None:
        """Record any process that exited, or (once started) stopped refreshing its counters."""
        now = time.time()
        for i, proc in enumerate(self.procs):
            if i in self.dead:
                continue
            if proc.exitcode is not None:
                self.dead[i] = f"process_died:exit_{proc.exitcode}"
            elif started and self.counters[i][_HEARTBEAT] and now - self.counters[i][_HEARTBEAT] > STALLED_AFTER_S:
                self.dead[i] = "process_stalled"

    def stop(self, wait_s: float = 20.0) -> tuple[Counter[str], list[str]]:
        """Stop every process; their failure kinds and any crash messages."""
        self.stop_event.set()
        kinds: Counter[str] = Counter()
        crashes: list[str] = []
        expected = sum(1 for i, p in enumerate(self.procs) if p.exitcode is None and i not in self.dead)
        deadline = time.monotonic() + wait_s
        got = 0
        while got < expected + len(self.dead) and time.monotonic() < deadline:
            try:
                report = self.results.get(timeout=0.5)
            except queue.Empty:
                if all(p.exitcode is not None for p in self.procs) and self.results.empty():
                    break
                continue
            got += 1
            kinds.update(report.get("kinds", {}))
            if "crashed" in report:
                crashes.append(report["crashed"])
        for proc in self.procs:
            proc.join(timeout=max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        for reason in self.dead.values():
            kinds[reason] += 1
        return kinds, crashes


async def run_step(step: Step, drivers: list[tuple[int, str, str]], plan: ClientPlan, processes: int,
                   duration_s: float, redis: aioredis.Redis,
                   cpu_seconds: Callable[[list[int]], dict[str, dict[int, float]]],
                   engine_alive: Callable[[], None]) -> StepResult:
    """Run one step over ``drivers[:step.drivers]``, ``plan.connect_rate_per_s`` being the total
    ramp rate (shared out here); ``cpu_seconds(client_pids)`` -> per part, CPU s per pid (cumulative);
    ``engine_alive()`` raises if an engine process exited."""
    chosen = drivers[:step.drivers]
    processes = max(1, min(processes, len(chosen)))
    clients = _Clients(replace(plan, connect_rate_per_s=plan.connect_rate_per_s / processes), chosen, processes)
    ramp_limit_s = 30.0 + 3.0 * step.drivers / plan.connect_rate_per_s   # a slow gateway gets its chance
    count_start = await _accepted(redis)
    t_ramp = time.monotonic()
    clients.start()
    try:
        last_report = 0.0
        progress: list[tuple[float, int]] = []   # (when, live) to tell a slow ramp from a stuck one
        while True:
            engine_alive()
            clients.check(started=False)
            live = int(clients.total(_LIVE))
            now = time.monotonic()
            progress.append((now, live))
            if live >= step.drivers or len(clients.dead) == processes:
                break
            if now - t_ramp >= ramp_limit_s and not _still_connecting(progress, step.drivers, now - t_ramp,
                                                                     ramp_limit_s):
                break
            if time.monotonic() - last_report >= 5:
                print(f"  connected {live}/{step.drivers}, failures so far {int(clients.total(_FAILURES))}",
                      flush=True)
                last_report = time.monotonic()
            await asyncio.sleep(0.25)
        ramp_s = time.monotonic() - t_ramp
        print(f"  {int(clients.total(_LIVE))}/{step.drivers} connected after {ramp_s:.1f} s; settling", flush=True)
        settle_s = await _settle(clients, redis, count_start, step, plan.upload_every_s, engine_alive)
        print(f"  settled in {settle_s:.1f} s; measuring {duration_s:g} s", flush=True)
        await redis.delete(INGEST_LATENCY_KEY)
        live_at_start = int(clients.total(_LIVE))
        cpu0 = cpu_seconds(clients.pids)
        acked0, sent0, failures0 = clients.total(_ACKED), clients.total(_SENT), clients.total(_FAILURES)
        count0 = await _accepted(redis)
        latencies: list[float] = []
        t0 = last_drain = time.perf_counter()
        while time.perf_counter() - t0 < duration_s:
            await asyncio.sleep(min(0.5, max(0.0, duration_s - (time.perf_counter() - t0))))
            engine_alive()
            clients.check(started=True)
            if time.perf_counter() - last_drain >= DRAIN_EVERY_S:
                latencies += await _drain_latencies(redis)
                last_drain = time.perf_counter()
        count1 = await _accepted(redis)
        elapsed = time.perf_counter() - t0
        cpu1 = cpu_seconds(clients.pids)
        acked1, sent1 = clients.total(_ACKED), clients.total(_SENT)
        live_at_end = int(clients.total(_LIVE))
        latencies += await _drain_latencies(redis)
    finally:
        kinds, crashes = await asyncio.to_thread(clients.stop)
    for crash in crashes:
        print(f"  a load client crashed: {crash}", flush=True)
    lat = percentiles_ms(latencies)
    return StepResult(
        step=step, pings_per_s=(count1 - count0) / elapsed, p50_ms=lat["p50_ms"], p99_ms=lat["p99_ms"],
        latency_samples=len(latencies), drivers_connected=min(live_at_start, live_at_end),
        client_failures=int(clients.total(_FAILURES) - failures0), ramp_failures=int(failures0),
        client_errors=int(clients.total(_ERRORS)),
        dead_clients=len(clients.dead), failure_kinds=dict(kinds),
        cpu_cores_used={k: round(_cpu_delta(cpu0.get(k, {}), cpu1[k]) / elapsed, 2) for k in cpu1},
        window_s=elapsed, ramp_s=ramp_s, settle_s=settle_s, client_acked_pings_per_s=(acked1 - acked0) / elapsed,
        client_sent_pings_per_s=(sent1 - sent0) / elapsed)
