"""Nearest available drivers for a job: the in-process replica, the Redis index, PostGIS.

``nearest`` asks the matcher's availability replica first (``dispatch.matching.fleet_replica``:
no round trip, ~0.1 ms at 50,000 drivers), the Redis index when the replica is not ready or
finds nobody, and PostGIS when Redis finds nobody either. The replica and Redis answer the
same question over the same data (the replica mirrors the index, its rows read from Redis),
and the claim decides who really gets an offer, so a replica a few milliseconds behind can
cost an offer attempt, never a double assignment.

The Redis and PostGIS paths only *collect* candidates; ``dispatch.ranking.rank`` decides who
qualifies and in which order, so the two answer with the same distance (great-circle ×
circuity), the same eligibility rules and the same ``driver_id`` tie-break (the replica
applies the same rules on the same floats: ``dispatch.matching.fleet_index``).

Redis (``nearest_from_redis``)
    Rings of H3 cells around the pickup, read with ``LocationStore.available_in_cells`` (one
    script call, one round trip, for a batch of rings). The first call reads rings
    0..FIRST_RINGS, which holds k=10 drivers at city densities. If it already has k feasible
    drivers, their k-th distance says exactly which rings can still hold a nearer driver
    (``search_complete``), and one more call reads all of them; otherwise the searched area
    grows in proportion to what is missing. So a typical query is one or two round trips,
    whatever the density, and never reads rings it does not need.

PostGIS (``nearest_from_postgis``)
    One KNN query (``ORDER BY current_location <-> point LIMIT n``), which the GiST index
    answers under row-level security (``ST_DWithin`` would not use it there).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

from dispatch.core.ids import InvalidId, parse_uuid
from dispatch.matching.fleet_replica import FleetReplica
from dispatch.matching.ranking import (
    AVAILABLE,
    Candidate,
    Job,
    RankedCandidate,
    rank,
    search_complete,
)
from geo import CIRCUITY, cell_of, k_for_radius, ring
from schema.db import TenantDatabase
from streams.location_store import LocationStore

__all__ = [
    "FIRST_RINGS",
    "KNN_OVERFETCH",
    "DriverFacts",
    "Nearest",
    "load_driver_facts",
    "nearest",
    "nearest_from_postgis",
    "nearest_from_redis",
]

# Rings read by the first Redis call: 37 cells (~3.9 km² at res 9), which hold ten drivers
# wherever there are more than ~3 available drivers per km².
FIRST_RINGS = 3
# When too few feasible drivers were found, grow the searched radius by a bit more than the
# density alone says, so a second call usually finishes the search.
_GROWTH_MARGIN = 1.25

# PostGIS returns rows in its own distance order (<-> on geography); ``rank`` re-sorts them
# by ours. Fetching a few more than k means a near-tie ordered differently at the k-th place
# cannot change who is in.
KNN_OVERFETCH = 2
KNN_EXTRA = 5

KNN_SQL = """
SELECT id::text AS id,
       ST_Y(current_location::geometry) AS lat,
       ST_X(current_location::geometry) AS lng,
       vehicle_type,
       coalesce(has_cold_storage, false) AS has_cold_storage
FROM drivers
WHERE is_available AND status = 'active' AND current_location IS NOT NULL
  AND ($3::text[] IS NULL OR vehicle_type = ANY($3::text[]))
  AND (NOT $4::boolean OR has_cold_storage)
  AND NOT (id = ANY($5::uuid[]))
