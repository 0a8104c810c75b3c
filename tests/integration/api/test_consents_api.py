"""Consent over HTTP against real services: a driver withdraws location tracking and is no
longer tracked (pings refused, no shift, live keys gone) until consenting again; a customer's
marketing consent decides whether a marketing message may go; hostile bodies are refused
naming the field and record nothing."""

import asyncio
import uuid

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from dispatch.identity.consent_store import may_message
from dispatch.identity.users import create_user, issue_user_token
from schema.db import TenantDatabase
from streams.keys import location_key, state_key
from tests.integration.engine_helpers import running_app
from tests.integration.gateway.support import make_fleet, ping

GIVE = {"given": True, "version": "2026-12", "channel": "app"}
WITHDRAW = {"given": False, "channel": "app"}


def phone() -> str:
    return f"+2784{uuid.uuid4().int % 10**7:07d}"


@pytest.fixture
async def api(platform, stream_settings):
    async with running_app(platform, stream_settings) as (addr, state):
        async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http:
            yield http, state


async def _records(platform, subject_id: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(platform.control.url())
    try:
        return await conn.fetch("SELECT * FROM consent_records WHERE subject_id = $1 ORDER BY given_at, id",
                                uuid.UUID(subject_id))
    finally:
        await conn.close()


async def _until(check, within_s: float = 5.0):
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        result = await check()
        if result or asyncio.get_running_loop().time() > deadline:
            return result
        await asyncio.sleep(0.05)


async def test_a_driver_who_withdraws_tracking_is_not_tracked_until_consenting_again(platform, api, redis_url):
    http, _ = api
    fleet = await make_fleet(platform, 1, f"Consent {uuid.uuid4().hex[:6]}")
    driver, auth = fleet.ids[0], {"Authorization": f"Bearer {fleet.tokens[0]}"}
    first = (await http.get("/v1/drivers/consents", headers=auth)).json()
    assert first["consents"]["location_tracking"] == {**first["consents"]["location_tracking"],
                                                      "given": True, "recorded": False}
    assert "2026-12" in first["wording"]["location_tracking"]
    given = await http.put("/v1/drivers/consents/location_tracking", json=GIVE, headers=auth)
    assert given.status_code == 200, given.text
    assert given.json()["consents"]["location_tracking"]["recorded"] is True
    assert (await http.post("/v1/drivers/shift", json={"action": "start"}, headers=auth)).json() == {
        "status": "available"}
    assert (await http.post("/v1/drivers/locations", json={"pings": [ping(driver)]}, headers=auth)).status_code == 202
    redis = aioredis.from_url(redis_url)
    try:
        await redis.hset(location_key(driver), mapping={"lat": "-26.2485", "lng": "27.854", "status": "available"})
        await redis.expire(location_key(driver), 30)
        withdrawn = await http.put("/v1/drivers/consents/location_tracking", json=WITHDRAW, headers=auth)
        assert withdrawn.status_code == 200, withdrawn.text
        assert withdrawn.json()["consents"]["location_tracking"]["given"] is False
        assert await redis.exists(location_key(driver)) == 0
        assert (await redis.hget(state_key(driver), "status")) in (b"offline", None)

        async def refused():
            resp = await http.post("/v1/drivers/locations", json={"pings": [ping(driver)]}, headers=auth)
            return resp if resp.status_code == 403 else None
        resp = await _until(refused)
        assert resp is not None and resp.json()["error"]["reason"] == "consent_withdrawn"
        start = await http.post("/v1/drivers/shift", json={"action": "start"}, headers=auth)
        assert (start.status_code, start.json()["error"]["reason"]) == (409, "consent_withdrawn")

        again = await http.put("/v1/drivers/consents/location_tracking", json=GIVE, headers=auth)
        assert again.status_code == 200

        async def accepted():
            resp = await http.post("/v1/drivers/locations", json={"pings": [ping(driver)]}, headers=auth)
            return resp.status_code == 202
        assert await _until(accepted)
    finally:
        await redis.aclose()
    rows = await _records(platform, driver)
    assert [r["consent_given"] for r in rows] == [True, False, True]
    assert rows[0]["withdrawn_at"] is not None and rows[2]["withdrawn_at"] is None
    assert rows[0]["channel"] == "app" and "shares my phone's location" in rows[0]["consent_text"]
    assert rows[1]["consent_text"] is None and rows[0]["lawful_basis"] == "contract_with_right_to_object"


async def test_marketing_needs_consent_and_no_restriction(platform, api):
    http, state = api
    from schema.tenants import create_tenant
    tenant = await create_tenant(platform, f"Marketing {uuid.uuid4().hex[:6]}")
    async with TenantDatabase(platform) as db:
        buyer = await create_user(db, tenant.id, {"phone": phone(), "name": "Lerato", "role": "customer"})
        admin = await create_user(db, tenant.id, {"phone": phone(), "name": "Admin", "role": "tenant_admin"})
        me = {"Authorization": f"Bearer {(await issue_user_token(db, tenant.id, buyer['user_id'])).token}"}
        boss = {"Authorization": f"Bearer {(await issue_user_token(db, tenant.id, admin['user_id'])).token}"}
        cid = buyer["customer_id"]
        assert not await may_message(db, tenant.id, "customer", cid, "marketing")
        assert await may_message(db, tenant.id, "customer", cid, "transactional")
        mine = (await http.get("/v1/me/consents", headers=me)).json()
        assert mine["consents"]["marketing"]["given"] is False and list(mine["wording"]) == ["marketing"]
        resp = await http.put("/v1/me/consents/marketing", json={**GIVE, "channel": "whatsapp"}, headers=me)
        assert resp.status_code == 200, resp.text
        assert await may_message(db, tenant.id, "customer", cid, "marketing")
        # a restriction (a data subject request) stops marketing whatever the consent says
        restrict = await http.post("/v1/admin/subject-requests", headers=boss, json={
            "type": "restrict", "subject_type": "customer", "subject_id": cid,
            "verification": {"method": "account_session", "reference": "app"}, "reason": "asked to stop"})
        assert restrict.status_code == 201, restrict.text
        assert not await may_message(db, tenant.id, "customer", cid, "marketing")
        # an admin records a withdrawal given on paper
        paper = await http.post("/v1/admin/consents", headers=boss, json={
            "subject_type": "customer", "subject_id": cid, "purpose": "marketing", "given": False,
            "channel": "paper", "note": "form at the counter"})
        assert paper.status_code == 201, paper.text
        assert paper.json()["record"]["recorded_by"] == admin["user_id"]
    rows = await _records(platform, cid)
    assert [(r["consent_given"], r["channel"]) for r in rows] == [(True, "whatsapp"), (False, "paper")]


HOSTILE_BODIES = [
    ([], "body", "wrong_type"),
    ({}, "given", "missing_field"),
    ({"given": "yes", "channel": "app"}, "given", "wrong_type"),
    ({"given": True, "channel": "app"}, "version", "missing_field"),
    ({"given": True, "version": "1999-01", "channel": "app"}, "version", "invalid_value"),
    ({"given": True, "version": "2026-12", "channel": "carrier pigeon"}, "channel", "invalid_value"),
    ({"given": True, "version": "2026-12"}, "channel", "missing_field"),
    ({**GIVE, "sneaky": 1}, "sneaky", "unknown_field"),
    ({**GIVE, "note": "x" * 501}, "note", "too_long"),
    ({**GIVE, "note": "a\x00b"}, "note", "invalid_text"),
    ({**GIVE, "note": 5}, "note", "wrong_type"),
]


async def test_hostile_consent_bodies_are_refused_naming_the_field(platform, api):
    http, _ = api
    fleet = await make_fleet(platform, 1, f"Consent hostile {uuid.uuid4().hex[:6]}")
    auth = {"Authorization": f"Bearer {fleet.tokens[0]}"}
    for body, field, reason in HOSTILE_BODIES:
        resp = await http.put("/v1/drivers/consents/location_tracking", json=body, headers=auth)
        assert resp.status_code == 422, (body, resp.text)
        assert (resp.json()["error"]["field"], resp.json()["error"]["reason"]) == (field, reason), body
    assert await _records(platform, fleet.ids[0]) == []


async def test_hostile_consent_requests_change_nothing(platform, api):
    http, _ = api
    from schema.tenants import create_tenant
    fleet = await make_fleet(platform, 1, f"Consent other {uuid.uuid4().hex[:6]}")
    tenant = await create_tenant(platform, f"Consent admin {uuid.uuid4().hex[:6]}")
    async with TenantDatabase(platform) as db:
        admin = await create_user(db, tenant.id, {"phone": phone(), "name": "Admin", "role": "tenant_admin"})
        buyer = await create_user(db, tenant.id, {"phone": phone(), "name": "B", "role": "customer"})
        boss = {"Authorization": f"Bearer {(await issue_user_token(db, tenant.id, admin['user_id'])).token}"}
        me = {"Authorization": f"Bearer {(await issue_user_token(db, tenant.id, buyer['user_id'])).token}"}
    driver_auth = {"Authorization": f"Bearer {fleet.tokens[0]}"}
    cases = [
        # a driver cannot consent to marketing through the driver route, nor a customer to tracking
        (http.put("/v1/drivers/consents/marketing", json=GIVE, headers=driver_auth), 422, "purpose"),
        (http.put("/v1/me/consents/location_tracking", json=GIVE, headers=me), 422, "purpose"),
        (http.put("/v1/drivers/consents/location_tracking", json=GIVE, headers={"Authorization": "Bearer nope"}),
         401, None),   # the gateway's envelope, as on every driver route
        # another tenant's driver, an unknown one, a malformed id
        (http.post("/v1/admin/consents", headers=boss, json={"subject_type": "driver", "subject_id": fleet.ids[0],
                                                            "purpose": "location_tracking", **WITHDRAW}),
         404, "subject_id"),
        (http.post("/v1/admin/consents", headers=boss, json={"subject_type": "customer",
                                                            "subject_id": str(uuid.uuid4()),
                                                            "purpose": "marketing", **GIVE}), 404, "subject_id"),
        (http.post("/v1/admin/consents", headers=boss, json={"subject_type": "customer", "subject_id": "1 OR 1=1",
                                                            "purpose": "marketing", **GIVE}), 404, "subject_id"),
        (http.post("/v1/admin/consents", headers=boss, json={"subject_type": "vendor", "subject_id": buyer[
            "customer_id"], "purpose": "marketing", **GIVE}), 422, "subject_type"),
        (http.post("/v1/admin/consents", headers=boss, json={"subject_type": "customer", "subject_id": buyer[
            "customer_id"], "purpose": "location_tracking", **GIVE}), 422, "purpose"),
        # only a tenant admin records for someone else
        (http.post("/v1/admin/consents", headers=me, json={"subject_type": "customer", "subject_id": buyer[
            "customer_id"], "purpose": "marketing", **GIVE}), 403, None),
    ]
    for made, status, field in cases:
        resp = await made
        assert resp.status_code == status, resp.text
        error = resp.json().get("error", {})
        assert error.get("field") == field, resp.text
    assert await _records(platform, fleet.ids[0]) == []
    assert await _records(platform, buyer["customer_id"]) == []
    # the foreign driver's tracking was not touched
    ok = await http.post("/v1/drivers/locations", json={"pings": [ping(fleet.ids[0])]}, headers=driver_auth)
    assert ok.status_code == 202
