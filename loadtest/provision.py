"""Set up a scenario's city on a running engine before the replay starts.

What an operator does with the command line (``wakala tenant create``, ``wakala user create``,
``wakala driver create``) goes through the same functions: the tenants (reused by slug, so a
scenario replays many times), one tenant admin each, the drivers and their tokens. Everything
else goes through the REST API as its users would: the admin creates vendors and users, each
vendor lists its products with their stock.

Every run makes its own people and shops (fresh phone numbers, licence numbers and SKUs), so
a replay never collides with an earlier one; deliveries an interrupted earlier run left open
in these tenants are cancelled first, as an operator would, so they are not offered to this
run's drivers.

Drivers named in ``trackers`` (``--osmand-share``) also get a tracker key, issued as
``wakala driver token issue --tracker`` does: their fixes go through the OsmAnd route.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import httpx

from dispatch.commerce.orders.placing import COLD_CHAIN_TAG
from dispatch.identity.auth import issue_driver_token
from dispatch.identity.drivers import NewDriver, create_driver
from dispatch.identity.trackers import issue_tracker_key
from dispatch.identity.users import create_user, issue_user_token
from schema.db import TenantDatabase
from schema.errors import TenantExists
from schema.settings import PostgresSettings
from schema.tenants import create_tenant, list_tenants

__all__ = ["ApiCaller", "ApiFailed", "City", "ProvisionedVendor", "provision", "unique_phone"]


class ApiFailed(Exception):
    def __init__(self, route: str, status: int, body: str) -> None:
        super().__init__(f"{route}: HTTP {status} {body[:300]}")
        self.route, self.status, self.body = route, status, body

    @property
    def reason(self) -> str:
        import json

        try:
            return json.loads(self.body)["error"]["reason"]
        except (ValueError, KeyError, TypeError):
            return f"http_{self.status}"


class ApiCaller:
    """The REST API as its users call it; every call's latency goes to ``record(route, ms)``."""

    def __init__(self, http: httpx.AsyncClient, record: Callable[[str, float], None] | None = None) -> None:
        self.http = http
        self.record = record or (lambda route, ms: None)

    async def __call__(self, method: str, path: str, token: str | None, body: Any = None, *,
                       route: str | None = None, headers: dict[str, str] | None = None,
                       content: bytes | None = None) -> dict:
        label = f"{method} {route or path}"
        resp = await self._send(method, path, token, body, label, headers or {}, content)
        if resp.status_code >= 300:
            raise ApiFailed(label, resp.status_code, resp.text)
        return resp.json()

    async def _send(self, method: str, path: str, token: str | None, body: Any, label: str,
                    headers: dict[str, str], content: bytes | None) -> httpx.Response:
        """One request (JSON ``body`` or raw ``content``), its latency recorded under ``label``."""
        sent = {"Authorization": f"Bearer {token}"} if token else {}
        sent.update(headers)
        started = time.perf_counter()
        if content is not None:
            resp = await self.http.request(method, path, content=content, headers=sent)
        else:
            resp = await self.http.request(method, path, json=body, headers=sent)
        self.record(label, (time.perf_counter() - started) * 1000)
        return resp


def unique_phone() -> str:
    """A South African mobile number no earlier run has used (10^8 of them; random)."""
    return "+276" + f"{int.from_bytes(os.urandom(4), 'big') % 10**8:08d}"


@dataclass
class ProvisionedVendor:
    vendor_id: str
    token: str                      # the vendor user's bearer token
    products: dict[str, str]        # scenario product key -> product id


@dataclass
class City:
    """Scenario keys -> what the engine knows them as."""

    tenants: dict[str, str] = field(default_factory=dict)               # key -> tenant id
    admins: dict[str, str] = field(default_factory=dict)                # tenant key -> admin token
    vendors: dict[str, ProvisionedVendor] = field(default_factory=dict)
    drivers: dict[str, tuple[str, str]] = field(default_factory=dict)   # key -> (driver id, token)
    trackers: dict[str, str] = field(default_factory=dict)              # driver key -> tracker key (wkg_)
    customers: dict[str, str] = field(default_factory=dict)             # key -> customer token


async def _bounded(limit: int, jobs: list[Awaitable[Any]]) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(job: Awaitable[Any]) -> Any:
        async with gate:
            return await job
    return await asyncio.gather(*(one(j) for j in jobs))


