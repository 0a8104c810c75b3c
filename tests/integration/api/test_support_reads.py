"""Admins' and support agents' reads of people's data: each look is logged (who, whose, what,
why) before it is answered, needs a stated purpose, and shows only the tenant's own people;
``wakala dsr log`` reads the same rows back."""

import json
import uuid

import asyncpg
import httpx
import pytest

from dispatch.identity.access_log import subject_log
from dispatch.identity.drivers import NewDriver, create_driver
from dispatch.identity.users import create_user, create_vendor, issue_user_token
from schema.db import TenantDatabase
from schema.tenants import create_tenant
from tests.integration.engine_helpers import running_app

VENDOR = {"business_name": "Support Spaza", "address": {"street": "1 Vilakazi St"}, "lat": -26.236,
          "lng": 27.909, "delivery_radius_m": 6000, "minimum_order_value": "30.00"}
WHY = {"X-Access-Purpose": "ticket 4411: customer says the driver never came"}


def phone() -> str:
    return f"+2785{uuid.uuid4().int % 10**7:07d}"


@pytest.fixture
async def api(platform, stream_settings):
    async with running_app(platform, stream_settings) as (addr, state):
        async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http:
            yield http, state


async def _shop(platform):
    tenant = await create_tenant(platform, f"Support {uuid.uuid4().hex[:6]}")
    async with TenantDatabase(platform) as db:
        people = {role: await create_user(db, tenant.id, {"phone": phone(), "name": role.title(), "role": role})
                  for role in ("tenant_admin", "support", "customer")}
        vendor = await create_vendor(db, tenant.id, VENDOR)
        people["vendor"] = await create_user(db, tenant.id, {"phone": phone(), "name": "V", "role": "vendor",
                                                            "vendor_id": vendor})
        tokens = {role: {"Authorization": f"Bearer {(await issue_user_token(db, tenant.id, p['user_id'])).token}"}
                  for role, p in people.items()}
        driver = await create_driver(db, tenant.id, NewDriver("Sipho", "Dube", phone(), f"LIC-{uuid.uuid4().hex[:6]}",
                                                              "motorbike", "GP 12-34"))
        async with db.tenant_transaction(tenant.id) as tx:
            order_id = await tx.fetchval(
                "INSERT INTO orders (order_number, customer_id, vendor_id, status, subtotal, total_amount, "
                "delivery_address, delivery_location, notes) VALUES ('S-1', $1, $2, 'pending', 50, 50, $3::jsonb, "
                "ST_SetSRID(ST_MakePoint(27.91, -26.24), 4326)::geography, 'blue gate') RETURNING id",
                uuid.UUID(people["customer"]["customer_id"]), uuid.UUID(vendor),
                json.dumps({"street": "9 Secret Lane"}))
    return tenant, people, tokens, str(driver), str(order_id)


async def _log_rows(platform, tenant_id) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(platform.control.url())
    try:
        return await conn.fetch("SELECT * FROM data_access_log WHERE tenant_id = $1 ORDER BY created_at", tenant_id)
    finally:
        await conn.close()


