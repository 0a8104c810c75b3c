"""Data subject requests against real services: access exports hold every registered value,
an erasure leaves no trace of the person while sales still add up, hostile requests change
nothing."""

import json
import uuid
from decimal import Decimal

import asyncpg
import pytest
import redis.asyncio as aioredis

from dispatch.api.subjects import HOOKS
from dispatch.commerce.catalogue.views import refresh_views
from dispatch.core.cache_keys import order_key
from dispatch.core.errors import NotFound, Refusal
from dispatch.identity.access_log import subject_log
from dispatch.identity.auth import TokenRejected
from dispatch.identity.consent import parse_change
from dispatch.identity.consent_store import record_consent
from dispatch.identity.drivers import NewDriver, create_driver
from dispatch.identity.subject_requests import get_request, submit
from dispatch.identity.subjects import parse_request
from dispatch.identity.users import UserAuthenticator, create_user, create_vendor, issue_user_token
from dispatch.matching.keys import offer_key
from dispatch.tracking.links import LinkRefused, issue_link, resolve_link
from schema.db import TenantDatabase
from schema.errors import WakalaError
from schema.tenants import create_tenant
from streams.keys import location_key, state_key, tracking_key
from tests.integration.shared_platform import shared_platform  # noqa: F401 - one platform for the module

VENDOR = {"business_name": "Mama Thoko Spaza", "address": {"street": "1 Vilakazi St"}, "lat": -26.236,
          "lng": 27.909, "delivery_radius_m": 6000, "minimum_order_value": "30.00"}
VERIFIED = {"method": "otp_registered_phone", "reference": "sms 4411"}


def phone() -> str:
    return f"+2782{uuid.uuid4().int % 10**7:07d}"


def body(kind: str, subject_type: str, subject_id: object, **extra) -> dict:
    return {"type": kind, "subject_type": subject_type, "subject_id": str(subject_id),
            "verification": VERIFIED, "reason": "the subject asked by phone", **extra}


@pytest.fixture
async def world(platform, redis_url):
    tenant = await create_tenant(platform, f"DSR {uuid.uuid4().hex[:6]}")
    redis = aioredis.from_url(redis_url)
    async with TenantDatabase(platform) as db:
        auth = UserAuthenticator(db, redis, cache_ttl_s=60)
        await auth.start()
        admin = await create_user(db, tenant.id, {"phone": phone(), "name": "Admin", "role": "tenant_admin"})
        try:
            yield db, redis, auth, tenant, admin["user_id"]
        finally:
            await auth.stop()
            await redis.aclose()


