"""Active deliveries in Redis: what the location stream needs to track an assigned driver.

The dispatcher writes one hash per delivery when a driver accepts it and updates its status on
every later transition; the tracker (``dispatch.tracking``, run by the location worker) reads
the hashes of the drivers whose pings it just landed, to detect geofence arrivals and
re-estimate ETAs. Postgres stays the record; this is the hot copy the stream reads without a
database round trip, rebuilt by ``write`` whenever the dispatcher touches the delivery.

Keys
----

``delivery:active:{delivery_id}`` HASH, TTL one day (refreshed on every write)
    ``tenant``, ``driver``, ``vehicle``, ``status`` (assigned | at_pickup | picked_up),
    ``pickup_lat``, ``pickup_lng``, ``dropoff_lat``, ``dropoff_lng``, ``assigned_ms``, and,
    set once by the tracker, ``arrived_pickup_ms`` / ``arrived_dropoff_ms``.
``driver:deliveries:{driver_id}`` SET (owned by ``dispatch.claims``)
    The driver's active delivery ids: the way from a ping to its deliveries.

Deleted when the delivery ends (delivered, failed, cancelled).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from redis.asyncio import Redis

from dispatch.claims import deliveries_key
from streams.location_store import as_text

__all__ = ["ACTIVE_TTL_S", "TRACKED_STATUSES", "ActiveDelivery", "active_key", "delete",
           "for_drivers", "mark_once", "read", "set_status", "write"]

ACTIVE_TTL_S = 86_400
TRACKED_STATUSES = frozenset({"assigned", "at_pickup", "picked_up"})


def active_key(delivery_id: str) -> str:
    return f"delivery:active:{delivery_id}"


@dataclass(frozen=True, slots=True)
class ActiveDelivery:
    delivery_id: str
    tenant_id: str
    driver_id: str
    vehicle_type: str
    status: str
    pickup: tuple[float, float]    # (lat, lng)
    dropoff: tuple[float, float]   # (lat, lng)
    assigned_ms: int = 0
    arrived_pickup_ms: int | None = None
    arrived_dropoff_ms: int | None = None

    @classmethod
    def from_hash(cls, delivery_id: str, raw: dict) -> ActiveDelivery | None:
        fields = {as_text(k): as_text(v) for k, v in raw.items()}
        try:
            return cls(
                delivery_id, fields["tenant"], fields["driver"], fields.get("vehicle", "car"),
                fields["status"],
                (float(fields["pickup_lat"]), float(fields["pickup_lng"])),
                (float(fields["dropoff_lat"]), float(fields["dropoff_lng"])),
                int(fields.get("assigned_ms", "0")),
                int(fields["arrived_pickup_ms"]) if "arrived_pickup_ms" in fields else None,
                int(fields["arrived_dropoff_ms"]) if "arrived_dropoff_ms" in fields else None,
            )
        except (KeyError, ValueError):
            return None  # a half-written or foreign hash: not tracked, never a crash


async def write(redis: Redis, active: ActiveDelivery) -> None:
    key = active_key(active.delivery_id)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping={
            "tenant": active.tenant_id, "driver": active.driver_id, "vehicle": active.vehicle_type,
            "status": active.status,
            "pickup_lat": repr(active.pickup[0]), "pickup_lng": repr(active.pickup[1]),
            "dropoff_lat": repr(active.dropoff[0]), "dropoff_lng": repr(active.dropoff[1]),
            "assigned_ms": str(active.assigned_ms),
        })
        pipe.expire(key, ACTIVE_TTL_S)
        await pipe.execute()


# KEYS: the active hash. ARGV: status. Never creates a hash the dispatcher did not write.
_SET_STATUS_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'status', ARGV[1]) return 1 end
return 0
"""


async def set_status(redis: Redis, delivery_id: str, status: str) -> None:
    """Record a new status of a tracked delivery; a status that is not tracked removes it."""
    if status not in TRACKED_STATUSES:
        await redis.delete(active_key(delivery_id))
    else:
        await redis.eval(_SET_STATUS_LUA, 1, active_key(delivery_id), status)


async def delete(redis: Redis, delivery_id: str) -> None:
    await redis.delete(active_key(delivery_id))


async def read(redis: Redis, delivery_id: str) -> ActiveDelivery | None:
    raw = await redis.hgetall(active_key(delivery_id))
    return ActiveDelivery.from_hash(delivery_id, raw) if raw else None


async def mark_once(redis: Redis, delivery_id: str, field: str, at_ms: int) -> bool:
    """Set ``field`` (``arrived_pickup_ms`` / ``arrived_dropoff_ms``) if not yet set: True for
    the one caller that set it, so an arrival is acted on once however many pings repeat it."""
    return bool(await redis.hsetnx(active_key(delivery_id), field, str(at_ms)))


async def for_drivers(redis: Redis, driver_ids: Iterable[str]) -> list[ActiveDelivery]:
    """The active deliveries of these drivers: two pipelined round trips for the whole batch."""
    drivers = list(dict.fromkeys(driver_ids))
    if not drivers:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for driver in drivers:
            pipe.smembers(deliveries_key(driver))
        memberships = await pipe.execute()
    delivery_ids = [as_text(d) for members in memberships for d in members]
    if not delivery_ids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for delivery in delivery_ids:
            pipe.hgetall(active_key(delivery))
        hashes = await pipe.execute()
    out = []
    for delivery, raw in zip(delivery_ids, hashes, strict=True):
        if raw and (active := ActiveDelivery.from_hash(delivery, raw)) is not None:
            if active.status in TRACKED_STATUSES:
                out.append(active)
    return out
