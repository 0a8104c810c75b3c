"""The REST API through the running engine: roles, tenants, bodies, limits, payments."""

import json
import uuid

import httpx
import pytest

from dispatch.api import sign
from dispatch.identity.users import create_user, issue_user_token
from schema.db import TenantDatabase
from schema.tenants import create_tenant
from tests.integration.engine_helpers import running_app
from tests.integration.shared_platform import shared_platform  # noqa: F401 - one platform for the module

pytestmark = pytest.mark.timeout(180)


SECRET = "test-webhook-secret"
VENDOR = {"business_name": "Mama Thoko Spaza", "address": {"street": "1 Vilakazi St"}, "lat": -26.236,
          "lng": 27.909, "delivery_radius_m": 6000, "minimum_order_value": "10.00", "payment_methods": ["cash", "card"]}


def phone() -> str:
    return f"+2783{uuid.uuid4().int % 10**7:07d}"


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


class Shop:
    """A tenant set up through the API: admin, vendor (user + token), a product, a customer."""

    def __init__(self, http: httpx.AsyncClient, tenant, admin_token: str) -> None:
        self.http, self.tenant, self.admin = http, tenant, admin_token

    async def setup(self, stock: int = 5) -> "Shop":
        http = self.http
        resp = await http.post("/v1/admin/vendors", json=VENDOR, headers=auth(self.admin))
        assert resp.status_code == 201, resp.text
        self.vendor_id = resp.json()["vendor_id"]
        self.vendor = await self._user({"phone": phone(), "name": "Thoko", "role": "vendor",
                                        "vendor_id": self.vendor_id})
        self.customer = await self._user({"phone": phone(), "name": "Thandi", "role": "customer"})
        resp = await http.post("/v1/vendor/products", headers=auth(self.vendor), json={
            "sku": "MAIZE-10KG", "name": "Maize meal 10 kg", "description": "White star super maize",
            "price": "89.99", "initial_stock": stock})
        assert resp.status_code == 201, resp.text
        self.product_id = resp.json()["id"]
        return self

    async def _user(self, body: dict) -> str:
        resp = await self.http.post("/v1/admin/users", json=body, headers=auth(self.admin))
        assert resp.status_code == 201, resp.text
        resp = await self.http.post(f"/v1/admin/users/{resp.json()['user_id']}/tokens", headers=auth(self.admin))
        assert resp.status_code == 201, resp.text
        return resp.json()["token"]

    def order_body(self, quantity: int = 2) -> dict:
        return {"vendor_id": self.vendor_id, "lines": [{"product_id": self.product_id, "quantity": quantity}],
                "delivery_lat": -26.240, "delivery_lng": 27.915, "delivery_address": {"street": "12 Mahalefele Rd"},
                "payment_method": "card"}


async def _tenant_with_admin(platform) -> tuple:
    tenant = await create_tenant(platform, f"API {uuid.uuid4().hex[:6]}")
    async with TenantDatabase(platform) as db:
        admin = await create_user(db, tenant.id, {"phone": phone(), "name": "Admin", "role": "tenant_admin"})
        token = (await issue_user_token(db, tenant.id, admin["user_id"], ttl_s=3600)).token
    return tenant, token


@pytest.fixture(scope="module")
async def api(platform, module_stream_settings):
    async with running_app(platform, module_stream_settings, payment_webhook_secret=SECRET) as (addr, state):
        async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http:
            yield http, state


async def _counts(platform, tenant) -> dict:
    async with TenantDatabase(platform) as db, db.tenant_transaction(tenant.id, readonly=True) as tx:
        return {t: await tx.fetchval(f"SELECT count(*) FROM {t}")  # noqa: S608
                for t in ("orders", "order_items", "inventory_reservations", "payments", "products",
                          "order_events_outbox")}


def _pay(tenant, order: dict, key: str, status: str = "succeeded") -> bytes:
    return json.dumps({"tenant_id": str(tenant.id), "order_id": order["id"], "idempotency_key": key,
                       "amount": order["total_amount"], "status": status, "gateway": "ozow"}).encode()


