"""``/v1/admin/subject-requests`` over HTTP: only tenant admins, verified requesters, their own
tenant's subjects; hostile bodies and ids are refused naming the field and record nothing."""

import csv
import io
import json
import re
import uuid
import zipfile

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


async def _looks(platform, subject_id: str) -> list[dict]:
    conn = await asyncpg.connect(platform.control.url())
    try:
        rows = await conn.fetch("SELECT user_id, action, table_name, purpose, accessed_fields, metadata "
                                "FROM data_access_log WHERE record_id = $1 ORDER BY created_at, id",
                                uuid.UUID(subject_id))
    finally:
        await conn.close()
    return [dict(r) for r in rows]


def _utc(value):
    """The document with UTC written one way (the JSON route says ``Z``, the archive ``+00:00``)."""
    if isinstance(value, dict):
        return {k: _utc(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_utc(v) for v in value]
    return re.sub(r"(T\d\d:\d\d:\d\d(\.\d+)?)Z$", r"\1+00:00", value) if isinstance(value, str) else value


def _csv_rows(data: bytes) -> list[list[str]]:
    text = data.decode("utf-8-sig")
    return list(csv.reader(io.StringIO(text, newline=""))) if text else []


async def test_an_admin_downloads_the_export_as_a_zip_with_a_csv_per_table(platform, api):
    http, _ = api
    tenant, buyer, tokens = await _people(platform)
    made = await http.post(PATH, json=_body("access", buyer["customer_id"]), headers=tokens["admin"])
    request = made.json()["request"]
    looks = len(await _looks(platform, buyer["customer_id"]))
    answer = await http.get(f"{PATH}/{request['id']}/export.zip", headers=tokens["admin"])
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/zip"
    assert answer.headers["content-disposition"] == f'attachment; filename="subject-access-{request["id"]}.zip"'
    assert answer.headers["cache-control"] == "no-store"
    document = (await http.get(f"{PATH}/{request['id']}/export", headers=tokens["admin"])).json()
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    zipped = json.loads(files["export.json"])
    # every export lists the looks at the person's data, and each look adds one: the zip's
    # look (made first) is in the JSON route's document, not in its own
    listed = zipped["control"].pop("data_access_log")
    assert len(document["control"].pop("data_access_log")) == len(listed) + 1
    assert _utc(zipped) == _utc(document)
    assert document["tables"] and set(document["tables"]) == {n[7:-4] for n in files if n.startswith("tables/")}
    for table, rows in document["tables"].items():
        csv_rows = _csv_rows(files[f"tables/{table}.csv"])
        assert len(csv_rows[1:]) == len(rows), table
    users = _csv_rows(files["tables/users.csv"])
    assert dict(zip(*users, strict=True))["name"] == "Thandi Api"
    readme = files["README.txt"].decode()
    assert request["id"] in readme and buyer["customer_id"] in readme and "account_session" in readme
    # the zip and the JSON export were each logged, the same way
    logged = await _looks(platform, buyer["customer_id"])
    assert len(logged) == looks + 2
    zip_look, json_look = logged[-2:]
    assert zip_look == json_look and zip_look["action"] == "subject_access_export"
    assert json.loads(zip_look["metadata"]) == {"request_id": request["id"], "subject_type": "customer", "via": "api"}


async def test_hostile_zip_downloads_are_refused_and_log_nothing(platform, api):
    http, _ = api
    tenant, buyer, tokens = await _people(platform)
    other, foreign, other_tokens = await _people(platform)
    ids = {}
    for kind, extra in (("access", {}), ("correct", {"changes": {"first_name": "Thandeka"}}), ("restrict", {}),
                        ("erase", {})):
        made = await http.post(PATH, json=_body(kind, buyer["customer_id"], **extra), headers=tokens["admin"])
        assert made.status_code == 201, made.text
        ids[kind] = made.json()["request"]["id"]
    foreign_made = await http.post(PATH, json=_body("access", foreign["customer_id"]), headers=other_tokens["admin"])
    ids["foreign"] = foreign_made.json()["request"]["id"]
    looks = {p: len(await _looks(platform, p)) for p in (buyer["customer_id"], foreign["customer_id"])}
    cases = [
        (f"{PATH}/{ids['access']}/export.zip", {}, 401),
        (f"{PATH}/{ids['access']}/export.zip", other_tokens["buyer"], 403),
        (f"{PATH}/{ids['access']}/export.zip", other_tokens["admin"], 404),   # another tenant's request
        (f"{PATH}/{ids['foreign']}/export.zip", tokens["admin"], 404),
        (f"{PATH}/{ids['correct']}/export.zip", tokens["admin"], 404),        # not an access request
        (f"{PATH}/{ids['restrict']}/export.zip", tokens["admin"], 404),
        (f"{PATH}/{ids['erase']}/export.zip", tokens["admin"], 404),
        (f"{PATH}/{uuid.uuid4()}/export.zip", tokens["admin"], 404),
        (f"{PATH}/not-a-uuid/export.zip", tokens["admin"], 404),
        (f"{PATH}/%27%3B--/export.zip", tokens["admin"], 404),
        (f"{PATH}/{ids['access']}%00/export.zip", tokens["admin"], 422),     # the engine refuses any NUL
    ]
    for path, headers, status in cases:
        answer = await http.get(path, headers=headers)
        assert answer.status_code == status, (path, answer.text)
        assert answer.headers["content-type"].startswith("application/json"), path
        if status == 404:
            assert answer.json()["error"]["reason"] == "not_found", answer.text
    assert {p: len(await _looks(platform, p)) for p in looks} == looks
