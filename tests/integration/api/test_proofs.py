"""Proof of delivery through the running engine and Postgres: the tenant's requirements, the
PIN at the door, photo and signature uploads, who may see them, and hostile input."""

from __future__ import annotations

import io
import json
import uuid

import httpx
import pytest
from PIL import Image

from dispatch.deliveries.proof import MAX_PIN_ATTEMPTS
from dispatch.deliveries.store import create_delivery, transition
from dispatch.identity.auth import issue_driver_token
from dispatch.identity.drivers import NewDriver, create_driver
from dispatch.identity.users import create_user, issue_user_token
from dispatch.tracking.snapshot import load_snapshot
from schema.db import TenantDatabase
from schema.tenants import create_tenant
from tests.integration.engine_helpers import running_app

pytestmark = pytest.mark.timeout(180)
VENDOR_AT = (-26.2361, 27.9093)
DOOR = (-26.2402, 27.9150)


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def _phone() -> str:
    return f"+2783{uuid.uuid4().int % 10**7:07d}"


def photo_with_gps() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "LeakyPhoneMaker"
    exif[0x8825] = {1: "S", 2: (26.0, 14.0, 9.5), 3: "E", 4: (27.0, 54.0, 3.25)}
    out = io.BytesIO()
    Image.new("RGB", (120, 90), (180, 120, 40)).save(out, "JPEG", exif=exif.tobytes())
    return out.getvalue()


def signature_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (200, 80), (0, 0, 0, 0)).save(out, "PNG")
    return out.getvalue()


class World:
    """A tenant with an admin, two vendors (each with a user), two customers, two drivers."""

    async def build(self, platform, db: TenantDatabase) -> World:
        self.tenant = await create_tenant(platform, f"Proof {uuid.uuid4().hex[:6]}")
        tid = self.tenant.id
        self.db = db
        async with db.tenant_transaction(tid) as tx:
            self.vendors = [str(await tx.fetchval(
                "INSERT INTO vendors (business_name, address, location, delivery_radius) VALUES "
                "($3, '{}', ST_SetSRID(ST_MakePoint($2, $1), 4326)::geography, 8000) RETURNING id",
                *VENDOR_AT, name)) for name in ("Mama Thoko Spaza", "Other Spaza")]
        self.admin = await self._user({"name": "Admin", "role": "tenant_admin"})
        self.vendor_tokens, self.customer_tokens, self.customers = [], [], []
        for vendor in self.vendors:
            self.vendor_tokens.append(await self._user({"name": "Thoko", "role": "vendor", "vendor_id": vendor}))
        for name in ("Thandi", "Other"):
            user = await create_user(db, tid, {"phone": _phone(), "name": name, "role": "customer"})
            self.customers.append(user["customer_id"])
            self.customer_tokens.append((await issue_user_token(db, tid, user["user_id"], ttl_s=3600)).token)
        self.drivers, self.driver_tokens = [], []
        for n in (1, 2):
            driver = await create_driver(db, tid, NewDriver("Sipho", f"Rider{n}", _phone(),
                                                            f"LIC-{uuid.uuid4().hex[:8]}", "motorbike", f"GP {n}"))
            self.drivers.append(str(driver))
            self.driver_tokens.append((await issue_driver_token(db, tid, driver, ttl_s=3600)).token)
        return self

    async def _user(self, body: dict) -> str:
        user = await create_user(self.db, self.tenant.id, {"phone": _phone(), **body})
        return (await issue_user_token(self.db, self.tenant.id, user["user_id"], ttl_s=3600)).token

    async def order_at_the_door(self, driver: int = 0,
                                events: tuple[str, ...] = ("accept", "arrive_pickup", "pick_up")) -> tuple[str, str]:
        """An order of customer 0 at vendor 0 whose delivery ``driver`` has picked up (or has
        gone through ``events`` after the offer)."""
        tid = self.tenant.id
        async with self.db.tenant_transaction(tid) as tx:
            order = await tx.fetchval(
                "INSERT INTO orders (order_number, customer_id, vendor_id, status, subtotal, total_amount, "
                "delivery_fee, delivery_address, delivery_location) VALUES ($1, $2, $3, 'ready', 120, 145, 25, "
                "'{}', ST_SetSRID(ST_MakePoint($5, $4), 4326)::geography) RETURNING id",
                f"WK-P-{uuid.uuid4().hex[:8]}", uuid.UUID(self.customers[0]), uuid.UUID(self.vendors[0]), *DOOR)
        delivery = str(await create_delivery(self.db, tid, order, VENDOR_AT, DOOR))
        await transition(self.db, tid, delivery, "offer", driver_id=self.drivers[driver])
        for event in events:
            await transition(self.db, tid, delivery, event)
        return str(order), delivery

    async def row(self, sql: str, *args):
        async with self.db.tenant_transaction(self.tenant.id, readonly=True) as tx:
            return await tx.fetchrow(sql, *args)

    async def proof_rows(self, delivery: str) -> dict:
        did = uuid.UUID(delivery)
        proofs = await self.row("SELECT pin_nonce, pin_attempts, pin_locked_at, pin_verified_at, pin_resets "
                                "FROM delivery_proofs WHERE delivery_id = $1", did)
        images = await self.row("SELECT count(*) AS n FROM delivery_proof_images WHERE delivery_id = $1", did)
        status = await self.row("SELECT status, proof_of_delivery FROM deliveries WHERE id = $1", did)
        return {"proofs": None if proofs is None else dict(proofs), "images": images["n"], **dict(status)}


