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
import time

from dispatch.auth import issue_driver_token
from dispatch.console import format_table
from dispatch.drivers import NewDriver, create_driver
from dispatch.processes import free_port, spawn_wakala, stop, wait_healthy
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
    print("\nThe city replay and its report (issue 7) are next; see README.md.")
    return 0 if ok else 1


DEMO_DRIVER = NewDriver("Thandeka", "Mokoena", "+27710009999", "DEMO-DRIVER-1", "motorbike", "GP 100-DEM")
# Along Vilakazi Street, Orlando West, Soweto: a motorbike at ~8 m/s, one fix a second.
ROUTE = [(-26.23790 + 0.00007 * i, 27.90830 + 0.00003 * i) for i in range(6)]


async def _demo_driver(settings: PostgresSettings, tenant: Tenant) -> tuple[str, str]:
    async with TenantDatabase(settings) as db:
        return await _driver_with_token(db, tenant, DEMO_DRIVER)


async def _live_locations(settings: PostgresSettings, tenant: Tenant) -> bool:
    """Start the engine, drive one driver through it over a websocket, show what Redis knows."""
    import httpx
    import redis.asyncio as aioredis
    import websockets

    from streams.location_store import LocationStore
    from streams.settings import StreamSettings

    driver_id, token = await _demo_driver(settings, tenant)
    streams = StreamSettings.from_env()
    port = free_port()
    log_path = os.path.join(".wakala", "demo-engine.log")
    print(f"\nLive locations: starting the engine on http://127.0.0.1:{port} (log {log_path}) ...")
    engine = spawn_wakala(["engine", "all"], dict(os.environ, WAKALA_HTTP_PORT=str(port)), log_path)
    redis = aioredis.from_url(streams.redis_url)
    store = LocationStore(redis, streams)
    try:
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            if not await wait_healthy(http, within_s=20):
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
        if driver_id not in indexed:
            return False
        return await _a_delivery(settings, tenant, f"127.0.0.1:{port}", (driver_id, token))
    finally:
        await redis.aclose()
        stop(engine)


SECOND_DRIVER = NewDriver("Bongani", "Khumalo", "+27710009998", "DEMO-DRIVER-2", "motorbike", "GP 101-DEM")
SHOP = (-26.23600, 27.90900)       # a spaza shop in Orlando West
CUSTOMER = (-26.23950, 27.91500)   # ~700 m south-east
NEAR, NEXT = (-26.23420, 27.90880), (-26.23880, 27.90860)   # ~200 m north, ~310 m south of the shop


def _phone() -> str:
    return "+2779" + f"{int.from_bytes(os.urandom(3), 'big') % 10**7:07d}"


async def _a_delivery(settings: PostgresSettings, tenant: Tenant, addr: str, first: tuple[str, str]) -> bool:
    """One order through the REST API and the drivers' app, from the shelf to the door."""
    import httpx

    from dispatch.users import create_user, issue_user_token
    from loadtest.driver_sim import SimulatedDriver

    print("\nA delivery, through the public interfaces only (REST API, driver websockets):")
    async with TenantDatabase(settings) as db:
        await _close_earlier_runs(db, tenant)
        admin = await create_user(db, tenant.id, {"phone": _phone(), "name": "Demo admin", "role": "tenant_admin"})
        admin_token = (await issue_user_token(db, tenant.id, admin["user_id"], ttl_s=3600)).token
        second = await _driver_with_token(db, tenant, SECOND_DRIVER)
    steps: list[tuple[str, str]] = []
    started = time.monotonic()

    def step(what: str) -> None:
        steps.append((f"{time.monotonic() - started:6.1f} s", what))
        print(f"  {steps[-1][0]}  {what}")

    async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=15) as http:
        async def call(method: str, path: str, token: str, body: dict | None = None) -> dict:
            resp = await http.request(method, path, json=body, headers={"Authorization": f"Bearer {token}"})
            if resp.status_code >= 300:
                raise RuntimeError(f"{method} {path}: HTTP {resp.status_code} {resp.text[:300]}")
            return resp.json()

        vendor = (await call("POST", "/v1/admin/vendors", admin_token, {
            "business_name": "Mama Thoko Spaza", "address": {"street": "Vilakazi St, Orlando West"},
            "lat": SHOP[0], "lng": SHOP[1], "delivery_radius_m": 5000, "minimum_order_value": "20.00",
            "payment_methods": ["cash", "card"]}))["vendor_id"]

        async def user(body: dict) -> str:
            made = await call("POST", "/v1/admin/users", admin_token, body)
            return (await call("POST", f"/v1/admin/users/{made['user_id']}/tokens", admin_token))["token"]

        shop = await user({"phone": _phone(), "name": "Thoko", "role": "vendor", "vendor_id": vendor})
        buyer = await user({"phone": _phone(), "name": "Thandi", "role": "customer"})
        product = await call("POST", "/v1/vendor/products", shop, {
            "sku": f"BREAD-{os.urandom(3).hex()}", "name": "Brown bread 700 g", "price": "17.50",
            "description": "Fresh this morning", "initial_stock": 30})
        step(f"vendor {vendor[:8]} lists '{product['name']}' at R{product['price']}, 30 in stock")
        order = await call("POST", "/v1/orders", buyer, {
            "vendor_id": vendor, "lines": [{"product_id": product["id"], "quantity": 3}],
            "delivery_lat": CUSTOMER[0], "delivery_lng": CUSTOMER[1],
            "delivery_address": {"street": "12 Mahalefele Rd"}, "payment_method": "cash"})
        step(f"customer orders 3: {order['order_number']}, total R{order['total_amount']} "
             f"(VAT R{order['tax_amount']}, delivery R{order['delivery_fee']}), stock reserved")
        await call("POST", f"/v1/vendor/orders/{order['id']}/accept", shop)
        # Real-time driving (a fix per step, as the phone would send it): a phone's clock never
        # runs ahead, so a demo run right after another is not refused as out of order.
        async with SimulatedDriver(addr, *first, speed_mps=25, clock_lead_s=3) as a, \
                SimulatedDriver(addr, *second, speed_mps=25, clock_lead_s=3) as b:
            await a.ping(*NEAR)
            await b.ping(*NEXT)
            await asyncio.sleep(1.5)   # the worker lands both positions in the availability index
            ready = await call("POST", f"/v1/vendor/orders/{order['id']}/ready", shop)
            delivery = ready["delivery_id"]
            step(f"vendor marks it ready: delivery {delivery[:8]} goes to the matcher")
            link = await call("POST", f"/v1/orders/{order['id']}/tracking-link", buyer)
            step(f"the customer's tracking page: http://{addr}{link['url']}")
            offer = await _offer_of(a, delivery)
            step(f"offer to the nearest driver {first[0][:8]}: pay R{offer['pay']}, "
                 f"pickup in {offer['pickup_eta_s']} s, dropoff leg {offer['dropoff_eta_s']} s")
            await a.send({"type": "offer_reply", "delivery_id": delivery, "accept": False})
            step("  ... who declines")
            await _offer_of(b, delivery)
            reply = await b.send({"type": "offer_reply", "delivery_id": delivery, "accept": True})
            step(f"next driver {second[0][:8]} is offered it and accepts: {reply.get('status', reply)}")
            await b.drive(NEXT, SHOP, steps=4, realtime=True)
            status = await _tracked_status(delivery, "at_pickup", 20)
            step(f"the location worker sees the driver inside the shop's geofence: {status}")
            if status != "at_pickup":
                refused = [f for f in b.frames if f.get("type") == "error"][-3:]
                step(f"  (not seen; the driver's last refusals: {refused or 'none'})")
            await b.send({"type": "delivery_update", "delivery_id": delivery, "event": "pick_up"})
            step("driver confirms pick-up")
            await b.drive(SHOP, CUSTOMER, steps=6, realtime=True)
            await asyncio.sleep(1.0)
            reply = await b.send({"type": "delivery_update", "delivery_id": delivery, "event": "deliver",
                                  "proof_of_delivery": {"code": "4821", "received_by": "Thandi"}})
            step(f"driver delivers with a proof of delivery: {reply.get('status', reply)}")
        final = await call("GET", f"/v1/orders/{order['id']}", buyer)
        step(f"the customer sees order {final['order_number']}: {final['status']}")
        print(f"OpenAPI: http://{addr}/openapi.json (the engine stops with the demo)")
        return final["status"] == "delivered"


