"""Idempotency-Key on the REST API's unsafe routes, through the running engine: a retry acts once.

Every test makes its own tenant and looks only at it, so the module shares one platform and
one engine (``module_platform``)."""

import asyncio
import uuid

import httpx
import pytest

from dispatch.commerce import idempotency
from schema.db import TenantDatabase
from tests.integration.api.test_api import SECRET, Shop, _counts, _pay, _tenant_with_admin, auth
from tests.integration.engine_helpers import running_app
from tests.integration.shared_platform import shared_platform  # noqa: F401 - one platform for the module

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
async def api(platform, module_stream_settings):
    async with running_app(platform, module_stream_settings, payment_webhook_secret=SECRET) as (addr, state):
        async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http:
            yield http, state


@pytest.fixture
async def shop(platform, api):
    http, _ = api
    tenant, admin = await _tenant_with_admin(platform)
    return await Shop(http, tenant, admin).setup(stock=5)


def keyed(token: str, key: str) -> dict:
    return {**auth(token), "Idempotency-Key": key}


async def test_a_retried_order_post_places_one_order_and_answers_the_same(platform, api, shop):
    http, _ = api
    first = await http.post("/v1/orders", json=shop.order_body(2), headers=keyed(shop.customer, "order-1"))
    assert first.status_code == 201, first.text
    before = await _counts(platform, shop.tenant)
    again = await http.post("/v1/orders", json=shop.order_body(2), headers=keyed(shop.customer, "order-1"))
    assert (again.status_code, again.json()) == (201, first.json())
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert await _counts(platform, shop.tenant) == before and before["orders"] == 1

    # the same key with another body: refused, nothing written
    other = await http.post("/v1/orders", json=shop.order_body(1), headers=keyed(shop.customer, "order-1"))
    assert other.status_code == 409 and other.json()["error"]["reason"] == "idempotency_conflict"
    assert other.json()["error"]["field"] == "Idempotency-Key"
    assert await _counts(platform, shop.tenant) == before

    # another key, or no key, is another order
    resp = await http.post("/v1/orders", json=shop.order_body(1), headers=keyed(shop.customer, "order-2"))
    assert resp.status_code == 201 and resp.json()["id"] != first.json()["id"]


async def test_concurrent_posts_with_one_key_place_exactly_one_order(platform, api, shop):
    http, _ = api
    answers = await asyncio.gather(*(
        http.post("/v1/orders", json=shop.order_body(1), headers=keyed(shop.customer, "same-key"))
        for _ in range(8)))
    placed = [r for r in answers if r.status_code == 201]
    busy = [r for r in answers if r.status_code == 409]
    assert len(placed) + len(busy) == len(answers), [r.text for r in answers]
    assert len({r.json()["id"] for r in placed}) == 1
    for r in busy:
        assert r.json()["error"]["reason"] == "idempotency_conflict" and int(r.headers["Retry-After"]) >= 1
    assert (await _counts(platform, shop.tenant))["orders"] == 1
    late = await http.post("/v1/orders", json=shop.order_body(1), headers=keyed(shop.customer, "same-key"))
    assert late.status_code == 201 and late.json() == placed[0].json()


async def test_a_refusal_is_not_remembered_so_a_retry_can_succeed(platform, api, shop):
    http, _ = api
    short = await http.post("/v1/orders", json=shop.order_body(9), headers=keyed(shop.customer, "try-again"))
    assert short.status_code == 409 and short.json()["error"]["reason"] == "out_of_stock"
    resp = await http.post(f"/v1/vendor/products/{shop.product_id}/stock", json={"delta": 10, "reason": "restock"},
                           headers=auth(shop.vendor))
    assert resp.status_code == 200, resp.text
    again = await http.post("/v1/orders", json=shop.order_body(9), headers=keyed(shop.customer, "try-again"))
    assert again.status_code == 201, again.text


async def test_keys_are_per_caller(platform, api, shop):
    http, _ = api
    other = await shop._user({"phone": f"+2784{uuid.uuid4().int % 10**7:07d}", "name": "Sipho", "role": "customer"})
    a = await http.post("/v1/orders", json=shop.order_body(1), headers=keyed(shop.customer, "shared"))
    b = await http.post("/v1/orders", json=shop.order_body(1), headers=keyed(other, "shared"))
    assert a.status_code == b.status_code == 201 and a.json()["id"] != b.json()["id"]


@pytest.mark.parametrize("value", ["x" * 256, "", "tab\there", "é".encode(), "ключ".encode(), b"\xff\xfe"])
async def test_hostile_keys_are_refused_naming_the_header(platform, api, shop, value):
    http, _ = api
    resp = await http.post("/v1/orders", json=shop.order_body(1), headers={**auth(shop.customer),
                                                                           "Idempotency-Key": value})
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["field"] == "Idempotency-Key"
    assert (await _counts(platform, shop.tenant))["orders"] == 0


async def test_two_keys_in_one_request_are_refused(platform, api, shop):
    http, _ = api
    headers = [("Authorization", f"Bearer {shop.customer}"), ("Idempotency-Key", "a1"), ("Idempotency-Key", "a2")]
    resp = await http.post("/v1/orders", json=shop.order_body(1), headers=headers)
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "Idempotency-Key"