@pytest.fixture
async def app(platform, stream_settings):
    async with running_app(platform, stream_settings) as (addr, state):
        async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http, TenantDatabase(platform) as db:
            yield http, state, await World().build(platform, db)


async def _require(http, world, **wanted) -> dict:
    resp = await http.put("/v1/admin/proof-requirements", json=wanted, headers=auth(world.admin))
    assert resp.status_code == 200, resp.text
    return resp.json()


async def _deliver(http, world, delivery, driver=0):
    return await http.post(f"/v1/drivers/deliveries/{delivery}/events", headers=auth(world.driver_tokens[driver]),
                           json={"event": "deliver", "proof_of_delivery": {"note": "handed over"}})


async def _pin(http, world, delivery, pin, driver=0):
    return await http.post(f"/v1/drivers/deliveries/{delivery}/pin", json={"pin": pin},
                           headers=auth(world.driver_tokens[driver]))


async def test_delivered_needs_the_pin_and_the_photo_and_then_stores_them(app):
    http, state, world = app
    settings = await _require(http, world, pin=True, photo=True, pin_digits=5)
    assert (settings["pin"], settings["photo"], settings["signature"], settings["pin_digits"]) == (True, True, False, 5)
    order, delivery = await world.order_at_the_door()

    # the customer sees the PIN (their proof view and the tracking page's snapshot); the vendor does not
    mine = (await http.get(f"/v1/orders/{order}/proof", headers=auth(world.customer_tokens[0]))).json()
    pin = mine["delivery_pin"]
    assert len(pin) == 5 and pin.isdigit() and mine["required"] == ["pin", "photo"]
    snapshot = await load_snapshot(world.db, state.redis, str(world.tenant.id), delivery)
    assert snapshot.frame["delivery_pin"] == pin
    vendors = (await http.get(f"/v1/vendor/orders/{order}/proof", headers=auth(world.vendor_tokens[0]))).json()
    assert "delivery_pin" not in vendors and pin not in json.dumps(vendors) and vendors["pin"]["digits"] == 5
    rows = await world.proof_rows(delivery)
    assert pin.encode() not in rows["proofs"]["pin_nonce"]   # only the nonce is stored

    # no proof yet: delivered is refused, naming the PIN first and listing both
    resp = await _deliver(http, world, delivery)
    assert resp.status_code == 409, resp.text
    error = resp.json()["error"]
    assert (error["reason"], error["field"]) == ("proof_required", "pin")
    assert [e["field"] for e in error["errors"]] == ["pin", "photo"]
    assert (await world.proof_rows(delivery))["status"] == "picked_up"

    wrong = "00000" if pin != "00000" else "11111"
    resp = await _pin(http, world, delivery, wrong)
    assert resp.status_code == 422 and resp.json()["error"]["reason"] == "wrong_pin", resp.text
    assert f"{MAX_PIN_ATTEMPTS - 1} of {MAX_PIN_ATTEMPTS}" in resp.json()["error"]["message"]
    resp = await _pin(http, world, delivery, pin)
    assert resp.status_code == 200 and resp.json()["pin"] == "verified", resp.text
    again = await _pin(http, world, delivery, pin)     # a repeat changes nothing
    assert again.status_code == 200 and again.json()["verified_at"] == resp.json()["verified_at"]
    assert "delivery_pin" not in (await load_snapshot(world.db, state.redis, str(world.tenant.id), delivery)).frame

    resp = await _deliver(http, world, delivery)
    assert resp.status_code == 409 and resp.json()["error"]["field"] == "photo", resp.text

    raw = photo_with_gps()
    resp = await http.put(f"/v1/drivers/deliveries/{delivery}/proof/photo", content=raw,
                          headers={**auth(world.driver_tokens[0]), "Content-Type": "image/jpeg"})
    assert resp.status_code == 200, resp.text
    uploaded = resp.json()
    assert uploaded["content_type"] == "image/jpeg" and (uploaded["width"], uploaded["height"]) == (120, 90)

    # the customer and the vendor of this order see the stripped photo; nobody else does
    for token in (world.customer_tokens[0], world.vendor_tokens[0]):
        path = f"/v1/orders/{order}/proof/photo" if token == world.customer_tokens[0] else \
            f"/v1/vendor/orders/{order}/proof/photo"
        resp = await http.get(path, headers=auth(token))
        assert resp.status_code == 200 and resp.headers["content-type"] == "image/jpeg"
        assert b"LeakyPhoneMaker" not in resp.content and b"Exif" not in resp.content
        assert Image.open(io.BytesIO(resp.content)).getexif().get_ifd(0x8825) == {}
        assert resp.headers["x-content-type-options"] == "nosniff"
        assert resp.headers["etag"] == f'"{uploaded["sha256"]}"'
    for path, token in ((f"/v1/orders/{order}/proof/photo", world.customer_tokens[1]),
                        (f"/v1/orders/{order}/proof", world.customer_tokens[1]),
                        (f"/v1/vendor/orders/{order}/proof/photo", world.vendor_tokens[1]),
                        (f"/v1/vendor/orders/{order}/proof", world.vendor_tokens[1])):
        resp = await http.get(path, headers=auth(token))
        assert resp.status_code == 404 and b"LeakyPhone" not in resp.content, (path, resp.text)
    resp = await http.get(f"/v1/drivers/deliveries/{delivery}/proof", headers=auth(world.driver_tokens[1]))
    assert resp.status_code == 404 and resp.json()["error"]["reason"] == "unknown_delivery"
    resp = await http.get(f"/v1/orders/{order}/proof/photo", headers=auth(world.driver_tokens[0]))
    assert resp.status_code == 401   # a driver token is no user token
    resp = await http.get(f"/v1/orders/{order}/proof/photo", headers=auth(world.admin))
    assert resp.status_code == 403   # not even the tenant admin
    resp = await http.get(f"/v1/orders/{order}/proof/signature", headers=auth(world.customer_tokens[0]))
    assert resp.status_code == 404 and resp.json()["error"]["field"] == "signature"

    mine = (await http.get(f"/v1/drivers/deliveries/{delivery}/proof", headers=auth(world.driver_tokens[0]))).json()
    assert mine["pin"]["verified_at"] and mine["photo"]["sha256"] == uploaded["sha256"] and "delivery_pin" not in mine

    resp = await _deliver(http, world, delivery)
    assert resp.status_code == 200 and resp.json()["status"] == "delivered", resp.text
    rows = await world.proof_rows(delivery)
    stored = json.loads(rows["proof_of_delivery"])
    assert stored["note"] == "handed over" and stored["evidence"]["required"] == ["pin", "photo"]
    assert stored["evidence"]["photo"]["sha256"] == uploaded["sha256"] and stored["evidence"]["pin"]["verified_at"]
    assert pin not in rows["proof_of_delivery"]

    # once delivered the proof no longer changes, and the customer is not shown the PIN
    resp = await http.put(f"/v1/drivers/deliveries/{delivery}/proof/photo", content=raw,
                          headers={**auth(world.driver_tokens[0]), "Content-Type": "image/jpeg"})
    assert resp.status_code == 409 and resp.json()["error"]["reason"] == "illegal_transition"
    assert (await http.get(f"/v1/orders/{order}/proof", headers=auth(world.customer_tokens[0]))).json()[
        "delivery_pin"] is None


