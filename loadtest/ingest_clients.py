"""Load-client processes for `wakala bench ingest`: one websocket per driver, behaving like a phone.

The load generator shares the machine's two cores with the engine it measures, so the hot path
is kept cheap: an upload is one ``%``-format of a per-driver template per fix (no dicts, no
``json.dumps``), an ack is recognised by its prefix and its ``accepted`` count read from the
tail of the frame (the gateway encodes ``{"type":"ack","seq":N,"accepted":K}`` compactly), and
only the rare error or notice frame is decoded. The loop is uvloop; compression is not offered
(the engine does not enable it).

A driver behaves as a phone does: it connects when its turn in the connection ramp comes (the
process's share of ``--connect-rate``, with at most ``MAX_CONNECTING`` handshakes in flight), sends the fixes gathered since its last upload every
``upload_every_s`` seconds (the first one at a random point of that interval, so phones are
not in step), waits for the ack, and on *any* failure (refused or dropped handshake, closed
socket, missing ack, even a library assertion) counts it by kind and reconnects after a
jittered exponential backoff. Nothing a driver meets ends its process.

A driver's position is a function of time (north at 4.5 m/s from a start drawn from its index),
so the same driver in the next step, in a fresh process, continues plausibly instead of
jumping; fixes start at the session's start, so none is older than one already stored.

The parent watches each process through a small shared array of counters (``COUNTERS``),
refreshed four times a second, and stops it with an event; the process then puts its totals
and failure kinds on the results queue and exits at once, leaving the sockets to the kernel
(as phones that lose signal do) rather than spending the next step's time on close handshakes.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass

__all__ = [
    "COUNTERS", "ClientPlan", "FixSource", "backoff_s", "client_process", "failure_kind", "read_reply",
]

CENTRE = (-26.2041, 28.0473)       # Johannesburg CBD; drivers spread ~25 km around it
SPREAD_DEG = 0.22
SPEED_MPS = 4.5                    # a motorbike in traffic
DEG_PER_S = SPEED_MPS / 111_320    # heading north
COUNTERS = ("live", "sent", "acked", "errors", "failures", "reconnects", "heartbeat")
_LIVE, _SENT, _ACKED, _ERRORS, _FAILURES, _RECONNECTS, _HEARTBEAT = range(len(COUNTERS))
ACK_PREFIX = '{"type":"ack"'
# Handshakes (with their token check) in flight per process: the ramp slows to the gateway's
# pace instead of queueing connects until they time out. Not lower: the gateway serves the
# handshakes of one loop iteration together, so fewer in flight measured a slower ramp.
MAX_CONNECTING = 1_000
ACCEPTED_FIELD = '"accepted":'


@dataclass(frozen=True)
class ClientPlan:
    """What every driver of one client process does (picklable: it crosses the spawn)."""

    url: str
    hz: float
    upload_every_s: float
    connect_rate_per_s: float     # this process's share of the total ramp rate
    origin_ts: float              # positions are a function of time since this instant
    ack_timeout_s: float = 30.0
    open_timeout_s: float = 60.0


class FixSource:
    """One driver's fixes: ``upload(now, seq)`` -> the upload frame of the fixes due since the last one.

    A fix is due every ``1/hz`` s from the session start; at most ``max_fixes`` go in one upload
    (the oldest are dropped, as a phone's bounded buffer would), so a stalled session does not
    later burst past the engine's per-driver rate limit.
    """

    def __init__(self, driver_id: str, index: int, origin_ts: float, hz: float, start_ts: float,
                 max_fixes: int) -> None:
        rng = random.Random(index)
        self.lat0 = CENTRE[0] + rng.uniform(-SPREAD_DEG, SPREAD_DEG)
        lng = CENTRE[1] + rng.uniform(-SPREAD_DEG, SPREAD_DEG)
        self.origin_ts = origin_ts
        self.period_s = 1.0 / hz
        self.next_ts = start_ts
        self.max_fixes = max(1, max_fixes)
        self.template = ('{"driver_id":"' + driver_id + '","lat":%.6f,"lng":' + f"{lng:.6f}"
                         + f',"accuracy":6.0,"speed":{SPEED_MPS},"heading":0.0,"timestamp":%.3f}}')

    def upload(self, now: float, seq: int) -> tuple[str, int]:
        """The frame and how many fixes it carries (0: nothing due yet, no frame to send)."""
        n = int((now - self.next_ts) / self.period_s) + 1 if now >= self.next_ts else 0
        if n > self.max_fixes:
            self.next_ts += (n - self.max_fixes) * self.period_s
            n = self.max_fixes
        if n == 0:
            return "", 0
        fixes = []
        ts = self.next_ts
        for _ in range(n):
            fixes.append(self.template % (self.lat0 + DEG_PER_S * (ts - self.origin_ts), ts))
            ts += self.period_s
        self.next_ts = ts
        return f'{{"type":"pings","seq":{seq},"pings":[{",".join(fixes)}]}}', n


def read_reply(text: str | bytes, seq: int) -> tuple[str, int | str]:
    """A server frame, read as cheaply as it allows.

    ``("ack", accepted)``; ``("error", reason)`` for an error answering this upload (its ``seq``);
    ``("notice", reason_or_type)`` for anything else (worker notices, offers), which does not
    answer the upload. Only non-ack frames are decoded.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if text.startswith(ACK_PREFIX):
        at = text.rfind(ACCEPTED_FIELD)
        if at >= 0:
            digits = text[at + len(ACCEPTED_FIELD):].rstrip("} \n")
            if digits.isdigit():
                return "ack", int(digits)
    try:
        frame = json.loads(text)
    except ValueError:
        return "notice", "undecodable"
    if not isinstance(frame, dict):
        return "notice", "not_an_object"
    if frame.get("type") == "ack" and isinstance(frame.get("accepted"), int):
        return "ack", frame["accepted"]
    if frame.get("type") == "error" and frame.get("seq") == seq:
        return "error", str(frame.get("reason", "unknown"))
    return "notice", str(frame.get("reason") or frame.get("type") or "unknown")


class NoAck(Exception):
    """The upload was not answered within the ack timeout."""


class NotReady(Exception):
    """The socket opened but its first frame was not ``ready``."""


def failure_kind(exc: BaseException) -> str:
    """A short, stable name for why a session failed: ``failed:<Type>[:<status or close code>]``."""
    name = type(exc).__name__
    response = getattr(exc, "response", None)
    if response is not None and getattr(response, "status_code", None) is not None:
        return f"failed:{name}:{response.status_code}"
    rcvd = getattr(exc, "rcvd", None)
    if rcvd is not None and getattr(rcvd, "code", None) is not None:
        return f"failed:{name}:{rcvd.code}"
    return f"failed:{name}"


def backoff_s(attempt: int, rng: random.Random, cap_s: float = 8.0) -> float:
    """Jittered exponential backoff before reconnect ``attempt`` (1, 2, ...): 0.5 s doubling to ``cap_s``."""
    return min(cap_s, 0.5 * 2 ** max(0, attempt - 1)) * rng.uniform(0.5, 1.5)


def client_process(plan: ClientPlan, drivers: list[tuple[int, str, str]], counters, stop_event,
                   results) -> None:
    """Process entry point: ``drivers`` are ``(index, driver_id, token)``."""
    import gc

    import uvloop

    gc.set_threshold(50_000, 20, 100)   # thousands of live websockets: as in the gateway
    try:
        uvloop.run(_client_main(plan, drivers, counters, stop_event, results))
    except BaseException as exc:  # noqa: BLE001 - the parent must learn why, then sees the exit code
        results.put({"pid": os.getpid(), "crashed": f"{type(exc).__name__}: {exc}"})
        results.close()
        results.join_thread()
        os._exit(1)


async def _client_main(plan: ClientPlan, drivers, counters, stop_event, results) -> None:
    from websockets.asyncio.client import connect

    loop = asyncio.get_running_loop()
    rng = random.Random(os.getpid())
    c = [0] * len(COUNTERS)
    kinds: Counter[str] = Counter()
    stopping = asyncio.Event()
    connecting = asyncio.Semaphore(MAX_CONNECTING)
    max_fixes = max(1, round(plan.hz * plan.upload_every_s)) * 2

    async def drive(index: int, driver_id: str, token: str) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        attempt = 0
        first_offset = rng.uniform(0, plan.upload_every_s)   # phones do not start in step
        while not stopping.is_set():
            ws = None
            try:
                async with connecting:
                    ws = await connect(plan.url, additional_headers=headers, open_timeout=plan.open_timeout_s,
                                       ping_interval=None, compression=None, proxy=None, max_queue=4,
                                       close_timeout=2, user_agent_header=None)
                    try:
                        async with asyncio.timeout(plan.ack_timeout_s):
                            first = await ws.recv()
                    except TimeoutError:
                        raise NotReady("no ready frame in time") from None
                if not (first if isinstance(first, str) else first.decode()).startswith('{"type":"ready"'):
                    raise NotReady(str(first)[:60])
                c[_LIVE] += 1
                attempt = 0
                try:
                    await session(ws, FixSource(driver_id, index, plan.origin_ts, plan.hz, time.time(), max_fixes),
                                  first_offset)
                finally:
                    c[_LIVE] -= 1
                return
            except Exception as exc:  # noqa: BLE001 - a phone survives anything its network does
                if stopping.is_set():
                    return
                kinds[failure_kind(exc)] += 1
                c[_FAILURES] += 1
                attempt += 1
                c[_RECONNECTS] += 1
                first_offset = 0.0
                await asyncio.sleep(backoff_s(attempt, rng))
            finally:
                if ws is not None:
                    ws.transport.abort()   # a failed session's socket goes now, no close handshake

    async def session(ws, fixes: FixSource, first_offset: float) -> None:
        next_at = loop.time() + max(first_offset, 1.0 / plan.hz)
        seq = 0
        while True:
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if stopping.is_set():
                return
            seq += 1
            frame, n = fixes.upload(time.time(), seq)
            if n:
                await ws.send(frame)
                c[_SENT] += n
                try:
                    async with asyncio.timeout(plan.ack_timeout_s):
                        while True:
                            kind, value = read_reply(await ws.recv(), seq)
                            if kind == "ack":
                                c[_ACKED] += value
                                break
                            if kind == "error":
                                c[_ERRORS] += 1
                                kinds[f"error:{value}"] += 1
                                break
                            kinds[f"notice:{value}"] += 1
                except TimeoutError:
                    raise NoAck(f"no ack for seq {seq} within {plan.ack_timeout_s:g} s") from None
            next_at = max(next_at + plan.upload_every_s, loop.time())   # late: do not burst to catch up

    def publish() -> None:
        c[_HEARTBEAT] = time.time()
        counters[:] = c

    async def watch() -> None:
        while not stop_event.is_set():
            publish()
            await asyncio.sleep(0.25)
        stopping.set()

    watcher = asyncio.create_task(watch())
    tasks = []
    t0 = loop.time()
    for j, (index, driver_id, token) in enumerate(drivers):
        delay = t0 + j / plan.connect_rate_per_s - loop.time()
        if delay > 0.005:
            await asyncio.sleep(delay)
        if stopping.is_set():
            break
        tasks.append(asyncio.create_task(drive(index, driver_id, token)))
    await watcher
    publish()
    results.put({"pid": os.getpid(), "kinds": dict(kinds), **{k: c[i] for i, k in enumerate(COUNTERS)}})
    results.close()
    results.join_thread()
    os._exit(0)   # the sockets go with the process, as a phone that loses signal
