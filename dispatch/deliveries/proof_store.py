"""Proof of delivery in Postgres: the tenant's requirements, a delivery's PIN and images.

The rules (what a PIN is, how entries are judged, what an image must be) are ``proof``; this
is the SQL around them (tables of migration 0017). Every write is one tenant transaction that
locks the delivery row first (``FOR UPDATE``), then its ``delivery_proofs`` row: the same
order as ``store.transition``, which locks the delivery row and then reads the proofs, so a
PIN entry or an upload and the delivered event never interleave. Refusals raised inside a
transaction roll it back (nothing written); the one refusal that must keep a write (a wrong
PIN, whose attempt is counted) is raised after the commit.

Who may do what: the delivery's own driver gives proofs, only while it is ``picked_up``
(proof is given at the door; once the delivery has ended it never changes); the order's
customer and vendor read them (the customer also sees the PIN while it is still to be
entered); the vendor resets a PIN. Anyone else gets the answer an absent delivery or order
gets (404).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg

from dispatch.core.errors import (
    ILLEGAL_TRANSITION,
    NOT_CONFIGURED,
    NOT_READY,
    PIN_LOCKED,
    UNKNOWN_DELIVERY,
    WRONG_PIN,
    NotFound,
    Refusal,
)
from dispatch.core.ids import InvalidId, parse_uuid
from dispatch.deliveries.proof import (
    IMAGE_KINDS,
    MAX_PIN_ATTEMPTS,
    CleanImage,
    PinState,
    ProofRequired,
    ProofRequirements,
    derive_pin,
    effective_required,
    judge_pin,
    missing_proofs,
    new_pin_key,
    new_pin_nonce,
    parse_pin,
    shown_pin,
)
from dispatch.deliveries.state import TERMINAL_STATES, DeliveryState
from schema.db import TenantDatabase

__all__ = ["check_pin", "driver_at_the_door", "driver_view", "evidence_at_delivery", "get_requirements", "open_proofs",
           "party_image", "party_view", "reset_pin", "set_requirements", "store_image"]

SETTINGS_SQL = """
SELECT require_pin, require_photo, require_signature, pin_digits, updated_at, updated_by FROM proof_settings
"""
# The key is made with the row and kept by every later update (see the migration).
SET_SETTINGS_SQL = """
INSERT INTO proof_settings (require_pin, require_photo, require_signature, pin_digits, pin_key, updated_by)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (tenant_id) DO UPDATE SET
    require_pin = EXCLUDED.require_pin, require_photo = EXCLUDED.require_photo,
    require_signature = EXCLUDED.require_signature, pin_digits = EXCLUDED.pin_digits,
    updated_by = EXCLUDED.updated_by, updated_at = now()
RETURNING require_pin, require_photo, require_signature, pin_digits, updated_at, updated_by
"""
# A new delivery's proofs, as the tenant requires them now; nothing when it requires none.
OPEN_SQL = """
INSERT INTO delivery_proofs (delivery_id, required, pin_nonce, pin_digits)
SELECT $1, array_remove(ARRAY[CASE WHEN s.require_pin THEN 'pin' END,
                              CASE WHEN s.require_photo THEN 'photo' END,
                              CASE WHEN s.require_signature THEN 'signature' END], NULL),
       CASE WHEN s.require_pin THEN $2::bytea END, CASE WHEN s.require_pin THEN s.pin_digits END
FROM proof_settings s
WHERE s.require_pin OR s.require_photo OR s.require_signature
"""
# Everything about a delivery's proofs but the image bytes, in one round trip.
VIEW_SQL = """
SELECT d.id AS delivery_id, d.status, d.driver_id, d.order_id,
       p.required, p.pin_nonce, p.pin_digits, p.pin_attempts, p.pin_locked_at, p.pin_verified_at,
       p.pin_resets, s.pin_key, s.require_pin, s.require_photo, s.require_signature,
       s.pin_digits AS tenant_pin_digits,
       (SELECT coalesce(jsonb_object_agg(i.kind, jsonb_build_object(
                   'content_type', i.content_type, 'sha256', i.sha256, 'size_bytes', i.size_bytes,
                   'width', i.width, 'height', i.height, 'uploaded_at', i.uploaded_at)), '{}'::jsonb)
        FROM delivery_proof_images i WHERE i.delivery_id = d.id) AS images