async def test_wrong_pins_lock_the_vendor_resets_and_a_signature_completes(app):
    http, _state, world = app
    await _require(http, world, pin=True, signature=True)
    order, delivery = await world.order_at_the_door()
    pin = (await http.get(f"/v1/orders/{order}/proof", headers=auth(world.customer_tokens[0]))).json()["delivery_pin"]
    wrong = "1111" if pin != "1111" else "2222"
    for n in range(1, MAX_PIN_ATTEMPTS):
        resp = await _pin(http, world, delivery, wrong)
        assert resp.status_code == 422 and resp.json()["error"]["reason"] == "wrong_pin"
        assert (await world.proof_rows(delivery))["proofs"]["pin_attempts"] == n
    resp = await _pin(http, world, delivery, wrong)
    assert resp.status_code == 409 and resp.json()["error"]["reason"] == "pin_locked", resp.text
    resp = await _pin(http, world, delivery, pin)    # even the right one, once locked
    assert resp.status_code == 409 and resp.json()["error"]["reason"] == "pin_locked"
    rows = await world.proof_rows(delivery)
    assert rows["proofs"]["pin_locked_at"] and rows["proofs"]["pin_verified_at"] is None
    assert rows["proofs"]["pin_attempts"] == MAX_PIN_ATTEMPTS

    # another vendor cannot reset it; the order's vendor can, and the customer sees the new PIN
    resp = await http.post(f"/v1/vendor/orders/{order}/proof/pin/reset", headers=auth(world.vendor_tokens[1]))
    assert resp.status_code == 404
    assert (await world.proof_rows(delivery))["proofs"]["pin_resets"] == 0
    resp = await http.post(f"/v1/vendor/orders/{order}/proof/pin/reset", headers=auth(world.vendor_tokens[0]))
    assert resp.status_code == 200 and resp.json()["pin"]["attempts_left"] == MAX_PIN_ATTEMPTS, resp.text
    assert "delivery_pin" not in resp.json()
    rows = await world.proof_rows(delivery)
    assert rows["proofs"]["pin_locked_at"] is None and rows["proofs"]["pin_attempts"] == 0
    new_pin = (await http.get(f"/v1/orders/{order}/proof",
                              headers=auth(world.customer_tokens[0]))).json()["delivery_pin"]
    assert (await _pin(http, world, delivery, new_pin)).status_code == 200
    resp = await http.post(f"/v1/vendor/orders/{order}/proof/pin/reset", headers=auth(world.vendor_tokens[0]))
    assert resp.status_code == 409   # verified: nothing to reset

    resp = await _deliver(http, world, delivery)
    assert resp.status_code == 409 and resp.json()["error"]["field"] == "signature"
    resp = await http.put(f"/v1/drivers/deliveries/{delivery}/proof/signature", content=signature_png(),
                          headers={**auth(world.driver_tokens[0]), "Content-Type": "image/png"})
    assert resp.status_code == 200, resp.text
    resp = await http.get(f"/v1/vendor/orders/{order}/proof/signature", headers=auth(world.vendor_tokens[0]))
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
    assert (await _deliver(http, world, delivery)).status_code == 200


