"""`wakala bench ...`: the benchmarks under loadtest/, each a table and then one JSON line of figures."""

from __future__ import annotations

import argparse

from dispatch.cli import moves
from loadtest.backup import add_parser as add_backup_bench
from loadtest.mdrp.report import add_parser as add_mdrp_bench
from schema.errors import WakalaError


async def _bench(args: argparse.Namespace) -> int:
    if args.bench == "ingest":
        from loadtest.ingest import IngestBench, run_ingest_bench
        from loadtest.ingest_steps import parse_steps

        await run_ingest_bench(IngestBench(
            steps_pings_per_s=tuple(parse_steps(args.steps)), hz=args.hz, upload_every_s=args.upload_every,
            duration_s=args.duration, connect_rate_per_s=args.connect_rate, gateways=args.gateways,
            clients=args.clients))
    elif args.bench == "nearest":
        from loadtest.nearest import NearestBench, run_nearest_bench

        sizes = (args.drivers,) if args.drivers else tuple(int(n) for n in args.sizes.split(",") if n.strip())
        await run_nearest_bench(NearestBench(
            sizes=sizes, queries=args.queries, warmup=args.warmup, k=args.k, radius_m=args.radius))
    elif args.bench == "orders":
        from loadtest.orders import OrdersBench, run_orders_bench

        figures = await run_orders_bench(OrdersBench(
            clients=args.clients, seconds=args.seconds, customers=args.customers, products=args.products,
            workers=args.workers, race_clients=args.race_clients, race_stock=args.race_stock,
            pgbench_seconds=args.pgbench_seconds, warmup_seconds=args.warmup_seconds))
        return 0 if figures["race_succeeded"] == args.race_stock else 1
    elif args.bench == "tracking":
        from loadtest.tracking import TrackingBench, run_tracking_bench

        figures = await run_tracking_bench(TrackingBench(
            watchers=args.watchers, deliveries=args.deliveries, hz=args.hz, duration_s=args.duration,
            clients=args.clients, workers=args.workers))
        return 0 if figures["watchers_connected"] == args.watchers and figures["p99_ms"] is not None else 1
    elif args.bench == "matching":
        from loadtest.matching_report import run_matching_bench
        from loadtest.matching_scenario import MatchingBench

        try:
            bench = MatchingBench(
                seed=args.seed, minutes=args.minutes, orders_per_min=args.orders_per_min,
                drivers=args.drivers, window_s=args.window, radius_m=args.radius,
                wait_weight=args.wait_weight, capacity=args.capacity, truth=args.truth)
        except ValueError as exc:   # settings the bench cannot run with, named
            raise WakalaError(str(exc)) from None
        await run_matching_bench(bench)
    elif args.bench == "flood":
        from loadtest.flood import FloodBench, run_flood_bench

        figures = await run_flood_bench(FloodBench(
            tokens=args.tokens, concurrency=args.concurrency, source_ips=args.source_ips, body_mb=args.body_mb,
            body_parallel=args.body_parallel, bodies_s=args.bodies_seconds, slow_clients=args.slow_clients,
            stuck_drivers=args.stuck_drivers, slow_s=args.slow_seconds, baseline_s=args.baseline,
            duration_s=args.duration, workers=args.workers, auth_failure_limit=args.auth_failure_limit,
            profile=args.profile))
        return 0 if figures["rss_target_met"] is not False and figures["p99_target_met"] is not False else 1
    return 0