FROM deliveries d
LEFT JOIN delivery_proofs p ON p.delivery_id = d.id
LEFT JOIN proof_settings s ON true
WHERE d.id = $1
"""
DELIVERY_SQL = "SELECT status, driver_id FROM deliveries WHERE id = $1"
LOCK_DELIVERY_SQL = DELIVERY_SQL + " FOR UPDATE"
LOCK_PROOFS_SQL = """
SELECT p.pin_nonce, p.pin_digits, p.pin_attempts, p.pin_locked_at, p.pin_verified_at, s.pin_key
FROM delivery_proofs p LEFT JOIN proof_settings s ON true
WHERE p.delivery_id = $1
FOR UPDATE OF p
"""
UPDATE_PIN_SQL = """
UPDATE delivery_proofs
SET pin_attempts = $2,
    pin_locked_at = CASE WHEN $3 THEN coalesce(pin_locked_at, now()) END,
    pin_verified_at = CASE WHEN $4 THEN coalesce(pin_verified_at, now()) END
WHERE delivery_id = $1
RETURNING pin_verified_at
"""
RESET_PIN_SQL = """
UPDATE delivery_proofs
SET pin_nonce = $2, pin_attempts = 0, pin_locked_at = NULL, pin_resets = pin_resets + 1
WHERE delivery_id = $1
RETURNING pin_digits, pin_resets
"""
UPSERT_IMAGE_SQL = """
INSERT INTO delivery_proof_images (delivery_id, kind, image, content_type, sha256, size_bytes, width, height,
                                   uploaded_by)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (delivery_id, kind) DO UPDATE SET
    image = EXCLUDED.image, content_type = EXCLUDED.content_type, sha256 = EXCLUDED.sha256,
    size_bytes = EXCLUDED.size_bytes, width = EXCLUDED.width, height = EXCLUDED.height,
    uploaded_by = EXCLUDED.uploaded_by, uploaded_at = now()
RETURNING uploaded_at
"""
IMAGE_SQL = "SELECT image, content_type, sha256 FROM delivery_proof_images WHERE delivery_id = $1 AND kind = $2"
# The order's latest delivery, if the caller owns the order ($2 customer / $3 vendor).
PARTY_DELIVERY_SQL = """
SELECT o.id AS order_id, d.id AS delivery_id
FROM orders o LEFT JOIN LATERAL (
    SELECT id FROM deliveries WHERE order_id = o.id ORDER BY created_at DESC, id LIMIT 1) d ON true
WHERE o.id = $1 AND ($2::uuid IS NULL OR o.customer_id = $2) AND ($3::uuid IS NULL OR o.vendor_id = $3)
"""
_TERMINAL = frozenset(s.value for s in TERMINAL_STATES)


# -- the tenant's requirements ----------------------------------------------------------------------

def _requirements_view(row: asyncpg.Record | None) -> dict[str, Any]:
    if row is None:
        return {**ProofRequirements().as_dict(), "updated_at": None, "updated_by": None}
    return {"pin": row["require_pin"], "photo": row["require_photo"], "signature": row["require_signature"],
            "pin_digits": row["pin_digits"], "updated_at": row["updated_at"].isoformat(),
            "updated_by": row["updated_by"]}


async def get_requirements(db: TenantDatabase, tenant_id: str) -> dict[str, Any]:
    """The tenant's requirements (all false until an admin sets them)."""
    async with db.tenant_transaction(tenant_id, readonly=True) as tx:
        return _requirements_view(await tx.fetchrow(SETTINGS_SQL))


