"""The `wakala` console script."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from dispatch.cli import backups, benches, dsr, moves, retention, status
from dispatch.core.console import format_table
from schema.errors import WakalaError
from schema.settings import PostgresSettings


def _pg() -> PostgresSettings:
    return PostgresSettings.from_env()


async def _services(args: argparse.Namespace) -> int:
    from dispatch.ops import services

    if args.action == "up":
        statuses = await services.services_up()
    elif args.action == "status":
        statuses = await services.services_status()
    else:
        print(await services.services_down())
        return 0
    print(services.format_statuses(statuses))
    return 0 if all(s.ok for s in statuses) else 1


async def _migrate(args: argparse.Namespace) -> int:
    from schema.migrate import migrate, migration_status

    settings = _pg()
    if args.action == "status":
        rows = await migration_status(settings)
        print(format_table(
            ["database", "scope", "applied", "pending", "last applied"],
            [(r.database, r.scope, r.applied, ", ".join(r.pending) or "-", r.last_applied_at)
             for r in rows],
        ))
        return 1 if any(r.pending for r in rows) else 0
    report = await migrate(settings)
    tenant_changes = {k: v for k, v in report.tenant_applied.items() if v}
    print(f"control database {settings.control.redacted()}: "
          f"{len(report.control_applied)} migration(s) applied {report.control_applied or ''}".rstrip())
    if report.shards_registered:
        print(f"registered default shards: {', '.join(report.shards_registered)}")
    print(f"shards ready: {', '.join(report.shards_prepared) or 'none'}; "
          f"tenant schemas checked: {len(report.tenant_applied)}, changed: {len(tenant_changes)}")
    for schema_name, versions in tenant_changes.items():
        print(f"  {schema_name}: applied {', '.join(versions)}")
    if not report.changed:
        print("nothing to do: everything is up to date")
    return 0


async def _tenant(args: argparse.Namespace) -> int:
    from schema.tenants import create_tenant, list_tenants

    settings = _pg()
    if args.action == "payment-secret":
        from dispatch.commerce.payment_secrets import new_secret, set_webhook_secret
        from schema.db import TenantDatabase

        secret = args.secret or new_secret()
        async with TenantDatabase(settings) as db:
            updated = await set_webhook_secret(db, args.tenant, secret)
        print(f"payment-callback secret of tenant {args.tenant} set at {updated}; "
              "callbacks must now be signed t=<unix>,v1=<hmac> with it")
        if not args.secret:
            print("secret (shown once):")
            print(secret)
        return 0
    if args.action == "create":
        tenant = await create_tenant(settings, args.name, slug=args.slug)
        print(f"created tenant {tenant.name!r} ({tenant.slug}) id {tenant.id} "
              f"on {tenant.shard_name} in schema {tenant.schema_name}")
        return 0
    tenants = await list_tenants(settings)
    print(format_table(
        ["id", "slug", "name", "status", "shard", "schema"],
        [(t.id, t.slug, t.name, t.status, t.shard_name, t.schema_name) for t in tenants],
    ))
    return 0


async def _shard(args: argparse.Namespace) -> int:
    from schema.shards import add_shard, list_shards

    settings = _pg()
    if args.action == "add":
        shard = await add_shard(settings, args.name, args.database, host=args.host,
                                port=args.port, weight=args.weight)
        print(f"added {shard.name} (id {shard.shard_id}) at {shard.host}:{shard.port}/{shard.database}; "
              "existing tenants stay where they are")
        return 0
    print(format_table(
        ["id", "name", "address", "status", "weight", "tenants"],
        [(s.shard_id, s.name, f"{s.host}:{s.port}/{s.database}", s.status, s.weight, s.tenants)
         for s in await list_shards(settings)],
    ))
    return 0


async def _driver(args: argparse.Namespace) -> int:
    from dispatch.identity.auth import issue_driver_token, revoke_token
    from dispatch.identity.drivers import NewDriver, create_driver
    from schema.db import TenantDatabase

    async with TenantDatabase(_pg()) as db:
        if args.action == "create":
            driver_id = await create_driver(db, args.tenant, NewDriver(
                args.first_name, args.last_name, args.phone, args.license, args.vehicle,
                args.registration, args.cold_storage))
            print(f"created driver {driver_id}")
        elif args.token_action == "issue" and args.tracker:
            from dispatch.identity.trackers import TRACKER_TTL_S, issue_tracker_key

            ttl_s = TRACKER_TTL_S if args.ttl_hours is None else args.ttl_hours * 3600
            issued = await issue_tracker_key(db, args.tenant, args.driver, ttl_s=ttl_s)
            print(f"tracker key id {issued.token_id}, expires {issued.expires_at.isoformat()}")
            print("Traccar Client: server URL https://<engine host>/v1/trackers/osmand, device identifier below,")
            print("frequency 10 s, distance 0, accuracy high. Key (shown once; only its hash is stored):")
            print(issued.token)
        elif args.token_action == "issue":
            ttl_s = 24 * 30 * 3600 if args.ttl_hours is None else args.ttl_hours * 3600
            issued = await issue_driver_token(db, args.tenant, args.driver, ttl_s=ttl_s)
            print(f"token id {issued.token_id}, expires {issued.expires_at.isoformat()}")
            print("token (shown once; only its hash is stored):")
            print(issued.token)
        else:
            import redis.asyncio as aioredis

            from streams.settings import StreamSettings

            redis = aioredis.from_url(StreamSettings.from_env().redis_url)
            try:
                revoked = await revoke_token(db, redis, args.tenant, args.token_id,
                                             token_type="tracker" if args.tracker else "driver")
            finally:
                await redis.aclose()
            print("revoked" if revoked else "no live token with that id (already revoked or unknown)")
            return 0 if revoked else 1
    return 0


async def _user(args: argparse.Namespace) -> int:
    """Bootstrap: the first tenant admin of a tenant (everything else goes through the API)."""
    from dispatch.identity.users import create_user, issue_user_token
    from schema.db import TenantDatabase

    async with TenantDatabase(_pg()) as db:
        if args.action == "create":
            body = {"phone": args.phone, "name": args.name, "role": args.role}
            if args.vendor:
                body["vendor_id"] = args.vendor
            created = await create_user(db, args.tenant, body)
            print(" ".join(f"{k} {v}" for k, v in created.items()))
        else:
            issued = await issue_user_token(db, args.tenant, args.user, ttl_s=args.ttl_hours * 3600)
            print(f"token id {issued.token_id}, expires {issued.expires_at.isoformat()}")
            print("token (shown once; only its hash is stored):")
            print(issued.token)
    return 0


def _engine(args: argparse.Namespace) -> int:
    """Runs outside asyncio.run: uvicorn and faust each own their event loop.

    ``all`` supervises the location worker as a child (see ``dispatch.ops.supervisor``):
    SIGTERM or SIGINT stop the API and then the worker, a kill -9 of the engine takes the
    worker with it, and a worker that exits on its own is restarted with a backoff."""
    if args.role == "worker":
        from dispatch.tracking.worker import run_worker

        run_worker(pg=_pg(), loglevel=args.log_level)
        return 0
    from dispatch.app import run_gateway
    from dispatch.core.settings import EngineSettings
    from dispatch.ops.supervisor import ChildSupervisor, exit_on_signals

    engine = EngineSettings.from_env()
    worker = None
    exit_on_signals()
    try:
        if args.role == "all":
            worker = ChildSupervisor([sys.executable, "-m", "dispatch.cli", "engine", "worker",
                                      "--log-level", args.log_level])
            worker.start()
        docs = " (OpenAPI at /openapi.json)" if engine.api_docs else ""
        print(f"wakala engine listening on http://{engine.host}:{engine.port}{docs}"
              f"{'; location worker pid ' + str(worker.pid) if worker else ''}", flush=True)
        run_gateway(engine, workers=args.workers)
    finally:
        if worker is not None:
            worker.stop(grace_s=30)
    return 0


def _duration(text: str) -> int:
    """``2h``, ``30m``, ``90s`` or plain seconds -> seconds (argparse type)."""
    units = {"h": 3600, "m": 60, "s": 1}
    raw = text.strip().lower()
    try:
        seconds = float(raw[:-1]) * units[raw[-1]] if raw and raw[-1] in units else float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a duration like 2h, 30m or 90s, got {text!r}") from None
    if not 60 <= seconds <= 86_400:
        raise argparse.ArgumentTypeError(f"between 1 minute and 24 hours, got {text!r}")
    return round(seconds)


def _time_of_day(text: str) -> int:
    """``11:30`` -> seconds after midnight (argparse type)."""
    hours, _, minutes = text.strip().partition(":")
    try:
        h, m = int(hours), int(minutes or 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a time of day like 11:30, got {text!r}") from None
    if not (0 <= h < 24 and 0 <= m < 60):
        raise argparse.ArgumentTypeError(f"a time of day like 11:30, got {text!r}")
    return h * 3600 + m * 60


def _speed(text: str) -> float:
    from loadtest.replay import parse_speed

    try:
        return parse_speed(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _share(text: str) -> float:
    from loadtest.tracker_phone import parse_share

    try:
        return parse_share(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


async def _loadtest(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.loadtest == "generate":
        from loadtest import city

        config = city.CityConfig(seed=args.seed, start_s=args.start, duration_s=args.duration,
                                 tenants=args.tenants, vendors=args.vendors, drivers=args.drivers,
                                 customers=args.customers, orders_per_day=args.orders_per_day)
        try:
            scenario = city.generate(config)
        except ValueError as exc:   # a config the generator cannot honour, named
            raise WakalaError(str(exc)) from None
        out = Path(args.output or f".wakala/scenarios/city-{args.seed}.jsonl")
        out.parent.mkdir(parents=True, exist_ok=True)
        city.write(scenario, out)
        counts = scenario.header["counts"]
        print(f"{out}: {counts['orders']} orders (expected {scenario.header['expected_orders']:.0f}) from "
              f"{counts['customers']} customers at {counts['vendors']} vendors, {counts['drivers']} drivers, "
              f"{counts['tenants']} tenants; replay with: wakala loadtest replay {out} --speed 10x")
        return 0
    from loadtest.city import ScenarioError
    from loadtest.replay import ReplayOptions, run_replay

    scenario = Path(args.scenario)
    if not scenario.is_file():
        raise WakalaError(f"no scenario file at {scenario}; make one with `wakala loadtest generate`")
    try:
        summary = await run_replay(ReplayOptions(
            scenario=scenario, speed=args.speed, report_dir=args.report and Path(args.report),
            engine=args.engine, drain_s=args.drain, progress=not args.no_progress, max_wall_s=args.max_wall,
            osmand_share=args.osmand_share, whatsapp=args.whatsapp))
    except ScenarioError as exc:
        raise WakalaError(f"{exc}; make a new one with `wakala loadtest generate`") from None
    return 0 if summary.get("orders_placed") else 1


async def _demo(args: argparse.Namespace) -> int:
    from dispatch.ops.demo import run_demo

    return await run_demo()


Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wakala", description="Wakala dispatch engine")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("services", help="check, start or stop the services the engine needs")
    p.add_argument("action", choices=["up", "status", "down"])
    p.set_defaults(handler=_services)

    p = sub.add_parser("migrate", help="apply control and tenant migrations on every shard")
    p.add_argument("action", nargs="?", choices=["apply", "status"], default="apply")
    p.set_defaults(handler=_migrate)

    p = sub.add_parser("tenant", help="create, list and move tenants")
    tsub = p.add_subparsers(dest="action", required=True)
    create = tsub.add_parser("create", help="provision a tenant on its shard")
    create.add_argument("name")
    create.add_argument("--slug", default=None)
    tsub.add_parser("list", help="list tenants and where they live")
    psecret = tsub.add_parser("payment-secret", help="set or rotate a tenant's payment-callback secret")
    psecret.add_argument("tenant")
    psecret.add_argument("--secret", default=None,
                         help="32-256 printable ASCII characters (default: generated and shown once)")
    p.set_defaults(handler=_tenant)
    moves.add_tenant_move(tsub)

    p = sub.add_parser("shard", help="list, add, drain and rebalance shards")
    ssub = p.add_subparsers(dest="action", required=True)
    add = ssub.add_parser("add", help="register a new shard database")
    add.add_argument("name")
    add.add_argument("--database", required=True)
    add.add_argument("--host", default=None)
    add.add_argument("--port", type=int, default=None)
    add.add_argument("--weight", type=float, default=1.0)
    ssub.add_parser("list", help="list shards with their tenant counts")
    p.set_defaults(handler=_shard)
    moves.add_shard_commands(ssub)

    p = sub.add_parser("driver", help="create drivers, issue and revoke their tokens")
    dsub = p.add_subparsers(dest="action", required=True)
    dcreate = dsub.add_parser("create", help="create a driver (and its user) in a tenant")
    dcreate.add_argument("--tenant", required=True)
    dcreate.add_argument("--first-name", required=True)
    dcreate.add_argument("--last-name", required=True)
    dcreate.add_argument("--phone", required=True, help="E.164, e.g. +27821234567")
    dcreate.add_argument("--license", required=True)
    dcreate.add_argument("--vehicle", required=True, help="bicycle, motorbike, car, bakkie or van")
    dcreate.add_argument("--registration", required=True)
    dcreate.add_argument("--cold-storage", action="store_true")
    dtoken = dsub.add_parser("token", help="issue or revoke a driver's bearer token or tracker key")
    tksub = dtoken.add_subparsers(dest="token_action", required=True)
    issue = tksub.add_parser("issue")
    issue.add_argument("--tenant", required=True)
    issue.add_argument("--driver", required=True)
    issue.add_argument("--ttl-hours", type=float, default=None,
                       help="lifetime (default 30 days for an app token, 366 days for a tracker key)")
    issue.add_argument("--tracker", action="store_true",
                       help="a tracker key for Traccar Client or an OsmAnd-protocol GPS tracker (its device identifier)")
    revoke = tksub.add_parser("revoke")
    revoke.add_argument("--tenant", required=True)
    revoke.add_argument("--tracker", action="store_true", help="the id is a tracker key's")
    revoke.add_argument("token_id")
    p.set_defaults(handler=_driver)

    p = sub.add_parser("user", help="create REST API users (a tenant's first admin) and issue their tokens")
    usub = p.add_subparsers(dest="action", required=True)
    ucreate = usub.add_parser("create")
    ucreate.add_argument("--tenant", required=True)
    ucreate.add_argument("--phone", required=True, help="E.164, e.g. +27821234567")
    ucreate.add_argument("--name", required=True)
    ucreate.add_argument("--role", required=True, choices=["tenant_admin", "vendor", "customer"])
    ucreate.add_argument("--vendor", default=None, help="the vendor a vendor user acts for")
    utoken = usub.add_parser("token", help="issue a bearer token (shown once)")
    utoken.add_argument("--tenant", required=True)
    utoken.add_argument("--user", required=True)
    utoken.add_argument("--ttl-hours", type=float, default=24 * 30)
    p.set_defaults(handler=_user)

    p = sub.add_parser("engine", help="run the engine: HTTP/websocket API and the location worker")
    p.add_argument("role", nargs="?", choices=["all", "api", "worker"], default="all")
    p.add_argument("--workers", type=int, default=1, help="gateway processes (api)")
    p.add_argument("--log-level", default="warn", choices=["crit", "error", "warn", "info", "debug"])
    p.set_defaults(handler=_engine, sync=True)

    benches.add_bench_commands(sub)

    p = sub.add_parser("loadtest", help="generate a synthetic city and replay it through the running engine")
    lsub = p.add_subparsers(dest="loadtest", required=True)
    gen = lsub.add_parser("generate", help="write a scenario file (JSONL) for a seed")
    gen.add_argument("--seed", type=int, default=7)
    gen.add_argument("--start", type=_time_of_day, default=11 * 3600, help="time of day the scenario starts (11:00)")
    gen.add_argument("--duration", type=_duration, default=2 * 3600, help="scenario length (2h, 30m)")
    gen.add_argument("--tenants", type=int, default=3)
    gen.add_argument("--vendors", type=int, default=45, help="in total")
    gen.add_argument("--drivers", type=int, default=120, help="in total")
    gen.add_argument("--customers", type=int, default=1500, help="in total")
    gen.add_argument("--orders-per-day", type=float, default=4000.0, help="the city's daily total")
    gen.add_argument("-o", "--output", help="file (default .wakala/scenarios/city-SEED.jsonl)")
    rep = lsub.add_parser("replay", help="replay a scenario against the engine; a report at the end")
    rep.add_argument("scenario", help="a file from `wakala loadtest generate`")
    rep.add_argument("--speed", type=_speed, default=10.0, help="simulated time per wall time (10x)")
    rep.add_argument("--engine", help="HOST:PORT of a running engine (default: start one)")
    rep.add_argument("--report", help="report folder (default .wakala/reports/replay-TIME)")
    rep.add_argument("--drain", type=float, default=90.0, help="wall seconds for deliveries under way at the end")
    rep.add_argument("--max-wall", type=float, help="stop after this many wall seconds (partial report)")
    rep.add_argument("--no-progress", action="store_true", help="no progress bar (logs, CI)")
    rep.add_argument("--osmand-share", type=_share, default=0.0,
                     help="share of the drivers (0-1) whose fixes go through /v1/trackers/osmand")
    rep.add_argument("--whatsapp", action="store_true",
                     help="WhatsApp on against a fake Graph API; messages counted in the report")
    p.set_defaults(handler=_loadtest)

    p = sub.add_parser("demo", help="show the running system")
    p.set_defaults(handler=_demo)
    retention.register(sub)
    dsr.register(sub)
    backups.register(sub)
    status.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        if getattr(args, "sync", False):
            return handler(args)  # type: ignore[return-value]
        return asyncio.run(handler(args))
    except WakalaError as exc:
        print(f"wakala {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