async def _customer_with_history(db, platform, tenant, redis):
    """A customer with a delivered order, a live tracking link, a token, messages, a session."""
    number, street = phone(), f"{uuid.uuid4().hex[:8]} Vilakazi St"
    vendor = await create_vendor(db, tenant.id, VENDOR)
    buyer = await create_user(db, tenant.id, {"phone": number, "name": "Thandi Zulu-Secret", "role": "customer"})
    cid, uid = buyer["customer_id"], buyer["user_id"]
    rider = await create_driver(db, tenant.id, NewDriver("Sipho", "Rider", phone(), f"LIC-{uuid.uuid4().hex[:8]}",
                                                         "motorbike", "GP 1"))
    async with db.tenant_transaction(tenant.id) as tx:
        await tx.execute("UPDATE customers SET first_name = 'Thandi', last_name = 'Zulu-Secret', "
                         "addresses = $2::jsonb, date_of_birth = '1990-01-02' WHERE id = $1",
                         uuid.UUID(cid), json.dumps([{"street": street}]))
        await tx.execute("UPDATE users SET email = 'thandi@example.org' WHERE id = $1", uuid.UUID(uid))
        order_id = await tx.fetchval(
            "INSERT INTO orders (order_number, customer_id, vendor_id, status, subtotal, total_amount, "
            "delivery_address, delivery_location, delivery_instructions, notes) "
            "VALUES ('O-1', $1, $2, 'delivered', 120, 120, $3::jsonb, "
            "ST_SetSRID(ST_MakePoint(27.9101, -26.2401), 4326)::geography, 'gate code 4411', 'ring twice') "
            "RETURNING id", uuid.UUID(cid), uuid.UUID(vendor), json.dumps({"street": street}))
        delivery_id = await tx.fetchval(
            "INSERT INTO deliveries (order_id, status, dropoff_address, dropoff_location, customer_feedback, "
            "delivered_at) VALUES ($1, 'delivered', $2::jsonb, "
            "ST_SetSRID(ST_MakePoint(27.9101, -26.2401), 4326)::geography, 'thanks Sipho', now()) RETURNING id",
            order_id, json.dumps({"street": street}))
        await tx.execute("UPDATE vendors SET total_orders = 1 WHERE id = $1", uuid.UUID(vendor))
        await tx.execute("INSERT INTO delivery_proof_images (delivery_id, kind, image, content_type, sha256, "
                         "size_bytes, width, height, uploaded_by) VALUES ($1, 'photo', $2::bytea, 'image/jpeg', $3, "
                         "octet_length($2::bytea), 4, 3, $4)", delivery_id, PHOTO, "0" * 64, rider)
        await tx.execute("INSERT INTO whatsapp_messages (message_id, conversation_id, from_number, to_number, "
                         "direction, type, content) VALUES ($1, 'c1', $2, '+27110000000', 'inbound', 'text', $3::jsonb)",
                         uuid.uuid4().hex, number, json.dumps({"text": f"deliver to {street}"}))
        await tx.execute("INSERT INTO notifications (user_id, type, channel, content) "
                         "VALUES ($1, 'order', 'whatsapp', 'Thandi, your order is on its way')", uuid.UUID(uid))
        await tx.execute("INSERT INTO user_sessions (user_id, session_token, ip_address, expires_at) "
                         "VALUES ($1, $2, '10.1.2.3', now() + interval '1 day')", uuid.UUID(uid), uuid.uuid4().hex)
    control = await asyncpg.connect(platform.control.url())
    try:   # create_user listed the person in the directory
        assert await control.fetchval("SELECT phone_number FROM tenant_users WHERE tenant_id = $1 AND user_id = $2",
                                      tenant.id, uuid.UUID(uid)) == number
    finally:
        await control.close()
    link = await issue_link(db, tenant.id, order_id, grace_s=3600)
    token = await issue_user_token(db, tenant.id, uid, ttl_s=3600)
    await redis.set(tracking_key(str(delivery_id)), json.dumps({"lat": -26.2401, "lng": 27.9101}), ex=60)
    await redis.set(order_key(str(tenant.id), str(order_id)), json.dumps({"street": street}), ex=60)
    return {"customer_id": cid, "user_id": uid, "vendor_id": vendor, "order_id": str(order_id),
            "delivery_id": str(delivery_id), "link": link, "token": token,
            "secrets": [number, number[1:], PHOTO.hex(), "Zulu-Secret", street, "thandi@example.org", "gate code",
                        "ring twice", "thanks Sipho", "10.1.2.3", "27.9101"]}


PHOTO = b"the door of Thandi's house"   # a proof-of-delivery photo's bytes (its hex in a dump)


async def _everything_in_the_tenant(db, tenant_id) -> str:
    async with db.tenant_transaction(tenant_id, readonly=True) as tx:
        tables = [r["table_name"] for r in await tx.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
            "AND table_type = 'BASE TABLE'")]
        dumps = [await tx.fetchval(f'SELECT coalesce(string_agg(to_jsonb(t)::text, \'\n\'), \'\') FROM "{t}" t')  # noqa: S608
                 for t in tables]
    return "\n".join(dumps)


async def _sales(db, tenant_id, vendor_id):
    assert await refresh_views(db, tenant_id)
    async with db.tenant_transaction(tenant_id, readonly=True) as tx:
        view = [dict(r) for r in await tx.fetch("SELECT * FROM v_daily_sales_summary ORDER BY vendor_id")]
        counters = dict(await tx.fetchrow("SELECT total_orders, rating FROM vendors WHERE id = $1",
                                          uuid.UUID(vendor_id)))
        orders = await tx.fetchval("SELECT sum(total_amount) FROM orders")
    return view, counters, orders


