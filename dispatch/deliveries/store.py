"""The Postgres shell of the delivery state machine: one transition, one transaction.

``transition`` locks the ``deliveries`` row, runs the pure ``dispatch.state.apply`` on it and
writes everything the transition implies in the same tenant transaction: the delivery row,
the order's status and its ``order_status_history`` row, the driver's and vendor's counters
on delivery, and one ``delivery_events_outbox`` row. Either all of it commits or none of it
does; an illegal event or a missing fact raises before any write.

Events are not sent to Kafka here. A relay publishes unpublished outbox rows to the
``delivery-events`` topic after commit, in ``seq`` order, and sets ``published_at``, so an
event is published if and only if its transition committed (at least once: consumers
deduplicate on the outbox row's id).

Lock order: the delivery row, then its driver's row, then its order row (and the delivery's
``delivery_proofs`` row after the delivery's). Code that locks more than one of them must do
the same.

Proof of delivery: a new delivery gets its proofs row (and PIN) in the transaction that
inserts it, when the tenant requires any proof (``proof_store.open_proofs``); ``deliver``
reads the proofs under the delivery row's lock and refuses (``ProofRequired``, 409
``proof_required``, nothing written) while a required one is missing, else stores them under
``proof_of_delivery.evidence`` beside what the driver reported.

The database is the guard of a driver's capacity. Redis holds the claims that make matching
fast (``dispatch.matching.claims``), but Redis can lose them (a restart, a failover), and a
driver whose claims are gone looks free. So the two transitions that put a driver on a
delivery, ``offer`` and ``accept``, lock the driver's row (``SELECT ... FOR UPDATE``) and count
its active deliveries (assigned, at_pickup, picked_up) in the same transaction; at
``capacity`` or beyond, ``DriverAtCapacity`` is raised and nothing is written. The lock
serialises two accepts of one driver on two deliveries (under READ COMMITTED the second
counts after the first commits), so no interleaving gives a driver more than ``capacity``.
The cost is one indexed count per offer and accept.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import asyncpg

from dispatch.commerce.orders.records import (
    INSERT_ORDER_HISTORY_SQL,
    as_user_id,
    on_delivery_changed_order,
)
from dispatch.core.cache import Cache
from dispatch.core.cache_keys import inventory_tag
from dispatch.core.errors import INVALID_REQUEST, Refusal
from dispatch.core.ids import InvalidId, canonical_uuid, parse_uuid
from dispatch.core.metrics import DELIVERY_TRANSITIONS
from dispatch.deliveries.proof_store import evidence_at_delivery, open_proofs
from dispatch.deliveries.state import (
    DeliveryEvent,
    DeliverySnapshot,
    DeliveryState,
    InvalidFact,
    Transition,
    apply,
    order_status_for,
)
from schema.db import TenantDatabase
from schema.errors import WakalaError

__all__ = [
    "ACTIVE_STATES",
    "DEFAULT_CAPACITY",
    "DriverAtCapacity",
    "InvalidDeliveryInput",
    "UnknownDelivery",
    "UnknownDriver",
    "UnknownOrder",
    "CREATED_EVENT",
    "OUTBOX_CHANNEL",
    "create_delivery",
    "insert_delivery",
    "record_event",
    "transition",
    "transition_together",
]


CREATED_EVENT = "created"


class UnknownDelivery(WakalaError):
    """No delivery with this id is visible to the tenant (absent, or another tenant's)."""


class UnknownDriver(WakalaError):
    """An event names a driver the tenant does not have."""


class DriverAtCapacity(WakalaError):
    """The driver already carries ``capacity`` active deliveries (counted in Postgres under
    the driver row's lock): the offer or accept is refused, nothing written. The offer engine
    moves on to the next driver; ``active`` (delivery ids) lets it repair Redis's claims."""

    def __init__(self, driver_id: str, active: list[str], capacity: int) -> None:
        self.driver_id, self.active, self.capacity = driver_id, active, capacity
        super().__init__(f"driver {driver_id} already carries {len(active)} active deliveries "
                         f"(capacity {capacity})")


class UnknownOrder(WakalaError):
    """A delivery was requested for an order the tenant does not have."""


class InvalidDeliveryInput(Refusal):
    """An id is not a UUID, or a coordinate is out of range; nothing was written."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(400, INVALID_REQUEST, message, field)


DEFAULT_CAPACITY = 1
ACTIVE_STATES = ("assigned", "at_pickup", "picked_up")
LOCK_DRIVER_SQL = "SELECT id FROM drivers WHERE id = $1 FOR UPDATE"
# The driver's other active deliveries; under the driver row's lock taken just before.
ACTIVE_OF_DRIVER_SQL = """
SELECT id::text FROM deliveries
WHERE driver_id = $1 AND status IN ('assigned', 'at_pickup', 'picked_up') AND id <> $2
ORDER BY assigned_at NULLS LAST, id
"""
# Events that put a driver on a delivery: the capacity guard runs for these.
_TAKES_DRIVER = frozenset({DeliveryEvent.OFFER, DeliveryEvent.ACCEPT})
SNAPSHOT_SQL = """
SELECT order_id, status, driver_id, offer_attempts, assigned_at, picked_up_at, delivered_at,
       failure_reason, estimated_duration_s, actual_duration_s, distance_meters, proof_of_delivery
FROM deliveries
WHERE id = $1
FOR UPDATE
"""
# Minutes are the data design document's columns, kept in step with the seconds (rounded) for its readers.
# cancelled_at/failed_at are set once, by the event that enters that (terminal) state.
UPDATE_DELIVERY_SQL = """
UPDATE deliveries SET
    status = $2,
    driver_id = $3,
    offer_attempts = $4,
    assigned_at = $5,
    picked_up_at = $6,
    delivered_at = $7,
    failure_reason = $8,
    estimated_duration_s = $9::int,
    estimated_duration_minutes = round($9::int / 60.0)::int,
    actual_duration_s = $10::int,
    actual_duration_minutes = round($10::int / 60.0)::int,
    distance_meters = $11,
    proof_of_delivery = $12::jsonb,
    cancelled_at = COALESCE($13, cancelled_at),
    failed_at = COALESCE($14, failed_at),
    updated_at = now()
WHERE id = $1
"""
ORDER_FOR_UPDATE_SQL = "SELECT status, vendor_id FROM orders WHERE id = $1 FOR UPDATE"
UPDATE_ORDER_SQL = """
UPDATE orders
SET status = $2, actual_delivery_time = COALESCE($3, actual_delivery_time), updated_at = now()
WHERE id = $1
"""
# The driver earns the order's delivery fee (the pay offered, see dispatch.dispatcher).
COUNT_DRIVER_DELIVERY_SQL = """
UPDATE drivers SET total_deliveries = COALESCE(total_deliveries, 0) + 1,
                   total_earnings = COALESCE(total_earnings, 0)
                                    + COALESCE((SELECT delivery_fee FROM orders WHERE id = $2), 0),
                   updated_at = now()
WHERE id = $1
"""
COUNT_VENDOR_ORDER_SQL = """
UPDATE vendors SET total_orders = COALESCE(total_orders, 0) + 1, updated_at = now()
WHERE id = $1
"""
INSERT_OUTBOX_SQL = """
INSERT INTO delivery_events_outbox (delivery_id, event_type, payload) VALUES ($1, $2, $3::jsonb)
"""
# Wakes the outbox relays (dispatch.outbox) when the transaction commits; delivered only on
# commit, so a relay never looks for rows that were rolled back. The payload is the tenant.
NOTIFY_OUTBOX_SQL = "SELECT pg_notify('wakala_outbox', $1::text)"
OUTBOX_CHANNEL = "wakala_outbox"
# An event that is not a state change (a geofence arrival at the dropoff): recorded only while
# the delivery is in one of the given states, so a late or replayed fact cannot be attached to
# a delivery that has moved on.
INSERT_NOTE_SQL = """
INSERT INTO delivery_events_outbox (delivery_id, event_type, payload)
SELECT d.id, $2::text, jsonb_build_object('delivery_id', d.id::text, 'order_id', d.order_id::text,
                                    'event', $2::text, 'state', d.status,
                                    'driver_id', d.driver_id::text) || $3::jsonb
FROM deliveries d WHERE d.id = $1 AND d.status = ANY($4::text[])
RETURNING id
"""
INSERT_DELIVERY_SQL = """
INSERT INTO deliveries (order_id, status, pickup_location, pickup_address,
                        dropoff_location, dropoff_address, distance_meters,
                        estimated_duration_s, estimated_duration_minutes)
VALUES ($1, 'pending',
        ST_SetSRID(ST_MakePoint($3, $2), 4326)::geography, $4::jsonb,
        ST_SetSRID(ST_MakePoint($6, $5), 4326)::geography, $7::jsonb,
        $8, $9::int, round($9::int / 60.0)::int)
RETURNING id, order_id
"""


def _uuid(value: object, label: str) -> uuid.UUID:
    try:
        return parse_uuid(value if isinstance(value, uuid.UUID) else str(value), label)
    except InvalidId as exc:
        raise InvalidDeliveryInput(exc.message, label) from None


def _snapshot(row: asyncpg.Record) -> DeliverySnapshot:
    proof = row["proof_of_delivery"]
    return DeliverySnapshot(
        state=DeliveryState(row["status"]),
        driver_id=None if row["driver_id"] is None else str(row["driver_id"]),
        offer_attempts=row["offer_attempts"],
        assigned_at=row["assigned_at"],
        picked_up_at=row["picked_up_at"],
        delivered_at=row["delivered_at"],
        failure_reason=row["failure_reason"],
        estimated_duration_s=row["estimated_duration_s"],
        actual_duration_s=row["actual_duration_s"],
        distance_m=row["distance_meters"],
        proof_of_delivery=None if proof is None else json.loads(proof),
    )


def _outbox_payload(
    delivery_id: uuid.UUID, order_id: uuid.UUID, new: DeliverySnapshot, step: Transition
) -> str:
    return json.dumps(
        {
            "delivery_id": str(delivery_id),
            "order_id": str(order_id),
            "event": step.event.value,
            "from_state": step.from_state.value,
            "to_state": step.to_state.value,
            "driver_id": new.driver_id,
            "at": step.at.isoformat(),
            "actor": step.actor,
            "reason": step.reason,
        }
    )


async def transition(
    db: TenantDatabase,
    tenant_id: object,
    delivery_id: uuid.UUID | str,
    event: DeliveryEvent | str,
    *,
    actor: str | None = None,
    reason: str | None = None,
    at: datetime | None = None,
    driver_must_be: str | None = None,
    cache: Cache | None = None,
    capacity: int = DEFAULT_CAPACITY,
    **facts: Any,
) -> DeliverySnapshot:
    """Apply ``event`` to a delivery and record everything it implies; return the new snapshot.

    Facts are those of ``dispatch.state.apply`` (``driver_id`` for ``offer``, route facts for
    ``offer``/``accept``, ``proof_of_delivery`` for ``deliver``). ``at`` defaults to now (UTC).

    Raises, with nothing written: InvalidDeliveryInput (``delivery_id`` not a UUID),
    InvalidFact (a fact missing or malformed, ``driver_id`` not a UUID), UnknownDelivery (no
    such delivery for this tenant), IllegalTransition (``event`` not allowed from the
    delivery's state, e.g. when a concurrent transition got there first), UnknownDriver.
    ``driver_must_be`` (a driver acting on their own job): UnknownDelivery unless the
    delivery's driver is this one, checked under the row lock.

    When the order's status changes, ``dispatch.order_records.on_delivery_changed_order``
    runs in the same transaction (stock sold, released or written off; the order's event).
    ``cache``: the order's and its products' cached views are invalidated after commit.
    ``capacity``: active deliveries a driver may carry; ``offer`` and ``accept`` raise
    DriverAtCapacity (nothing written) for a driver who already carries that many.
    """
    delivery_uuid = _uuid(delivery_id, "delivery_id")
    when = at if at is not None else datetime.now(UTC)
    async with db.tenant_transaction(tenant_id) as tx:
        new, step, order_id, order_changed, stock_changed = await _transition_in(
            tx, tenant_id, delivery_uuid, event, actor=actor, reason=reason, when=when,
            driver_must_be=driver_must_be, capacity=capacity, facts=facts)
    DELIVERY_TRANSITIONS.labels(step.event.value, step.to_state.value).inc()
    if cache is not None and order_changed:
        await cache.invalidate(str(tenant_id), [f"order:{order_id}",
                                                *(inventory_tag(p) for p in stock_changed)])
    return new


SET_BUNDLE_SQL = "UPDATE deliveries SET bundle_id = $2, bundle_seq = $3, bundle_size = $4 WHERE id = $1"


async def transition_together(
    db: TenantDatabase, tenant_id: object, steps: list[tuple[str, DeliveryEvent, dict[str, Any]]], *,
    actor: str | None = None, reason: str | None = None, bundle_id: uuid.UUID | None = None,
    cache: Cache | None = None, capacity: int = DEFAULT_CAPACITY,
) -> list[DeliverySnapshot]:
    """Several transitions (delivery id, event, facts) in one tenant transaction, in order:
    all commit or none does (a bundle's deliveries are offered, accepted and let go together).
    With ``bundle_id`` each delivery also records it, its 1-based place in ``steps`` (the
    drop-off order) and the bundle's size. Raises what ``transition`` raises, nothing written.
    The capacity guard counts the deliveries accepted earlier in the same transaction."""
    when = datetime.now(UTC)
    done = []
    async with db.tenant_transaction(tenant_id) as tx:
        for seq, (delivery_id, event, facts) in enumerate(steps, start=1):
            delivery_uuid = _uuid(delivery_id, "delivery_id")
            done.append(await _transition_in(tx, tenant_id, delivery_uuid, event, actor=actor, reason=reason,
                                             when=when, driver_must_be=None, capacity=capacity,
                                             facts=dict(facts)))
            if bundle_id is not None:
                await tx.execute(SET_BUNDLE_SQL, delivery_uuid, bundle_id, seq, len(steps))
    changed: list[str] = []
    for _new, step, order_id, order_changed, stock_changed in done:
        DELIVERY_TRANSITIONS.labels(step.event.value, step.to_state.value).inc()
        if order_changed:
            changed += [f"order:{order_id}", *(inventory_tag(p) for p in stock_changed)]
    if cache is not None and changed:
        await cache.invalidate(str(tenant_id), changed)
    return [d[0] for d in done]


async def _transition_in(tx: asyncpg.Connection, tenant_id: object, delivery_uuid: uuid.UUID,
                         event: DeliveryEvent | str, *, actor: str | None, reason: str | None,
                         when: datetime, driver_must_be: str | None, capacity: int,
                         facts: dict[str, Any]) -> tuple[DeliverySnapshot, Transition, uuid.UUID, bool, list]:
    """``transition``'s work on the caller's transaction: (snapshot, step, order id, whether
    the order's status changed, the products whose stock changed)."""
    if isinstance(facts.get("driver_id"), str) and facts["driver_id"]:
        try:
            facts["driver_id"] = canonical_uuid(facts["driver_id"], "driver_id")
        except InvalidId:
            raise InvalidFact(f"driver_id must be a UUID, got {facts['driver_id']!r}") from None
    order_changed, stock_changed = False, []
    row = await tx.fetchrow(SNAPSHOT_SQL, delivery_uuid)
    if row is None:
        raise UnknownDelivery(f"no delivery {delivery_uuid} in tenant {tenant_id}")
    if driver_must_be is not None and str(row["driver_id"]) != driver_must_be:
        # the same answer as an absent delivery: a driver learns nothing of others' jobs
        raise UnknownDelivery(f"no delivery {delivery_uuid} of driver {driver_must_be}")
    order_id: uuid.UUID = row["order_id"]
    new, step = apply(_snapshot(row), event, at=when, actor=actor, reason=reason, **facts)
    if step.event in _TAKES_DRIVER and new.driver_id is not None:
        await _check_capacity(tx, new.driver_id, delivery_uuid, capacity)
    if step.event is DeliveryEvent.DELIVER:
        new = replace(new, proof_of_delivery=await _with_evidence(tx, delivery_uuid, new.proof_of_delivery))

    entered = step.to_state
    try:
        await tx.execute(
            UPDATE_DELIVERY_SQL, delivery_uuid, entered.value, new.driver_id, new.offer_attempts,
            new.assigned_at, new.picked_up_at, new.delivered_at, new.failure_reason,
            new.estimated_duration_s, new.actual_duration_s, new.distance_m,
            None if new.proof_of_delivery is None else json.dumps(new.proof_of_delivery),
            when if entered is DeliveryState.CANCELLED else None,
            when if entered is DeliveryState.FAILED else None)
    except asyncpg.ForeignKeyViolationError:
        raise UnknownDriver(f"no driver {new.driver_id} in tenant {tenant_id}") from None

    if entered is DeliveryState.DELIVERED and new.driver_id is not None:
        # delivered is terminal and the row is locked: this runs once per delivery
        await tx.execute(COUNT_DRIVER_DELIVERY_SQL, new.driver_id, order_id)

    order_status = order_status_for(entered)
    if order_status is not None:
        order = await tx.fetchrow(ORDER_FOR_UPDATE_SQL, order_id)
        if order["status"] != order_status:
            delivered = order_status == "delivered"
            await tx.execute(UPDATE_ORDER_SQL, order_id, order_status, when if delivered else None)
            await tx.execute(
                INSERT_ORDER_HISTORY_SQL, order_id, order["status"], order_status, step.reason,
                as_user_id(actor), actor, json.dumps({"delivery_id": str(delivery_uuid), "event": step.event.value}))
            if delivered:
                # once per order, even if an earlier delivery of it was also completed
                await tx.execute(COUNT_VENDOR_ORDER_SQL, order["vendor_id"])
            # the order side: its stock sold or given back, its order-events row
            stock_changed = await on_delivery_changed_order(
                tx, tenant_id, order_id, from_status=order["status"], to_status=order_status,
                delivery_id=delivery_uuid, picked_up=new.picked_up_at is not None, at=when,
                actor=actor, reason=step.reason)
            order_changed = True

    await tx.execute(INSERT_OUTBOX_SQL, delivery_uuid, step.event.value,
                     _outbox_payload(delivery_uuid, order_id, new, step))
    await tx.execute(NOTIFY_OUTBOX_SQL, str(tenant_id))
    return new, step, order_id, order_changed, stock_changed


async def _with_evidence(tx: asyncpg.Connection, delivery_uuid: uuid.UUID,
                         reported: dict[str, Any] | None) -> dict[str, Any]:
    """The proof of delivery as stored: what the driver reported, and under ``evidence`` what
    the engine holds (PIN verified, photo, signature: ``proof_store.evidence_at_delivery``,
    which refuses with ``ProofRequired`` while a proof the tenant requires is missing). A
    reported ``evidence`` key is dropped: only the engine writes it."""
    proof = {k: v for k, v in (reported or {}).items() if k != "evidence"}
    evidence = await evidence_at_delivery(tx, delivery_uuid)
    if evidence:
        proof["evidence"] = evidence
    return proof


async def _check_capacity(tx: asyncpg.Connection, driver_id: str, delivery_uuid: uuid.UUID,
                          capacity: int) -> None:
    try:
        driver_uuid = uuid.UUID(driver_id)
    except ValueError:
        raise InvalidFact(f"driver_id must be a UUID, got {driver_id!r}") from None
    if await tx.fetchval(LOCK_DRIVER_SQL, driver_uuid) is None:
        raise UnknownDriver(f"no driver {driver_id}")
    active = [r[0] for r in await tx.fetch(ACTIVE_OF_DRIVER_SQL, driver_uuid, delivery_uuid)]
    if len(active) >= capacity:
        raise DriverAtCapacity(driver_id, active, capacity)


def _point(value: tuple[float, float], label: str) -> tuple[float, float]:
    try:
        lat, lng = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InvalidDeliveryInput(f"{label} must be (lat, lng), got {value!r}") from None
    if not (-90 <= lat <= 90 and -180 <= lng <= 180):
        raise InvalidDeliveryInput(f"{label} {value!r} is not a (lat, lng) on Earth")
    return lat, lng


async def insert_delivery(
    tx: asyncpg.Connection,
    tenant_id: object,
    order_id: uuid.UUID | str,
    pickup: tuple[float, float],
    dropoff: tuple[float, float],
    *,
    pickup_address: dict[str, Any] | None = None,
    dropoff_address: dict[str, Any] | None = None,
    distance_m: int | None = None,
    estimated_duration_s: int | None = None,
) -> uuid.UUID:
    """``create_delivery`` on a transaction the caller holds (the order marked ready writes its
    delivery and the ``created`` event in its own transaction)."""
    order_uuid = _uuid(order_id, "order_id")
    pickup_lat, pickup_lng = _point(pickup, "pickup")
    dropoff_lat, dropoff_lng = _point(dropoff, "dropoff")
    try:
        row = await tx.fetchrow(
            INSERT_DELIVERY_SQL,
            order_uuid,
            pickup_lat,
            pickup_lng,
            None if pickup_address is None else json.dumps(pickup_address),
            dropoff_lat,
            dropoff_lng,
            None if dropoff_address is None else json.dumps(dropoff_address),
            distance_m,
            estimated_duration_s,
        )
    except asyncpg.ForeignKeyViolationError:
        raise UnknownOrder(f"no order {order_uuid} in tenant {tenant_id}") from None
    # Its PIN (and the proofs it will need) exist before any driver can reach the door.
    await open_proofs(tx, row["id"])
    # The matcher learns of new deliveries from this event (dispatch.dispatcher).
    await tx.execute(INSERT_OUTBOX_SQL, row["id"], CREATED_EVENT, json.dumps({
        "delivery_id": str(row["id"]), "order_id": str(row["order_id"]), "event": CREATED_EVENT,
        "from_state": None, "to_state": DeliveryState.PENDING.value,
        "at": datetime.now(UTC).isoformat(),
    }))
    await tx.execute(NOTIFY_OUTBOX_SQL, str(tenant_id))
    return row["id"]


async def create_delivery(
    db: TenantDatabase,
    tenant_id: object,
    order_id: uuid.UUID | str,
    pickup: tuple[float, float],
    dropoff: tuple[float, float],
    *,
    pickup_address: dict[str, Any] | None = None,
    dropoff_address: dict[str, Any] | None = None,
    distance_m: int | None = None,
    estimated_duration_s: int | None = None,
) -> uuid.UUID:
    """Insert a ``pending`` delivery for an order; ``pickup``/``dropoff`` are (lat, lng)."""
    _uuid(order_id, "order_id")
    _point(pickup, "pickup")
    _point(dropoff, "dropoff")
    async with db.tenant_transaction(tenant_id) as tx:
        return await insert_delivery(
            tx, tenant_id, order_id, pickup, dropoff, pickup_address=pickup_address,
            dropoff_address=dropoff_address, distance_m=distance_m,
            estimated_duration_s=estimated_duration_s)


async def record_event(
    db: TenantDatabase,
    tenant_id: object,
    delivery_id: uuid.UUID | str,
    event_type: str,
    payload: dict[str, Any],
    *,
    while_in: tuple[DeliveryState, ...],
) -> bool:
    """Emit an event that changes no state (``arrived_dropoff``), only while the delivery is
    in one of ``while_in``. True when recorded; False (nothing written) otherwise."""
    delivery_uuid = _uuid(delivery_id, "delivery_id")
    async with db.tenant_transaction(tenant_id) as tx:
        recorded = await tx.fetchval(INSERT_NOTE_SQL, delivery_uuid, event_type, json.dumps(payload),
                                     [s.value for s in while_in])
        if recorded is not None:
            await tx.execute(NOTIFY_OUTBOX_SQL, str(tenant_id))
    return recorded is not None
