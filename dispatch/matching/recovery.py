"""Shifts recorded in Postgres, and matching's Redis state rebuilt from Postgres after a loss.

Redis holds what matching reads on every offer: drivers' status (``driver:state``), their
claims (``driver:deliveries``, ``delivery:driver``) and the tracked copies of active
deliveries (``delivery:active``). None of it is the record: Postgres holds who is on shift
(``drivers.is_available``, written by ``start_shift``/``end_shift`` here) and every
delivery's driver and state. So when Redis restarts empty (or fails over to a replica that
missed writes) everything matching needs can be rebuilt, and is, without waiting for each
driver to restart a shift.

Detecting the loss
------------------

``watch_redis`` checks, every ``interval_s``, that the sentinel key
``dispatch:redis-epoch:{app_id}`` exists: one ``EXPIRE`` (which also keeps it alive). The
sentinel is written after each rebuild; a Redis that restarted empty (or was flushed) has lost it with everything else, so its absence is the signal. The
first engine to start on a fresh Redis rebuilds too, which is what it should do. Two engines
noticing together both rebuild: every step is idempotent.

What a rebuild does, per active tenant (one failing tenant is logged and the others go on)
-----------------------------------------------------------------------------------------

* Every driver on shift or carrying a delivery gets its claims set to exactly its active
  deliveries (``DriverClaims.restore``); a driver on shift without a ``driver:state`` gets one,
  ``busy`` when full, else ``available``; a driver off shift carrying a delivery gets its
  claims only. Positions come back with the next pings (the worker never creates a state).
* Active deliveries get their tracked copy back (only where it is missing).
* Deliveries stranded by the loss go back to ``pending`` for the pending sweep: ``offered``
  with no open offer in Redis (``offer_timeout``) and ``unassigned`` with no stored round
  (``retry``).

Between losses, ``watch_redis`` also reconciles every ``reconcile_s`` (``rebuild`` with
``full=False``): claims are set to the database's active deliveries for every driver carrying
one or on shift, but no missing status is created. This is the backstop for a lost release
(an engine that died holding a finish event, a Redis write that failed after the commit): a
driver left ``busy`` with nothing active goes ``available`` within one period. A reconcile
racing an accept (claimed in Redis, not yet committed) may drop that claim for a moment; the
database's capacity guard still refuses a second job, and repairs the claim when it does.

A driver starting a shift (``start_shift``) gets the same treatment for one driver: the shift
is recorded in Postgres, then its Redis status is computed from its active deliveries there,
so a shift restarted after Redis lost the claims never makes a busy driver ``available``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from redis.asyncio import Redis

from dispatch.deliveries.state import DeliveryEvent, IllegalTransition
from dispatch.deliveries.store import UnknownDelivery, transition
from dispatch.identity.drivers import record_shift
from dispatch.matching import active as tracked
from dispatch.matching.claims import DriverClaims
from dispatch.matching.keys import active_key, delivery_offer_key, redis_epoch_key, round_key
from schema.db import TenantDatabase
from streams.location_store import LocationStore

__all__ = ["Rebuilt", "end_shift", "rebuild", "rebuild_tenant", "start_shift", "watch_redis"]

log = logging.getLogger(__name__)

RECOVERY_ACTOR = "system:recovery"

# Drivers to restore: on shift, or carrying a delivery (their claims must exist either way).
DRIVERS_SQL = """
SELECT d.id::text AS id, d.vehicle_type, coalesce(d.is_available, false) AS on_shift,
       coalesce(array_agg(x.id::text ORDER BY x.assigned_at NULLS LAST, x.id)
                FILTER (WHERE x.id IS NOT NULL), '{}') AS active