async def test_an_erased_customer_leaves_no_trace_while_sales_still_add_up(world, platform):
    db, redis, auth, tenant, admin = world
    c = await _customer_with_history(db, platform, tenant, redis)
    assert (await auth.verify(c["token"].token)).user_id == c["user_id"]
    await resolve_link(db, c["link"].token, grace_s=3600)
    before = await _sales(db, tenant.id, c["vendor_id"])
    assert before[0] and before[0][0]["total_revenue"] == Decimal("120.00")
    await record_consent(db, tenant.id, "customer", c["customer_id"], parse_change("marketing", {
        "given": True, "version": "2026-12", "channel": "paper", "note": "signed at the counter"}),
        ip_address="198.51.100.23")
    dump = await _everything_in_the_tenant(db, tenant.id)
    assert all(s in dump for s in c["secrets"][:10])   # the scan below can find them
    first = await submit(db, redis, tenant.id, parse_request(body("access", "customer", c["customer_id"])),
                         requested_by=admin, via="test", hooks=HOOKS)
    seen = json.dumps(first["export"], default=str)
    assert [s for s in c["secrets"] if s not in seen] == []   # phone, name, address, location, session...
    assert tracking_key(c["delivery_id"]) in first["export"]["redis"]
    assert len(first["export"]["tables"]["tracking_links"]) == 1
    assert first["export"]["control"]["tenant_users"][0]["phone_number"] == c["secrets"][0]
    assert first["export"]["control"]["consent_records"][0]["ip_address"] == "198.51.100.23"

    done = await submit(db, redis, tenant.id, parse_request(body("erase", "customer", c["customer_id"])),
                        requested_by=admin, via="test", hooks=HOOKS)
    row = done["request"]
    assert (row["status"], row["request_type"], row["verification_method"]) == ("completed", "erasure",
                                                                             "otp_registered_phone")
    assert (row["due_at"] - row["requested_at"]).days == 30 and row["requested_by"] == admin
    assert row["response"]["tokens_revoked"] == 1 and row["response"]["links_revoked"] == 1

    dump = await _everything_in_the_tenant(db, tenant.id)
    assert [s for s in c["secrets"] if s in dump] == []
    async with db.tenant_transaction(tenant.id, readonly=True) as tx:   # locations are hex in a dump
        assert await tx.fetchval("SELECT count(*) FROM orders WHERE delivery_location IS NOT NULL") == 0
        assert await tx.fetchval("SELECT count(*) FROM deliveries WHERE dropoff_location IS NOT NULL") == 0
    control = await asyncpg.connect(platform.control.url())
    try:
        held = await control.fetchval("SELECT phone_number FROM tenant_users WHERE user_id = $1",
                                      uuid.UUID(c["user_id"]))
        consent = await control.fetchrow("SELECT * FROM consent_records WHERE subject_id = $1",
                                         uuid.UUID(c["customer_id"]))
    finally:
        await control.close()
    assert held.startswith("erased-")
    # the consent history stays, without the address it came from or the staff's note
    assert consent["consent_given"] and consent["ip_address"] is None and "note" not in consent["metadata"]
    assert await redis.exists(tracking_key(c["delivery_id"]), order_key(str(tenant.id), c["order_id"])) == 0
    with pytest.raises(LinkRefused):
        await resolve_link(db, c["link"].token, grace_s=3600)
    with pytest.raises(TokenRejected):
        await auth.verify(c["token"].token)
    assert await _sales(db, tenant.id, c["vendor_id"]) == before

    export = await submit(db, redis, tenant.id, parse_request(body("access", "customer", c["customer_id"])),
                          requested_by=admin, via="test", hooks=HOOKS)
    text = json.dumps(export["export"], default=str)
    assert [s for s in c["secrets"] if s in text] == []
    assert export["export"]["tables"]["orders"][0]["id"] == c["order_id"]   # the order itself is kept

    # a second erasure: refused, nothing recorded or changed
    count = await _requests(platform, tenant.id)
    with pytest.raises(Refusal) as again:
        await submit(db, redis, tenant.id, parse_request(body("erase", "customer", c["customer_id"])),
                     requested_by=admin, via="test", hooks=HOOKS)
    assert (again.value.status, again.value.reason) == (409, "duplicate")
    assert await _requests(platform, tenant.id) == count


