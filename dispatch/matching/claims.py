"""Claiming drivers atomically: open offers and active deliveries in Redis.

Under any concurrency (many matcher tasks, many engine processes) a driver holds at most one
open offer and at most ``capacity`` active deliveries, and a delivery is offered to at most
one driver and active with at most one. Every operation is one Lua script, so checks and writes
never interleave with another claim, a ping or a status change (see
``streams.location_store``). Nothing lives in a Python dict: a restarted engine sees every open
offer and active delivery, and an offer left behind by a crashed engine expires by itself.

Keys
----

``driver:offer:{driver_id}`` STRING = delivery_id, ``PX`` offer_ttl
    The driver's one open offer. Its expiry is the offer timeout.
``delivery:offer:{delivery_id}`` STRING = driver_id, same ``PX`` (set in the same script)
    The delivery's one open offer, so two matchers cannot offer one delivery to two drivers.
``driver:deliveries:{driver_id}`` SET of delivery ids, no TTL
    The driver's active (accepted, not yet released) deliveries; never more than capacity.
``delivery:driver:{delivery_id}`` STRING = driver_id, no TTL
    Who holds an active delivery, so it cannot be offered again until released.

Status and the availability index follow the ``streams.location_store`` contract, written the
way its ``set_status`` writes them: the accept that fills the driver's last slot sets
``driver:state`` status ``busy`` (and ``updated_ms``), copies the status into the live
location hash and removes the driver from ``drivers:available:{tenant}:{cell}`` (tenant and
cell read from the location hash). The release that frees a slot of a ``busy`` driver sets it
``available`` and re-indexes it at once when its location is alive and of its state's tenant
(score = the location's ``seen_ms``, so freshness is unchanged); with no live location the next
ping indexes it. A driver without a ``driver:state`` hash is ``offline`` by that contract and
is never offered (unless ``require_shift=False``, for drivers not managed by LocationStore).

Bundles (``offer_bundle``, ``accept_bundle``, ``decline_bundle``): one offer of several
deliveries. The driver's offer key then holds ``bundle:{bundle_id}`` (``bundle_token``) and every
delivery's offer key holds the driver; the accept claims every delivery of the bundle in one
script, all or none, and capacity counts each delivery (a driver with one free slot cannot
take a bundle of two). Releases stay per delivery: stops end one at a time. A single offer is
the same script with one delivery, whose id is the token: one copy of every rule.

Offer timeouts: Redis expires both offer keys together; ``accept`` after that returns False.
The engine's own timer (which records ``offer_timeout`` on the delivery) may call ``decline``:
it returns False when the keys are already gone, so the two never conflict.

Scaling: the scripts touch keys of one driver and one delivery and build the index key name
themselves; under Redis Cluster these would need a common hash tag (as noted for
``streams.location_store``).
"""

from __future__ import annotations

import math

from redis.asyncio import Redis

from dispatch.core.ids import canonical_uuid
from dispatch.matching.keys import (
    deliveries_key,
    delivery_driver_key,
    delivery_offer_key,
    offer_key,
)
from schema.errors import WakalaError
from streams.keys import location_key, state_key
from streams.location_store import SET_STATUS_LUA
from streams.replies import as_text

__all__ = ["BUNDLE_PREFIX", "DriverClaims", "InvalidClaimSettings", "bundle_token"]

BUNDLE_PREFIX = "bundle:"


def bundle_token(bundle_id: str) -> str:
    """What the driver's offer key holds while it has an open offer of a bundle."""
    return f"{BUNDLE_PREFIX}{bundle_id}"


class InvalidClaimSettings(WakalaError, ValueError):
    """capacity or offer_ttl_s out of range."""



# Script result codes (the public methods return bools; the codes say why, for debugging).
OK = 1
DRIVER_HAS_OFFER = 0       # offer: the driver already has an open offer; accept/decline: no such offer
DRIVER_FULL = -1           # capacity active deliveries already
DELIVERY_OFFERED = -2      # the delivery has an open offer (to anyone)
DELIVERY_ACTIVE = -3       # the delivery is active with a driver
DRIVER_NOT_AVAILABLE = -4  # status is not 'available' (offer) / is 'offline' (accept)

# One script per verb for one delivery or a bundle of n: a single offer is the bundle of one
# whose token (what the driver's offer key holds) is the delivery id itself, so the capacity,
# holder and status rules exist once.