async def test_every_look_is_logged_with_who_whose_what_and_why(platform, api):
    http, _ = api
    tenant, people, tokens, driver, order_id = await _shop(platform)
    customer = people["customer"]["customer_id"]
    listed = await http.get("/v1/admin/orders", headers={**tokens["support"], **WHY})
    assert listed.status_code == 200, listed.text
    assert listed.json()["orders"][0]["delivery_address"] == {"street": "9 Secret Lane"}
    one = await http.get(f"/v1/admin/orders/{order_id}", headers={**tokens["tenant_admin"], **WHY})
    assert one.status_code == 200 and one.json()["notes"] == "blue gate"
    profile = await http.get(f"/v1/admin/customers/{customer}", headers={**tokens["support"], **WHY})
    assert profile.status_code == 200, profile.text
    assert profile.json()["customer"]["user"]["phone_number"] == people["customer"].get("phone", profile.json()[
        "customer"]["user"]["phone_number"])
    assert profile.json()["consents"]["marketing"]["given"] is False
    rider = await http.get(f"/v1/admin/drivers/{driver}", headers={**tokens["support"], **WHY})
    assert rider.status_code == 200 and rider.json()["driver"]["first_name"] == "Sipho"
    consents = await http.get(f"/v1/admin/consents/driver/{driver}", headers={**tokens["support"], **WHY})
    assert consents.status_code == 200 and consents.json()["records"] == []

    rows = await _log_rows(platform, tenant.id)
    assert [(r["action"], str(r["record_id"])) for r in rows] == [
        ("list_orders", customer), ("read_order", customer), ("read_customer", customer),
        ("read_driver", driver), ("read_consents", driver)]
    assert {str(r["user_id"]) for r in rows} == {people["support"]["user_id"], people["tenant_admin"]["user_id"]}
    assert all(r["purpose"] == WHY["X-Access-Purpose"] for r in rows)
    assert "delivery_address" in rows[0]["accessed_fields"] and json.loads(rows[0]["metadata"])["record"] == order_id
    assert "first_name" in rows[3]["accessed_fields"] and rows[3]["ip_address"] is not None
    async with TenantDatabase(platform) as db:
        seen = await subject_log(db, tenant.id, customer)
    assert [r["action"] for r in seen] == ["read_customer", "read_order", "list_orders"]


async def test_a_look_without_a_purpose_or_the_role_shows_nothing_and_logs_nothing(platform, api):
    http, _ = api
    tenant, people, tokens, driver, order_id = await _shop(platform)
    _, others, _, other_driver, other_order = await _shop(platform)
    customer = people["customer"]["customer_id"]
    cases = [
        (http.get("/v1/admin/orders", headers=tokens["support"]), 422, "X-Access-Purpose", "missing_field"),
        (http.get("/v1/admin/orders", headers={**tokens["support"], "X-Access-Purpose": "ab"}), 422,
         "X-Access-Purpose", "missing_field"),
        (http.get("/v1/admin/orders", headers={**tokens["support"], "X-Access-Purpose": "x" * 256}), 422,
         "X-Access-Purpose", "too_long"),
        (http.get(f"/v1/admin/customers/{customer}", headers={**tokens["support"], "X-Access-Purpose": "a\tb\tc"}),
         422, "X-Access-Purpose", "invalid_text"),
        (http.get(f"/v1/admin/customers/{customer}", headers={**tokens["customer"], **WHY}), 403, None, "forbidden"),
        (http.get(f"/v1/admin/orders/{order_id}", headers={**tokens["vendor"], **WHY}), 403, None, "forbidden"),
        # another tenant's people and orders, unknown and malformed ids: 404, nothing logged
        (http.get(f"/v1/admin/customers/{others['customer']['customer_id']}", headers={**tokens["support"], **WHY}),
         404, "customer_id", "not_found"),
        (http.get(f"/v1/admin/drivers/{other_driver}", headers={**tokens["support"], **WHY}), 404, "driver_id",
         "not_found"),
        (http.get(f"/v1/admin/orders/{other_order}", headers={**tokens["support"], **WHY}), 404, None,
         "not_found"),   # as the customers' and vendors' order routes answer
        (http.get(f"/v1/admin/drivers/{uuid.uuid4()}", headers={**tokens["support"], **WHY}), 404, "driver_id",
         "not_found"),
        (http.get("/v1/admin/customers/'; DROP TABLE users;--", headers={**tokens["support"], **WHY}), 404,
         "customer_id", "not_found"),
        (http.get(f"/v1/admin/consents/vendor/{customer}", headers={**tokens["support"], **WHY}), 404,
         "subject_type", "not_found"),
        (http.get(f"/v1/admin/consents/driver/{other_driver}", headers={**tokens["support"], **WHY}), 404,
         "subject_id", "not_found"),
    ]
    for made, status, field, reason in cases:
        resp = await made
        assert resp.status_code == status, resp.text
        assert (resp.json()["error"].get("field"), resp.json()["error"]["reason"]) == (field, reason)
    # support reads but changes nothing: creating a user is an admin's
    resp = await http.post("/v1/admin/users", json={"phone": phone(), "name": "X", "role": "customer"},
                           headers={**tokens["support"], "Idempotency-Key": str(uuid.uuid4())})
    assert resp.status_code == 403
    assert await _log_rows(platform, tenant.id) == []