async def _requests(platform, tenant_id) -> int:
    control = await asyncpg.connect(platform.control.url())
    try:
        return await control.fetchval("SELECT count(*) FROM data_subject_requests WHERE tenant_id = $1", tenant_id)
    finally:
        await control.close()


async def test_a_driver_export_holds_every_registered_value_and_is_logged(world, platform):
    db, redis, _, tenant, admin = world
    user = await create_user(db, tenant.id, {"phone": phone(), "name": "Sipho Driver", "role": "tenant_admin"})
    buyer = await create_user(db, tenant.id, {"phone": phone(), "name": "Buyer", "role": "customer"})
    values = {"first_name": "Sipho", "last_name": "Ndlovu-Unique", "license_number": f"LIC-{uuid.uuid4().hex[:8]}",
              "vehicle_registration": "GP 12 XY"}
    vendor = await create_vendor(db, tenant.id, VENDOR)
    async with db.tenant_transaction(tenant.id) as tx:
        cid = uuid.UUID(buyer["customer_id"])
        driver = await tx.fetchval(
            "INSERT INTO drivers (user_id, first_name, last_name, license_number, vehicle_type, vehicle_registration, "
            "current_location) VALUES ($1, $2, $3, $4, 'motorbike', $5, "
            "ST_SetSRID(ST_MakePoint(28.0473, -26.2041), 4326)::geography) RETURNING id",
            uuid.UUID(user["user_id"]), *values.values())
        order = await tx.fetchval("INSERT INTO orders (order_number, customer_id, vendor_id, subtotal, total_amount, "
                                  "delivery_address) VALUES ('O-9', $1, $2, 50, 50, '{}') RETURNING id",
                                  cid, uuid.UUID(vendor))
        await tx.execute("INSERT INTO deliveries (order_id, driver_id, status, route_polyline, driver_notes) "
                         "VALUES ($1, $2, 'assigned', 'polyline~xyz', 'dog at the gate')", order, driver)
    await redis.hset(location_key(str(driver)), mapping={"lat": "-26.2041", "lng": "28.0473"})   # as the worker
    await redis.expire(location_key(str(driver)), 60)
    await redis.hset(state_key(str(driver)), mapping={"status": "online"})
    await redis.expire(state_key(str(driver)), 60)
    await redis.set(offer_key(str(driver)), "offer-1", ex=60)

    done = await submit(db, redis, tenant.id, parse_request(body("access", "driver", driver)),
                        requested_by=admin, via="test", hooks=HOOKS)
    doc = done["export"]
    mine = doc["tables"]["drivers"][0]
    assert {k: mine[k] for k in values} == values
    assert mine["current_location"] == "POINT(28.0473 -26.2041)"
    delivery = doc["tables"]["deliveries"][0]
    assert (delivery["route_polyline"], delivery["driver_notes"]) == ("polyline~xyz", "dog at the gate")
    assert "dropoff_address" not in delivery     # the customer's, not the driver's
    assert doc["tables"]["users"][0]["name"] == "Sipho Driver"
    assert doc["redis"][location_key(str(driver))] == {"lat": "-26.2041", "lng": "28.0473"}
    assert doc["redis"][state_key(str(driver))] == {"status": "online"}
    assert doc["redis"][offer_key(str(driver))] == "offer-1"

    log = await subject_log(db, tenant.id, driver)
    assert len(log) == 1 and log[0]["user_id"] == admin
    assert log[0]["purpose"] == "the subject asked by phone"
    assert "drivers.license_number" in log[0]["accessed_fields"]
    assert log[0]["metadata"]["request_id"] == done["request"]["id"]
    assert (await get_request(db, tenant.id, done["request"]["id"]))["status"] == "completed"

    # erase the driver: Redis keys gone, delivery kept with its route nulled
    await submit(db, redis, tenant.id, parse_request(body("erase", "driver", driver)), requested_by=admin,
                 via="test", hooks=HOOKS)
    assert await redis.exists(location_key(str(driver)), state_key(str(driver)), offer_key(str(driver))) == 0
    dump = await _everything_in_the_tenant(db, tenant.id)
    assert [v for v in (*values.values(), "polyline~xyz", "dog at the gate", "Sipho Driver") if v in dump] == []