# KEYS: driver offer, driver deliveries, driver state, then per delivery: its offer, its driver.
# ARGV: driver_id, token, ttl_ms, capacity, '1' = a driver without state is offline, n.
# Every delivery must be free (not offered, not active) and the driver must have room for all.
OFFER_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local n = tonumber(ARGV[6])
if redis.call('SCARD', KEYS[2]) + n > tonumber(ARGV[4]) then return -1 end
for i = 1, n do
  if redis.call('EXISTS', KEYS[2 + 2 * i]) == 1 then return -2 end
  if redis.call('EXISTS', KEYS[3 + 2 * i]) == 1 then return -3 end
end
local status = redis.call('HGET', KEYS[3], 'status')
if status then
  if status ~= 'available' then return -4 end
elseif ARGV[5] == '1' then
  return -4
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
for i = 1, n do redis.call('SET', KEYS[2 + 2 * i], ARGV[1], 'PX', ARGV[3]) end
return 1
"""

# Status changes go through streams.location_store.SET_STATUS_LUA (one writer of the index).
# KEYS: driver offer, driver deliveries, driver state, driver location, then per delivery:
# its offer, its driver. ARGV: driver_id, token, capacity, delivery ids...
# All or none: every check runs before the first claim is written. An offer that exists but
# cannot be accepted any more is withdrawn (the codes < 0).
ACCEPT_SCRIPT = SET_STATUS_LUA + """
local id, n = ARGV[1], #ARGV - 3
if redis.call('GET', KEYS[1]) ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
for i = 1, n do
  if redis.call('GET', KEYS[3 + 2 * i]) == id then redis.call('DEL', KEYS[3 + 2 * i]) end
end
local st = redis.call('HMGET', KEYS[3], 'status', 'tenant')
if st[1] == 'offline' then return -4 end
for i = 1, n do
  local holder = redis.call('GET', KEYS[4 + 2 * i])
  if holder and holder ~= id then return -3 end
end
local capacity = tonumber(ARGV[3])
if redis.call('SCARD', KEYS[2]) + n > capacity then return -1 end
for i = 1, n do
  redis.call('SADD', KEYS[2], ARGV[3 + i])
  redis.call('SET', KEYS[4 + 2 * i], id)
end
if st[1] == 'available' and redis.call('SCARD', KEYS[2]) >= capacity then
  set_status(id, 'busy', st[2])
end
return 1
"""

# KEYS: driver offer, then every delivery's offer. ARGV: driver_id, token.
DECLINE_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
return 1
"""

# KEYS: driver deliveries, delivery driver, driver state, driver location.
# ARGV: driver_id, delivery_id, capacity. Returns 0 not active, 1 released, 2 released and
# the driver is available again.
RELEASE_SCRIPT = SET_STATUS_LUA + """
local id = ARGV[1]
if redis.call('SREM', KEYS[1], ARGV[2]) == 0 then return 0 end
if redis.call('GET', KEYS[2]) == id then redis.call('DEL', KEYS[2]) end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 1 end
local st = redis.call('HMGET', KEYS[3], 'status', 'tenant')
if st[1] ~= 'busy' then return 1 end
set_status(id, 'available', st[2])
return 2
"""

# KEYS: driver deliveries. ARGV: driver_id, capacity, mode, tenant, vehicle, delivery ids...
# Makes the driver's claims exactly the given active deliveries (Postgres's list), then its
# status follows: mode 'start' (a shift starts: tenant and vehicle recorded, available unless
# full), 'ensure' (a rebuild of a driver on shift: a missing state is created as 'start'
# would; an existing one only goes busy when full or available when freed), 'keep' (claims
# only: an available driver who is full goes busy); in every mode a busy driver who is not
# full any more goes available (a lost release). Returns {status, active count}.
RESTORE_SCRIPT = SET_STATUS_LUA + """
local id, capacity, mode, tenant, vehicle = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local wanted = {}
for i = 6, #ARGV do wanted[ARGV[i]] = true end
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if not wanted[member] then
    redis.call('SREM', KEYS[1], member)
    local dkey = 'delivery:driver:' .. member
    if redis.call('GET', dkey) == id then redis.call('DEL', dkey) end
  end
end
for i = 6, #ARGV do
  redis.call('SADD', KEYS[1], ARGV[i])
  redis.call('SET', 'delivery:driver:' .. ARGV[i], id)
end
local count = redis.call('SCARD', KEYS[1])
local full = count >= capacity
local st = redis.call('HMGET', 'driver:state:' .. id, 'status', 'tenant')
local status = st[1]
if mode == 'start' or (mode == 'ensure' and not status) then
  redis.call('HSET', 'driver:state:' .. id, 'tenant', tenant, 'vehicle', vehicle)
  status = full and 'busy' or 'available'
  set_status(id, status, tenant)
elseif status == 'available' and full then
  status = 'busy'
  set_status(id, status, st[2])
elseif status == 'busy' and not full then
  status = 'available'
  set_status(id, status, st[2])
end
return {status or 'offline', count}
"""


