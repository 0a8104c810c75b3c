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
| ``delivery:active:{delivery}`` | JSON, TTL 1 day | an assigned delivery the tracker follows |
| ``offers:deadlines:{app}`` | sorted set | offer deadlines, popped by one sweeper |
| ``deliveries:unassigned:{tenant}`` / ``deliveries:unassigned:tenants`` | set | retry queue |
| ``driver:socket:{driver}`` | string | the engine process holding the driver's socket |
| ``eta:calibration`` | hash | the learned ETA calibration all engines share |
| ``dispatch:offsets:{group}:{topic}`` / ``dispatch:event:{group}:{id}`` | hash / string | the dispatcher's read position and event claims |
| ``dispatch:parked:{group}`` | list, capped | delivery events that kept failing, for an operator |
| ``dispatch:redis-epoch:{app}`` | string | set after a rebuild from Postgres; missing = Redis lost its data |
"""

from __future__ import annotations

ACTIVE_PREFIX = "delivery:active:"
CALIBRATION_KEY = "eta:calibration"
UNASSIGNED_TENANTS_KEY = "deliveries:unassigned:tenants"


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