ORDER BY current_location <-> ST_SetSRID(ST_MakePoint($1, $2), 4326)::geography
LIMIT $6
"""

DRIVER_FACTS_SQL = """
SELECT id::text AS id, coalesce(has_cold_storage, false) AS has_cold_storage FROM drivers
"""


@dataclass(frozen=True, slots=True)
class DriverFacts:
    """What matching needs about a driver that the live location store does not hold."""

    has_cold_storage: bool = False


class Nearest(NamedTuple):
    """The ranked drivers and where they were found."""

    candidates: list[RankedCandidate]
    source: Literal["replica", "redis", "postgis"]


async def load_driver_facts(db: TenantDatabase, tenant_id: object) -> dict[str, DriverFacts]:
    """Driver facts of a whole tenant from Postgres, for the caller to cache and pass to
    ``nearest_from_redis`` (they change when a driver's vehicle does, not per ping)."""
    async with db.tenant_transaction(tenant_id, readonly=True) as tx:
        rows = await tx.fetch(DRIVER_FACTS_SQL)
    return {r["id"]: DriverFacts(r["has_cold_storage"]) for r in rows}


_NO_FACTS = DriverFacts()


async def nearest_from_redis(
    store: LocationStore,
    job: Job,
    *,
    k: int = 10,
    res: int | None = None,
    exclude: Collection[str] = frozenset(),
    driver_facts: Mapping[str, DriverFacts] | None = None,
    circuity: float = CIRCUITY,
) -> list[RankedCandidate]:
    """The at most ``k`` feasible drivers nearest the pickup, from the live availability index.

    Exact within ``job.max_pickup_m``: the search stops only when ``search_complete`` proves
    no unread cell can hold a nearer feasible driver, or when every ring of the radius
    (``max_pickup_m / circuity`` great-circle metres) has been read. Only fresh, available
    drivers of the job's tenant are in the index. Cold storage is not part of the live
    contract: it comes from ``driver_facts`` (driver_id -> facts, see ``load_driver_facts``);
    a driver missing there has none. ``res`` must be the index resolution (the store's).
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if res is None:
        res = store.resolution
    elif res != store.resolution:
        raise ValueError(f"res {res} is not the resolution of the availability index "
                         f"({store.resolution}); leave it out")
    if k == 0:
        return []
    facts = driver_facts if driver_facts is not None else {}
    tenant = job.tenant_id
    # The rings of ``search_plan``, computed lazily: listing all of a 5 km plan costs ~0.4 ms,
    # more than the query itself when the first rings are enough.
    max_k = k_for_radius(job.max_pickup_m / circuity, res)
    centre = cell_of(job.pickup_lat, job.pickup_lng, res)
    pool: dict[str, Candidate] = {}
    searched = -1
    upto = min(FIRST_RINGS, max_k)
    while True:
        cells: list[str] = []
        for ring_k in range(searched + 1, upto + 1):
            cells += ring(centre, ring_k)
        for driver_id, lat, lng, vehicle, seen_ms in await store.available_in_cells(tenant, cells):
            # A driver that moved between two calls is seen twice: the later sighting wins.
            pool[driver_id] = Candidate(
                driver_id, lat, lng, vehicle, facts.get(driver_id, _NO_FACTS).has_cold_storage,
                AVAILABLE, tenant, seen_ms,
            )
        searched = upto
        best = rank(job, list(pool.values()), k=k, circuity=circuity, exclude=exclude)
        if searched >= max_k:
            return best
        if len(best) == k:
            kth_great_circle_m = best[-1].distance_m / circuity
            if search_complete(searched, kth_great_circle_m, res):
                return best
            # The k-th best can only get nearer, so the rings it needs now are all it will need.
            upto = min(max_k, k_for_radius(kth_great_circle_m, res))
        elif best:
            # Area grows with the square of the radius: scale the ring count by sqrt(missing).
            grown = math.ceil((searched + 1) * math.sqrt(k / len(best)) * _GROWTH_MARGIN)
            upto = min(max_k, max(searched + 1, grown))
        else:
            upto = min(max_k, 2 * searched + 2)


def _uuids(ids: Collection[str]) -> list[uuid.UUID]:
    out = []
    for value in ids:
        try:
            out.append(parse_uuid(value if isinstance(value, uuid.UUID) else str(value), "driver_id"))
        except InvalidId:
            continue  # not a driver id of ours: it cannot match any row
    return out


async def nearest_from_postgis(
    db: TenantDatabase,
    job: Job,
    *,
    k: int = 10,
    exclude: Collection[str] = frozenset(),
    circuity: float = CIRCUITY,
) -> list[RankedCandidate]:
    """The at most ``k`` feasible drivers nearest the pickup, from ``drivers.current_location``.

    The fallback when Redis has no fresh candidate (the index is empty after a Redis restart
    or failover, or every driver's location key has expired). It is only as fresh as the
    throttled Postgres writes (``pg_write_interval_s``) and as ``is_available``, so it may
    offer a driver who has since gone quiet; the offer flow must confirm with the driver.

    One KNN query, index-assisted under RLS; the job's vehicle, cold-storage and exclude
    filters run inside it, so the index scan stops once it has enough matching rows. It reads
    ``k * KNN_OVERFETCH + KNN_EXTRA`` rows and ``rank`` re-applies every rule and orders them
    by our distance and tie-break, so both paths agree driver for driver.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if k == 0:
        return []
    types = None if job.vehicle_types is None else sorted(job.vehicle_types)
    limit = k * KNN_OVERFETCH + KNN_EXTRA
    async with db.tenant_transaction(job.tenant_id, readonly=True) as tx:
        rows = await tx.fetch(KNN_SQL, job.pickup_lng, job.pickup_lat, types,
                              job.needs_cold_storage, _uuids(exclude), limit)
    tenant = job.tenant_id
    candidates = [
        Candidate(r["id"], r["lat"], r["lng"], r["vehicle_type"], r["has_cold_storage"],
                  AVAILABLE, tenant, 0)
        for r in rows
    ]
    return rank(job, candidates, k=k, circuity=circuity, exclude=exclude)


async def nearest(
    store: LocationStore,
    db: TenantDatabase,
    job: Job,
    *,
    k: int = 10,
    exclude: Collection[str] = frozenset(),
    driver_facts: Mapping[str, DriverFacts] | None = None,
    circuity: float = CIRCUITY,
    replica: FleetReplica | None = None,
) -> Nearest:
    """The replica first (when given and ready); Redis when it has no feasible driver;
    PostGIS only when Redis finds none either."""
    if replica is not None and k > 0:
        mine = replica.nearest(job, k=k, exclude=exclude, driver_facts=driver_facts,
                               circuity=circuity)
        if mine:
            return Nearest(mine, "replica")
    found = await nearest_from_redis(store, job, k=k, exclude=exclude,
                                     driver_facts=driver_facts, circuity=circuity)
    if found or k == 0:
        return Nearest(found, "redis")
    return Nearest(await nearest_from_postgis(db, job, k=k, exclude=exclude, circuity=circuity),
                   "postgis")
