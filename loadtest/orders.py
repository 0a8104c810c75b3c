"""`wakala bench orders`: orders placed and paid through the REST API, on two shards.

Set-up (not measured): two bench tenants placed on different shards, in each a vendor with
``products`` products in deep stock and ``customers`` customers with bearer tokens (admin
paths). Then the engine runs as in production (`wakala engine api`, ``--workers`` processes)
and this process drives it over HTTP only.

Throughput run: ``clients`` concurrent clients for ``seconds``; each loop places an order of
1-3 lines for a random customer of a random tenant (``POST /v1/orders``: prices from the
database, stock reserved in the same transaction) and pays it through the gateway callback
(``POST /v1/payments/callback``, HMAC-signed). Reported: orders/s (placed and paid), p50/p99
of each call, errors by status.

Contention run: ``race_clients`` clients at once each order one unit of a product with
``race_stock`` units. Exactly ``race_stock`` must succeed; the rest get 409 ``out_of_stock``;
stock ends fully reserved, never negative. Reported: successes, refusals, p50/p99, and the
stock row read back from Postgres.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import httpx

from dispatch.api import sign
from dispatch.identity.users import create_user, create_vendor, issue_user_token
from loadtest.processes import free_port, spawn_wakala, stop, wait_healthy
from loadtest.report import emit, percentiles_ms
from schema.db import TenantDatabase
from schema.settings import PostgresSettings
from schema.tenants import Tenant, create_tenant

VENDOR_AT = (-26.2360, 27.9090)   # Orlando, Soweto
PRODUCTS_SQL = """
WITH p AS (
    INSERT INTO products (vendor_id, sku, name, description, price)
    SELECT $1, $4 || n, 'Bench item ' || n, 'A bench product', (5 + n % 40)::numeric + 0.99
    FROM generate_series(1, $2) AS n
    RETURNING id
)
INSERT INTO inventory (product_id, quantity) SELECT id, $3 FROM p RETURNING product_id
"""
STOCK_SQL = "SELECT quantity, reserved_quantity FROM inventory WHERE product_id = $1"


@dataclass(frozen=True)
class OrdersBench:
    clients: int = 32
    seconds: float = 20.0
    customers: int = 100
    products: int = 50
    workers: int = 2
    race_clients: int = 500
    race_stock: int = 20


@dataclass
class BenchTenant:
    tenant: Tenant
    vendor_id: str
    products: list[str]
    tokens: list[str]


async def _tenants_on_two_shards(settings: PostgresSettings) -> list[Tenant]:
    """Fresh bench tenants until two shards each hold one (placement is by hash)."""
    by_shard: dict[int, Tenant] = {}
    for _ in range(16):
        tenant = await create_tenant(settings, f"Bench Orders {secrets.token_hex(3)}")
        by_shard.setdefault(tenant.shard_id, tenant)
        if len(by_shard) == 2:
            return list(by_shard.values())
    return list(by_shard.values())


async def _populate(db: TenantDatabase, tenant: Tenant, bench: OrdersBench) -> BenchTenant:
    vendor = await create_vendor(db, tenant.id, {
        "business_name": f"Bench Spaza {tenant.slug}", "address": {"suburb": "Orlando"},
        "lat": VENDOR_AT[0], "lng": VENDOR_AT[1], "delivery_radius_m": 20_000, "payment_methods": ["card"]})
    async with db.tenant_transaction(tenant.id) as tx:
        products = [str(r["product_id"]) for r in await tx.fetch(PRODUCTS_SQL, uuid.UUID(vendor),
                                                                  bench.products, 10_000_000, "BENCH-")]
    tokens = []
    for i in range(bench.customers):
        user = await create_user(db, tenant.id, {"phone": f"+2776{i:07d}", "name": f"Customer {i}",
                                                 "role": "customer"})
        tokens.append((await issue_user_token(db, tenant.id, user["user_id"], ttl_s=3600)).token)
    return BenchTenant(tenant, vendor, products, tokens)


def _order_body(t: BenchTenant, rng: random.Random, lines: int | None = None, product: str | None = None) -> dict:
    picked = [product] if product else rng.sample(t.products, lines or rng.randint(1, 3))
    return {"vendor_id": t.vendor_id, "payment_method": "card",
            "lines": [{"product_id": p, "quantity": 1 if product else rng.randint(1, 3)} for p in picked],
            "delivery_lat": VENDOR_AT[0] + rng.uniform(-0.02, 0.02),
            "delivery_lng": VENDOR_AT[1] + rng.uniform(-0.02, 0.02),
            "delivery_address": {"street": "bench"}}


async def _throughput(http: httpx.AsyncClient, tenants: list[BenchTenant], bench: OrdersBench,
                      secret: str) -> dict:
    place_ms: list[float] = []
    pay_ms: list[float] = []
    errors: Counter[str] = Counter()
    deadline = time.monotonic() + bench.seconds

    async def client(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            t = rng.choice(tenants)
            started = time.perf_counter()
            resp = await http.post("/v1/orders", json=_order_body(t, rng),
                                   headers={"Authorization": f"Bearer {rng.choice(t.tokens)}"})
            place_ms.append((time.perf_counter() - started) * 1000)
            if resp.status_code != 201:
                errors[f"place {resp.status_code} {resp.json().get('error', {}).get('reason')}"] += 1
                continue
            order = resp.json()
            raw = httpx.Request("POST", "/", json={
                "tenant_id": str(t.tenant.id), "order_id": order["id"], "idempotency_key": f"bench-{uuid.uuid4().hex}",
                "amount": order["total_amount"], "status": "succeeded", "gateway": "bench"}).content
            started = time.perf_counter()
            resp = await http.post("/v1/payments/callback", content=raw, headers={
                "Content-Type": "application/json", "X-Wakala-Signature": sign(secret, raw)})
            pay_ms.append((time.perf_counter() - started) * 1000)
            if resp.status_code != 200:
                errors[f"pay {resp.status_code} {resp.json().get('error', {}).get('reason')}"] += 1

    started = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(bench.clients)))
    elapsed = time.monotonic() - started
    paid = len(pay_ms) - sum(n for k, n in errors.items() if k.startswith("pay"))
    return {"elapsed_s": elapsed, "placed": len(place_ms) - sum(n for k, n in errors.items() if k.startswith("place")),
            "paid": paid, "place": percentiles_ms(place_ms), "pay": percentiles_ms(pay_ms), "errors": dict(errors)}


async def _race(http: httpx.AsyncClient, db: TenantDatabase, t: BenchTenant, bench: OrdersBench) -> dict:
    async with db.tenant_transaction(t.tenant.id) as tx:
        product = str((await tx.fetch(PRODUCTS_SQL, uuid.UUID(t.vendor_id), 1, bench.race_stock, "RACE-"))[0]["product_id"])
    rng = random.Random(7)
    gate = asyncio.Event()
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()

    async def one(i: int) -> None:
        body = _order_body(t, rng, product=product)
        token = t.tokens[i % len(t.tokens)]
        await gate.wait()
        started = time.perf_counter()
        resp = await http.post("/v1/orders", json=body, headers={"Authorization": f"Bearer {token}"})
        latencies.append((time.perf_counter() - started) * 1000)
        outcomes["ok" if resp.status_code == 201 else f"{resp.status_code} {resp.json()['error']['reason']}"] += 1

    tasks = [asyncio.create_task(one(i)) for i in range(bench.race_clients)]
    await asyncio.sleep(0.2)
    started = time.monotonic()
    gate.set()
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - started
    async with db.tenant_transaction(t.tenant.id, readonly=True) as tx:
        stock = await tx.fetchrow(STOCK_SQL, uuid.UUID(product))
    return {"elapsed_s": elapsed, "outcomes": dict(outcomes), "latency": percentiles_ms(latencies),
            "quantity": stock["quantity"], "reserved": stock["reserved_quantity"]}


async def run_orders_bench(bench: OrdersBench) -> dict:
    settings = PostgresSettings.from_env()
    tenants = await _tenants_on_two_shards(settings)
    async with TenantDatabase(settings) as db:
        populated = [await _populate(db, t, bench) for t in tenants]
        port, secret = free_port(), secrets.token_hex(16)
        env = dict(os.environ, WAKALA_HTTP_PORT=str(port), WAKALA_PAYMENT_WEBHOOK_SECRET=secret,
                   WAKALA_API_RATE_LIMIT="1000000")
        engine = spawn_wakala(["engine", "api", "--workers", str(bench.workers)], env, ".wakala/bench-orders.log")
        try:
            limits = httpx.Limits(max_connections=max(bench.clients, bench.race_clients))
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60, limits=limits) as http:
                if not await wait_healthy(http):
                    raise RuntimeError("the engine did not start; see .wakala/bench-orders.log")
                run = await _throughput(http, populated, bench, secret)
                race = await _race(http, db, populated[0], bench)
        finally:
            stop(engine)
    figures = {
        "bench": "orders", "clients": bench.clients, "seconds": round(run["elapsed_s"], 1),
        "shards": len({t.tenant.shard_id for t in populated}), "workers": bench.workers,
        "orders_placed": run["placed"], "orders_paid": run["paid"],
        "orders_per_s": round(run["paid"] / run["elapsed_s"], 1),
        "place_p50_ms": run["place"]["p50_ms"], "place_p99_ms": run["place"]["p99_ms"],
        "pay_p50_ms": run["pay"]["p50_ms"], "pay_p99_ms": run["pay"]["p99_ms"], "errors": run["errors"],
        "race_clients": bench.race_clients, "race_stock": bench.race_stock,
        "race_succeeded": race["outcomes"].get("ok", 0), "race_outcomes": race["outcomes"],
        "race_p50_ms": race["latency"]["p50_ms"], "race_p99_ms": race["latency"]["p99_ms"],
        "race_elapsed_s": round(race["elapsed_s"], 2),
        "race_final_quantity": race["quantity"], "race_final_reserved": race["reserved"],
    }
    emit(f"wakala bench orders: {bench.clients} clients for {bench.seconds:g} s on {figures['shards']} shards, "
         f"then {bench.race_clients} clients racing for {bench.race_stock} units", [
        ("orders placed and paid / s", figures["orders_per_s"]),
        ("orders placed / paid", f"{run['placed']} / {run['paid']}"),
        ("place order p50 / p99", f"{figures['place_p50_ms']} / {figures['place_p99_ms']} ms"),
        ("payment callback p50 / p99", f"{figures['pay_p50_ms']} / {figures['pay_p99_ms']} ms"),
        ("errors", run["errors"] or "none"),
        ("race: succeeded (must equal the stock)", f"{figures['race_succeeded']} of {bench.race_stock}"),
        ("race: outcomes", race["outcomes"]),
        ("race: p50 / p99", f"{figures['race_p50_ms']} / {figures['race_p99_ms']} ms"),
        ("race: stock afterwards (quantity / reserved)", f"{race['quantity']} / {race['reserved']}"),
    ], figures)
    return figures