class DriverClaims:
    """Offers, accepts, declines and releases of drivers, each one atomic Redis script.

    ``capacity``: active deliveries a driver may hold (1 today; more for multi-drop).
    ``offer_ttl_s``: how long an offer stays open. Every engine process sharing a Redis should
    use the same values; each call checks against the capacity of the process making it.
    """

    def __init__(self, redis: Redis, *, capacity: int = 1, offer_ttl_s: float = 20.0,
                 require_shift: bool = True) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or not 1 <= capacity <= 100:
            raise InvalidClaimSettings(f"capacity must be an integer from 1 to 100, got {capacity!r}")
        if (not isinstance(offer_ttl_s, int | float) or not math.isfinite(offer_ttl_s)
                or not 0.001 <= offer_ttl_s <= 86_400):
            raise InvalidClaimSettings(
                f"offer_ttl_s must be between 0.001 and 86400 seconds, got {offer_ttl_s!r}")
        self.redis = redis
        self.capacity = capacity
        self.offer_ttl_s = float(offer_ttl_s)
        self._ttl_ms = str(max(1, round(offer_ttl_s * 1000)))
        self._capacity = str(capacity)
        self._require_shift = "1" if require_shift else "0"
        self._offer = redis.register_script(OFFER_SCRIPT)
        self._accept = redis.register_script(ACCEPT_SCRIPT)
        self._decline = redis.register_script(DECLINE_SCRIPT)
        self._release = redis.register_script(RELEASE_SCRIPT)
        self._restore = redis.register_script(RESTORE_SCRIPT)

    async def offer(self, driver_id: str, delivery_id: str) -> bool:
        """Open an offer of the delivery to the driver, for offer_ttl_s.

        Refused (False) when the driver has an open offer, is at capacity or is not
        ``available``, or the delivery is already offered or active with anyone.
        """
        delivery = canonical_uuid(delivery_id, "delivery_id")
        return await self._open(driver_id, delivery, [delivery])

    async def accept(self, driver_id: str, delivery_id: str) -> bool:
        """The driver takes the delivery it was offered: it becomes one of its active ones.

        False when this offer is not open (never made, declined, expired). An open offer that
        can no longer be honoured (the driver went offline meanwhile) is withdrawn and False
        returned. The accept that fills the driver's last slot makes it ``busy`` and takes it
        out of the availability index.
        """
        delivery = canonical_uuid(delivery_id, "delivery_id")
        return await self._take(driver_id, delivery, [delivery])

    async def decline(self, driver_id: str, delivery_id: str) -> bool:
        """Withdraw the open offer (declined, or timed out by the engine's timer).

        False when that offer is not open (already expired, accepted or declined).
        """
        delivery = canonical_uuid(delivery_id, "delivery_id")
        return await self._withdraw(driver_id, delivery, [delivery])

    async def release(self, driver_id: str, delivery_id: str) -> bool:
        """The delivery is over for this driver (delivered, failed, cancelled).

        Frees its slot; a ``busy`` driver below capacity becomes ``available`` and is indexed at
        once if its location is live (else by its next ping). False when the delivery was not
        active with the driver (so repeating a release is harmless).
        """
        driver, delivery = canonical_uuid(driver_id, "driver_id"), canonical_uuid(delivery_id, "delivery_id")
        code = await self._release(
            keys=[deliveries_key(driver), delivery_driver_key(delivery), state_key(driver),
                  location_key(driver)],
            args=[driver, delivery, self._capacity],
        )
        return int(code) > 0

    async def offer_bundle(self, driver_id: str, bundle_id: str, delivery_ids: list[str]) -> bool:
        """Open one offer of every delivery of a bundle to the driver (see ``offer``), refused
        when any delivery is offered or active, or the driver has no room for all of them."""
        return await self._open(driver_id, self._token(bundle_id), self._deliveries(delivery_ids))

    async def accept_bundle(self, driver_id: str, bundle_id: str, delivery_ids: list[str]) -> bool:
        """The driver takes every delivery of the bundle it was offered, in one step: all of
        them become its active deliveries, or none does (False; an offer that cannot be
        honoured any more, e.g. no room left for all of them, is withdrawn)."""
        return await self._take(driver_id, self._token(bundle_id), self._deliveries(delivery_ids))

    async def decline_bundle(self, driver_id: str, bundle_id: str, delivery_ids: list[str]) -> bool:
        """Withdraw the driver's open offer of the bundle; False when it is not open."""
        return await self._withdraw(driver_id, self._token(bundle_id), self._deliveries(delivery_ids))

    async def _open(self, driver_id: str, token: str, deliveries: list[str]) -> bool:
        driver = canonical_uuid(driver_id, "driver_id")
        per = [k for d in deliveries for k in (delivery_offer_key(d), delivery_driver_key(d))]
        code = await self._offer(
            keys=[offer_key(driver), deliveries_key(driver), state_key(driver), *per],
            args=[driver, token, self._ttl_ms, self._capacity, self._require_shift, str(len(deliveries))])
        return int(code) == OK

    async def _take(self, driver_id: str, token: str, deliveries: list[str]) -> bool:
        driver = canonical_uuid(driver_id, "driver_id")
        per = [k for d in deliveries for k in (delivery_offer_key(d), delivery_driver_key(d))]
        code = await self._accept(
            keys=[offer_key(driver), deliveries_key(driver), state_key(driver), location_key(driver), *per],
            args=[driver, token, self._capacity, *deliveries])
        return int(code) == OK

    async def _withdraw(self, driver_id: str, token: str, deliveries: list[str]) -> bool:
        driver = canonical_uuid(driver_id, "driver_id")
        code = await self._decline(keys=[offer_key(driver), *(delivery_offer_key(d) for d in deliveries)],
                                   args=[driver, token])
        return int(code) == OK

    @staticmethod
    def _token(bundle_id: str) -> str:
        return bundle_token(canonical_uuid(bundle_id, "bundle_id"))

    @staticmethod
    def _deliveries(delivery_ids: list[str]) -> list[str]:
        deliveries = [canonical_uuid(d, "delivery_id") for d in delivery_ids]
        if not 1 <= len(deliveries) <= 10 or len(set(deliveries)) != len(deliveries):
            raise InvalidClaimSettings(f"a bundle holds 1 to 10 distinct deliveries, got {len(deliveries)}")
        return deliveries

    async def offer_of(self, driver_id: str) -> str | None:
        """The delivery id the driver has an open offer for, or None."""
        value = await self.redis.get(offer_key(canonical_uuid(driver_id, "driver_id")))
        return None if value is None else as_text(value)

    async def active_deliveries(self, driver_id: str) -> set[str]:
        """The driver's active delivery ids."""
        members = await self.redis.smembers(deliveries_key(canonical_uuid(driver_id, "driver_id")))
        return {as_text(m) for m in members}

    async def driver_of(self, delivery_id: str) -> str | None:
        """The driver the delivery is active with, or None."""
        value = await self.redis.get(delivery_driver_key(canonical_uuid(delivery_id, "delivery_id")))
        return None if value is None else as_text(value)

    async def restore(self, driver_id: str, active: list[str], *, mode: str = "keep",
                      tenant_id: str = "", vehicle_type: str = "") -> tuple[str, int]:
        """Make the driver's claims exactly ``active`` (its active deliveries as Postgres
        records them) and its status follow: see RESTORE_SCRIPT for ``mode``. Idempotent;
        the way back after Redis lost its claims or disagrees with the database.
        Returns (status, active count)."""
        if mode not in ("keep", "start", "ensure"):
            raise ValueError(f"mode must be keep, start or ensure, got {mode!r}")
        driver = canonical_uuid(driver_id, "driver_id")
        deliveries = [canonical_uuid(d, "delivery_id") for d in active]
        tenant = canonical_uuid(tenant_id, "tenant_id") if tenant_id else ""
        if mode != "keep" and not (tenant and vehicle_type):
            raise ValueError("tenant_id and vehicle_type are needed to start or rebuild a shift")
        status, count = await self._restore(keys=[deliveries_key(driver)],
                                            args=[driver, self._capacity, mode, tenant, vehicle_type, *deliveries])
        return as_text(status), int(count)