def add_bench_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks (a table, then one JSON line of figures)")
    bsub = p.add_subparsers(dest="bench", required=True)
    ingest = bsub.add_parser("ingest", help="drivers -> gateway -> Kafka -> agent -> Redis")
    ingest.add_argument("--steps", default="10000,20000,40000,60000",
                        help="offered loads, pings/s, rising (drivers = load / hz); stops at a clear failure. "
                             "The old single shape: --steps 20000 --hz 1 --upload-every 5")
    ingest.add_argument("--hz", type=float, default=2.0, help="GPS fixes per driver per second")
    ingest.add_argument("--upload-every", type=float, default=5.0, help="seconds between uploads")
    ingest.add_argument("--duration", type=float, default=20.0, help="measured window per step, seconds")
    ingest.add_argument("--connect-rate", type=float, default=2_000.0,
                        help="new driver connections per second, all clients together")
    ingest.add_argument("--gateways", type=int, default=2, help="gateway processes")
    ingest.add_argument("--clients", type=int, default=2, help="load-generator processes")
    near = bsub.add_parser("nearest", help="k nearest available drivers: our replica and Redis index vs GEOSEARCH vs PostGIS")
    near.add_argument("--sizes", default="5000,50000", help="fleet sizes to run, comma-separated")
    near.add_argument("--drivers", type=int, default=None, help="one fleet size (instead of --sizes)")
    near.add_argument("--queries", type=int, default=2_000, help="measured queries per method")
    near.add_argument("--warmup", type=int, default=200, help="unmeasured queries per method first")
    near.add_argument("-k", type=int, default=10, help="drivers per answer")
    near.add_argument("--radius", type=float, default=5_000.0, help="search radius, great-circle metres")
    orders = bsub.add_parser("orders", help="orders placed and paid through the REST API; a race for the last units")
    orders.add_argument("--clients", type=int, default=32)
    orders.add_argument("--seconds", type=float, default=20.0)
    orders.add_argument("--customers", type=int, default=100, help="per tenant")
    orders.add_argument("--products", type=int, default=50, help="per tenant")
    orders.add_argument("--workers", type=int, default=2, help="engine api processes")
    orders.add_argument("--race-clients", type=int, default=500)
    orders.add_argument("--race-stock", type=int, default=20)
    orders.add_argument("--warmup-seconds", type=float, default=5.0, help="the same load, unmeasured, first")
    orders.add_argument("--pgbench-seconds", type=float, default=None,
                        help="pgbench yardstick run after the bench (default min(15, --seconds); 0 = none)")

    def _orders_on_uvloop(args: argparse.Namespace) -> int:
        # The load generator shares the cores with what it measures: its loop is uvloop.
        import uvloop

        return uvloop.run(_bench(args))

    orders.set_defaults(handler=_orders_on_uvloop, sync=True)
    moves.add_bench(bsub)
    add_backup_bench(bsub)
    add_mdrp_bench(bsub)
    track = bsub.add_parser("tracking", help="watchers on the tracking websocket while drivers ping: latency, frames/s")
    track.add_argument("--watchers", type=int, default=5_000)
    track.add_argument("--deliveries", type=int, default=100, help="active deliveries (one pinging driver each)")
    track.add_argument("--hz", type=float, default=1.0, help="pings per driver per second")
    track.add_argument("--duration", type=float, default=30.0, help="measured window, seconds")
    track.add_argument("--clients", type=int, default=2, help="watcher processes")
    track.add_argument("--workers", type=int, default=1, help="engine api processes (each runs a hub)")
    match = bsub.add_parser("matching", help="greedy nearest-first vs batch vs batch with bundles, simulated")
    match.add_argument("--seed", type=int, default=7)
    match.add_argument("--minutes", type=float, default=60.0, help="order arrival period")
    match.add_argument("--orders-per-min", type=float, default=40.0)
    match.add_argument("--drivers", type=int, default=800, help="fleet size (600: a driving load of about 1)")
    match.add_argument("--window", type=float, default=2.0, help="batch window, seconds")
    match.add_argument("--radius", type=float, default=5_000.0, help="pickup radius, great-circle metres")
    match.add_argument("--wait-weight", type=float, default=1.0,
                       help="batch: weight of time already waited in the cost (0 = pickup ETA only)")
    match.add_argument("--capacity", type=int, default=3, help="bundle mode: deliveries one driver may carry")
    match.add_argument("--truth", choices=("city", "model"), default="city",
                       help="simulated travel times: the city replay's drivers, or the prior's own estimate x noise")
    flood = bsub.add_parser("flood", help="random tokens, oversized bodies and slow clients against an engine "
                                          "while customers and drivers go on: RSS, legit p99, refusals")
    flood.add_argument("--tokens", type=int, default=100_000, help="random well-formed bearer tokens sent")
    flood.add_argument("--concurrency", type=int, default=64, help="keep-alive connections of the token flood")
    flood.add_argument("--source-ips", type=int, default=16, help="attacker addresses, 127.0.0.2 up")
    flood.add_argument("--body-mb", type=float, default=50.0, help="size of each oversized body, MB")
    flood.add_argument("--body-parallel", type=int, default=3, help="oversized bodies in flight at once")
    flood.add_argument("--bodies-seconds", type=float, default=10.0, help="oversized bodies repeated this long")
    flood.add_argument("--slow-clients", type=int, default=200, help="slowloris connections")
    flood.add_argument("--stuck-drivers", type=int, default=10, help="drivers who ping and never read")
    flood.add_argument("--slow-seconds", type=float, default=20.0, help="how long the slow clients hold on")
    flood.add_argument("--baseline", type=float, default=30.0, help="seconds of the legit workload alone, first")
    flood.add_argument("--duration", type=float, default=600.0, help="the token flood stops here, seconds")
    flood.add_argument("--workers", type=int, default=1, help="engine api processes")
    flood.add_argument("--auth-failure-limit", type=int, default=None,
                       help="WAKALA_AUTH_FAILURE_LIMIT for the engine (default: the engine's own)")
    flood.add_argument("--profile", default=None, metavar="PATH",
                       help="py-spy the engine during the token flood, raw stacks to PATH (needs py-spy)")
    p.set_defaults(handler=_bench)