FROM drivers d
LEFT JOIN deliveries x ON x.driver_id = d.id AND x.status IN ('assigned', 'at_pickup', 'picked_up')
WHERE d.is_available OR x.id IS NOT NULL
GROUP BY d.id, d.vehicle_type, d.is_available
"""
ACTIVE_SQL = """
SELECT x.id::text AS id, x.driver_id::text AS driver, x.status, dr.vehicle_type,
       ST_Y(x.pickup_location::geometry) AS pickup_lat, ST_X(x.pickup_location::geometry) AS pickup_lng,
       ST_Y(x.dropoff_location::geometry) AS dropoff_lat, ST_X(x.dropoff_location::geometry) AS dropoff_lng,
       coalesce(extract(epoch FROM x.assigned_at) * 1000, 0)::bigint AS assigned_ms
FROM deliveries x JOIN drivers dr ON dr.id = x.driver_id
WHERE x.status IN ('assigned', 'at_pickup', 'picked_up')
  AND x.pickup_location IS NOT NULL AND x.dropoff_location IS NOT NULL
"""
STRANDED_SQL = "SELECT id::text AS id, status FROM deliveries WHERE status IN ('offered', 'unassigned')"


@dataclass
class Rebuilt:
    """What one rebuild restored (summed over tenants)."""

    tenants: list[str] = field(default_factory=list)
    drivers: int = 0
    tracked: int = 0
    reset: int = 0
    failed_tenants: int = 0


SENTINEL_TTL_S = 3600   # refreshed at every watch tick; gone an hour after the last engine stopped


async def start_shift(db: TenantDatabase, claims: DriverClaims, tenant_id: str, driver_id: str) -> str:
    """A driver starts a shift: recorded in Postgres, and its Redis status computed from its
    active deliveries there (``busy`` at capacity, else ``available``), whatever claims Redis
    still holds or has lost. Returns the status. Raises ``UnknownShiftDriver`` (404)."""
    vehicle, active = await record_shift(db, tenant_id, driver_id, True)
    status, _ = await claims.restore(driver_id, active, mode="start", tenant_id=tenant_id, vehicle_type=vehicle)
    return status


async def end_shift(db: TenantDatabase, locations: LocationStore, tenant_id: str, driver_id: str) -> str:
    """A driver ends a shift: recorded in Postgres, then offline in Redis."""
    await record_shift(db, tenant_id, driver_id, False)
    await locations.end_shift(driver_id)
    return "offline"


async def rebuild_tenant(db: TenantDatabase, redis: Redis, claims: DriverClaims, tenant_id: str, *,
                         full: bool = True) -> Rebuilt:
    """Restore one tenant's drivers, tracked deliveries and stranded deliveries (idempotent).
    ``full=False`` (a reconcile): claims only, no status created for a driver without one."""
    out = Rebuilt([tenant_id])
    async with db.tenant_transaction(tenant_id, readonly=True) as tx:
        drivers = await tx.fetch(DRIVERS_SQL)
        actives = await tx.fetch(ACTIVE_SQL)
        stranded = await tx.fetch(STRANDED_SQL)
    for row in drivers:
        await claims.restore(row["id"], list(row["active"]), mode="ensure" if full and row["on_shift"] else "keep",
                             tenant_id=tenant_id, vehicle_type=row["vehicle_type"])
        out.drivers += 1
    for row in actives:
        if await redis.exists(active_key(row["id"])):
            continue
        await tracked.write(redis, tracked.ActiveDelivery(
            row["id"], tenant_id, row["driver"], row["vehicle_type"], row["status"],
            (row["pickup_lat"], row["pickup_lng"]), (row["dropoff_lat"], row["dropoff_lng"]),
            int(row["assigned_ms"])))
        out.tracked += 1
    for row in stranded:
        if row["status"] == "offered":
            if await redis.exists(delivery_offer_key(row["id"])):
                continue   # an offer still open: its deadline decides
            event = DeliveryEvent.OFFER_TIMEOUT
        else:
            if await redis.exists(round_key(row["id"])):
                continue   # waiting in the unassigned set, retried when drivers free up
            event = DeliveryEvent.RETRY
        try:
            await transition(db, tenant_id, row["id"], event, actor=RECOVERY_ACTOR)
            out.reset += 1
        except (IllegalTransition, UnknownDelivery):
            pass   # moved on meanwhile
    return out


async def rebuild(db: TenantDatabase, redis: Redis, claims: DriverClaims, *, full: bool = True) -> Rebuilt:
    """``rebuild_tenant`` for every active tenant; a failing tenant is logged and counted."""
    total = Rebuilt()
    for tenant_id in await db.active_tenant_ids():
        try:
            one = await rebuild_tenant(db, redis, claims, str(tenant_id), full=full)
        except Exception as exc:   # noqa: BLE001 - one tenant's fault is not the others'
            total.failed_tenants += 1
            log.error("rebuilding matching state of tenant %s failed (%s: %s)", tenant_id,
                      exc.__class__.__name__, exc)
            continue
        total.tenants.append(str(tenant_id))
        total.drivers += one.drivers
        total.tracked += one.tracked
        total.reset += one.reset
    return total


async def watch_redis(db: TenantDatabase, redis: Redis, claims: DriverClaims, *, app_id: str = "wakala",
                      interval_s: float = 1.0,
                      reconcile_s: float | None = 60.0, on_rebuilt: Callable[[Rebuilt], None] | None = None,
                      max_backoff_s: float = 15.0) -> None:
    """Rebuild whenever the sentinel is missing (Redis lost its data), reconcile every
    ``reconcile_s`` (None: never); run until cancelled.

    ``on_rebuilt`` is called after each rebuild (the engine retries the tenants' waiting
    deliveries). Failures back off up to ``max_backoff_s``: this loop never spins. A tenant
    that failed keeps the sentinel unset, so the next tick tries again.

    The check is one ``EXPIRE`` a second: cheap, and it bounds how long drivers stay out of
    matching after Redis comes back empty. The backoff starts at ``interval_s`` (not twice it)
    and stops at ``max_backoff_s``, because the common failure is a Redis that is restarting:
    a check that lands in a three-second outage must not push the rebuild ten seconds past it.
    """
    failures = 0
    sentinel = redis_epoch_key(app_id)
    loop = asyncio.get_running_loop()
    next_reconcile = loop.time() + (reconcile_s or 0)
    while True:
        delay = interval_s
        try:
            # EXPIRE both tells whether the sentinel is there and keeps it alive while an engine
            # watches; an app id no engine runs any more (a bench's) leaves nothing behind.
            if not await redis.expire(sentinel, SENTINEL_TTL_S):
                started = time.monotonic()
                done = await rebuild(db, redis, claims)
                if not done.failed_tenants:
                    await redis.set(sentinel, str(round(time.time() * 1000)), ex=SENTINEL_TTL_S)
                log.warning("matching state rebuilt from Postgres in %.2f s: %d tenants, %d drivers, "
                            "%d tracked deliveries, %d deliveries back to pending, %d tenants failed",
                            time.monotonic() - started, len(done.tenants), done.drivers, done.tracked,
                            done.reset, done.failed_tenants)
                if on_rebuilt is not None:
                    on_rebuilt(done)
                if reconcile_s:
                    next_reconcile = loop.time() + reconcile_s
            elif reconcile_s and loop.time() >= next_reconcile:
                next_reconcile = loop.time() + reconcile_s
                done = await rebuild(db, redis, claims, full=False)
                if done.reset or done.tracked:
                    log.info("reconciled matching state with Postgres: %d tracked deliveries restored, "
                             "%d deliveries back to pending", done.tracked, done.reset)
            else:
                done = Rebuilt()
            if done.failed_tenants:
                failures += 1
                delay = min(max_backoff_s, interval_s * 2 ** (failures - 1))
            else:
                failures = 0
        except asyncio.CancelledError:
            raise
        except Exception as exc:   # noqa: BLE001 - Redis or Postgres away: try again later
            failures += 1
            delay = min(max_backoff_s, interval_s * 2 ** (failures - 1))
            log.warning("checking Redis for lost matching state failed (%s: %s); again in %.1f s",
                        exc.__class__.__name__, exc, delay)
        await asyncio.sleep(delay)