async def test_a_customer_orders_pays_and_the_vendor_readies_it(platform, api):
    http, _ = api
    tenant, admin = await _tenant_with_admin(platform)
    shop = await Shop(http, tenant, admin).setup(stock=5)

    found = (await http.get("/v1/catalogue/search", params={"q": "maize"}, headers=auth(shop.customer))).json()
    assert [p["id"] for p in found["items"]] == [shop.product_id]
    product = (await http.get(f"/v1/catalogue/products/{shop.product_id}", headers=auth(shop.customer))).json()
    assert product["price"] == "89.99"

    resp = await http.post("/v1/orders", json=shop.order_body(2), headers=auth(shop.customer))
    assert resp.status_code == 201, resp.text
    order = resp.json()
    assert order["status"] == "pending" and order["order_number"].startswith("WK-")
    assert order["lines"][0]["unit_price"] == "89.99"   # from the database

    raw = _pay(tenant, order, "pay-0001-abcdef")
    headers = {"Content-Type": "application/json", "X-Wakala-Signature": sign(SECRET, raw)}
    first = await http.post("/v1/payments/callback", content=raw, headers=headers)
    assert first.status_code == 200, first.text
    before = await _counts(platform, tenant)
    again = await http.post("/v1/payments/callback", content=raw, headers=headers)
    assert again.status_code == 200 and await _counts(platform, tenant) == before   # a replay changes nothing

    mine = (await http.get(f"/v1/orders/{order['id']}", headers=auth(shop.customer))).json()
    assert mine["status"] == "paid"
    incoming = (await http.get("/v1/vendor/orders", headers=auth(shop.vendor))).json()["orders"]
    assert [o["id"] for o in incoming] == [order["id"]]
    resp = await http.post(f"/v1/vendor/orders/{order['id']}/accept", headers=auth(shop.vendor))
    assert resp.status_code == 200 and resp.json()["status"] == "accepted", resp.text
    resp = await http.post(f"/v1/vendor/orders/{order['id']}/ready", headers=auth(shop.vendor))
    assert resp.status_code == 200 and resp.json()["status"] == "ready", resp.text
    assert resp.json()["delivery_id"]
    stock = (await http.get(f"/v1/vendor/products/{shop.product_id}", headers=auth(shop.vendor))).json()
    assert json.dumps(stock)   # the vendor sees its own product, active or not


async def test_another_tenant_or_party_gets_404_and_roles_are_enforced(platform, api):
    http, _ = api
    tenant_a, admin_a = await _tenant_with_admin(platform)
    tenant_b, admin_b = await _tenant_with_admin(platform)
    a = await Shop(http, tenant_a, admin_a).setup()
    b = await Shop(http, tenant_b, admin_b).setup()
    order = (await http.post("/v1/orders", json=a.order_body(1), headers=auth(a.customer))).json()

    # tenant B's customer and vendor: A's order and product do not exist for them
    for path in (f"/v1/orders/{order['id']}", f"/v1/catalogue/products/{a.product_id}"):
        resp = await http.get(path, headers=auth(b.customer))
        assert resp.status_code == 404 and order["order_number"] not in resp.text
    resp = await http.get(f"/v1/vendor/orders/{order['id']}", headers=auth(b.vendor))
    assert resp.status_code == 404
    resp = await http.patch(f"/v1/vendor/products/{a.product_id}", json={"price": "1.00"}, headers=auth(b.vendor))
    assert resp.status_code == 404
    assert (await http.get(f"/v1/catalogue/products/{a.product_id}", headers=auth(a.customer))).json()["price"] == "89.99"
    assert (await http.get("/v1/orders", headers=auth(b.customer))).json()["orders"] == []
    search = (await http.get("/v1/catalogue/search", params={"q": "maize"}, headers=auth(b.customer))).json()
    assert [p["id"] for p in search["items"]] == [b.product_id]   # same words, own tenant only

    # another customer of the same tenant: 404 too
    other = await a._user({"phone": phone(), "name": "Sipho", "role": "customer"})
    assert (await http.get(f"/v1/orders/{order['id']}", headers=auth(other))).status_code == 404
    assert (await http.post(f"/v1/orders/{order['id']}/cancel", json={"reason": "x"},
                            headers=auth(other))).status_code == 404

    # roles
    assert (await http.post("/v1/vendor/products", json={}, headers=auth(a.customer))).status_code == 403
    assert (await http.post("/v1/orders", json=a.order_body(), headers=auth(a.vendor))).status_code == 403
    assert (await http.post("/v1/admin/vendors", json=VENDOR, headers=auth(a.vendor))).status_code == 403
    for headers in ({}, auth("wku_nope"), auth(a.customer + "x"), {"Authorization": a.customer}):
        resp = await http.get("/v1/orders", headers=headers)
        assert resp.status_code == 401 and resp.json()["error"]["field"] == "authorization"


