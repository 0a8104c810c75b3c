"""Payment callbacks signed per tenant with a timestamp, through the running engine; the old
platform-wide form only while the tenant has no secret of its own; hostile signatures."""

import json
import logging
import time
import uuid

import httpx
import pytest

from dispatch.api.payments import sign
from dispatch.commerce.payment_secrets import set_webhook_secret
from dispatch.commerce.payment_signatures import sign_legacy
from schema.db import TenantDatabase
from tests.integration.api.test_api import SECRET, Shop, _counts, _pay, _tenant_with_admin, auth
from tests.integration.engine_helpers import running_app

pytestmark = pytest.mark.timeout(180)
OWN = "own-secret-of-this-tenant-0123456789abcdef"


@pytest.fixture
async def api(platform, stream_settings):
    async with running_app(platform, stream_settings, payment_webhook_secret=SECRET,
                           payment_signature_tolerance_s=60) as (addr, state):
        async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http:
            yield http


async def _shop_with_order(platform, http) -> tuple[Shop, dict]:
    tenant, admin = await _tenant_with_admin(platform)
    shop = await Shop(http, tenant, admin).setup()
    order = (await http.post("/v1/orders", json=shop.order_body(1), headers=auth(shop.customer))).json()
    return shop, order


async def _callback(http, raw: bytes, signature: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-Wakala-Signature"] = signature
    return await http.post("/v1/payments/callback", content=raw, headers=headers)


async def test_a_tenant_with_its_own_secret_accepts_only_timestamped_callbacks_signed_with_it(platform, api):
    http = api
    shop, order = await _shop_with_order(platform, http)
    other, _ = await _shop_with_order(platform, http)
    resp = await http.put("/v1/admin/payment-secret", json={"secret": OWN}, headers=auth(shop.admin))
    assert resp.status_code == 200 and "secret" not in resp.json(), resp.text
    generated = await http.put("/v1/admin/payment-secret", json={}, headers=auth(other.admin))
    assert generated.status_code == 200 and len(generated.json()["secret"]) == 64   # shown once
    raw = _pay(shop.tenant, order, "pay-sig-00001")
    before = await _counts(platform, shop.tenant)
    now = int(time.time())
    hostile = {
        "missing": None,
        "garbled": "t=yesterday,v1=abc",
        "wrong secret": sign("not-the-secret-but-long-enough-000000", raw),
        "another tenant's secret": sign(generated.json()["secret"], raw),
        "the platform secret": sign(SECRET, raw),
        "the old form": sign_legacy(SECRET, raw),
        "the old form with its own secret": sign_legacy(OWN, raw),
        "stale": sign(OWN, raw, now - 120),
        "future": sign(OWN, raw, now + 120),
    }
    for what, signature in hostile.items():
        resp = await _callback(http, raw, signature)
        assert resp.status_code == 401 and resp.json()["error"]["reason"] == "bad_signature", (what, resp.text)
    assert "stale" in (await _callback(http, raw, hostile["stale"])).json()["error"]["message"]
    assert await _counts(platform, shop.tenant) == before

    first = await _callback(http, raw, sign(OWN, raw))
    assert first.status_code == 200 and first.json()["replayed"] is False, first.text
    replay = await _callback(http, raw, sign(OWN, raw))   # the same event again: nothing more happens
    assert replay.status_code == 200 and replay.json()["payment_id"] == first.json()["payment_id"]
    after = await _counts(platform, shop.tenant)
    assert after["payments"] == before["payments"] + 1 and after["order_events_outbox"] == before["order_events_outbox"] + 1


async def test_the_old_platform_form_is_accepted_until_the_tenant_has_a_secret(platform, api, caplog):
    http = api
    shop, order = await _shop_with_order(platform, http)
    raw = _pay(shop.tenant, order, "pay-old-00001")
    with caplog.at_level(logging.WARNING, logger="dispatch.api.payments"):
        resp = await _callback(http, raw, sign_legacy(SECRET, raw))
    assert resp.status_code == 200, resp.text
    assert any("deprecated" in r.getMessage() for r in caplog.records)
    async with TenantDatabase(platform) as db:
        await set_webhook_secret(db, shop.tenant.id, OWN)
    again = _pay(shop.tenant, order, "pay-old-00002")
    assert (await _callback(http, again, sign_legacy(SECRET, again))).status_code == 401
    assert (await _callback(http, again, sign(OWN, again))).status_code == 200


async def test_unknown_or_missing_tenants_look_like_bad_signatures(platform, api):
    http = api
    shop, order = await _shop_with_order(platform, http)
    for tenant in (str(uuid.uuid4()), "not-a-uuid", None, 7):
        body = json.loads(_pay(shop.tenant, order, "pay-who-00001"))
        body["tenant_id"] = tenant
        raw = json.dumps(body).encode()
        resp = await _callback(http, raw, sign(SECRET, raw))
        assert resp.status_code == 401 and resp.json()["error"]["reason"] == "bad_signature", resp.text
    raw = b"[1, 2]"
    assert (await _callback(http, raw, sign(SECRET, raw))).status_code == 401


async def test_the_admin_secret_route_refuses_bad_secrets(platform, api):
    http = api
    tenant, admin = await _tenant_with_admin(platform)
    for body in ({"secret": "short"}, {"secret": "x" * 257}, {"secret": "has spaces " * 4}, {"secret": 123},
                 {"secret": "é" * 40}, {"other": 1}, [1]):
        resp = await http.put("/v1/admin/payment-secret", json=body, headers=auth(admin))
        assert resp.status_code == 422, (body, resp.text)