async def test_correct_and_restrict_change_only_what_they_say(world):
    db, redis, _, tenant, admin = world
    buyer = await create_user(db, tenant.id, {"phone": phone(), "name": "Thandi", "role": "customer"})
    done = await submit(db, redis, tenant.id, parse_request(body(
        "correct", "customer", buyer["customer_id"], changes={"last_name": "Mokoena"})),
        requested_by=admin, via="test")
    assert done["request"]["request_type"] == "rectification"
    await submit(db, redis, tenant.id, parse_request(body("restrict", "customer", buyer["customer_id"])),
                 requested_by=admin, via="test")
    async with db.tenant_transaction(tenant.id, readonly=True) as tx:
        row = await tx.fetchrow("SELECT c.first_name, c.last_name, c.metadata, u.metadata AS um FROM customers c "
                                "JOIN users u ON u.id = c.user_id WHERE c.id = $1", uuid.UUID(buyer["customer_id"]))
    assert (row["first_name"], row["last_name"]) == ("Thandi", "Mokoena")
    assert json.loads(row["metadata"])["processing_restricted"] is True
    assert json.loads(row["um"])["processing_restricted"] is True


async def test_unknown_and_foreign_subjects_are_refused_and_nothing_is_recorded(world, platform):
    db, redis, _, tenant, admin = world
    other = await create_tenant(platform, f"Other {uuid.uuid4().hex[:6]}")
    foreign = await create_user(db, other.id, {"phone": phone(), "name": "Elsewhere", "role": "customer"})
    for kind in ("access", "erase", "correct", "restrict"):
        for subject in (foreign["customer_id"], str(uuid.uuid4())):
            extra = {"changes": {"first_name": "X"}} if kind == "correct" else {}
            with pytest.raises(NotFound):
                await submit(db, redis, tenant.id, parse_request(body(kind, "customer", subject, **extra)),
                             requested_by=admin, via="test")
    assert await _requests(platform, tenant.id) == 0
    for bad in ("nope", str(uuid.uuid4())):
        with pytest.raises(NotFound):
            await get_request(db, tenant.id, bad)
    async with db.tenant_transaction(other.id, readonly=True) as tx:
        assert await tx.fetchval("SELECT first_name FROM customers WHERE id = $1",
                                 uuid.UUID(foreign["customer_id"])) == "Elsewhere"


def _cli(*argv):
    import argparse

    from dispatch.cli import dsr

    parser = argparse.ArgumentParser(prog="wakala")
    dsr.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["dsr", *argv])


