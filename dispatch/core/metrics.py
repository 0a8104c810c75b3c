"""Prometheus counters and histograms the engine exposes at /metrics.

Scrape-time work is memory reads only: the pools, the outbox backlog and the sampled values
(views' refresh age, backup ages, the location worker's lag) are read from objects that the
engine's own loops keep up to date, so a scrape never waits on a database or the broker.
The location worker's own metrics are in ``streams.metrics`` (another process).
"""

import time
import weakref

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

PINGS_ACCEPTED = Counter("wakala_pings_accepted_total", "Pings accepted by the gateway", ["channel"])
PINGS_REJECTED = Counter(
    "wakala_pings_rejected_total", "Pings or ping requests refused by the gateway, by reason",
    ["channel", "reason"],
)
GATEWAY_PRODUCE_SECONDS = Histogram(
    "wakala_gateway_produce_seconds", "Time from validation to broker acknowledgement",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

# The REST API and the engine's steps (a route's template, never its path: ids would make a
# series per order). Buckets from a millisecond to the 10 s a client would give up at.
API_SECONDS = Histogram(
    "wakala_api_request_seconds", "HTTP requests that reached a route, by method, route template and status",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ORDERS_PLACED = Counter("wakala_orders_placed_total", "Orders placed (committed)")
PAYMENTS = Counter("wakala_payments_total", "Payment callbacks recorded, by the payment's status", ["status"])
# WhatsApp's inbound webhook (dispatch.messaging.inbound, dispatch.api.whatsapp).
WHATSAPP_INBOUND = Counter("wakala_whatsapp_inbound_total",
                           "Inbound WhatsApp messages, by outcome (recorded, duplicate, unknown_sender)", ["outcome"])
WHATSAPP_RECEIPTS = Counter("wakala_whatsapp_receipts_total",
                            "WhatsApp status receipts, by status and outcome (applied, kept, unknown)",
                            ["status", "outcome"])
WHATSAPP_WEBHOOK_REFUSED = Counter("wakala_whatsapp_webhook_refused_total",
                                   "WhatsApp webhook requests or items refused, by reason", ["reason"])
DELIVERY_TRANSITIONS = Counter(
    "wakala_delivery_transitions_total",
    "Delivery state changes committed, by event (offer, accept, decline, offer_timeout, give_up, ...) and new state",
    ["event", "state"],
)
MATCHING_SECONDS = Histogram(
    "wakala_matching_seconds", "Ranking the nearest available drivers for one delivery",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
MATCHING_CANDIDATES = Histogram(
    "wakala_matching_candidates", "Drivers ranked for one delivery", buckets=(0, 1, 2, 3, 5, 10, 20, 50),
)

# The tracking hub's sockets (dispatch.tracking.hub). kind: the audience (watcher: a customer's
# tracking page; vendor: a vendor's screen) for the sockets and the frames sent, the frame's
# type for the frames handed out. One increment per frame sent (the pump's own, a bound child)
# and one per fan-out, never one per recipient.
HUB_CLIENTS = Gauge("wakala_hub_clients", "Open tracking and vendor sockets of this process", ["kind"])
HUB_FRAMES = Counter("wakala_hub_frames_total", "Frames handed to tracking and vendor sockets", ["kind"])
HUB_SENT = Counter("wakala_hub_frames_sent_total",
                   "Frames the hub wrote to tracking and vendor sockets (snapshots and heartbeats included), "
                   "by audience", ["kind"])
HUB_COALESCED = Counter("wakala_hub_positions_coalesced_total",
                        "Position frames replaced by a newer one before a slow watcher's socket took them")
HUB_CLOSED = Counter("wakala_hub_closed_total", "Sockets the hub closed, by reason", ["reason"])


class _PoolCollector:
    """``wakala_db_pool_connections{shard, pool, state}``: this process's PostgreSQL pools,
    read when scraped (no bookkeeping on the query path), summed over every database object
    handed to ``watch_pools`` (weakly held: one that is gone drops out)."""

    def __init__(self) -> None:
        self.sources: weakref.WeakSet = weakref.WeakSet()

    def collect(self):
        totals: dict[tuple[str, str, str], int] = {}
        for source in list(self.sources):
            for shard_id, pool, size, idle in source.pool_stats():
                for state, n in (("in_use", size - idle), ("idle", idle)):
                    key = (str(shard_id), pool, state)
                    totals[key] = totals.get(key, 0) + n
        family = GaugeMetricFamily("wakala_db_pool_connections",
                                   "PostgreSQL connections of this process's pools, in use or idle",
                                   labels=["shard", "pool", "state"])
        for labels, value in sorted(totals.items()):
            family.add_metric(list(labels), value)
        yield family


_POOLS = _PoolCollector()
REGISTRY.register(_POOLS)


def watch_pools(source) -> None:
    """Report ``source.pool_stats()`` (a ``TenantDatabase``) in ``wakala_db_pool_connections``."""
    _POOLS.sources.add(source)


# -- WhatsApp (dispatch/messaging) -------------------------------------------------------------

WHATSAPP_SENDS = Counter("wakala_whatsapp_sends_total",
                         "WhatsApp messages by template and outcome: sent, retry (an attempt that will be "
                         "retried), failed (given up), suppressed (no consent, no number, link ended)",
                         ["template", "outcome"])
WHATSAPP_EVENTS = Counter("wakala_whatsapp_events_total",
                          "Order and delivery events read by the WhatsApp notifier, by what came of them: "
                          "planned (notifications inserted), duplicate (already planned, or its order is gone), stale, bad, "
                          "dropped (a failure retried until given up)", ["outcome"])


# -- the outbox relays' backlog ----------------------------------------------------------------

OUTBOX_PUBLISHED = Counter("wakala_outbox_published_total", "Outbox events published to the broker, by outbox",
                           ["outbox"])
OUTBOX_FAILURES = Counter("wakala_outbox_failures_total",
                          "A tenant's outbox pass that failed (retried on the next pass), by outbox", ["outbox"])


class _OutboxCollector:
    """``wakala_outbox_unpublished{outbox, shard}`` and ``wakala_outbox_oldest_unpublished_seconds``:
    what each relay found unpublished at its last sweep (``OutboxRelay.backlog``), read when
    scraped. The oldest row's age goes on counting between sweeps, so a relay whose sweeps
    stopped shows its backlog ageing. Several relays of one outbox in a process: the largest."""

    def __init__(self) -> None:
        self.relays: weakref.WeakSet = weakref.WeakSet()

    def describe(self):
        return self._families({})

    def collect(self):
        now = time.monotonic()
        seen: dict[tuple[str, str], tuple[int, float | None]] = {}
        for relay in list(self.relays):
            for shard_id, (rows, oldest_s, at) in dict(relay.backlog).items():
                key = (relay.outbox.table, str(shard_id))
                age = None if oldest_s is None else oldest_s + (now - at)
                had_rows, had_age = seen.get(key, (0, None))
                seen[key] = (max(had_rows, rows), age if had_age is None else max(had_age, age or 0.0))
        return self._families(seen)

    @staticmethod
    def _families(seen: dict[tuple[str, str], tuple[int, float | None]]):
        rows = GaugeMetricFamily("wakala_outbox_unpublished",
                                 "Outbox rows unpublished at the relay's last sweep (before it published "
                                 "them; counted up to 10000 a tenant), by outbox and shard",
                                 labels=["outbox", "shard"])
        oldest = GaugeMetricFamily("wakala_outbox_oldest_unpublished_seconds",
                                   "Age of the oldest outbox row unpublished at the relay's last sweep, "
                                   "by outbox and shard (0 when there was none)",
                                   labels=["outbox", "shard"])
        for labels, (n, age) in sorted(seen.items()):
            rows.add_metric(list(labels), n)
            oldest.add_metric(list(labels), age or 0.0)
        return [rows, oldest]


_OUTBOXES = _OutboxCollector()
REGISTRY.register(_OUTBOXES)


def watch_outbox(relay) -> None:
    """Report ``relay.backlog`` (an ``OutboxRelay``'s, shard -> (rows, oldest age in seconds or
    None, monotonic time sampled)) in the outbox gauges."""
    _OUTBOXES.relays.add(relay)


# -- values sampled in the background (views' refresh, backups, the worker's lag) -------------

VIEW_REFRESH_FAILURES = Counter("wakala_view_refresh_failures_total",
                                "A tenant's materialized-view refresh that failed")
OPS_SAMPLE_FAILURES = Counter("wakala_ops_sample_failures_total",
                              "Background samples for /metrics that could not be read, by part (lag, backups)",
                              ["part"])
SAMPLED = {
    "wakala_view_refresh_age_seconds":
        "Seconds since the start of this process's last view-refresh round that refreshed every tenant's "
        "materialized views (counted from the refresher's start until one has)",
    "wakala_location_lag_messages":
        "Messages of the locations topic the location worker's group has yet to land (end offsets from "
        "the broker minus the larger of committed and landed offsets), sampled by the engine",
    "wakala_backup_age_seconds":
        "The largest, over active tenants, of the seconds since the tenant's last completed backup "
        "(since its creation when it has none)",
    "wakala_backup_stale_tenants":
        "Active tenants whose last completed backup (or creation, if none) is older than 26 h",
}


class _SampledCollector:
    """Gauges set by background loops, never computed at scrape: each value keeps when it was
    sampled and until when it is fresh. An age goes on counting from its sample; a value past
    its freshness is not reported (a number nobody has measured lately is not current)."""

    def __init__(self) -> None:
        self.values: dict[str, tuple[float, float, float, bool]] = {}   # name -> value, at, fresh until, ageing

    def describe(self):
        return [GaugeMetricFamily(name, text) for name, text in SAMPLED.items()]

    def collect(self):
        now = time.monotonic()
        for name, (value, at, fresh_until, ageing) in list(self.values.items()):
            if now <= fresh_until:
                yield GaugeMetricFamily(name, SAMPLED[name], value=value + (now - at if ageing else 0.0))


_SAMPLED = _SampledCollector()
REGISTRY.register(_SAMPLED)


def record_sample(name: str, value: float, *, fresh_s: float = float("inf"), ageing: bool = False) -> None:
    """Set one of ``SAMPLED``: reported for ``fresh_s`` from now; ``ageing``: ``value`` is an age
    in seconds, reported plus the time since this call."""
    if name not in SAMPLED:
        raise KeyError(f"{name} is not a sampled metric; known: {', '.join(SAMPLED)}")
    now = time.monotonic()
    _SAMPLED.values[name] = (float(value), now, now + fresh_s, ageing)


def forget_sample(name: str) -> None:
    """Stop reporting one of ``SAMPLED`` (its source could not be read)."""
    _SAMPLED.values.pop(name, None)
