"""Redis keys of matching: offers, claims, rounds, the unassigned queue, socket routing.

One builder per key; the Lua scripts in ``claims`` and ``offers`` get these names as KEYS,
never build them. Keys the location worker shares with the engine (driver locations and
states, the availability index, tracking documents) are in ``streams/keys.py``.

| key | type | what |
| --- | --- | --- |
| ``driver:offer:{driver}`` | string, TTL offer | the delivery a driver holds an offer of |
| ``driver:deliveries:{driver}`` | set | deliveries a driver carries (capacity) |
| ``delivery:offer:{delivery}`` | string, TTL offer | the driver a delivery is offered to |
| ``delivery:driver:{delivery}`` | string | the driver a delivery is assigned to |
| ``delivery:round:{delivery}`` | hash | the offer round (attempts, job, deadline) |
| ``delivery:tried:{delivery}`` | set | drivers already offered this delivery |
| ``bundle:round:{bundle}`` / ``bundle:tried:{bundle}`` | hash / set | a bundle's offer round and tried drivers |
| ``delivery:held:{delivery}`` | string, TTL the hold | a ready delivery held for a bundle partner |
| ``delivery:active:{delivery}`` | JSON, TTL 1 day | an assigned delivery the tracker follows |
| ``offers:deadlines:{app}`` | sorted set | offer deadlines, popped by one sweeper |
| ``deliveries:unassigned:{tenant}`` / ``deliveries:unassigned:tenants`` | set | retry queue |
| ``driver:socket:{driver}`` | string | the engine process holding the driver's socket |
| ``eta:model:{app_id}`` | hash | the learned ETA model all engines of a deployment share (``geo.eta_model`` sums) |
| ``eta:leg:{delivery}`` | hash, TTL 1 day | a delivery's leg starts and arrivals, for the ETA model |
| ``dispatch:offsets:{group}:{topic}`` / ``dispatch:event:{group}:{id}`` | hash / string | the dispatcher's read position and event claims |
| ``dispatch:parked:{group}`` | list, capped | delivery events that kept failing, for an operator |
| ``dispatch:redis-epoch:{app}`` | string | set after a rebuild from Postgres; missing = Redis lost its data |
"""

from __future__ import annotations

ACTIVE_PREFIX = "delivery:active:"
CALIBRATION_KEY = "eta:model"


def calibration_key(app_id: str) -> str:
    """A deployment's learned ETA model (its engines and workers share ``app_id``)."""
    return f"{CALIBRATION_KEY}:{app_id}"
UNASSIGNED_TENANTS_KEY = "deliveries:unassigned:tenants"


def eta_leg_key(delivery_id: str) -> str:
    return f"eta:leg:{delivery_id}"


def offer_key(driver_id: str) -> str:
    return f"driver:offer:{driver_id}"


def deliveries_key(driver_id: str) -> str:
    return f"driver:deliveries:{driver_id}"


def delivery_offer_key(delivery_id: str) -> str:
    return f"delivery:offer:{delivery_id}"


def delivery_driver_key(delivery_id: str) -> str:
    return f"delivery:driver:{delivery_id}"


def round_key(delivery_id: str) -> str:
    return f"delivery:round:{delivery_id}"


def tried_key(delivery_id: str) -> str:
    return f"delivery:tried:{delivery_id}"


def bundle_round_key(bundle_id: str) -> str:
    return f"bundle:round:{bundle_id}"


def bundle_tried_key(bundle_id: str) -> str:
    return f"bundle:tried:{bundle_id}"


def held_key(delivery_id: str) -> str:
    return f"delivery:held:{delivery_id}"


def active_key(delivery_id: str) -> str:
    return f"{ACTIVE_PREFIX}{delivery_id}"


def deadlines_key(app_id: str) -> str:
    return f"offers:deadlines:{app_id}"


def unassigned_key(tenant_id: str) -> str:
    return f"deliveries:unassigned:{tenant_id}"


def socket_key(driver_id: str) -> str:
    return f"driver:socket:{driver_id}"


def dispatcher_offsets_key(group: str, topic: str) -> str:
    return f"dispatch:offsets:{group}:{topic}"


def dispatcher_event_key(group: str, event_id: object) -> str:
    return f"dispatch:event:{group}:{event_id}"


def dispatcher_parked_key(group: str) -> str:
    return f"dispatch:parked:{group}"


def redis_epoch_key(app_id: str) -> str:
    return f"dispatch:redis-epoch:{app_id}"