async def set_requirements(db: TenantDatabase, tenant_id: str, wanted: ProofRequirements, *,
                           actor: str) -> dict[str, Any]:
    """Replace the tenant's requirements; they apply to deliveries created from now on."""
    async with db.tenant_transaction(tenant_id) as tx:
        row = await tx.fetchrow(SET_SETTINGS_SQL, wanted.pin, wanted.photo, wanted.signature,
                                wanted.pin_digits, new_pin_key(), actor)
    return _requirements_view(row)


# -- at creation and at delivery (inside store's transactions) -----------------------------------------

async def open_proofs(tx: asyncpg.Connection, delivery_id: uuid.UUID) -> None:
    """Give a new delivery its proofs row (and PIN nonce) if the tenant requires any proof;
    on the transaction that inserts the delivery."""
    await tx.execute(OPEN_SQL, delivery_id, new_pin_nonce())


def _images(row: asyncpg.Record) -> dict[str, dict[str, Any]]:
    images = row["images"]
    return json.loads(images) if isinstance(images, str) else dict(images or {})


def _settings(row: asyncpg.Record) -> ProofRequirements | None:
    if row["require_pin"] is None:
        return None
    return ProofRequirements(row["require_pin"], row["require_photo"], row["require_signature"],
                             row["tenant_pin_digits"])


def _required(row: asyncpg.Record) -> tuple[str, ...]:
    return effective_required(row["required"] or (), _settings(row))


async def evidence_at_delivery(tx: asyncpg.Connection, delivery_id: uuid.UUID) -> dict[str, Any]:
    """What proves the delivery, for its ``proof_of_delivery`` (PIN verified when, each image's
    type, digest and size); ``ProofRequired`` when a required proof is missing. On the
    transaction that holds the delivery row's lock (``store.transition``)."""
    row = await tx.fetchrow(VIEW_SQL, delivery_id)
    images = _images(row)
    required = _required(row)
    missing = missing_proofs(required, pin_verified=row["pin_verified_at"] is not None, images=images)
    if missing:
        raise ProofRequired(missing)
    evidence: dict[str, Any] = {kind: images[kind] for kind in IMAGE_KINDS if kind in images}
    if row["pin_verified_at"] is not None:
        evidence["pin"] = {"verified_at": row["pin_verified_at"].isoformat()}
    if evidence or required:
        evidence["required"] = list(required)
    return evidence


# -- the driver --------------------------------------------------------------------------------------

def _delivery_uuid(delivery_id: str) -> uuid.UUID:
    try:
        return parse_uuid(delivery_id, "delivery_id")
    except InvalidId:
        raise Refusal(404, UNKNOWN_DELIVERY, "you have no such delivery", "delivery_id") from None


def _drivers_at_the_door(row: asyncpg.Record | None, driver_id: str, delivery_id: uuid.UUID) -> None:
    """The delivery is this driver's and picked up; 404 / 409 otherwise."""
    if row is None or str(row["driver_id"]) != driver_id:
        raise Refusal(404, UNKNOWN_DELIVERY, f"you have no delivery {delivery_id}", "delivery_id")
    status = row["status"]
    if status in _TERMINAL:
        raise Refusal(409, ILLEGAL_TRANSITION, f"the delivery is {status}: its proof can no longer change",
                      "delivery_id")
    if status != DeliveryState.PICKED_UP.value:
        raise Refusal(409, NOT_READY, f"proof is given at the door: the delivery is {status}, not picked_up",
                      "delivery_id")


async def driver_at_the_door(db: TenantDatabase, tenant_id: str, driver_id: str, delivery_id: str) -> None:
    """The refusals ``store_image`` would give, read without a lock: the upload route asks
    first, so a request that cannot succeed costs no image decoding (``store_image`` checks
    again under the lock)."""
    did = _delivery_uuid(delivery_id)
    async with db.tenant_transaction(tenant_id, readonly=True) as tx:
        _drivers_at_the_door(await tx.fetchrow(DELIVERY_SQL, did), driver_id, did)