async def test_a_locked_pin_still_lets_the_driver_fail_the_delivery(app):
    http, _state, world = app
    await _require(http, world, pin=True)
    order, delivery = await world.order_at_the_door()
    pin = (await http.get(f"/v1/orders/{order}/proof", headers=auth(world.customer_tokens[0]))).json()["delivery_pin"]
    for _ in range(MAX_PIN_ATTEMPTS):
        await _pin(http, world, delivery, "9999" if pin != "9999" else "8888")
    assert (await world.proof_rows(delivery))["proofs"]["pin_locked_at"] is not None
    resp = await http.post(f"/v1/drivers/deliveries/{delivery}/events", headers=auth(world.driver_tokens[0]),
                           json={"event": "fail", "reason": "customer not home"})
    assert resp.status_code == 200 and resp.json()["status"] == "failed", resp.text


async def test_requirements_are_fixed_at_creation_and_can_be_relaxed(app):
    http, _state, world = app
    resp = await http.get("/v1/admin/proof-requirements", headers=auth(world.admin))
    assert resp.status_code == 200 and resp.json()["pin"] is False and resp.json()["updated_at"] is None
    resp = await http.get("/v1/admin/proof-requirements", headers=auth(world.vendor_tokens[0]))
    assert resp.status_code == 403

    # created before any requirement: no PIN, delivered with the driver's own proof as before
    order, before = await world.order_at_the_door()
    await _require(http, world, pin=True, photo=True)
    assert (await world.proof_rows(before))["proofs"] is None
    assert (await http.get(f"/v1/orders/{order}/proof",
                           headers=auth(world.customer_tokens[0]))).json()["delivery_pin"] is None
    resp = await _pin(http, world, before, "1234")
    assert resp.status_code == 409 and resp.json()["error"]["reason"] == "not_configured"
    assert (await _deliver(http, world, before)).status_code == 200

    # created while PIN and photo were required; the photo requirement dropped since: PIN only
    _order, during = await world.order_at_the_door()
    await _require(http, world, pin=True)
    resp = await _deliver(http, world, during)
    assert resp.status_code == 409 and [e["field"] for e in resp.json()["error"]["errors"]] == ["pin"]
    await _require(http, world)   # nothing required any more
    assert (await _deliver(http, world, during)).status_code == 200


