"""`wakala bench orders`: orders placed and paid through the REST API, on two shards.

Set-up (not measured): two bench tenants placed on different shards, in each a vendor with
``products`` products in deep stock and ``customers`` customers with bearer tokens (admin
paths). Then the engine runs as in production (`wakala engine api`, ``--workers`` processes)
and this process drives it over HTTP only.

Throughput run: after ``warmup_seconds`` of the same load unmeasured, ``clients`` concurrent
clients for ``seconds``; each loop places an order of
1-3 lines for a random customer of a random tenant (``POST /v1/orders``: prices from the
database, stock reserved in the same transaction) and pays it through the gateway callback
(``POST /v1/payments/callback``, HMAC-signed). Reported: orders/s (placed and paid), p50/p99
of each call, errors by status.

Contention run: ``race_clients`` clients at once each order one unit of a product with
``race_stock`` units. Exactly ``race_stock`` must succeed; the rest get 409 ``out_of_stock``;
stock ends fully reserved, never negative. Reported: successes, refusals, p50/p99, and the
stock row read back from Postgres.

The load generator (``loadtest.orders_load``) speaks raw keep-alive HTTP/1.1 on uvloop, so the
machine's two cores go to the engine and PostgreSQL rather than to an HTTP library. Over the
throughput window the CPU each part used is read from /proc: the engine (the spawned process
and its descendants), this process, PostgreSQL (every ``postgres`` process, other work on the
server included) and the whole machine; divided by orders/s it gives CPU milliseconds per order,
which says where an order's cost goes.

Yardstick: with the engine stopped, PostgreSQL's own TPC-B-like pgbench runs on the same
server (a scratch database created for it and dropped after, even on failure; scale 10,
``clients`` connections, ``pgbench_seconds``), and orders/s is reported against its tps. A
pgbench transaction is five statements on a few rows; an order placed and paid is two
requests, several transactions and many more statements, so the ratio is no target of 1: it
puts orders/s in units of what this server does on this machine at the time, which makes runs
on different days or machines comparable.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import time
import uuid
from dataclasses import dataclass, replace

import httpx
from redis.asyncio import Redis

from dispatch.identity.users import create_user, create_vendor, issue_user_token
from dispatch.matching.keys import dispatcher_offsets_key
from loadtest.ingest import (
    _children,
    _cpu_by_pid,
    _delete_topics,
    _machine_cpu_seconds,
    _pids_of,
    fresh_streams,
)
from loadtest.ingest_load import _cpu_delta
from loadtest.orders_load import VENDOR_AT, BenchTenant, race, throughput
from loadtest.processes import free_port, spawn_wakala, stop, streams_env, wait_healthy
from loadtest.report import emit, percentiles_ms
from schema.connect import drop_database, ensure_database
from schema.db import TenantDatabase
from schema.settings import PostgresSettings
from schema.tenants import Tenant, create_tenant
from streams.settings import StreamSettings

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
PGBENCH_SCALE = 10
PGBENCH_TPS = re.compile(r"^tps = ([0-9]+(?:\.[0-9]+)?) \((?:without initial connection time|"
                         r"excluding connections establishing)\)", re.MULTILINE)
CPU_PARTS = ("engine", "load_generator", "postgres", "machine")


@dataclass(frozen=True)
class OrdersBench:
    clients: int = 32
    seconds: float = 20.0
    customers: int = 100
    products: int = 50
    workers: int = 2
    race_clients: int = 500
    race_stock: int = 20
    pgbench_seconds: float | None = None   # None: min(15, seconds); 0: no pgbench
    # The same load, unmeasured, first: the engine's pools filled and statements prepared, and
    # the fresh bench tenants' tables past the sizes where every few hundred rows autovacuum
    # analyses them again and every backend re-plans (a cost of a new tenant's first minute,
    # not of the engine's steady state; measured here, it doubled place p99 in a 15 s run).
    warmup_seconds: float = 5.0

    def pgbench_run_s(self) -> int:
        seconds = min(15.0, self.seconds) if self.pgbench_seconds is None else self.pgbench_seconds
        return max(1, round(seconds)) if seconds > 0 else 0


def parse_pgbench_tps(output: str) -> float | None:
    """The tps pgbench reports without connection set-up time; None when the line is missing."""
    match = PGBENCH_TPS.search(output)
    return float(match.group(1)) if match else None


def ratio_vs_pgbench(orders_per_s: float, pgbench_tps: float | None) -> float | None:
    return round(orders_per_s / pgbench_tps, 4) if pgbench_tps else None


def cpu_ms_per_order(cores: dict[str, float], orders_per_s: float) -> dict[str, float | None]:
    """CPU milliseconds each part spent per order placed and paid: cores x 1000 / orders/s."""
    return {part: (round(c * 1000 / orders_per_s, 2) if orders_per_s > 0 else None) for part, c in cores.items()}


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        children = _children(todo.pop())
        found += children
        todo += children
    return found


def _cpu_snapshot(engine_pid: int) -> dict[str, dict[int, float]]:
    """Cumulative CPU seconds per pid of each part, right now."""
    return {"engine": _cpu_by_pid([engine_pid, *_descendants(engine_pid)]),
            "load_generator": _cpu_by_pid([os.getpid()]),
            "postgres": _cpu_by_pid(_pids_of("postgres")),
            "machine": {0: _machine_cpu_seconds()}}


def _cores(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]], elapsed_s: float) -> dict[str, float]:
    return {part: round(_cpu_delta(before[part], after[part]) / elapsed_s, 2) for part in CPU_PARTS}


async def _tenants_on_two_shards(settings: PostgresSettings) -> list[Tenant]:
    """Fresh bench tenants until two shards each hold one (placement is by hash)."""
    by_shard: dict[int, Tenant] = {}
    for _ in range(16):
        tenant = await create_tenant(settings, f"Bench Orders {secrets.token_hex(3)}")
        by_shard.setdefault(tenant.shard_id, tenant)
        if len(by_shard) == 2:
            return list(by_shard.values())
    return list(by_shard.values())


async def populate_bench_tenant(db: TenantDatabase, tenant: Tenant, bench: OrdersBench) -> BenchTenant:
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


async def _race(port: int, db: TenantDatabase, t: BenchTenant, bench: OrdersBench) -> dict:
    async with db.tenant_transaction(t.tenant.id) as tx:
        product = str((await tx.fetch(PRODUCTS_SQL, uuid.UUID(t.vendor_id), 1, bench.race_stock, "RACE-"))[0]["product_id"])
    result = await race(port, t, product, bench.race_clients)
    async with db.tenant_transaction(t.tenant.id, readonly=True) as tx:
        stock = await tx.fetchrow(STOCK_SQL, uuid.UUID(product))
    return {**result, "latency": percentiles_ms(result["latencies"]),
            "quantity": stock["quantity"], "reserved": stock["reserved_quantity"]}


async def _pgbench_step(exe: str, args: list[str], env: dict[str, str], limit_s: float) -> str:
    proc = await asyncio.create_subprocess_exec(exe, *args, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), limit_s)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        last = text.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"pgbench {args[0]} exited {proc.returncode}: {last[0]}")
    return text


async def run_pgbench(settings: PostgresSettings, clients: int, seconds: int) -> tuple[float | None, str]:
    """TPC-B-like pgbench on a scratch database of the same server; (tps, what happened).

    The database is dropped whatever happens. A failure here is reported, not raised: the
    orders figures measured before it stand on their own.
    """
    if seconds <= 0:
        return None, "skipped (--pgbench-seconds 0)"
    exe = shutil.which("pgbench")
    if exe is None:
        return None, "skipped: pgbench not found on PATH"
    dsn = settings.control.with_database(f"wkbench_pgbench_{secrets.token_hex(4)}")
    env = dict(os.environ, **({"PGPASSWORD": dsn.password} if dsn.password else {}))
    where = ["-h", dsn.host, "-p", str(dsn.port), "-U", dsn.user]
    try:
        await ensure_database(dsn)
        await _pgbench_step(exe, ["-i", "-q", "-s", str(PGBENCH_SCALE), *where, dsn.database], env, 600)
        out = await _pgbench_step(exe, ["-c", str(clients), "-j", str(min(2, clients)), "-T", str(seconds), "-n",
                                        *where, dsn.database], env, seconds + 120)
    except Exception as exc:   # reported in the table; the run goes on
        return None, f"failed: {exc}"
    finally:
        with contextlib.suppress(Exception):
            await drop_database(dsn)
    tps = parse_pgbench_tps(out)
    return tps, f"{tps:.1f}" if tps is not None else "failed: no tps line in pgbench's output"


def _bench_streams() -> StreamSettings:
    fresh = fresh_streams()   # its app id names the event topics too, so _delete_topics finds them
    return replace(fresh, delivery_events_topic=f"{fresh.app_id}-delivery-events",
                   order_events_topic=f"{fresh.app_id}-order-events")


async def _forget_streams(streams: StreamSettings) -> None:
    """Delete this run's topics (theirs carry its app id) and its dispatcher's stored positions."""
    await _delete_topics(streams)
    redis = Redis.from_url(streams.redis_url)
    try:
        await redis.delete(dispatcher_offsets_key(f"{streams.app_id}-dispatcher", streams.delivery_events_topic))
    except Exception as exc:  # noqa: BLE001 - cleanup is best effort; say so
        print(f"note: could not delete the bench's Redis keys ({exc})", flush=True)
    finally:
        await redis.aclose()


async def run_orders_bench(bench: OrdersBench) -> dict:
    settings = PostgresSettings.from_env()
    tenants = await _tenants_on_two_shards(settings)
    async with TenantDatabase(settings) as db:
        populated = [await populate_bench_tenant(db, t, bench) for t in tenants]
        port, secret = free_port(), secrets.token_hex(16)
        # Topics and a consumer group of this run only, deleted after it: the bundled broker
        # keeps every topic in memory and slows down as they grow.
        streams = _bench_streams()
        env = dict(os.environ, WAKALA_HTTP_PORT=str(port), WAKALA_PAYMENT_WEBHOOK_SECRET=secret,
                   WAKALA_API_RATE_LIMIT="1000000", **streams_env(streams))
        engine = spawn_wakala(["engine", "api", "--workers", str(bench.workers)], env, ".wakala/bench-orders.log")
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                if not await wait_healthy(http):
                    raise RuntimeError("the engine did not start; see .wakala/bench-orders.log")
            warmup = (await throughput(port, populated, bench.clients, bench.warmup_seconds, secret)
                      if bench.warmup_seconds > 0 else {"errors": {}})
            cpu0, t0 = _cpu_snapshot(engine.pid), time.monotonic()
            run = await throughput(port, populated, bench.clients, bench.seconds, secret)
            cpu1, window_s = _cpu_snapshot(engine.pid), time.monotonic() - t0
            race_ = await _race(port, db, populated[0], bench)
        finally:
            stop(engine)
            await _forget_streams(streams)
    pgbench_s = bench.pgbench_run_s()
    pgbench_tps, pgbench_note = await run_pgbench(settings, bench.clients, pgbench_s)
    orders_per_s = round(run["paid"] / run["elapsed_s"], 1)
    cores = _cores(cpu0, cpu1, window_s)
    per_order = cpu_ms_per_order(cores, orders_per_s)
    place, pay = percentiles_ms(run["place_ms"]), percentiles_ms(run["pay_ms"])
    figures = {
        "bench": "orders", "clients": bench.clients, "seconds": round(run["elapsed_s"], 1),
        "shards": len({t.tenant.shard_id for t in populated}), "workers": bench.workers,
        "orders_placed": run["placed"], "orders_paid": run["paid"], "orders_per_s": orders_per_s,
        "place_p50_ms": place["p50_ms"], "place_p99_ms": place["p99_ms"],
        "pay_p50_ms": pay["p50_ms"], "pay_p99_ms": pay["p99_ms"], "errors": run["errors"],
        "warmup_s": bench.warmup_seconds, "warmup_errors": warmup["errors"],
        "race_clients": bench.race_clients, "race_stock": bench.race_stock,
        "race_succeeded": race_["outcomes"].get("ok", 0), "race_outcomes": race_["outcomes"],
        "race_p50_ms": race_["latency"]["p50_ms"], "race_p99_ms": race_["latency"]["p99_ms"],
        "race_elapsed_s": round(race_["elapsed_s"], 2),
        "race_final_quantity": race_["quantity"], "race_final_reserved": race_["reserved"],
        "cpu_cores": cores, "cpu_ms_per_order": per_order, "cpus": os.cpu_count(),
        "pgbench_tps": round(pgbench_tps, 1) if pgbench_tps is not None else None,
        "pgbench_scale": PGBENCH_SCALE, "pgbench_clients": bench.clients, "pgbench_seconds": pgbench_s,
        "ratio_vs_pgbench": ratio_vs_pgbench(orders_per_s, pgbench_tps),
    }
    parts = " / ".join(CPU_PARTS).replace("_", " ")
    emit(f"wakala bench orders: {bench.clients} clients for {bench.seconds:g} s on {figures['shards']} shards, "
         f"then {bench.race_clients} clients racing for {bench.race_stock} units", [
        ("orders placed and paid / s", figures["orders_per_s"]),
        ("orders placed / paid", f"{run['placed']} / {run['paid']}"),
        ("place order p50 / p99", f"{figures['place_p50_ms']} / {figures['place_p99_ms']} ms"),
        ("payment callback p50 / p99", f"{figures['pay_p50_ms']} / {figures['pay_p99_ms']} ms"),
        ("errors", run["errors"] or "none"),
        (f"errors in the {bench.warmup_seconds:g} s warm-up before it", warmup["errors"] or "none"),
        (f"cpu cores: {parts}", " / ".join(str(cores[p]) for p in CPU_PARTS)),
        (f"cpu ms per order: {parts}", " / ".join(str(per_order[p]) for p in CPU_PARTS)),
        ("race: succeeded (must equal the stock)", f"{figures['race_succeeded']} of {bench.race_stock}"),
        ("race: outcomes", race_["outcomes"]),
        ("race: p50 / p99", f"{figures['race_p50_ms']} / {figures['race_p99_ms']} ms"),
        ("race: stock afterwards (quantity / reserved)", f"{race_['quantity']} / {race_['reserved']}"),
        (f"pgbench tps (TPC-B-like, scale {PGBENCH_SCALE}, {bench.clients} clients, {pgbench_s} s)", pgbench_note),
        ("orders/s vs pgbench tps", figures["ratio_vs_pgbench"] if pgbench_tps else "-"),
    ], figures)
    return figures