async def _close_earlier_runs(db: TenantDatabase, tenant: Tenant) -> None:
    """Deliveries an interrupted earlier demo left open would be offered to the demo drivers
    first; cancel them (as an operator would) so this run starts clean."""
    from dispatch.deliveries import transition
    from dispatch.state import TERMINAL_STATES

    async with db.tenant_transaction(tenant.id, readonly=True) as tx:
        open_ids = [r["id"] for r in await tx.fetch(
            "SELECT id FROM deliveries WHERE NOT (status = ANY($1::text[]))", [s.value for s in TERMINAL_STATES])]
    for delivery_id in open_ids:
        await transition(db, tenant.id, delivery_id, "cancel", actor="system:demo", reason="left open by an earlier demo")
    if not open_ids:
        return
    # The cancel events reach the engine's dispatcher, which frees those drivers in Redis.
    import redis.asyncio as aioredis

    from streams.settings import StreamSettings

    redis = aioredis.from_url(StreamSettings.from_env().redis_url)
    try:
        keys = [f"delivery:{what}:{d}" for d in open_ids for what in ("driver", "offer", "active")]
        for _ in range(100):   # up to 20 s
            if not await redis.exists(*keys):
                break
            await asyncio.sleep(0.2)
    finally:
        await redis.aclose()


async def _offer_of(driver, delivery_id: str) -> dict:
    """The driver's offer of this delivery; offers of others (older work of the demo tenant
    that the matcher found waiting) are declined, as a busy driver would."""
    while True:
        offer = await asyncio.wait_for(driver.offers.get(), 30)
        if offer["delivery_id"] == delivery_id:
            return offer
        await driver.send({"type": "offer_reply", "delivery_id": offer["delivery_id"], "accept": False})


async def _tracked_status(delivery_id: str, wanted: str, within_s: float) -> str:
    """The status in the live tracking document the location worker keeps (delivery:tracking:{id})."""
    import redis.asyncio as aioredis

    from streams.settings import StreamSettings

    redis = aioredis.from_url(StreamSettings.from_env().redis_url)
    status = "not tracked yet"
    try:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            raw = await redis.get(f"delivery:tracking:{delivery_id}")
            status = json.loads(raw)["status"] if raw else status
            if status == wanted:
                break
            await asyncio.sleep(0.2)
    finally:
        await redis.aclose()
    return status


async def _driver_with_token(db: TenantDatabase, tenant: Tenant, new: NewDriver) -> tuple[str, str]:
    async with db.tenant_transaction(tenant.id, readonly=True) as tx:
        existing = await tx.fetchval("SELECT id FROM drivers WHERE license_number = $1", new.license_number)
    driver_id = existing or await create_driver(db, tenant.id, new)
    return str(driver_id), (await issue_driver_token(db, tenant.id, driver_id, ttl_s=3600)).token