async def test_the_cli_exports_erases_and_shows_who_looked(world, platform, monkeypatch, tmp_path, capsys):
    from dispatch.cli.dsr import OutputExists
    from schema.errors import WakalaError

    db, _, _, tenant, _ = world
    monkeypatch.setenv("WAKALA_CONTROL_DSN", platform.control.url())
    monkeypatch.setenv("WAKALA_SHARD_DATABASES", ",".join(platform.shard_databases))
    buyer = await create_user(db, tenant.id, {"phone": phone(), "name": "Cli Person", "role": "customer"})
    common = ["--tenant", str(tenant.id), "--subject-type", "customer", "--verified-by", "id_document",
              "--reference", "ID 0871", "--reason", "walked in"]
    out = tmp_path / "export.json"
    args = _cli("access", *common, "--subject", buyer["customer_id"], "--out", str(out))
    assert await args.handler(args) == 0
    assert "Cli Person" in out.read_text() and (out.stat().st_mode & 0o777) == 0o600
    with pytest.raises(OutputExists):   # never written over
        await args.handler(args)
    log = _cli("log", "--tenant", str(tenant.id), buyer["customer_id"])
    capsys.readouterr()
    assert await log.handler(log) == 0
    shown = capsys.readouterr().out
    assert "cli:" in shown and "walked in" in shown and "1 look(s)" in shown

    for bad in ([*common, "--subject", "not-a-uuid"], [*common, "--subject", str(uuid.uuid4())],
                ["--tenant", "nope", *common[2:], "--subject", buyer["customer_id"]]):
        args = _cli("erase", *bad)
        with pytest.raises(WakalaError):
            await args.handler(args)
    for bad in (["correct", *common, "--subject", buyer["customer_id"], "--set", "no-equals"],
                ["erase", *common[:5], "trust_me", *common[6:], "--subject", buyer["customer_id"]],
                ["log", "--tenant", str(tenant.id), buyer["customer_id"], "--limit", "0"]):
        with pytest.raises(SystemExit):
            _cli(*bad)
    args = _cli("correct", *common, "--subject", buyer["customer_id"], "--set", "phone_number=+1")
    with pytest.raises(Refusal) as refused:
        await args.handler(args)
    assert refused.value.field == "changes.phone_number"
    args = _cli("erase", *common, "--subject", buyer["customer_id"])
    assert await args.handler(args) == 0
    with pytest.raises(Refusal):
        await args.handler(args)
    async with db.tenant_transaction(tenant.id, readonly=True) as tx:
        assert await tx.fetchval("SELECT name FROM users WHERE id = $1", uuid.UUID(buyer["user_id"])) == "erased-" + buyer["user_id"].replace("-", "")[:12]


async def test_an_erasure_that_fails_after_its_commit_is_finished_by_running_it_again(world, platform):
    from dispatch.identity.subject_requests import Hooks

    db, redis, auth, tenant, admin = world
    c = await _customer_with_history(db, platform, tenant, redis)

    async def broken(*_):
        raise ConnectionError("redis went away")

    request = parse_request(body("erase", "customer", c["customer_id"]))
    with pytest.raises(ConnectionError):
        await submit(db, redis, tenant.id, request, requested_by=admin, via="test",
                     hooks=Hooks(driver_keys=HOOKS.driver_keys, revoke_links=broken))
    control = await asyncpg.connect(platform.control.url())
    try:
        failed = await control.fetchrow("SELECT status, error FROM data_subject_requests WHERE subject_id = $1",
                                        uuid.UUID(c["customer_id"]))
    finally:
        await control.close()
    assert failed["status"] == "failed" and "redis went away" in failed["error"]
    await resolve_link(db, c["link"].token, grace_s=3600)   # the link was left live

    done = await submit(db, redis, tenant.id, request, requested_by=admin, via="test", hooks=HOOKS)
    assert done["request"]["status"] == "completed" and done["request"]["response"]["links_revoked"] == 1
    with pytest.raises(LinkRefused):
        await resolve_link(db, c["link"].token, grace_s=3600)
    dump = await _everything_in_the_tenant(db, tenant.id)
    assert [s for s in c["secrets"] if s in dump] == []


