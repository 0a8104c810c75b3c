"""What travels on the `driver-locations` topic: validated pings.

The gateway has already validated the ping and authenticated the driver; it adds what it
knows from the token (tenant, vehicle type) and when it accepted the ping (``received_at``,
for end-to-end latency). Wire format: UTF-8 JSON, one object with these fields, an array of
them holding one driver's upload (keyed by that driver), or (what the gateway sends) a bundle
of such uploads on the partition of their drivers (``streams.bundles``).
"""

from __future__ import annotations

from typing import NamedTuple

import faust

SCHEMA_VERSION = 1


class DriverPing(NamedTuple):
    """A decoded ping (``streams.decode`` builds them). A plain named tuple, not a faust record:
    it never travels through faust's serializers (the topic is raw bytes), and constructing a
    faust record (field descriptors, coercion) cost about as much as decoding the ping."""

    v: int                 # SCHEMA_VERSION
    driver_id: str         # UUID text; also the message key
    tenant_id: str         # UUID text
    lat: float
    lng: float
    accuracy_m: float
    speed_mps: float
    heading_deg: float
    ts: float              # device fix time, epoch seconds
    received_at: float     # gateway accept time, epoch seconds
    vehicle_type: str
    battery: float | None = None


class DeadLetter(faust.Record, serializer="json", include_metadata=False):
    topic: str
    partition: int
    offset: int
    reason: str
    key: str | None
    value_preview: str     # at most 512 characters of the undecodable value