async def test_hostile_input_on_every_proof_route_writes_nothing(app):
    http, _state, world = app
    await _require(http, world, pin=True, photo=True, signature=True)
    order, delivery = await world.order_at_the_door()
    before = await world.proof_rows(delivery)
    driver = auth(world.driver_tokens[0])
    pin_url = f"/v1/drivers/deliveries/{delivery}/pin"

    for content, expected in [
        (b"not json", (400, "bad_json", None)), (b"[]", (422, "wrong_type", "body")),
        (b'"1234"', (422, "wrong_type", "body")), (b"{}", (422, "missing_field", "pin")),
        (b'{"pin": 1234}', (422, "wrong_type", "pin")), (b'{"pin": null}', (422, "wrong_type", "pin")),
        (b'{"pin": "12a4"}', (422, "bad_format", "pin")), (b'{"pin": "12345"}', (422, "bad_format", "pin")),
        (b'{"pin": "\\u0661\\u0662\\u0663\\u0664"}', (422, "bad_format", "pin")),
        (b'{"pin": "1234", "also": 1}', (422, "unknown_field", "also")),
        (b'{"pin": "\\ud800"}', (422, "invalid_text", "pin")),
    ]:
        resp = await http.post(pin_url, content=content, headers={**driver, "Content-Type": "application/json"})
        error = resp.json()["error"]
        assert (resp.status_code, error["reason"], error.get("field")) == expected, (content, resp.text)

    photo_url = f"/v1/drivers/deliveries/{delivery}/proof/photo"
    bomb = io.BytesIO()
    Image.new("1", (6000, 6000), 0).save(bomb, "PNG", optimize=True)
    png = signature_png()
    for content, content_type, expected in [
        (photo_with_gps(), None, (415, "unsupported_media_type")),
        (photo_with_gps(), "text/html", (415, "unsupported_media_type")),
        (b"", "image/jpeg", (422, "empty")),
        (b"<script>alert(1)</script>", "image/png", (422, "invalid_image")),
        (png + b"PK\x03\x04zipzipzip", "image/png", (422, "invalid_image")),
        (png, "image/jpeg", (422, "invalid_image")),
        (png[: len(png) // 2], "image/png", (422, "invalid_image")),
        (bomb.getvalue(), "image/png", (413, "too_large")),
        (b"\xff\xd8\xff" + b"\x00" * (300 << 10), "image/jpeg", (413, "too_large")),   # past the edge's limit
    ]:
        headers = {**driver, **({"Content-Type": content_type} if content_type else {})}
        resp = await http.put(photo_url, content=content, headers=headers)
        assert (resp.status_code, resp.json()["error"]["reason"]) == expected, (content[:16], resp.text)
    resp = await http.put(f"/v1/drivers/deliveries/{delivery}/proof/signature", content=photo_with_gps(),
                          headers={**driver, "Content-Type": "image/jpeg"})
    assert resp.status_code == 415

    # not the driver's delivery, not a delivery, no token
    resp = await http.put(photo_url, content=photo_with_gps(),
                          headers={**auth(world.driver_tokens[1]), "Content-Type": "image/jpeg"})
    assert resp.status_code == 404 and resp.json()["error"]["reason"] == "unknown_delivery"
    resp = await http.post(f"/v1/drivers/deliveries/{delivery}/pin", json={"pin": "1234"},
                           headers=auth(world.driver_tokens[1]))
    assert resp.status_code == 404
    for bad in ("not-a-uuid", str(uuid.uuid4())):
        resp = await http.post(f"/v1/drivers/deliveries/{bad}/pin", json={"pin": "1234"}, headers=driver)
        assert resp.status_code == 404, resp.text
    resp = await http.post(pin_url, json={"pin": "1234"})
    assert resp.status_code == 401
    # proof is given at the door: not before pick-up (and refused before the image is decoded)
    _other_order, assigned = await world.order_at_the_door(driver=1, events=("accept",))
    resp = await http.put(f"/v1/drivers/deliveries/{assigned}/proof/photo", content=b"garbage",
                          headers={**auth(world.driver_tokens[1]), "Content-Type": "image/jpeg"})
    assert resp.status_code == 409 and resp.json()["error"]["reason"] == "not_ready", resp.text
    resp = await http.post(f"/v1/drivers/deliveries/{assigned}/pin", json={"pin": "1234"},
                           headers=auth(world.driver_tokens[1]))
    assert resp.status_code == 409 and resp.json()["error"]["reason"] == "not_ready", resp.text
    assert (await world.proof_rows(assigned))["proofs"]["pin_attempts"] == 0
    for path in (f"/v1/orders/{uuid.uuid4()}/proof", "/v1/orders/nope/proof/photo"):
        assert (await http.get(path, headers=auth(world.customer_tokens[0]))).status_code == 404
    resp = await http.post("/v1/vendor/orders/nope/proof/pin/reset", headers=auth(world.vendor_tokens[0]))
    assert resp.status_code == 404

    # the tenant's requirements: a hostile PUT changes nothing
    settings = (await http.get("/v1/admin/proof-requirements", headers=auth(world.admin))).json()
    for content, field in [(b"[]", "body"), (b'{"pin": "yes"}', "pin"), (b'{"pin_digits": 9}', "pin_digits"),
                           (b'{"pin_digits": "4"}', "pin_digits"), (b'{"selfie": true}', "selfie")]:
        resp = await http.put("/v1/admin/proof-requirements", content=content,
                              headers={**auth(world.admin), "Content-Type": "application/json"})
        assert resp.status_code == 422 and resp.json()["error"]["field"] == field, resp.text
    resp = await http.put("/v1/admin/proof-requirements", json={"pin": False},
                          headers=auth(world.vendor_tokens[0]))
    assert resp.status_code == 403
    assert (await http.get("/v1/admin/proof-requirements", headers=auth(world.admin))).json() == settings

    assert await world.proof_rows(delivery) == before   # no attempt counted, no image, still picked up
    assert before["images"] == 0 and before["proofs"]["pin_attempts"] == 0 and before["status"] == "picked_up"
    assert (await http.get(f"/v1/orders/{order}/proof", headers=auth(world.customer_tokens[0]))).json()[
        "photo"] is None
