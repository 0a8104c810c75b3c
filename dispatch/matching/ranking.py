"""Candidate ranking: which drivers may take a job, and which of them are nearest. Pure.

The I/O shell finds candidates in the Redis availability index ring by ring
(``search_plan``), loads their live state into ``Candidate`` records, and calls ``rank``.
The eligibility rules live in one place, ``feasibility``, which batch assignment
(``dispatch.assignment``) shares, so "may this driver take this job" is answered the same
way whether a job is offered alone or solved in a batch.

A driver may take a job when it is of the job's tenant, its status is ``available``, its
vehicle type is allowed, it has cold storage if the order needs it, it has not already
declined the job, and its estimated road distance to the pickup (great-circle × circuity)
is within the job's ``max_pickup_m``.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from geo import DEFAULT_RES, cell_of, k_for_radius, pairwise_distances_m, rings
from geo.eta import CIRCUITY

__all__ = [
    "AVAILABLE",
    "Candidate",
    "DuplicateCandidate",
    "Feasibility",
    "Job",
    "RankedCandidate",
    "feasibility",
    "rank",
    "search_complete",
    "search_plan",
]

AVAILABLE = "available"


@dataclass(frozen=True, slots=True)
class Candidate:
    """A driver as seen in the live location store when a job is being matched."""

    driver_id: str
    lat: float
    lng: float
    vehicle_type: str
    has_cold_storage: bool
    status: str
    tenant_id: str
    seen_ms: int


@dataclass(frozen=True, slots=True)
class Job:
    """What a match needs to know about an order: where, for whom, and with what."""

    tenant_id: str
    pickup_lat: float
    pickup_lng: float
    dropoff_lat: float
    dropoff_lng: float
    vehicle_types: frozenset[str] | None  # allowed types; None = any, empty = none
    needs_cold_storage: bool
    max_pickup_m: float  # road metres: the vendor's delivery_radius or the search radius

    def __post_init__(self) -> None:
        if not self.max_pickup_m >= 0:  # also rejects NaN
            raise ValueError(f"max_pickup_m must be a non-negative number, got {self.max_pickup_m}")
        if isinstance(self.vehicle_types, str):
            # A bare string would pass `in` checks by substring ("car" in "scar").
            raise TypeError("vehicle_types must be a frozenset of vehicle types or None, "
                            f"not the string {self.vehicle_types!r}")


@dataclass(frozen=True, slots=True)
class RankedCandidate:
    """A feasible candidate and its estimated road distance to the pickup."""

    driver_id: str
    distance_m: float  # great-circle × circuity
    candidate: Candidate


class DuplicateCandidate(ValueError):
    """The same driver_id appears twice in one candidate list."""


class Feasibility(NamedTuple):
    """Jobs × candidates matrices: row i is job i, column j candidate j."""

    great_circle_m: NDArray[np.float64]  # candidate to pickup, crow-flies
    road_m: NDArray[np.float64]  # great_circle_m × circuity
    feasible: NDArray[np.bool_]  # every eligibility rule holds


def feasibility(jobs: Sequence[Job], candidates: Sequence[Candidate], *,
                circuity: float = CIRCUITY,
                excludes: Sequence[Collection[str]] | None = None) -> Feasibility:
    """Distances and the eligibility mask for every (job, candidate) pair, vectorised.

    ``excludes``, if given, has one collection of driver ids per job (drivers who already
    declined it). Raises ``DuplicateCandidate`` if a driver appears twice.
    """
    if not (circuity > 0 and math.isfinite(circuity)):
        raise ValueError(f"circuity must be a positive finite number, got {circuity}")
    n, m = len(jobs), len(candidates)
    if excludes is not None and len(excludes) != n:
        raise ValueError(f"excludes needs one entry per job: {len(excludes)} for {n} jobs")
    column = {c.driver_id: j for j, c in enumerate(candidates)}
    if len(column) != m:
        _raise_duplicate(candidates)

    great_circle = pairwise_distances_m(
        np.fromiter((jb.pickup_lat for jb in jobs), np.float64, n),
        np.fromiter((jb.pickup_lng for jb in jobs), np.float64, n),
        np.fromiter((c.lat for c in candidates), np.float64, m),
        np.fromiter((c.lng for c in candidates), np.float64, m),
    )
    road = great_circle * circuity
    max_pickup = np.fromiter((jb.max_pickup_m for jb in jobs), np.float64, n)
    ok = road <= max_pickup[:, None]  # NaN coordinates compare False: never feasible

    available = np.fromiter((c.status == AVAILABLE for c in candidates), np.bool_, m)
    has_cold = np.fromiter((c.has_cold_storage for c in candidates), np.bool_, m)
    needs_cold = np.fromiter((jb.needs_cold_storage for jb in jobs), np.bool_, n)
    ok &= available[None, :]
    ok &= has_cold[None, :] | ~needs_cold[:, None]

    # Strings become small integer codes once, so the n × m comparisons are integer ones.
    tenant_code: dict[str, int] = {}
    cand_tenant = np.fromiter((tenant_code.setdefault(c.tenant_id, len(tenant_code))
                               for c in candidates), np.intp, m)
    job_tenant = np.fromiter((tenant_code.get(jb.tenant_id, -1) for jb in jobs), np.intp, n)
    ok &= job_tenant[:, None] == cand_tenant[None, :]

    vehicle_code: dict[str, int] = {}
    cand_vehicle = np.fromiter((vehicle_code.setdefault(c.vehicle_type, len(vehicle_code))
                                for c in candidates), np.intp, m)
    allowed = np.array([[jb.vehicle_types is None or v in jb.vehicle_types for v in vehicle_code]
                        for jb in jobs], dtype=np.bool_).reshape(n, len(vehicle_code))
    ok &= allowed[:, cand_vehicle]

    if excludes is not None:
        for i, declined in enumerate(excludes):
            for driver_id in declined:
                j = column.get(driver_id)
                if j is not None:
                    ok[i, j] = False
    return Feasibility(great_circle, road, ok)


def _raise_duplicate(candidates: Sequence[Candidate]) -> None:
    seen: set[str] = set()
    for c in candidates:
        if c.driver_id in seen:
            raise DuplicateCandidate(
                f"driver {c.driver_id!r} appears more than once among the candidates")
        seen.add(c.driver_id)


def rank(job: Job, candidates: Sequence[Candidate], *, k: int = 10,
         circuity: float = CIRCUITY,
         exclude: Collection[str] = frozenset()) -> list[RankedCandidate]:
    """The at most ``k`` feasible candidates nearest the pickup, nearest first.

    Exact: every candidate's distance is computed (one vectorised pass); ties are broken by
    ``driver_id`` so the order is stable across calls. ``exclude`` holds drivers who already
    declined this job.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if k == 0 or not candidates:
        return []
    f = feasibility([job], candidates, circuity=circuity,
                    excludes=[exclude] if exclude else None)
    idx = np.flatnonzero(f.feasible[0])
    road = f.road_m[0, idx]
    if k < idx.size:
        # O(n) selection of the k-th smallest, then keep everything up to it *including*
        # ties, so the driver_id tie-break below decides who is in, not argpartition.
        kth = road[np.argpartition(road, k - 1)[k - 1]]
        keep = road <= kth
        idx, road = idx[keep], road[keep]
    ids = np.array([candidates[i].driver_id for i in idx.tolist()], dtype=np.str_)
    order = np.lexsort((ids, road))[:k]
    return [RankedCandidate(str(ids[o]), float(road[o]), candidates[int(idx[o])])
            for o in order.tolist()]


