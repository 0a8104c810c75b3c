"""Strange text at the HTTP edge: a lone surrogate or a NUL, as key or value, at any depth, in
an order body, a ping batch, a driver frame or a FastAPI-validated body, is a 422
``invalid_text`` naming the field, and nothing is written or produced."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest
import websockets

from dispatch.identity.auth import issue_driver_token
from dispatch.identity.drivers import NewDriver, create_driver
from schema.db import TenantDatabase
from schema.tenants import create_tenant
from tests.integration.api.test_api import SECRET, Shop, _counts, _tenant_with_admin, auth
from tests.integration.engine_helpers import running_app
from tests.integration.gateway.test_ingest import _topic_values

pytestmark = pytest.mark.timeout(180)


def with_raw(body: dict, marker: str, raw_json: str) -> bytes:
    """``body`` as JSON with the string ``"<marker>"`` replaced by ``raw_json`` verbatim."""
    return json.dumps(body).replace(json.dumps(marker), raw_json).encode()


async def test_order_bodies_with_invalid_text_are_422_naming_the_field_and_write_nothing(platform, stream_settings):
    async with running_app(platform, stream_settings, payment_webhook_secret=SECRET) as (addr, _), \
            httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http:
        tenant, admin = await _tenant_with_admin(platform)
        shop = await Shop(http, tenant, admin).setup(stock=5)
        before = await _counts(platform, tenant)
        body = shop.order_body(1)
        cases = []
        street = dict(body, delivery_address={"street": "MARK"})
        cases.append((with_raw(street, "MARK", r'"12 \ud800 Rd"'), "delivery_address.street"))
        cases.append((with_raw(street, "MARK", r'"12 Rd\u0000"'), "delivery_address.street"))
        cases.append((with_raw(street, "MARK", '"12 Rd"').replace(b'"street"', rb'"\udfff"'),
                      "delivery_address.\\udfff"))
        line = dict(body["lines"][0], note="MARK")
        cases.append((with_raw(dict(body, lines=[line]), "MARK", r'"\ud83d"'), "lines[0].note"))
        cases.append((with_raw(dict(body, lines=[line]), "MARK", '"x"').replace(b'"note"', rb'"\u0000"'),
                      "lines[0].\\x00"))
        cases.append((json.dumps(dict(body, payment_method="MARK")).replace('"MARK"', '"card\xed\xa0\x80"')
                      .encode("utf-8", "surrogateescape").replace(b"\xc3\xad\xc2\xa0\xc2\x80", b"\xed\xa0\x80"),
                      "payment_method"))
        for raw, field in cases:
            resp = await http.post("/v1/orders", content=raw, headers={**auth(shop.customer),
                                                                      "Content-Type": "application/json"})
            assert resp.status_code == 422, (raw, resp.text)
            error = resp.json()["error"]
            assert (error["reason"], error["field"]) == ("invalid_text", field), raw
        assert await _counts(platform, tenant) == before


async def test_a_validated_body_with_invalid_text_is_422_never_500(platform, stream_settings):
    async with running_app(platform, stream_settings) as (addr, _), \
            httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http:
        for raw in (rb'{"action": "\ud800"}', rb'{"action": "start\u0000"}', rb'{"\ud800": "start"}'):
            resp = await http.post("/v1/drivers/shift", content=raw,
                                   headers={"Content-Type": "application/json", "Authorization": "Bearer wkd_x"})
            assert resp.status_code in (401, 422), (raw, resp.status_code, resp.text)
            assert resp.json()["error"]["reason"] in ("invalid_text", "unknown_token", "invalid_token"), resp.text


@pytest.fixture
async def driver(platform):
    tenant = await create_tenant(platform, f"Text {uuid.uuid4().hex[:6]}")
    async with TenantDatabase(platform) as db:
        did = await create_driver(db, tenant.id, NewDriver("Sipho", "Text", f"+2772{uuid.uuid4().int % 10**7:07d}",
                                                           f"LIC-{uuid.uuid4().hex[:8]}", "motorbike", "GP 123-456"))
        token = (await issue_driver_token(db, tenant.id, did, ttl_s=3600)).token
    return did, token


def ping(driver_id) -> dict:
    return {"driver_id": str(driver_id), "lat": -26.2485, "lng": 27.8540, "accuracy": 8.0, "speed": 6.5,
            "heading": 90.0, "timestamp": time.time(), "battery": 71}


async def test_ping_batches_with_invalid_text_are_422_and_nothing_is_produced(platform, stream_settings, driver):
    did, token = driver
    async with running_app(platform, stream_settings) as (addr, _), \
            httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http:
        good = ping(did)
        cases = [
            (with_raw({"pings": [good, dict(good, driver_id="MARK")]}, "MARK", r'"\ud800"'), "pings[1].driver_id"),
            (with_raw({"pings": [dict(good, extra="MARK")]}, "MARK", "1").replace(b'"extra"', rb'"\ud800"'),
             "pings[0].\\ud800"),
            (with_raw({"pings": [dict(good, driver_id="MARK")]}, "MARK", r'"a\u0000"'), "pings[0].driver_id"),
        ]
        for raw, field in cases:
            resp = await http.post("/v1/drivers/locations", content=raw,
                                   headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            assert resp.status_code == 422, resp.text
            assert (resp.json()["error"]["reason"], resp.json()["error"]["field"]) == ("invalid_text", field)

        # A driver frame with such a key gets an error frame; the socket stays open and works.
        async with websockets.connect(f"ws://{addr}/v1/drivers/stream",
                                      additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            await ws.send(json.dumps(dict(ping(did), type="ping", pad="MARK")).replace('"pad"', r'"\ud800"'))
            error = json.loads(await ws.recv())
            assert (error["type"], error["reason"], error["field"]) == ("error", "invalid_text", "\\ud800"), error
            await ws.send(json.dumps({"type": "ping", "seq": 7, **ping(did)}))
            assert json.loads(await ws.recv())["type"] in ("ack", "error")   # answered: the socket lives
        # only the one valid ping reached the topic
        assert len(await _topic_values(stream_settings, 2, wait_s=3.0)) == 1
