"""The hub's fan-out metrics, on the hub's in-memory side (no socket is ever awaited here):
open sockets by audience, positions coalesced for a watcher that has not taken the last one,
and hostile published documents that count nothing."""

from __future__ import annotations

import json
import uuid

from prometheus_client import REGISTRY

from dispatch.tracking.hub import TrackingHub
from dispatch.tracking.links import TrackingLink
from streams.keys import tracking_key


async def _never_sent(message: dict) -> None:
    raise AssertionError("no pump runs in these tests")


def _hub() -> TrackingHub:
    return TrackingHub(None, None, kafka_bootstrap="127.0.0.1:1", delivery_topic="d", order_topic="o")  # type: ignore[arg-type]


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _position(tenant_id: str, lat: float) -> dict:
    data = json.dumps({"tenant_id": tenant_id, "driver": {"lat": lat, "lng": 28.0, "ts": 1.0}})
    return {"type": "message", "data": data.encode()}


async def test_a_position_replacing_one_not_yet_sent_counts_as_coalesced():
    hub = _hub()
    tenant, delivery = str(uuid.uuid4()), str(uuid.uuid4())
    link = TrackingLink(tenant, delivery, str(uuid.uuid4()), "hash-a", None)
    open_before = _value("wakala_hub_clients", kind="watcher")
    watchers = [hub.watch(link, _never_sent) for _ in range(2)]
    assert _value("wakala_hub_clients", kind="watcher") == open_before + 2
    hub.feeds[delivery].status = "assigned"
    channel = tracking_key(delivery)
    coalesced = _value("wakala_hub_positions_coalesced_total")
    handed = _value("wakala_hub_frames_total", kind="position")

    hub._on_pubsub({**_position(tenant, -26.1), "channel": channel})
    assert _value("wakala_hub_positions_coalesced_total") == coalesced          # the first: nothing replaced
    hub._on_pubsub({**_position(tenant, -26.2), "channel": channel})
    assert _value("wakala_hub_positions_coalesced_total") == coalesced + 2      # one per watcher
    assert _value("wakala_hub_frames_total", kind="position") == handed + 4

    for hostile in (b"not json", b"[]", json.dumps({"tenant_id": str(uuid.uuid4())}).encode(), None):
        hub._on_pubsub({"type": "message", "channel": channel, "data": hostile})
    assert _value("wakala_hub_positions_coalesced_total") == coalesced + 2
    assert _value("wakala_hub_frames_total", kind="position") == handed + 4

    for client in watchers:
        hub.forget(client)
        hub.forget(client)   # idempotent: the gauge is not taken down twice
    assert _value("wakala_hub_clients", kind="watcher") == open_before