async def check_pin(db: TenantDatabase, tenant_id: str, driver_id: str, delivery_id: str,
                    entered: Any) -> dict[str, Any]:
    """The driver enters the customer's PIN. Right: verified (once; later entries change
    nothing). Wrong: the attempt is counted and committed, then 422 ``wrong_pin`` with the
    attempts left, or 409 ``pin_locked`` when this entry used the last one. Malformed, not
    the driver's, not at the door, no PIN: refused with nothing written."""
    did = _delivery_uuid(delivery_id)
    pin = parse_pin(entered)
    async with db.tenant_transaction(tenant_id) as tx:
        _drivers_at_the_door(await tx.fetchrow(LOCK_DELIVERY_SQL, did), driver_id, did)
        row = await tx.fetchrow(LOCK_PROOFS_SQL, did)
        if row is None or row["pin_nonce"] is None or row["pin_key"] is None:
            raise Refusal(409, NOT_CONFIGURED, "this delivery has no PIN", "pin")
        parse_pin(pin, row["pin_digits"])
        verdict = judge_pin(PinState(row["pin_attempts"], row["pin_locked_at"] is not None,
                                     row["pin_verified_at"] is not None),
                            pin, derive_pin(row["pin_key"], did, row["pin_nonce"], row["pin_digits"]))
        verified_at = row["pin_verified_at"]
        if verdict.changed:
            verified_at = await tx.fetchval(UPDATE_PIN_SQL, did, verdict.state.attempts, verdict.state.locked,
                                            verdict.state.verified)
    if verdict.outcome == "wrong":
        raise Refusal(422, WRONG_PIN, f"wrong PIN; {verdict.attempts_left} of {MAX_PIN_ATTEMPTS} attempts left",
                      "pin")
    if verdict.outcome == "locked":
        raise Refusal(409, PIN_LOCKED, f"the PIN is locked after {MAX_PIN_ATTEMPTS} wrong entries: the vendor can "
                      "reset it (the customer then sees a new one), or report the delivery failed", "pin")
    return {"delivery_id": str(did), "pin": "verified", "verified_at": verified_at.isoformat()}


async def store_image(db: TenantDatabase, tenant_id: str, driver_id: str, delivery_id: str, kind: str,
                      image: CleanImage) -> dict[str, Any]:
    """Keep the driver's (already cleaned) photo or signature, replacing an earlier one."""
    did = _delivery_uuid(delivery_id)
    async with db.tenant_transaction(tenant_id) as tx:
        _drivers_at_the_door(await tx.fetchrow(LOCK_DELIVERY_SQL, did), driver_id, did)
        uploaded_at = await tx.fetchval(UPSERT_IMAGE_SQL, did, kind, image.data, image.content_type, image.sha256,
                                        image.size_bytes, image.width, image.height, uuid.UUID(driver_id))
    return {"delivery_id": str(did), "kind": kind, "content_type": image.content_type, "sha256": image.sha256,
            "size_bytes": image.size_bytes, "width": image.width, "height": image.height,
            "uploaded_at": uploaded_at.isoformat()}


def _view(row: asyncpg.Record, *, pin_for_customer: bool) -> dict[str, Any]:
    images = _images(row)
    pin = None
    if row["pin_nonce"] is not None:
        pin = {"digits": row["pin_digits"],
               "verified_at": None if row["pin_verified_at"] is None else row["pin_verified_at"].isoformat(),
               "locked": row["pin_locked_at"] is not None,
               "attempts_left": max(0, MAX_PIN_ATTEMPTS - row["pin_attempts"])}
    view = {"delivery_id": str(row["delivery_id"]), "status": row["status"], "required": list(_required(row)),
            "pin": pin, "photo": images.get("photo"), "signature": images.get("signature")}
    if pin_for_customer:
        view["delivery_pin"] = shown_pin(row["delivery_id"], row["status"], row["pin_key"], row["pin_nonce"],
                                         row["pin_digits"], row["pin_verified_at"])
    return view


