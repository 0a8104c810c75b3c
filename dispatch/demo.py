"""`wakala demo`: show the running system, end to end, with live checks rather than claims.

Until the city replay lands (issue 7) the demo provisions two demo tenants, writes a vendor
in each through ``tenant_transaction`` as the application role, shows what each tenant can
see of the other (nothing), then starts the engine and drives one driver through the live
location pipeline (websocket -> Kafka -> worker -> Redis).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time

from dispatch.auth import issue_driver_token
from dispatch.console import format_table
from dispatch.drivers import NewDriver, create_driver
from dispatch.processes import spawn_wakala, stop
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
    from dispatch import services

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
    ok = await _live_locations(settings, demo[0])
    print("\nThe city replay, matching and tracking arrive with issues 4-7; see README.md.")
    return 0 if ok else 1


DEMO_DRIVER = NewDriver("Thandeka", "Mokoena", "+27710009999", "DEMO-DRIVER-1", "motorbike", "GP 100-DEM")
# Along Vilakazi Street, Orlando West, Soweto: a motorbike at ~8 m/s, one fix a second.
ROUTE = [(-26.23790 + 0.00007 * i, 27.90830 + 0.00003 * i) for i in range(6)]


async def _demo_driver(settings: PostgresSettings, tenant: Tenant) -> str:
    async with TenantDatabase(settings) as db:
        async with db.tenant_transaction(tenant.id, readonly=True) as tx:
            existing = await tx.fetchval("SELECT id FROM drivers WHERE license_number = $1",
                                         DEMO_DRIVER.license_number)
        driver_id = existing or await create_driver(db, tenant.id, DEMO_DRIVER)
        token = await issue_driver_token(db, tenant.id, driver_id, ttl_s=3600)
    return str(driver_id), token.token


async def _live_locations(settings: PostgresSettings, tenant: Tenant) -> bool:
    """Start the engine, drive one driver through it over a websocket, show what Redis knows."""
    import httpx
    import redis.asyncio as aioredis
    import websockets

    from streams.location_store import LocationStore
    from streams.settings import StreamSettings

    driver_id, token = await _demo_driver(settings, tenant)
    streams = StreamSettings.from_env()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = os.path.join(".wakala", "demo-engine.log")
    print(f"\nLive locations: starting the engine on http://127.0.0.1:{port} (log {log_path}) ...")
    engine = spawn_wakala(["engine", "all"], dict(os.environ, WAKALA_HTTP_PORT=str(port)), log_path)
    redis = aioredis.from_url(streams.redis_url)
    store = LocationStore(redis, streams)
    try:
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            for _ in range(100):
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.2)
            else:
                print("the engine did not start; see the log")
                return False
            auth = {"Authorization": f"Bearer {token}"}
            shift = (await http.post("/v1/drivers/shift", json={"action": "start"}, headers=auth)).json()
            print(f"driver {driver_id} ({DEMO_DRIVER.vehicle_type}) started a shift: {shift['status']}")
            bad = await http.post("/v1/drivers/locations", headers=auth, json={"pings": [
                {"driver_id": driver_id, "lat": 0.0, "lng": 0.0, "accuracy": 5, "speed": 0,
                 "heading": 0, "timestamp": time.time()}]})
            print(f"a (0, 0) ping is refused: HTTP {bad.status_code} {bad.json()['error']['reason']}")
        async with websockets.connect(f"ws://127.0.0.1:{port}/v1/drivers/stream",
                                      additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            await ws.recv()
            start = time.time() - len(ROUTE)
            for i, (lat, lng) in enumerate(ROUTE):
                await ws.send(json.dumps({"type": "ping", "seq": i, "driver_id": driver_id, "lat": lat,
                                          "lng": lng, "accuracy": 6.0, "speed": 8.0, "heading": 20.0,
                                          "timestamp": start + i}))
                await ws.recv()
        print(f"sent {len(ROUTE)} fixes over the driver websocket; waiting for the worker "
              "(the first start joins a consumer group, a few seconds) ...")
        deadline = time.monotonic() + 60
        location = None
        while time.monotonic() < deadline:
            location = await store.get(driver_id)
            if location and abs(location["ts"] - (start + len(ROUTE) - 1)) < 1e-3:
                break
            await asyncio.sleep(0.2)
        else:
            print("the position did not reach Redis within 60 s; see the log")
            return False
        cell = location["cell"]
        indexed = [d[0] for d in await store.available_in_cells(str(tenant.id), [cell])]
        print(format_table(["driver:location field", "value"],
                           [(k, location[k]) for k in ("lat", "lng", "speed", "heading", "ts",
                                                        "tenant", "vehicle", "status", "cell")]))
        ttl = await redis.pttl(f"driver:location:{driver_id}")
        print(f"key expires in {ttl / 1000:.1f} s unless the driver pings again; "
              f"available in H3 cell {cell}: {'yes' if driver_id in indexed else 'no'}")
        print(f"OpenAPI: {base}/openapi.json (the engine stops with the demo)")
        return driver_id in indexed
    finally:
        await redis.aclose()
        stop(engine)
