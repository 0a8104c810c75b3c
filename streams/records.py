"""What travels on the `driver-locations` topic: one validated ping per message, keyed by driver id.

The gateway has already validated the ping and authenticated the driver; it adds what it
knows from the token (tenant, vehicle type) and when it accepted the ping (``received_at``,
for end-to-end latency). Wire format: UTF-8 JSON, either one object with these fields or
(what the gateway sends) an array of them holding one driver's upload, keyed by that driver.
"""

from __future__ import annotations

import faust

SCHEMA_VERSION = 1


class DriverPing(faust.Record, serializer="json", include_metadata=False):
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