@pytest.mark.parametrize("change, status, field", [
    ({"lines": [{"product_id": "P", "quantity": -1}]}, 422, "lines[0].quantity"),
    ({"lines": [{"product_id": "P", "quantity": 0}]}, 422, "lines[0].quantity"),
    ({"lines": [{"product_id": "P", "quantity": 10**9}]}, 422, "lines[0].quantity"),
    ({"lines": [{"product_id": "P", "quantity": "2"}]}, 422, "lines[0].quantity"),
    ({"lines": [{"product_id": "P", "quantity": True}]}, 422, "lines[0].quantity"),
    ({"lines": [{"product_id": "P", "quantity": 1, "unit_price": "0.01"}]}, 422, None),
    ({"total_amount": "1.00"}, 422, None),
    ({"lines": [{"product_id": str(uuid.uuid4()), "quantity": 1}]}, 422, None),
    ({"lines": "maize"}, 422, "lines"),
    ({"delivery_lat": 200}, 422, "delivery_lat"),
    ({"vendor_id": "not-a-uuid"}, 422, "vendor_id"),
    ({"is_paid": True}, 422, "is_paid"),
])
async def test_hostile_order_bodies_are_refused_and_write_nothing(platform, api, change, status, field):
    http, _ = api
    tenant, admin = await _tenant_with_admin(platform)
    shop = await Shop(http, tenant, admin).setup()
    body = shop.order_body()
    for line in change.get("lines", []) if isinstance(change.get("lines"), list) else []:
        if line.get("product_id") == "P":
            line["product_id"] = shop.product_id
    body.update(change)
    before = await _counts(platform, tenant)
    resp = await http.post("/v1/orders", json=body, headers=auth(shop.customer))
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["reason"] and error["message"]
    if field is not None:
        assert error["field"] == field
    assert await _counts(platform, tenant) == before


async def test_malformed_and_oversized_bodies(platform, api):
    http, _ = api
    tenant, admin = await _tenant_with_admin(platform)
    shop = await Shop(http, tenant, admin).setup()
    before = await _counts(platform, tenant)
    headers = {**auth(shop.customer), "Content-Type": "application/json"}
    assert (await http.post("/v1/orders", content=b'{"lines": [', headers=headers)).status_code == 400
    assert (await http.post("/v1/orders", content=b"[" * 50_000, headers=headers)).status_code in (400, 413)
    huge = json.dumps({**shop.order_body(), "notes": "x" * 400_000}).encode()
    try:
        resp = await http.post("/v1/orders", content=huge, headers=headers)
        assert resp.status_code == 413 and resp.json()["error"]["reason"] == "too_large"
    except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
        pass   # the engine answered 413 with Connection: close before the upload ended
    assert (await http.get("/v1/catalogue/products", params={"page": 0}, headers=headers)).status_code == 422
    assert (await http.get("/v1/catalogue/products", params={"page": "x"}, headers=headers)).status_code == 422
    assert await _counts(platform, tenant) == before


async def test_payment_callbacks_must_be_signed(platform, api):
    http, _ = api
    tenant, admin = await _tenant_with_admin(platform)
    shop = await Shop(http, tenant, admin).setup()
    order = (await http.post("/v1/orders", json=shop.order_body(1), headers=auth(shop.customer))).json()
    raw = _pay(tenant, order, "pay-0002-abcdef")
    before = await _counts(platform, tenant)
    for signature in ("", "sha256=" + "0" * 64, sign("wrong", raw), sign(SECRET, raw + b" ")):
        resp = await http.post("/v1/payments/callback", content=raw,
                               headers={"Content-Type": "application/json", "X-Wakala-Signature": signature})
        assert resp.status_code == 401
    for payload in ({"amount": "NaN"}, {"amount": 1.5}, {"status": "maybe"}, {"idempotency_key": "x"},
                    {"extra": 1}, {"order_id": str(uuid.uuid4())}):
        body = json.loads(raw)
        body.update(payload)
        signed = json.dumps(body).encode()
        resp = await http.post("/v1/payments/callback", content=signed,
                               headers={"Content-Type": "application/json", "X-Wakala-Signature": sign(SECRET, signed)})
        assert resp.status_code in (404, 422), resp.text
    assert await _counts(platform, tenant) == before


async def test_each_caller_is_rate_limited(platform, stream_settings):
    tenant, admin = await _tenant_with_admin(platform)
    async with running_app(platform, stream_settings, api_rate_limit=5, api_rate_window_s=60,
                           api_docs=True) as (addr, _), \
            httpx.AsyncClient(base_url=f"http://{addr}") as http:
        codes = [(await http.get("/v1/admin/orders", headers={**auth(admin), "X-Access-Purpose": "test"})).status_code for _ in range(7)]
        assert codes[:5] == [200] * 5 and codes[5:] == [429, 429]
        resp = await http.get("/v1/admin/orders", headers={**auth(admin), "X-Access-Purpose": "test"})
        assert resp.headers["Retry-After"] == "60" and resp.json()["error"]["reason"] == "rate_limited"
        spec = (await http.get("/openapi.json")).json()
        for path in ("/v1/orders", "/v1/vendor/orders/{order_id}/ready", "/v1/payments/callback",
                     "/v1/catalogue/search", "/v1/admin/users"):
            assert path in spec["paths"]
