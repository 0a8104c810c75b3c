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
    ``pickup_lat``, ``pickup_lng``, ``dropoff_lat``, ``dropoff_lng``, ``assigned_ms``, for a
    delivery of a bundle ``bundle``, ``stop`` and ``stops`` (its place in the drop-off order),
    and, set once by the tracker, ``arrived_pickup_ms`` / ``arrived_dropoff_ms``.
``driver:deliveries:{driver_id}`` SET (owned by ``dispatch.claims``)
    The driver's active delivery ids: the way from a ping to its deliveries.

Deleted when the delivery ends (delivered, failed, cancelled).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from redis.asyncio import Redis

from dispatch.matching.keys import ACTIVE_PREFIX, active_key, deliveries_key
from streams.replies import as_text

__all__ = [
    "ACTIVE_TTL_S",
    "TRACKED_STATUSES",
    "ActiveDelivery",
    "delete",
    "for_drivers",
    "mark_once",
    "read",
    "set_status",
    "unmark",
    "write",
]

ACTIVE_TTL_S = 86_400
TRACKED_STATUSES = frozenset({"assigned", "at_pickup", "picked_up"})


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
    bundle_id: str | None = None    # a bundle's deliveries share it; stop k of stops, from 1
    stop: int | None = None
    stops: int | None = None

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
                fields.get("bundle"),
                int(fields["stop"]) if "stop" in fields else None,
                int(fields["stops"]) if "stops" in fields else None,
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
            **({} if active.bundle_id is None else {
                "bundle": active.bundle_id, "stop": str(active.stop), "stops": str(active.stops)}),
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


# KEYS: the active hash. ARGV: field, value. HSETNX alone would create a hash (with no TTL)
# for a delivery that ended meanwhile; an ended delivery has no arrivals.
_MARK_ONCE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) end
return 0
"""


async def mark_once(redis: Redis, delivery_id: str, field: str, at_ms: int) -> bool:
    """Set ``field`` (``arrived_pickup_ms`` / ``arrived_dropoff_ms``) if not yet set: True for
    the one caller that set it, so an arrival is acted on once however many pings repeat it.
    False, and nothing written, when the delivery is no longer active."""
    return bool(await redis.eval(_MARK_ONCE_LUA, 1, active_key(delivery_id), field, str(at_ms)))


async def unmark(redis: Redis, delivery_id: str, field: str) -> None:
    """Undo ``mark_once`` when acting on the arrival failed, so a later ping tries again."""
    await redis.hdel(active_key(delivery_id), field)


# KEYS: drivers' delivery sets. ARGV[1]: the active-hash key prefix. Returns a flat list of
# delivery id, HGETALL reply, ... for every non-empty hash. pcall: a key of the wrong type is
# someone else's bug and must not stop the tracking of every other driver in the batch.
_FOR_DRIVERS_LUA = """
local out = {}
for _, key in ipairs(KEYS) do
  local members = redis.pcall('SMEMBERS', key)
  if type(members) == 'table' and members.err == nil then
    for _, id in ipairs(members) do
      local fields = redis.pcall('HGETALL', ARGV[1] .. id)
      if type(fields) == 'table' and fields.err == nil and #fields > 0 then
        out[#out + 1] = id
        out[#out + 1] = fields
      end
    end
  end
end
return out
"""
_FOR_DRIVERS_CHUNK = 1000   # drivers per script call: bounds how long one call holds Redis


async def for_drivers(redis: Redis, driver_ids: Iterable[str]) -> list[ActiveDelivery]:
    """The active deliveries of these drivers, in one round trip for the whole batch.

    A Lua script rather than a pipeline of SMEMBERS: most drivers in a batch have no
    delivery, and 1,000 pipelined commands cost ~10 ms of client time against ~1.5 ms for
    one script call over the same keys.
    """
    keys = [deliveries_key(d) for d in dict.fromkeys(driver_ids)]
    if not keys:
        return []
    script = redis.register_script(_FOR_DRIVERS_LUA)
    if len(keys) <= _FOR_DRIVERS_CHUNK:
        replies = [await script(keys=keys, args=[ACTIVE_PREFIX])]
    else:
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(0, len(keys), _FOR_DRIVERS_CHUNK):
                await script(keys=keys[i:i + _FOR_DRIVERS_CHUNK], args=[ACTIVE_PREFIX], client=pipe)
            replies = await pipe.execute()
    out: dict[str, ActiveDelivery] = {}
    for reply in replies:
        for i in range(0, len(reply), 2):
            delivery = as_text(reply[i])
            flat = reply[i + 1]
            active = ActiveDelivery.from_hash(delivery, dict(zip(flat[::2], flat[1::2], strict=True)))
            if active is not None and active.status in TRACKED_STATUSES:
                out[delivery] = active   # a delivery in two drivers' sets is one delivery
    return list(out.values())