async def provision(scenario: Any, settings: PostgresSettings, api: ApiCaller, *,
                    customers: set[str] | None = None, trackers: Collection[str] = (),
                    concurrency: int = 8) -> City:
    """Tenants, admins, vendors with their catalogues, drivers (a tracker key as well for those
    in ``trackers``) and the customers named in ``customers`` (default: every customer who
    orders in the scenario)."""
    city = City()
    run = os.urandom(3).hex().upper()
    existing = {t.slug: t for t in await list_tenants(settings)}
    for tenant in scenario.tenants:
        found = existing.get(tenant["slug"])
        if found is None:
            try:
                found = await create_tenant(settings, tenant["name"], slug=tenant["slug"])
            except TenantExists:
                found = next(t for t in await list_tenants(settings) if t.slug == tenant["slug"])
        city.tenants[tenant["key"]] = str(found.id)

    async with TenantDatabase(settings) as db:
        for key, tenant_id in city.tenants.items():
            await close_open_deliveries(db, tenant_id)
            admin = await create_user(db, tenant_id, {"phone": unique_phone(), "name": "Replay admin",
                                                      "role": "tenant_admin"})
            city.admins[key] = (await issue_user_token(db, tenant_id, admin["user_id"], ttl_s=86400)).token

        async def driver(spec: dict) -> None:
            tenant_id = city.tenants[spec["tenant"]]
            new = NewDriver(spec["first_name"], spec["last_name"], unique_phone(),
                            f"{spec['license_number']}-{run}"[:100], spec["vehicle_type"],
                            spec["registration"], bool(spec["cold_storage"]))
            driver_id = await create_driver(db, tenant_id, new)
            token = (await issue_driver_token(db, tenant_id, driver_id, ttl_s=86400)).token
            city.drivers[spec["key"]] = (str(driver_id), token)
            if spec["key"] in trackers:
                city.trackers[spec["key"]] = (await issue_tracker_key(db, tenant_id, driver_id, ttl_s=86400)).token
        await _bounded(concurrency, [driver(d) for d in scenario.drivers])

    async def vendor(spec: dict) -> None:
        admin = city.admins[spec["tenant"]]
        vendor_id = (await api("POST", "/v1/admin/vendors", admin, {
            "business_name": spec["name"], "address": {"street": spec.get("street", "")},
            "lat": spec["lat"], "lng": spec["lng"], "delivery_radius_m": spec["delivery_radius_m"],
            "minimum_order_value": spec["minimum_order_value"], "payment_methods": ["cash", "card"]}))["vendor_id"]
        token = await _user_token(api, admin, {"phone": unique_phone(), "name": spec["name"][:100],
                                               "role": "vendor", "vendor_id": vendor_id})
        products = {}
        for product in spec["products"]:
            made = await api("POST", "/v1/vendor/products", token, {
                "sku": product["sku"], "name": product["name"], "description": product.get("description", ""),
                "price": product["price"], "initial_stock": product["stock"],
                "tags": [COLD_CHAIN_TAG] if product.get("cold") else []})
            products[product["key"]] = made["id"]
        city.vendors[spec["key"]] = ProvisionedVendor(vendor_id, token, products)
    await _bounded(concurrency, [vendor(v) for v in scenario.vendors])

    wanted = customers if customers is not None else {o["customer"] for o in scenario.orders}
    await _bounded(concurrency, [add_customer(city, api, c) for c in scenario.customers if c["key"] in wanted])
    return city


async def _user_token(api: ApiCaller, admin: str, body: dict) -> str:
    """A user made by the tenant admin over REST, and a bearer token for it."""
    user = await api("POST", "/v1/admin/users", admin, body)
    return (await api("POST", f"/v1/admin/users/{user['user_id']}/tokens", admin,
                      route="/v1/admin/users/{id}/tokens"))["token"]


async def add_customer(city: City, api: ApiCaller, spec: dict) -> str:
    token = await _user_token(api, city.admins[spec["tenant"]],
                              {"phone": unique_phone(), "name": spec["name"][:100], "role": "customer"})
    city.customers[spec["key"]] = token
    return token


async def close_open_deliveries(db: TenantDatabase, tenant_id: str) -> int:
    """Cancel deliveries an earlier, interrupted run left open in this tenant (as an operator)."""
    from dispatch.deliveries.state import TERMINAL_STATES
    from dispatch.deliveries.store import transition

    async with db.tenant_transaction(tenant_id, readonly=True) as tx:
        open_ids = [r["id"] for r in await tx.fetch(
            "SELECT id FROM deliveries WHERE NOT (status = ANY($1::text[]))", [s.value for s in TERMINAL_STATES])]
    for delivery_id in open_ids:
        await transition(db, tenant_id, delivery_id, "cancel", actor="system:replay",
                         reason="left open by an earlier replay")
    return len(open_ids)
