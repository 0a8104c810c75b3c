"""The dispatcher's bundling step in batch mode: the reads around ``bundle_policy.decide``.

For a window's pending deliveries of a tenant this reads what the pure decision needs - the
deliveries held earlier for a partner (they rejoin the window of their vendor), the orders of
the same vendors about to be ready, and each vendor's pickup lead time from the rankings
already made - and carries out its holds: a Redis key per held delivery (the dispatcher's
pending sweep leaves it alone while the key lives) and a timer that brings the delivery back
into a window when the hold ends. A crashed engine loses only the timer: the key expires and
the sweep offers the delivery.

Expected ready times. Orders carry no ready estimate, so a vendor's is learned from its own
history: the median of (marked ready - accepted) over its orders of the last seven days, once
it has at least ``MIN_PREP_SAMPLES``; an ``accepted`` order is then expected ready at its
acceptance plus that median. A vendor with too little history is never waited for.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from dispatch.core.ids import parse_uuid
from dispatch.matching.bundle_policy import Decision, Ready, Upcoming, decide
from dispatch.matching.keys import held_key
from dispatch.matching.ranking import RankedCandidate

if TYPE_CHECKING:
    from dispatch.matching.dispatcher import Dispatcher, DispatchJob

__all__ = ["MIN_PREP_SAMPLES", "plan_window"]

MIN_PREP_SAMPLES = 3
# Pending deliveries of these vendors outside the window (held ones rejoin it).
OTHERS_PENDING_SQL = """
SELECT d.id::text FROM deliveries d JOIN orders o ON o.id = d.order_id
WHERE d.status = 'pending' AND o.vendor_id = ANY($1::uuid[]) AND NOT (d.id = ANY($2::uuid[]))
LIMIT 100
"""
UPCOMING_SQL = """
WITH prep AS (
    SELECT o.vendor_id, count(*) AS n,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM r.created_at - a.created_at)) AS prep_s
    FROM orders o
    JOIN order_status_history a ON a.order_id = o.id AND a.to_status = 'accepted'
    JOIN order_status_history r ON r.order_id = o.id AND r.to_status = 'ready'
    WHERE o.vendor_id = ANY($1::uuid[]) AND r.created_at > now() - interval '7 days'
    GROUP BY o.vendor_id
)
SELECT o.id::text AS order_id, o.vendor_id::text AS vendor_id,
       ST_Y(o.delivery_location::geometry) AS lat, ST_X(o.delivery_location::geometry) AS lng,
       extract(epoch FROM o.created_at)::float8 AS placed_s,
       (extract(epoch FROM acc.at) + p.prep_s)::float8 AS expected_ready_s
FROM orders o
JOIN prep p ON p.vendor_id = o.vendor_id AND p.n >= $2
JOIN LATERAL (SELECT max(h.created_at) AS at FROM order_status_history h
              WHERE h.order_id = o.id AND h.to_status = 'accepted') acc ON acc.at IS NOT NULL
WHERE o.vendor_id = ANY($1::uuid[]) AND o.status = 'accepted' AND o.delivery_location IS NOT NULL
LIMIT 200
"""


async def plan_window(dispatcher: Dispatcher, tenant_id: str, jobs: list[DispatchJob],
                      rankings: list[list[RankedCandidate]]) -> tuple[list[tuple[int, ...]], dict[int, tuple[int, ...]]]:
    """Units to offer this window: tuples of indexes into ``jobs`` (a bundle's in drop-off
    order), and per bundle unit (by its position) the dropoff ETAs of its stops. ``jobs`` and
    ``rankings`` gain the held deliveries that rejoin the window; held ones are left out."""
    vendors = sorted({j.vendor_id for j in jobs if j.vendor_id})
    async with dispatcher.db.tenant_transaction(tenant_id, readonly=True) as tx:
        others = [r[0] for r in await tx.fetch(OTHERS_PENDING_SQL, [parse_uuid(v, "vendor_id") for v in vendors],
                                                [parse_uuid(j.delivery_id, "delivery_id") for j in jobs])]
        upcoming = await tx.fetch(UPCOMING_SQL, [parse_uuid(v, "vendor_id") for v in vendors], MIN_PREP_SAMPLES)
    for d in others:   # only those held: the rest belong to rounds under way
        if await dispatcher.redis.exists(held_key(d)) and (dj := await dispatcher.job_for(tenant_id, d)) is not None:
            if dj.status == "pending":
                jobs.append(dj)
                rankings.append(await dispatcher.ranked(dj.job))
    lead: dict[str, float] = {}
    vehicle = "motorbike"
    for dj, ranking in zip(jobs, rankings, strict=True):
        if ranking:
            first = (await dispatcher.offer_candidates(dj.job, ranking[:1]))[0]
            lead[dj.vendor_id] = min(lead.get(dj.vendor_id, float("inf")), first.pickup_eta_s)
            vehicle = ranking[0].candidate.vehicle_type
    now = time.time()
    ready = [Ready(dj.delivery_id, dj.vendor_id, (dj.job.pickup_lat, dj.job.pickup_lng),
                   (dj.job.dropoff_lat, dj.job.dropoff_lng), dj.placed_s, dj.ready_s) for dj in jobs]
    soon = [Upcoming(r["order_id"], r["vendor_id"], _pickup_of(jobs, r["vendor_id"]), (r["lat"], r["lng"]),
                     r["placed_s"], r["expected_ready_s"]) for r in upcoming if r["lat"] is not None]
    decision = decide(ready, soon, now_s=now, at=datetime.now(UTC), lead_s=lead,
                      capacity=dispatcher.claims.capacity, max_hold_s=dispatcher.bundle_max_hold_s,
                      drivers=len({r.driver_id for ranking in rankings for r in ranking}), vehicle=vehicle,
                      rules=dispatcher.bundle_rules)
    await _hold(dispatcher, tenant_id, decision, now)
    index = {dj.delivery_id: i for i, dj in enumerate(jobs)}
    units: list[tuple[int, ...]] = [(index[d],) for d in decision.singles]
    etas: dict[int, tuple[int, ...]] = {}
    for plan in decision.bundles:
        etas[len(units)] = plan.dropoff_etas_s
        units.append(tuple(index[d] for d in plan.delivery_ids))
    return units, etas


def _pickup_of(jobs: Sequence[DispatchJob], vendor_id: str) -> tuple[float, float]:
    job = next(j.job for j in jobs if j.vendor_id == vendor_id)
    return job.pickup_lat, job.pickup_lng


async def _hold(dispatcher: Dispatcher, tenant_id: str, decision: Decision, now: float) -> None:
    for delivery, until in decision.held.items():
        wait = max(until - now, 0.05)
        # The key outlives the timer a little: the timer's own window clears it.
        await dispatcher.redis.set(held_key(delivery), "1", px=round((wait + 5.0) * 1000))
        dispatcher.release_hold_later(tenant_id, delivery, wait)
