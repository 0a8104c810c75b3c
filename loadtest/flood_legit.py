"""The legitimate side of `wakala bench flood`: the people the flood must not hurt.

Set-up (admin paths, not measured): the bench tenant (reused by slug), a vendor with deep
stock, a few customers with user tokens, a few drivers with driver tokens (some pinging
normally, some kept for the never-reading sockets of the flood).

The workload is a steady synthetic mix, not a city replay: a replay's own pace (offers,
geofences, simulated time) would make its latency depend on what it happens to be doing, and
the comparison here is the same calls with and without a flood. Each customer, in a loop:
browse the catalogue, place an order (``Idempotency-Key`` sent), pay it through the payment
gateway's signed callback (signed by the engine's own ``sign`` with the platform secret the
bench gives the engine), read it back; an order whose payment failed is cancelled, so no
reservation piles up against the pending-order cap. Each driver sends one ping a second on
the driver websocket and waits for its ack. Every call's latency is filed under the phase
the bench was in when the call started; a failed call is counted by status, and its latency
still counts (a slow refusal is slow).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import httpx

from dispatch.identity.auth import issue_driver_token
from dispatch.identity.drivers import NewDriver, create_driver
from dispatch.identity.users import create_user, create_vendor, issue_user_token
from loadtest.orders import PRODUCTS_SQL, VENDOR_AT  # the orders bench's shop and stock
from loadtest.provision import unique_phone
from schema.db import TenantDatabase
from schema.errors import TenantExists
from schema.settings import PostgresSettings
from schema.tenants import create_tenant, list_tenants

__all__ = ["BENCH_SLUG", "LegitWorkload", "Population", "populate"]

BENCH_SLUG = "bench-flood"


@dataclass
class Population:
    tenant_id: str
    vendor_id: str
    products: list[str]
    customers: list[str]                                        # user tokens
    drivers: list[tuple[str, str]]                              # (driver id, token): pinging normally
    stuck_drivers: list[tuple[str, str]] = field(default_factory=list)   # for never-reading sockets


async def populate(pg: PostgresSettings, customers: int, drivers: int, stuck_drivers: int) -> Population:
    try:
        tenant_id = str((await create_tenant(pg, "Bench Flood", slug=BENCH_SLUG)).id)
    except TenantExists:
        tenant_id = str(next(t.id for t in await list_tenants(pg) if t.slug == BENCH_SLUG))
    run = uuid.uuid4().hex[:8]
    async with TenantDatabase(pg) as db:
        vendor = await create_vendor(db, tenant_id, {
            "business_name": f"Bench Flood Spaza {run}", "address": {"suburb": "Orlando"},
            "lat": VENDOR_AT[0], "lng": VENDOR_AT[1], "delivery_radius_m": 20_000,
            "payment_methods": ["cash", "card"]})
        async with db.tenant_transaction(tenant_id) as tx:
            products = [str(r["product_id"]) for r in await tx.fetch(PRODUCTS_SQL, uuid.UUID(vendor), 10,
                                                                      10_000_000, f"FLOOD-{run}-")]
        tokens = []
        for i in range(customers):
            user = await create_user(db, tenant_id, {"phone": unique_phone(), "name": f"Flood customer {i}",
                                                     "role": "customer"})
            tokens.append((await issue_user_token(db, tenant_id, user["user_id"], ttl_s=6 * 3600)).token)
        made = []
        for i in range(drivers + stuck_drivers):
            driver = str(await create_driver(db, tenant_id, NewDriver(
                "Bench", f"Flood{i}", unique_phone(), f"BFLOOD-{run}-{i:04d}", "motorbike", f"BF {i:04d}")))
            made.append((driver, (await issue_driver_token(db, tenant_id, driver, ttl_s=6 * 3600)).token))
    return Population(tenant_id, vendor, products, tokens, made[:drivers], made[drivers:])


class LegitWorkload:
    """Customers and drivers at a steady pace; latencies by phase (``phase`` is set by the bench)."""

    def __init__(self, addr: str, population: Population, payment_secret: str, *, think_s: float = 0.2,
                 ping_every_s: float = 1.0) -> None:
        self.addr, self.population, self.payment_secret = addr, population, payment_secret
        self.think_s, self.ping_every_s = think_s, ping_every_s
        self.phase = "warmup"
        self.api_ms: dict[str, list[float]] = defaultdict(list)
        self.call_ms: dict[tuple[str, str], list[float]] = defaultdict(list)   # (phase, call) -> ms
        self.ws_ms: dict[str, list[float]] = defaultdict(list)
        self.errors: Counter[str] = Counter()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._http: httpx.AsyncClient | None = None

    def start(self) -> None:
        self._http = httpx.AsyncClient(base_url=f"http://{self.addr}", timeout=60,
                                       limits=httpx.Limits(max_connections=len(self.population.customers) + 2))
        self._tasks = [asyncio.create_task(self._customer(i, token))
                       for i, token in enumerate(self.population.customers)]
        self._tasks += [asyncio.create_task(self._driver(i, d, t))
                        for i, (d, t) in enumerate(self.population.drivers)]

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()

    async def _call(self, method: str, path: str, token: str | None, label: str, body: dict | None = None,
                    headers: dict[str, str] | None = None, content: bytes | None = None) -> dict | None:
        phase = self.phase
        started = time.perf_counter()
        sent = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            if content is not None:
                resp = await self._http.request(method, path, content=content, headers={**sent, **(headers or {})})
            else:
                resp = await self._http.request(method, path, json=body, headers={**sent, **(headers or {})})
        except httpx.HTTPError as exc:
            self._took(phase, label, started)
            self.errors[f"{label} {type(exc).__name__}"] += 1
            return None
        self._took(phase, label, started)
        if resp.status_code >= 300:
            self.errors[f"{label} {resp.status_code}"] += 1
            return None
        return resp.json()

    def _took(self, phase: str, label: str, started: float) -> None:
        ms = (time.perf_counter() - started) * 1000
        self.api_ms[phase].append(ms)
        self.call_ms[phase, label].append(ms)

    async def _customer(self, i: int, token: str) -> None:
        rng = random.Random(i)
        p = self.population
        await asyncio.sleep(rng.uniform(0, self.think_s))
        while not self._stop.is_set():
            await self._call("GET", "/v1/catalogue/products", token, "browse")
            await asyncio.sleep(self.think_s)
            order = await self._call("POST", "/v1/orders", token, "place", {
                "vendor_id": p.vendor_id, "payment_method": "card",
                "lines": [{"product_id": rng.choice(p.products), "quantity": 1}],
                "delivery_lat": VENDOR_AT[0] + rng.uniform(-0.02, 0.02),
                "delivery_lng": VENDOR_AT[1] + rng.uniform(-0.02, 0.02),
                "delivery_address": {"street": "bench"}}, headers={"Idempotency-Key": uuid.uuid4().hex})
            await asyncio.sleep(self.think_s)
            if order is None:
                continue
            paid = await self._pay(order)
            await asyncio.sleep(self.think_s)
            await self._call("GET", f"/v1/orders/{order['id']}", token, "read")
            await asyncio.sleep(self.think_s)
            if paid is None:
                await self._call("POST", f"/v1/orders/{order['id']}/cancel", token, "cancel",
                                 {"reason": "bench"}, headers={"Idempotency-Key": uuid.uuid4().hex})
                await asyncio.sleep(self.think_s)

    async def _pay(self, order: dict) -> dict | None:
        """The payment gateway's callback for ``order``, signed as the gateway signs it."""
        from dispatch.api.payments import SIGNATURE_HEADER, sign

        raw = json.dumps({"tenant_id": self.population.tenant_id, "order_id": order["id"],
                          "idempotency_key": f"flood-{uuid.uuid4().hex}", "amount": order["total_amount"],
                          "status": "succeeded", "gateway": "bench"}).encode()
        return await self._call("POST", "/v1/payments/callback", None, "pay", content=raw, headers={
            "Content-Type": "application/json", SIGNATURE_HEADER: sign(self.payment_secret, raw)})

    async def _driver(self, i: int, driver_id: str, token: str) -> None:
        import websockets

        rng = random.Random(1000 + i)
        lat = VENDOR_AT[0] + rng.uniform(-0.02, 0.02)
        lng = VENDOR_AT[1] + rng.uniform(-0.02, 0.02)
        await asyncio.sleep(rng.uniform(0, self.ping_every_s))
        seq = 0
        while not self._stop.is_set():
            try:
                async with websockets.connect(f"ws://{self.addr}/v1/drivers/stream", open_timeout=60,
                                              compression=None, ping_interval=None,
                                              additional_headers={"Authorization": f"Bearer {token}"}) as ws:
                    if json.loads(await ws.recv()).get("type") != "ready":
                        self.errors["driver not ready"] += 1
                        await asyncio.sleep(1)
                        continue
                    while not self._stop.is_set():
                        phase, started = self.phase, time.perf_counter()
                        seq += 1
                        lat += 0.00002
                        await ws.send(json.dumps({"type": "ping", "seq": seq, "driver_id": driver_id, "lat": lat,
                                                  "lng": lng, "accuracy": 5.0, "speed": 2.0, "heading": 0.0,
                                                  "timestamp": time.time()}))
                        reply = json.loads(await ws.recv())
                        self.ws_ms[phase].append((time.perf_counter() - started) * 1000)
                        if reply.get("type") != "ack":
                            self.errors[f"ping {reply.get('reason', reply.get('type'))}"] += 1
                        await asyncio.sleep(max(0.0, self.ping_every_s - (time.perf_counter() - started)))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a legit driver reconnects, as the app does
                self.errors[f"driver socket {type(exc).__name__}"] += 1
                await asyncio.sleep(1)
