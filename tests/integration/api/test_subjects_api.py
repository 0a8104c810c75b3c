"""``/v1/admin/subject-requests`` over HTTP: only tenant admins, verified requesters, their own
tenant's subjects; hostile bodies and ids are refused naming the field and record nothing."""

import uuid

import asyncpg
import httpx
import pytest

from dispatch.identity.users import create_user, issue_user_token
from schema.db import TenantDatabase
from schema.tenants import create_tenant
from tests.integration.engine_helpers import running_app

PATH = "/v1/admin/subject-requests"
VERIFIED = {"method": "account_session", "reference": "ticket 77"}


def phone() -> str:
    return f"+2783{uuid.uuid4().int % 10**7:07d}"


@pytest.fixture
async def api(platform, stream_settings):
    async with running_app(platform, stream_settings) as (addr, state):
        async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http:
            yield http, state


async def _people(platform):
    tenant = await create_tenant(platform, f"DSR API {uuid.uuid4().hex[:6]}")
    async with TenantDatabase(platform) as db:
        admin = await create_user(db, tenant.id, {"phone": phone(), "name": "Admin", "role": "tenant_admin"})
        buyer = await create_user(db, tenant.id, {"phone": phone(), "name": "Thandi Api", "role": "customer"})
        tokens = {}
        for name, user in (("admin", admin), ("buyer", buyer)):
            tokens[name] = {"Authorization": f"Bearer {(await issue_user_token(db, tenant.id, user['user_id'])).token}"}
    return tenant, buyer, tokens


def _body(kind: str, subject_id: str, **extra) -> dict:
    return {"type": kind, "subject_type": "customer", "subject_id": subject_id, "verification": VERIFIED,
            "reason": "asked through the app", **extra}


async def _count(platform) -> int:
    conn = await asyncpg.connect(platform.control.url())
    try:
        return await conn.fetchval("SELECT count(*) FROM data_subject_requests")
    finally:
        await conn.close()


async def test_an_admin_exports_reads_and_erases_a_customer(platform, api):
    http, _ = api
    tenant, buyer, tokens = await _people(platform)
    made = await http.post(PATH, json=_body("access", buyer["customer_id"]), headers=tokens["admin"])
    assert made.status_code == 201, made.text
    request = made.json()["request"]
    assert request["status"] == "completed" and request["verification_method"] == "account_session"
    assert made.json()["export"]["tables"]["users"][0]["name"] == "Thandi Api"
    read = await http.get(f"{PATH}/{request['id']}", headers=tokens["admin"])
    assert read.status_code == 200 and read.json()["due_at"] == request["due_at"]
    again = await http.get(f"{PATH}/{request['id']}/export", headers=tokens["admin"])
    assert again.status_code == 200 and again.json()["subject_id"] == buyer["customer_id"]

    erased = await http.post(PATH, json=_body("erase", buyer["customer_id"]), headers=tokens["admin"])
    assert erased.status_code == 201, erased.text
    # the customer's own token died with the erasure
    assert (await http.get(f"{PATH}/{request['id']}", headers=tokens["buyer"])).status_code == 401
    count = await _count(platform)
    second = await http.post(PATH, json=_body("erase", buyer["customer_id"]), headers=tokens["admin"])
    assert (second.status_code, second.json()["error"]["reason"]) == (409, "duplicate")
    assert await _count(platform) == count
    export = await http.get(f"{PATH}/{request['id']}/export", headers=tokens["admin"])
    assert "Thandi Api" not in export.text


async def test_hostile_requests_are_refused_and_record_nothing(platform, api):
    http, _ = api
    tenant, buyer, tokens = await _people(platform)
    other, foreign, other_tokens = await _people(platform)
    before = await _count(platform)
    cases = [
        (tokens["buyer"], _body("access", buyer["customer_id"]), 403, None),
        ({}, _body("access", buyer["customer_id"]), 401, "authorization"),
        (tokens["admin"], _body("access", foreign["customer_id"]), 404, "subject_id"),
        (tokens["admin"], _body("erase", str(uuid.uuid4())), 404, "subject_id"),
        (tokens["admin"], _body("erase", "../../etc/passwd"), 422, "subject_id"),
        (tokens["admin"], {**_body("erase", buyer["customer_id"]), "verification": None}, 422, "verification"),
        (tokens["admin"], {**_body("erase", buyer["customer_id"]), "verification": {"method": "none",
                                                                                  "reference": "x"}},
         422, "verification.method"),
        (tokens["admin"], {**_body("access", buyer["customer_id"]), "reason": 42}, 422, "reason"),
        (tokens["admin"], {**_body("access", buyer["customer_id"]), "reason": "x" * 10_000}, 422, "reason"),
        (tokens["admin"], _body("correct", buyer["customer_id"], changes={"phone_number": "+1"}), 422,
         "changes.phone_number"),
        (tokens["admin"], [1, 2, 3], 422, "body"),
    ]
    for headers, payload, status, field in cases:
        answer = await http.post(PATH, json=payload, headers=headers)
        assert answer.status_code == status, (payload, answer.text)
        if field is not None:
            assert answer.json()["error"].get("field") == field, answer.text
    try:
        huge = await http.post(PATH, content=b'{"reason": "' + b"x" * 400_000 + b'"}', headers=tokens["admin"])
        assert huge.status_code == 413 and huge.json()["error"]["reason"] == "too_large"
    except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
        pass   # the engine answered 413 with Connection: close before the upload ended
    bad_json = await http.post(PATH, content=b"{not json", headers=tokens["admin"])
    assert bad_json.status_code == 400
    assert await _count(platform) == before
    made = await http.post(PATH, json=_body("access", foreign["customer_id"]), headers=other_tokens["admin"])
    assert made.status_code == 201
    foreign_id = made.json()["request"]["id"]
    for path in (f"{PATH}/{foreign_id}", f"{PATH}/{foreign_id}/export", f"{PATH}/not-a-uuid",
                 f"{PATH}/{uuid.uuid4()}/export", f"{PATH}/%27%3B--"):
        answer = await http.get(path, headers=tokens["admin"])
        assert answer.status_code == 404, (path, answer.text)
    async with TenantDatabase(platform) as db, db.tenant_transaction(tenant.id, readonly=True) as tx:
        assert await tx.fetchval("SELECT name FROM users WHERE id = $1", uuid.UUID(buyer["user_id"])) == "Thandi Api"