def search_plan(lat: float, lng: float, radius_m: float,
                res: int = DEFAULT_RES) -> list[tuple[int, list[str]]]:
    """The H3 rings to query around (lat, lng), nearest first: ``(k, cells)`` for k = 0..K.

    K = ``k_for_radius(radius_m, res)``, so the rings together cover every point within
    ``radius_m`` great-circle metres. For a road-distance limit pass ``max_pickup_m /
    circuity`` (no driver further than that can qualify). The shell queries ring by ring
    and stops early once ``search_complete`` says no unseen driver can beat what it has::

        for ring_k, cells in search_plan(job.pickup_lat, job.pickup_lng, r, res):
            pool += await store.available_in(job.tenant_id, cells)
            best = rank(job, pool, k=want)
            if len(best) == want and search_complete(ring_k, best[-1].distance_m / circuity, res):
                break
    """
    return list(rings(cell_of(lat, lng, res), k_for_radius(radius_m, res)))


def search_complete(rings_searched: int, nth_distance_m: float, res: int = DEFAULT_RES) -> bool:
    """Whether rings 0..``rings_searched`` surely hold every driver nearer than ``nth_distance_m``.

    Having *enough* candidates after ring k is not enough for an exact top-n: a hexagon
    ring is not a circle, so a nearer driver may sit in ring k+1. Once the n-th best
    great-circle distance is covered by the rings searched, nobody unseen can be nearer.
    """
    return k_for_radius(nth_distance_m, res) <= rings_searched