async def test_the_cli_writes_the_zip_export_privately_and_refuses_what_is_not_an_access_request(
        world, platform, monkeypatch, tmp_path, capsys):
    import io
    import os
    import zipfile

    from dispatch.cli.dsr import OutputExists, OutputUnusable

    db, redis, _, tenant, admin = world
    monkeypatch.setenv("WAKALA_CONTROL_DSN", platform.control.url())
    monkeypatch.setenv("WAKALA_SHARD_DATABASES", ",".join(platform.shard_databases))
    buyer = await create_user(db, tenant.id, {"phone": phone(), "name": "Zip Person Ñandú", "role": "customer"})
    cid = buyer["customer_id"]
    common = ["--tenant", str(tenant.id), "--subject-type", "customer", "--verified-by", "id_document",
              "--reference", "ID 0871", "--reason", "walked in", "--subject", cid]

    def opened(path) -> dict[str, bytes]:
        assert (path.stat().st_mode & 0o777) == 0o600
        with zipfile.ZipFile(io.BytesIO(path.read_bytes())) as archive:
            return {n: archive.read(n) for n in archive.namelist()}

    async def looks() -> int:
        return len(await subject_log(db, tenant.id, cid))

    out = tmp_path / "export.zip"
    args = _cli("access", *common, "--zip", str(out))
    assert await args.handler(args) == 0
    files = opened(out)
    assert "Zip Person Ñandú" in files["tables/users.csv"].decode("utf-8-sig")
    assert json.loads(files["export.json"])["subject_id"] == cid and await looks() == 1
    request_id = (await subject_log(db, tenant.id, cid))[0]["metadata"]["request_id"]
    assert request_id in files["README.txt"].decode()
    count = await _requests(platform, tenant.id)
    with pytest.raises(OutputExists):   # refused before anything is recorded or exported
        await args.handler(args)
    assert (await _requests(platform, tenant.id), await looks()) == (count, 1)
    out.chmod(0o644)
    args = _cli("access", *common, "--zip", str(out), "--out", str(tmp_path / "export.json"), "--force")
    assert await args.handler(args) == 0
    assert opened(out) and (tmp_path / "export.json").stat().st_mode & 0o777 == 0o600 and await looks() == 2

    again = tmp_path / "again.zip"
    args = _cli("export", "--tenant", str(tenant.id), request_id, "--zip", str(again))
    assert await args.handler(args) == 0
    assert "Zip Person Ñandú" in opened(again)["tables/users.csv"].decode("utf-8-sig") and await looks() == 3
    args = _cli("export", "--tenant", str(tenant.id), request_id, "--out", str(tmp_path / "again.json"))
    assert await args.handler(args) == 0 and await looks() == 4
    assert json.loads((tmp_path / "again.json").read_text())["subject_id"] == cid

    # requests that are not this tenant's completed access requests: refused, nothing written or logged
    other = await create_tenant(platform, f"Other {uuid.uuid4().hex[:6]}")
    foreign = await create_user(db, other.id, {"phone": phone(), "name": "Elsewhere", "role": "customer"})
    foreign_request = (await submit(db, redis, other.id, parse_request(body("access", "customer",
                                                                            foreign["customer_id"])),
                                    requested_by=None, via="test"))["request"]["id"]
    gone = await create_user(db, tenant.id, {"phone": phone(), "name": "Gone", "role": "customer"})
    erasure = (await submit(db, redis, tenant.id, parse_request(body("erase", "customer", gone["customer_id"])),
                            requested_by=admin, via="test"))["request"]["id"]
    correction = (await submit(db, redis, tenant.id, parse_request(body(
        "correct", "customer", cid, changes={"first_name": "Zipper"})), requested_by=admin, via="test"))["request"]["id"]
    target = tmp_path / "never.zip"
    for bad in ("not-a-uuid", "'; DROP TABLE data_subject_requests; --", str(uuid.uuid4()), foreign_request,
                erasure, correction):
        args = _cli("export", "--tenant", str(tenant.id), bad, "--zip", str(target))
        with pytest.raises(NotFound) as refused:
            await args.handler(args)
        assert refused.value.field == "request_id" and "request" in refused.value.message
    args = _cli("export", "--tenant", "nope", request_id, "--zip", str(target))
    with pytest.raises(WakalaError):
        await args.handler(args)
    for path, error in ((again, OutputExists), (tmp_path, OutputUnusable), (tmp_path / "no" / "such.zip",
                                                                             OutputUnusable)):
        args = _cli("export", "--tenant", str(tenant.id), request_id, "--zip", str(path))
        with pytest.raises(error):
            await args.handler(args)
    args = _cli("access", *common, "--zip", str(target), "--out", str(target))
    with pytest.raises(OutputUnusable):
        await args.handler(args)
    assert not target.exists() and await looks() == 4
    assert sorted(os.listdir(tmp_path)) == ["again.json", "again.zip", "export.json", "export.zip"]
    for argv in (["export", "--tenant", str(tenant.id), request_id],
                 ["export", "--tenant", str(tenant.id), request_id, "--zip", "a.zip", "--out", "a.json"],
                 ["erase", *common, "--zip", "a.zip"]):
        with pytest.raises(SystemExit):
            _cli(*argv)
