"""Prometheus counters and histograms the engine exposes at /metrics."""

from prometheus_client import Counter, Histogram

PINGS_ACCEPTED = Counter("wakala_pings_accepted_total", "Pings accepted by the gateway", ["channel"])
PINGS_REJECTED = Counter(
    "wakala_pings_rejected_total", "Pings or ping requests refused by the gateway, by reason",
    ["channel", "reason"],
)
GATEWAY_PRODUCE_SECONDS = Histogram(
    "wakala_gateway_produce_seconds", "Time from validation to broker acknowledgement",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
