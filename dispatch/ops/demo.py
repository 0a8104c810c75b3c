"""`wakala demo` (`make demo`): the running system, end to end, with live checks rather than claims.

First the platform: services, shards, tenants, and an isolation check as the application role
(each tenant sees its own rows and nothing of another's). Then a city at lunchtime: a short
synthetic Johannesburg-Soweto scenario (``loadtest.city``) replayed at 10x through the engine's
public interfaces (``loadtest.replay``): vendors, customers ordering over the REST API, drivers
on their websockets, customers watching their tracking links. While it runs it prints the URL
of one live tracking page and of a vendor's order feed; at the end, the report (terminal,
JSON and PNG plots under ``.wakala/reports/``).
"""

from __future__ import annotations

import time
from dataclasses import replace

from dispatch.core.console import format_table
from schema.connect import connection
from schema.db import TenantDatabase
from schema.errors import TenantExists
from schema.migrate import shard_dsn
from schema.settings import PostgresSettings
from schema.tenants import Tenant, create_tenant, list_tenants

DEMO_TENANTS = (("Soweto Spaza Co-op", "demo-soweto-spaza"), ("Alex Eats", "demo-alex-eats"))

TABLES_SQL = """
SELECT count(*) FILTER (WHERE c.relkind IN ('r', 'p') AND c.relispartition = false) AS tables,
       count(*) FILTER (WHERE c.relkind IN ('r', 'p') AND c.relispartition = false
                          AND c.relrowsecurity AND c.relforcerowsecurity) AS forced_rls
FROM pg_class c WHERE c.relnamespace = to_regnamespace($1)
"""
UPSERT_USER_SQL = """
INSERT INTO users (phone_number, name, role) VALUES ($1, $2, 'vendor')
ON CONFLICT (phone_number) DO UPDATE SET updated_at = now()
RETURNING id
"""
UPSERT_VENDOR_SQL = """
INSERT INTO vendors (user_id, business_name, address, location)
SELECT $1, $2, '{"suburb": "demo"}'::jsonb,
       ST_SetSRID(ST_MakePoint($3, $4), 4326)::geography
WHERE NOT EXISTS (SELECT 1 FROM vendors WHERE user_id = $1)
"""


async def _ensure_demo_tenants(settings: PostgresSettings) -> list[Tenant]:
    for name, slug in DEMO_TENANTS:
        try:
            await create_tenant(settings, name, slug=slug)
        except TenantExists:
            pass
    wanted = {slug for _, slug in DEMO_TENANTS}
    return [t for t in await list_tenants(settings) if t.slug in wanted]


async def run_demo() -> int:
    from dispatch.ops import services

    settings = PostgresSettings.from_env()
    print("Services\n" + services.format_statuses(await services.services_status()) + "\n")
    demo = await _ensure_demo_tenants(settings)

    async with TenantDatabase(settings) as db:
        for i, tenant in enumerate(demo):
            async with db.tenant_transaction(tenant.id) as tx:
                user_id = await tx.fetchval(UPSERT_USER_SQL, f"+2771000000{i}", f"{tenant.name} owner")
                await tx.execute(UPSERT_VENDOR_SQL, user_id, f"{tenant.name} #1", 27.86 + i / 10, -26.25)
        seen = []
        for tenant in demo:
            async with db.tenant_transaction(tenant.id, readonly=True) as tx:
                own = await tx.fetchval("SELECT count(*) FROM vendors")
                # Tenants on another shard live in another database: nothing to reach at all.
                neighbours = [o for o in demo if o.id != tenant.id and o.shard_id == tenant.shard_id]
                others = [
                    await tx.fetchval(f'SELECT count(*) FROM "{o.schema_name}".vendors')  # noqa: S608
                    for o in neighbours
                ]
            seen.append((tenant.slug, own, sum(others) if neighbours else "n/a (other shard)"))

    from schema.shards import list_shards

    shards = await list_shards(settings)
    print("Shards\n" + format_table(
        ["id", "name", "database", "status", "tenants"],
        [(s.shard_id, s.name, f"{s.host}:{s.port}/{s.database}", s.status, s.tenants) for s in shards],
    ) + "\n")

    rows = []
    by_id = {s.shard_id: s for s in shards}
    for tenant in await list_tenants(settings):
        shard = by_id[tenant.shard_id]
        dsn = shard_dsn(settings, {"host": shard.host, "port": shard.port,
                                   "database_name": shard.database})
        async with connection(dsn) as conn:
            counts = await conn.fetchrow(TABLES_SQL, tenant.schema_name)
        rows.append((tenant.slug, tenant.status, tenant.shard_name, tenant.schema_name,
                     counts["tables"], counts["forced_rls"]))
    print("Tenants\n" + format_table(
        ["slug", "status", "shard", "schema", "tables", "tables with forced RLS"], rows) + "\n")

    print("Isolation check (as the application role, through tenant_transaction)\n" + format_table(
        ["tenant", "its own vendors", "vendors it can see in other tenants"], seen))
    leaked = any(isinstance(other, int) and other > 0 for _, _, other in seen)
    print("\nisolation: " + ("BROKEN - a tenant saw another tenant's rows" if leaked else "holds"))
    if leaked:
        return 1
    return 0 if await _city() else 1


# Lunchtime in Johannesburg-Soweto, small enough for a few wall minutes at 10x: ~70 orders in
# 30 simulated minutes from two tenants' shops, 45 drivers.
DEMO_SPEED = 10.0
DEMO_ORDERS = 70
# Orders readied near the end of the window (preparation takes up to 20 simulated minutes)
# still need their drive: most of them finish in this many wall seconds after the window.
DEMO_DRAIN_S = 150


def demo_city():
    from loadtest.city import CityConfig, expected_orders

    config = CityConfig(seed=7, start_s=12 * 3600, duration_s=30 * 60, tenants=2, vendors=14, drivers=45,
                        customers=400, orders_per_day=1.0)
    return replace(config, orders_per_day=DEMO_ORDERS / expected_orders(config))


async def _city() -> bool:
    from pathlib import Path

    from loadtest import city
    from loadtest.replay import ReplayOptions, run_replay

    config = demo_city()
    scenario = city.generate(config)
    path = Path(".wakala", "scenarios", "demo-city.jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    city.write(scenario, path)
    counts = scenario.header["counts"]
    print(f"\nA city at lunchtime (scenario {path}, seed {config.seed}): {counts['orders']} orders in "
          f"{config.duration_s // 60} simulated minutes at {counts['vendors']} spaza shops and takeaways of "
          f"{counts['tenants']} tenants, {counts['drivers']} drivers on motorbikes, in cars and bakkies.\n"
          f"Replayed at {DEMO_SPEED:g}x through the engine's public interfaces; open the two URLs below "
          "in a browser while it runs (the engine stops with the demo).\n")
    report = Path(".wakala", "reports", time.strftime("demo-%Y%m%d-%H%M%S"))
    summary = await run_replay(ReplayOptions(scenario=path, speed=DEMO_SPEED, report_dir=report,
                                             drain_s=DEMO_DRAIN_S))
    return bool(summary.get("orders_delivered"))
