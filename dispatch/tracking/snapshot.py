"""The first frame a tracking socket sends: where the delivery stands, from Postgres and Redis.

One query on the tenant's shard gives the delivery's status, order number, pickup (the
vendor), dropoff and timeline (its outbox events with a ``to_state``, in ``seq`` order); the
driver's position and the live ETAs come from ``delivery:tracking:{id}`` (written by the
location worker on every ping, TTL 60 s) when the delivery is active. ``snapshot_frame`` is
pure: the database row and the tracking document in, the frame out.

The frame carries ``delivery_pin`` when the delivery has a PIN still to be entered and is
under way (``dispatch.deliveries.proof``): the link holder is the customer, who tells it to
the driver at the door. The PIN is derived from the tenant's key and the delivery's nonce,
never stored; the field is absent otherwise.

A delivery accepted as part of a bundle (``deliveries.bundle_seq``/``bundle_size``) carries
``stop`` and ``stops``, its place in the driver's drop-off order; its ETA (from the tracker)
already runs through the stops before it. Absent for a delivery on its own.

The ids of the delivery's events already in the outbox come back too: the hub drops those
events when Kafka brings them again, so the timeline and the status frames never repeat.
"""

from __future__ import annotations

import json
import time
from typing import Any

from redis.asyncio import Redis

from dispatch.core.ids import parse_uuid
from dispatch.deliveries.proof import shown_pin
from dispatch.matching.active import TRACKED_STATUSES
from geo import covering_grid
from schema.db import TenantDatabase
from streams.keys import tracking_key

__all__ = ["MAX_GRID_CELLS", "SNAPSHOT_SQL", "Snapshot", "load_snapshot", "snapshot_frame"]

MAX_GRID_CELLS = 400
SNAPSHOT_SQL = """
SELECT d.status, o.order_number, v.business_name, d.bundle_seq, d.bundle_size,
       ST_Y(d.pickup_location::geometry) AS pickup_lat, ST_X(d.pickup_location::geometry) AS pickup_lng,
       ST_Y(d.dropoff_location::geometry) AS dropoff_lat, ST_X(d.dropoff_location::geometry) AS dropoff_lng,
       (SELECT coalesce(jsonb_agg(jsonb_build_array(e.id::text, e.payload->>'to_state',
                                                    coalesce(e.payload->>'at', e.created_at::text))
                                  ORDER BY e.seq), '[]'::jsonb)
        FROM delivery_events_outbox e WHERE e.delivery_id = d.id) AS events,
       p.pin_nonce, p.pin_digits, p.pin_verified_at, s.pin_key
FROM deliveries d
JOIN orders o ON o.id = d.order_id
JOIN vendors v ON v.id = o.vendor_id
LEFT JOIN delivery_proofs p ON p.delivery_id = d.id
LEFT JOIN proof_settings s ON p.pin_nonce IS NOT NULL
WHERE d.id = $1
"""


class Snapshot:
    """The frame (a dict, ``frame``) and the ids of the events it already shows (``event_ids``)."""

    __slots__ = ("event_ids", "frame")

    def __init__(self, frame: dict[str, Any], event_ids: frozenset[str]) -> None:
        self.frame, self.event_ids = frame, event_ids

    @property
    def status(self) -> str:
        return self.frame["status"]


def snapshot_frame(delivery_id: str, row: Any, document: dict[str, Any] | None, now: float) -> Snapshot:
    """The snapshot frame of a delivery (see the module docstring); ``row`` is SNAPSHOT_SQL's."""
    events = row["events"]
    if isinstance(events, str):
        events = json.loads(events)
    status = row["status"]
    pickup = (row["pickup_lat"], row["pickup_lng"])
    dropoff = (row["dropoff_lat"], row["dropoff_lng"])
    live = document if status in TRACKED_STATUSES and document is not None else None
    driver = None
    if live is not None and isinstance(live.get("driver"), dict):
        d = live["driver"]
        driver = {"lat": d.get("lat"), "lng": d.get("lng"), "heading_deg": d.get("heading_deg"),
                  "speed_mps": d.get("speed_mps"), "ts": d.get("ts")}
    points = [p for p in (pickup, dropoff) if p[0] is not None and p[1] is not None]
    if driver is not None and isinstance(driver["lat"], float | int) and isinstance(driver["lng"], float | int):
        points.append((driver["lat"], driver["lng"]))
    cells = covering_grid(points, max_cells=MAX_GRID_CELLS)[1] if points else []
    frame = {
        "type": "snapshot",
        "delivery_id": delivery_id,
        "order_number": row["order_number"],
        "status": status,
        "vendor": {"name": row["business_name"], "lat": pickup[0], "lng": pickup[1]},
        "dropoff": {"lat": dropoff[0], "lng": dropoff[1]},
        "timeline": [{"status": to_state, "at": at} for _id, to_state, at in events if to_state],
        "driver": driver,
        "eta_pickup_s": None if live is None else live.get("eta_pickup_s"),
        "eta_dropoff_s": None if live is None else live.get("eta_dropoff_s"),
        "updated_at": live.get("updated_at", now) if live is not None else round(now, 3),
        "cells": cells,
    }
    pin = shown_pin(delivery_id, status, row.get("pin_key"), row.get("pin_nonce"), row.get("pin_digits"),
                    row.get("pin_verified_at"))
    if pin is not None:   # only while there is a PIN to tell the driver (the page shows it when present)
        frame["delivery_pin"] = pin
    if row.get("bundle_seq") is not None:   # one stop of a bundle: "stop 2 of 3" on the page
        frame["stop"], frame["stops"] = row["bundle_seq"], row["bundle_size"]
    return Snapshot(frame, frozenset(event_id for event_id, _s, _a in events))


async def load_snapshot(db: TenantDatabase, redis: Redis, tenant_id: str, delivery_id: str) -> Snapshot | None:
    """The snapshot of a delivery of this tenant; None if the tenant has no such delivery."""
    async with db.tenant_transaction(tenant_id, readonly=True) as tx:
        row = await tx.fetchrow(SNAPSHOT_SQL, parse_uuid(delivery_id, "delivery_id"))
    if row is None:
        return None
    document = None
    if row["status"] in TRACKED_STATUSES:
        raw = await redis.get(tracking_key(delivery_id))
        if raw is not None:
            try:
                document = json.loads(raw)
            except ValueError:
                document = None
            if not isinstance(document, dict) or document.get("tenant_id") != tenant_id:
                document = None
    return snapshot_frame(delivery_id, row, document, time.time())