async def test_other_writes_answer_a_retry_with_the_first_answer(platform, api, shop):
    http, _ = api
    order = (await http.post("/v1/orders", json=shop.order_body(1), headers=auth(shop.customer))).json()
    cancel = f"/v1/orders/{order['id']}/cancel"
    first = await http.post(cancel, json={"reason": "ordered twice"}, headers=keyed(shop.customer, "cancel-1"))
    assert first.status_code == 200 and first.json()["status"] == "cancelled", first.text
    again = await http.post(cancel, json={"reason": "ordered twice"}, headers=keyed(shop.customer, "cancel-1"))
    assert (again.status_code, again.json()) == (200, first.json())   # not 409 illegal_transition
    assert again.headers["Idempotent-Replayed"] == "true"
    other = await http.post(cancel, json={"reason": "changed"}, headers=keyed(shop.customer, "cancel-1"))
    assert other.status_code == 409 and other.json()["error"]["reason"] == "idempotency_conflict"

    # a vendor creation: one product however often it is retried
    product = {"sku": "SUGAR-2KG", "name": "Sugar 2 kg", "price": "39.99", "initial_stock": 3}
    answers = [await http.post("/v1/vendor/products", json=product, headers=keyed(shop.vendor, "p-1"))
               for _ in range(3)]
    assert [r.status_code for r in answers] == [201, 201, 201]
    assert len({r.json()["id"] for r in answers}) == 1
    assert (await _counts(platform, shop.tenant))["products"] == 2


async def test_a_refused_write_releases_its_claim(platform, api, shop):
    http, _ = api
    bogus = f"/v1/orders/{uuid.uuid4()}/cancel"
    for _ in range(2):   # 404 both times: the claim was released, not left in progress
        resp = await http.post(bogus, json={"reason": "x"}, headers=keyed(shop.customer, "c-404"))
        assert resp.status_code == 404, resp.text


async def test_payment_callback_keys_are_kept_with_the_payment(platform, api, shop):
    http, _ = api
    order = (await http.post("/v1/orders", json=shop.order_body(1), headers=auth(shop.customer))).json()
    raw = _pay(shop.tenant, order, "pay-idem-0001")
    from dispatch.api.payments import sign
    headers = {"Content-Type": "application/json", "Idempotency-Key": "gw-1"}
    first = await http.post("/v1/payments/callback", content=raw, headers={**headers, "X-Wakala-Signature": sign(SECRET, raw)})
    assert first.status_code == 200 and first.json()["replayed"] is False, first.text
    again = await http.post("/v1/payments/callback", content=raw, headers={**headers, "X-Wakala-Signature": sign(SECRET, raw)})
    assert (again.status_code, again.json()) == (200, first.json()) and again.headers["Idempotent-Replayed"] == "true"
    assert (await _counts(platform, shop.tenant))["payments"] == 1


async def test_expired_keys_are_pruned_and_then_free(platform, api, shop):
    http, state = api
    first = await http.post("/v1/orders", json=shop.order_body(1), headers=keyed(shop.customer, "old"))
    assert first.status_code == 201
    async with TenantDatabase(platform) as db:
        async with db.tenant_transaction(shop.tenant.id) as tx:
            await tx.execute("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'")
        assert await idempotency.prune(db, shop.tenant.id) == 1
        async with db.tenant_transaction(shop.tenant.id, readonly=True) as tx:
            assert await tx.fetchval("SELECT count(*) FROM idempotency_keys") == 0
    again = await http.post("/v1/orders", json=shop.order_body(1), headers=keyed(shop.customer, "old"))
    assert again.status_code == 201 and again.json()["id"] != first.json()["id"]


async def test_a_claim_in_progress_answers_409_retry_after_and_an_abandoned_one_is_taken_over(platform, api, shop):
    http, _ = api
    order = (await http.post("/v1/orders", json=shop.order_body(1), headers=auth(shop.customer))).json()
    path = f"/v1/orders/{order['id']}/cancel"
    body = {"reason": "ordered twice"}
    async with TenantDatabase(platform) as db, db.tenant_transaction(shop.tenant.id) as tx:
        user_id = await tx.fetchval("SELECT id::text FROM users WHERE role = 'customer'")
        fp = idempotency.fingerprint("POST", path, b'{"reason": "ordered twice"}')
        await tx.execute("INSERT INTO idempotency_keys (caller, key, request_hash, expires_at) "
                         "VALUES ($1, 'busy', $2, now() + interval '1 hour')", user_id, fp)
    busy = await http.post(path, json=body, headers=keyed(shop.customer, "busy"))
    assert busy.status_code == 409 and busy.json()["error"]["reason"] == "idempotency_conflict", busy.text
    assert int(busy.headers["Retry-After"]) >= 1
    async with TenantDatabase(platform) as db, db.tenant_transaction(shop.tenant.id) as tx:
        # the engine that claimed it died: after the lease the key is taken over
        await tx.execute("UPDATE idempotency_keys SET created_at = now() - interval '2 minutes'")
    resp = await http.post(path, json=body, headers=keyed(shop.customer, "busy"))
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled", resp.text
