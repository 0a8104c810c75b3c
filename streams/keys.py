"""Redis key names that the location worker (``streams``) and the engine (``dispatch``) share.

One builder per key, used by whoever writes and whoever reads it, so a key's spelling lives in
one place. Every id in a key is canonical lower-case UUID text (``schema.ids.canonical_uuid``).
Keys that only the engine uses live with their concern (``dispatch/matching/keys.py`` for
offers and claims, ``dispatch/core/cache.py`` for the read cache,
``dispatch/web/ratelimit.py`` for rate windows).

| key | type | written by | read by |
| --- | --- | --- | --- |
| ``driver:location:{driver}`` | hash, TTL location_ttl_s | worker (Lua script) | matching, tracking |
| ``driver:state:{driver}`` | hash | shift start/end, claims | worker, matching |
| ``drivers:available:{tenant}:{h3 cell}`` | set | worker, status changes | nearest-driver search |
| ``delivery:tracking:{delivery}`` | JSON, TTL 60 s; also a pub/sub channel | worker (tracker) | hub, snapshot |
| ``metrics:ingest:counts`` | hash | worker | benches, reports |
| ``driver:notices`` | pub/sub channel | worker (pings it refused after the gateway's ack) | gateway (error frames) |
| ``metrics:ingest:latency_ms`` | list | worker (sampling on) | benches |
| ``metrics:ingest:offsets:{group}:{topic}`` | hash, TTL | worker (per batch landed) | lag samplers |
"""

from __future__ import annotations

INGEST_COUNTS_KEY = "metrics:ingest:counts"
INGEST_LATENCY_KEY = "metrics:ingest:latency_ms"
TRACKING_PREFIX = "delivery:tracking:"
# One channel for every driver: the worker publishes a JSON notice per ping it refused after the
# gateway acknowledged it ({"tenant_id", "driver_id", "reason", "message", "recorded_at"}); each
# gateway process forwards it to the driver's socket if it holds one.
DRIVER_NOTICES_CHANNEL = "driver:notices"
INGEST_OFFSETS_TTL_S = 120


def ingest_offsets_key(group: str, topic: str) -> str:
    """partition -> the next offset the worker group has yet to land (the last landed + 1).

    Its lag is the end offset minus this; committed offsets trail it by faust's commit interval
    (a sawtooth). Expires INGEST_OFFSETS_TTL_S after the last batch: absent means idle or gone.
    """
    return f"metrics:ingest:offsets:{group}:{topic}"


def location_key(driver_id: str) -> str:
    return f"driver:location:{driver_id}"


def state_key(driver_id: str) -> str:
    return f"driver:state:{driver_id}"


def available_key(tenant_id: str, cell: str) -> str:
    return f"drivers:available:{tenant_id}:{cell}"


def tracking_key(delivery_id: str) -> str:
    """The tracking document's key, and the pub/sub channel its updates go out on."""
    return f"{TRACKING_PREFIX}{delivery_id}"