async def driver_view(db: TenantDatabase, tenant_id: str, driver_id: str, delivery_id: str) -> dict[str, Any]:
    """What the driver's app shows at the door: which proofs are required and which are given
    (never the PIN)."""
    did = _delivery_uuid(delivery_id)
    async with db.tenant_transaction(tenant_id, readonly=True) as tx:
        row = await tx.fetchrow(VIEW_SQL, did)
    if row is None or str(row["driver_id"]) != driver_id:
        raise Refusal(404, UNKNOWN_DELIVERY, f"you have no delivery {did}", "delivery_id")
    return _view(row, pin_for_customer=False)


# -- the order's customer and vendor ---------------------------------------------------------------

async def _party_delivery(tx: asyncpg.Connection, order_id: str, customer_id: str | None,
                          vendor_id: str | None) -> uuid.UUID:
    if customer_id is None and vendor_id is None:
        raise ValueError("a party read needs the customer or the vendor")
    row = await tx.fetchrow(PARTY_DELIVERY_SQL, uuid.UUID(order_id), customer_id and uuid.UUID(customer_id),
                            vendor_id and uuid.UUID(vendor_id))
    if row is None:
        raise NotFound("no such order", "order_id")
    if row["delivery_id"] is None:
        raise NotFound("the order has no delivery yet", "order_id")
    return row["delivery_id"]


async def party_view(db: TenantDatabase, tenant_id: str, order_id: str, *, customer_id: str | None = None,
                     vendor_id: str | None = None) -> dict[str, Any]:
    """The proofs of the order's latest delivery, for its customer (with ``delivery_pin``
    while the PIN is still to be entered) or its vendor (without)."""
    async with db.tenant_transaction(tenant_id, readonly=True) as tx:
        row = await tx.fetchrow(VIEW_SQL, await _party_delivery(tx, order_id, customer_id, vendor_id))
    return {"order_id": order_id, **_view(row, pin_for_customer=customer_id is not None)}


async def party_image(db: TenantDatabase, tenant_id: str, order_id: str, kind: str, *,
                      customer_id: str | None = None, vendor_id: str | None = None) -> tuple[bytes, str, str]:
    """(bytes, content type, sha256) of the order's delivery's photo or signature; 404 if none."""
    async with db.tenant_transaction(tenant_id, readonly=True) as tx:
        row = await tx.fetchrow(IMAGE_SQL, await _party_delivery(tx, order_id, customer_id, vendor_id), kind)
    if row is None:
        raise NotFound(f"the delivery has no {kind}", kind)
    return bytes(row["image"]), row["content_type"], row["sha256"].strip()


async def reset_pin(db: TenantDatabase, tenant_id: str, order_id: str, *, vendor_id: str) -> dict[str, Any]:
    """The vendor gives the order's delivery a new PIN (the customer sees it on their next
    look) and a new count of attempts. 409 once the PIN was verified or the delivery ended,
    or when it has no PIN."""
    async with db.tenant_transaction(tenant_id) as tx:
        did = await _party_delivery(tx, order_id, None, vendor_id)
        delivery = await tx.fetchrow(LOCK_DELIVERY_SQL, did)
        if delivery["status"] in _TERMINAL:
            raise Refusal(409, ILLEGAL_TRANSITION, f"the delivery is {delivery['status']}: its PIN can no longer "
                          "change", "order_id")
        row = await tx.fetchrow(LOCK_PROOFS_SQL, did)
        if row is None or row["pin_nonce"] is None:
            raise Refusal(409, NOT_CONFIGURED, "this delivery has no PIN", "pin")
        if row["pin_verified_at"] is not None:
            raise Refusal(409, ILLEGAL_TRANSITION, "the PIN was already entered correctly", "pin")
        reset = await tx.fetchrow(RESET_PIN_SQL, did, new_pin_nonce())
    return {"order_id": order_id, "delivery_id": str(did),
            "pin": {"digits": reset["pin_digits"], "locked": False, "attempts_left": MAX_PIN_ATTEMPTS},
            "resets": reset["pin_resets"]}
