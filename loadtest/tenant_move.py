"""`wakala bench tenant-move`: an online move of a tenant holding N orders, under write load.

Runs on a private PostgreSQL cluster with ``wal_level = logical`` (the shared server cannot
be restarted into it), with a real engine process serving the REST API. For each size it
fills a tenant on shard 0 (``loadtest.tenant_data``), starts clients placing orders for it
and for another tenant of the same shard, moves it online to shard 1, and reports the
initial copy's rate (rows/s), the catch-up lag when the switch began, and the write pause;
then, as the baseline measured in the same run, moves it back with the paused ``COPY``
method (the only way without logical replication), whose pause is the whole copy.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, replace

import httpx
import orjson

from dispatch.ops.postgres_cluster import private_postgres
from loadtest.orders import OrdersBench, _bench_streams, _forget_streams, populate_bench_tenant
from loadtest.orders_load import TRANSPORT_ERRORS, ApiConnection, BenchTenant, order_body
from loadtest.processes import free_port, spawn_wakala, stop, streams_env, wait_healthy
from loadtest.report import emit, percentiles_ms
from loadtest.tenant_data import fill_tenant, tenant_on_shard
from schema.db import TenantDatabase
from schema.migrate import migrate
from schema.moves.cleanup import cleanup_moves
from schema.moves.runner import MoveOptions, MoveResult, move_tenant
from schema.settings import DSN, PostgresSettings

LOG = ".wakala/bench-tenant-move.log"


@dataclass(frozen=True)
class TenantMoveBench:
    orders: tuple[int, ...] = (10_000, 100_000)
    mover_clients: int = 3      # clients placing orders for the moving tenant during the move
    other_clients: int = 1      # and for another tenant on the same source shard


class Writers:
    """Clients placing orders through the engine until stopped; statuses and latencies kept."""

    def __init__(self, port: int) -> None:
        self.port, self.stop = port, asyncio.Event()
        self.latencies: dict[str, list[float]] = {}
        self.outcomes: dict[str, Counter] = {}
        self.tasks: list[asyncio.Task] = []

    def start(self, name: str, shop: BenchTenant, clients: int) -> None:
        self.latencies[name], self.outcomes[name] = [], Counter()
        self.tasks += [asyncio.create_task(self._client(name, shop, i)) for i in range(clients)]

    async def _client(self, name: str, shop: BenchTenant, seed: int) -> None:
        rng, conn = random.Random(seed), ApiConnection(self.port)
        try:
            while not self.stop.is_set():
                body = orjson.dumps(order_body(shop, rng))
                started = time.perf_counter()
                try:
                    answer = await conn.post("/v1/orders", body, {"Authorization": f"Bearer {rng.choice(shop.tokens)}"})
                    self.outcomes[name][str(answer.status)] += 1
                except TRANSPORT_ERRORS as exc:
                    self.outcomes[name][type(exc).__name__] += 1
                self.latencies[name].append((time.perf_counter() - started) * 1000)
        finally:
            conn.close()

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)


def _errors(outcomes: Counter) -> dict[str, int]:
    return {k: v for k, v in outcomes.items() if k != "201"}


async def _one_size(settings: PostgresSettings, port: int, other: BenchTenant, orders: int,
                    bench: TenantMoveBench) -> dict:
    shop_setup = OrdersBench(customers=20, products=20)
    tenant = await tenant_on_shard(settings, 0, f"Bench Move {orders}")
    async with TenantDatabase(settings) as db:
        mover = await populate_bench_tenant(db, tenant, shop_setup)
    started = time.monotonic()
    await fill_tenant(settings, tenant.id, orders)
    fill_s = time.monotonic() - started
    writers = Writers(port)
    writers.start("mover", mover, bench.mover_clients)
    writers.start("other", other, bench.other_clients)
    await asyncio.sleep(1.0)
    try:
        online = await move_tenant(settings, tenant.id, 1, MoveOptions())
        await asyncio.sleep(1.0)
    finally:
        await writers.finish()
    assert isinstance(online, MoveResult)
    await cleanup_moves(settings, tenant.id)
    offline = await move_tenant(settings, tenant.id, 0, MoveOptions(offline=True, method="copy"))
    assert isinstance(offline, MoveResult)
    await cleanup_moves(settings, tenant.id)
    mover_ms, other_ms = percentiles_ms(writers.latencies["mover"]), percentiles_ms(writers.latencies["other"])
    return {
        "orders": orders, "rows": online.rows, "fill_s": round(fill_s, 1),
        "copy_s": round(online.copy_seconds or 0, 2),
        "copy_rows_per_s": round(online.rows / online.copy_seconds) if online.copy_seconds else None,
        "catchup_lag_bytes": online.catchup_lag_bytes,
        "catchup_s": round(online.catchup_seconds or 0, 2),
        "write_pause_ms": round(online.pause_ms or 0, 1), "pause_phases_ms": online.pause_phases_ms,
        "offline_copy_rows_per_s": round(offline.rows / offline.copy_seconds) if offline.copy_seconds else None,
        "offline_pause_ms": round(offline.pause_ms or 0, 1),
        "ratio_vs_offline_pause": round((online.pause_ms or 0) / offline.pause_ms, 3) if offline.pause_ms else None,
        "mover_orders_ok": writers.outcomes["mover"]["201"], "mover_errors": _errors(writers.outcomes["mover"]),
        "mover_p99_ms": mover_ms["p99_ms"], "mover_max_ms": round(max(writers.latencies["mover"], default=0), 1),
        "other_orders_ok": writers.outcomes["other"]["201"], "other_errors": _errors(writers.outcomes["other"]),
        "other_p99_ms": other_ms["p99_ms"],
    }


async def run_tenant_move_bench(bench: TenantMoveBench) -> dict:
    streams = _bench_streams()
    async with private_postgres(logical=True) as cluster:
        settings = replace(PostgresSettings.from_env(), control=DSN.parse(cluster.dsn("wakala_control")),
                           shard_databases=("wakala_shard_0", "wakala_shard_1"))
        await migrate(settings)
        other_tenant = await tenant_on_shard(settings, 0, "Bench Stays")
        async with TenantDatabase(settings) as db:
            other = await populate_bench_tenant(db, other_tenant, OrdersBench(customers=20, products=20))
        port = free_port()
        env = dict(os.environ, WAKALA_HTTP_PORT=str(port), WAKALA_CONTROL_DSN=settings.control.url(),
                   WAKALA_SHARD_DATABASES=",".join(settings.shard_databases), WAKALA_API_RATE_LIMIT="1000000",
                   WAKALA_MAX_PENDING_ORDERS="10000", **streams_env(streams))
        engine = spawn_wakala(["engine", "api", "--workers", "1"], env, LOG)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                if not await wait_healthy(http):
                    raise RuntimeError(f"the engine did not start; see {LOG}")
            sizes = [await _one_size(settings, port, other, n, bench) for n in bench.orders]
        finally:
            stop(engine)
            await _forget_streams(streams)
    figures = {"bench": "tenant-move", "sizes": sizes,
               "write_pause_ms": max(s["write_pause_ms"] for s in sizes),
               "copy_rows_per_s": min(s["copy_rows_per_s"] or 0 for s in sizes),
               "ratio_vs_offline_pause": max(s["ratio_vs_offline_pause"] or 0 for s in sizes)}
    rows = []
    for s in sizes:
        n = f"{s['orders']:,} orders"
        rows += [
            (f"{n}: rows copied (initial copy s)", f"{s['rows']:,} ({s['copy_s']} s)"),
            (f"{n}: copy rate rows/s (online / offline COPY)", f"{s['copy_rows_per_s']} / {s['offline_copy_rows_per_s']}"),
            (f"{n}: catch-up lag at the switch (waited)", f"{s['catchup_lag_bytes']} B ({s['catchup_s']} s)"),
            (f"{n}: write pause online / offline", f"{s['write_pause_ms']} / {s['offline_pause_ms']} ms"),
            (f"{n}: online pause by phase (ms)", ", ".join(f"{k} {v}" for k, v in s["pause_phases_ms"].items())),
            (f"{n}: mover orders ok, errors, p99, max", f"{s['mover_orders_ok']}, {s['mover_errors'] or 'none'}, "
                                                        f"{s['mover_p99_ms']} ms, {s['mover_max_ms']} ms"),
            (f"{n}: other tenant orders ok, errors, p99", f"{s['other_orders_ok']}, {s['other_errors'] or 'none'}, "
                                                          f"{s['other_p99_ms']} ms"),
        ]
    emit(f"wakala bench tenant-move: online move under {bench.mover_clients}+{bench.other_clients} order clients, "
         "vs the paused COPY move back (private cluster, wal_level=logical)", rows, figures)
    return figures
