"""Prometheus counters and histograms the engine exposes at /metrics."""

import weakref

from prometheus_client import REGISTRY, Counter, Histogram
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
