"""The load of `wakala bench orders`: clients placing and paying orders over raw keep-alive HTTP/1.1.

The load generator shares two cores with the engine and PostgreSQL, so what it spends per
request is taken from the figure it measures. An HTTP library (httpx) cost about 3 ms of CPU
per request here, a quarter of the machine at the bench's rate. So a client is an asyncio
stream kept alive across requests, the request bytes are built by ``flood_clients.http_request``
and the answer read by ``flood_clients.read_response`` (status, headers, a Content-Length or
chunked body), and JSON goes through orjson. Each client task owns one connection, opened on
first use and again after the server closed it.

A transport failure (reset, refused, a torn answer, no answer within ``TIMEOUT_S``) is an
outcome like a refusal: counted under ``transport <ExceptionName>``, the connection dropped,
the client goes on. Latency is from writing the request to having the whole answer; the JSON
encoding before it is not in it (it was, with httpx, a few tenths of a millisecond).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import orjson

from dispatch.api import sign
from loadtest.flood_clients import http_request, read_response
from schema.tenants import Tenant

VENDOR_AT = (-26.2360, 27.9090)   # Orlando, Soweto
TIMEOUT_S = 60.0
TRANSPORT_ERRORS = (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    ValueError, IndexError)


@dataclass
class BenchTenant:
    tenant: Tenant
    vendor_id: str
    products: list[str]
    tokens: list[str]


class Answer:
    """A status and the decoded JSON body (None when the body is not JSON)."""

    __slots__ = ("status", "json")

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        try:
            self.json = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            self.json = None

    def reason(self) -> str | None:
        """The error vocabulary's reason (``{"error": {"reason": ...}}``), None if there is none."""
        error = self.json.get("error") if isinstance(self.json, dict) else None
        return error.get("reason") if isinstance(error, dict) else None


class ApiConnection:
    """One keep-alive HTTP/1.1 connection to the engine, reopened when the server has closed it.

    ``post`` raises one of ``TRANSPORT_ERRORS`` when the exchange fails; the connection is then
    dropped, so the next call starts on a fresh one.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, target: str, body: bytes, headers: dict[str, str]) -> Answer:
        request = http_request("POST", target, {"Content-Type": "application/json", **headers}, body,
                               host=f"127.0.0.1:{self.port}")
        try:
            async with asyncio.timeout(TIMEOUT_S):
                # A connection the server closed while idle shows as EOF already read: open a new
                # one rather than lose a request on it (a POST is not retried).
                if self.reader is None or self.reader.at_eof() or self.writer.is_closing():
                    self.close()
                    self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port,
                                                                             limit=1 << 20)
                self.writer.write(request)
                response = await read_response(self.reader)
        except BaseException:
            self.close()
            raise
        if response.closes:
            self.close()
        return Answer(response.status, response.body)

    def close(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.transport.abort()
        self.reader = self.writer = None


def order_body(t: BenchTenant, rng: random.Random, lines: int | None = None, product: str | None = None) -> dict:
    picked = [product] if product else rng.sample(t.products, lines or rng.randint(1, 3))
    return {"vendor_id": t.vendor_id, "payment_method": "card",
            "lines": [{"product_id": p, "quantity": 1 if product else rng.randint(1, 3)} for p in picked],
            "delivery_lat": VENDOR_AT[0] + rng.uniform(-0.02, 0.02),
            "delivery_lng": VENDOR_AT[1] + rng.uniform(-0.02, 0.02),
            "delivery_address": {"street": "bench"}}


async def _call(conn: ApiConnection, call: str, target: str, raw: bytes, headers: dict[str, str],
                expected: int, times_ms: list[float], errors: Counter[str]) -> Answer | None:
    """One timed POST: its latency in ``times_ms`` whatever happens; the answer if its status
    is ``expected``, else None with the failure counted in ``errors`` under ``call``."""
    started = time.perf_counter()
    try:
        answer = await conn.post(target, raw, headers)
    except TRANSPORT_ERRORS as exc:
        errors[f"{call} transport {type(exc).__name__}"] += 1
        return None
    finally:
        times_ms.append((time.perf_counter() - started) * 1000)
    if answer.status != expected:
        errors[f"{call} {answer.status} {answer.reason()}"] += 1
        return None
    return answer


async def throughput(port: int, tenants: list[BenchTenant], clients: int, seconds: float, secret: str) -> dict:
    """``clients`` loops for ``seconds``, each placing an order and paying it through the callback."""
    place_ms: list[float] = []
    pay_ms: list[float] = []
    errors: Counter[str] = Counter()
    deadline = time.monotonic() + seconds

    async def client(seed: int) -> None:
        rng = random.Random(seed)
        conn = ApiConnection(port)
        try:
            while time.monotonic() < deadline:
                t = rng.choice(tenants)
                raw = orjson.dumps(order_body(t, rng))
                headers = {"Authorization": f"Bearer {rng.choice(t.tokens)}"}
                placed = await _call(conn, "place", "/v1/orders", raw, headers, 201, place_ms, errors)
                if placed is None:
                    continue
                order = placed.json
                raw = orjson.dumps({
                    "tenant_id": str(t.tenant.id), "order_id": order["id"], "idempotency_key": f"bench-{uuid.uuid4().hex}",
                    "amount": order["total_amount"], "status": "succeeded", "gateway": "bench"})
                await _call(conn, "pay", "/v1/payments/callback", raw, {"X-Wakala-Signature": sign(secret, raw)},
                            200, pay_ms, errors)
        finally:
            conn.close()

    started = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.monotonic() - started
    placed = len(place_ms) - sum(n for k, n in errors.items() if k.startswith("place"))
    paid = len(pay_ms) - sum(n for k, n in errors.items() if k.startswith("pay"))
    return {"elapsed_s": elapsed, "placed": placed, "paid": paid, "place_ms": place_ms, "pay_ms": pay_ms,
            "errors": dict(errors)}


async def race(port: int, t: BenchTenant, product: str, clients: int) -> dict:
    """``clients`` orders of one unit of ``product``, released together; outcomes and latencies.

    Each racer opens its connection after the gate, inside its measured time, as the racers
    beyond the throughput run's pooled connections did with httpx.
    """
    rng = random.Random(7)
    gate = asyncio.Event()
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()

    async def one(i: int) -> None:
        raw = orjson.dumps(order_body(t, rng, product=product))
        headers = {"Authorization": f"Bearer {t.tokens[i % len(t.tokens)]}"}
        conn = ApiConnection(port)
        await gate.wait()
        started = time.perf_counter()
        try:
            answer = await conn.post("/v1/orders", raw, headers)
        except TRANSPORT_ERRORS as exc:
            outcomes[f"transport {type(exc).__name__}"] += 1
            return
        finally:
            latencies.append((time.perf_counter() - started) * 1000)
            conn.close()
        outcomes["ok" if answer.status == 201 else f"{answer.status} {answer.reason()}"] += 1

    tasks = [asyncio.create_task(one(i)) for i in range(clients)]
    await asyncio.sleep(0.2)
    started = time.monotonic()
    gate.set()
    await asyncio.gather(*tasks)
    return {"elapsed_s": time.monotonic() - started, "outcomes": dict(outcomes), "latencies": latencies}
