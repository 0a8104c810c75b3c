"""``dispatch.tracking.frames``: what the tracking hub puts on the wire, and one socket's queue.
Pure, no service needed (the hub itself is tested in tests/integration/tracking/test_hub.py)."""

from __future__ import annotations

import json

import pytest

from dispatch.tracking.frames import (
    FrameQueue,
    epoch_seconds,
    frame_text,
    heartbeat_frame,
    order_frame,
    position_frame,
    published_position_frame,
    status_frame,
)

DOCUMENT = {"tenant_id": "t", "driver": {"id": "secret-driver", "lat": 1.0, "lng": 2.0, "heading_deg": 90.0,
                                         "speed_mps": 5.0, "ts": 10.0},
            "eta_pickup_s": None, "eta_dropoff_s": 300, "received_at": 9.5}
POSITION = {"type": "position", "lat": 1.0, "lng": 2.0, "heading_deg": 90.0, "speed_mps": 5.0, "ts": 10.0,
            "eta_pickup_s": None, "eta_dropoff_s": 300, "received_at": 9.5}


def test_a_slow_client_gets_the_latest_position_not_a_backlog_and_a_bounded_queue():
    queue = FrameQueue(3)
    for i in range(100):
        queue.put_position(f"p{i}")
    assert queue.put("s1") and queue.put("s2", key="e2") and queue.put("s3")
    assert not queue.put("s4")   # over the bound: the caller closes the client
    queue.discard({"e2"})        # already shown by the snapshot
    assert [queue.pop() for _ in range(4)] == ["s1", "s3", "p99", None]
    queue.put_position("p100")
    queue.drop_position()         # the delivery ended
    assert queue.pop() is None and len(queue) == 0


def test_a_queue_holds_at_least_one_frame():
    with pytest.raises(ValueError, match="at least 1"):
        FrameQueue(0)


def test_frames_from_events_and_tracking_documents():
    assert status_frame({"type": "pick_up", "payload": {"to_state": "picked_up", "at": "2026-01-01T10:00:00+00:00"}}) == {
        "type": "status", "status": "picked_up", "at": "2026-01-01T10:00:00+00:00"}
    assert status_frame({"type": "arrived_dropoff", "payload": {"state": "picked_up"}}) == {
        "type": "arrived", "at": "dropoff"}
    assert status_frame({"type": "note", "payload": {}}) is None
    frame = position_frame(DOCUMENT)
    assert frame == POSITION
    assert "secret-driver" not in json.dumps(frame)   # the driver's id is not the customer's business


def test_a_published_document_becomes_a_position_only_for_its_own_tenant():
    raw = json.dumps(DOCUMENT).encode()
    assert published_position_frame(raw, "t") == POSITION
    assert published_position_frame(raw, "another-tenant") is None
    for bad in (None, b"not json", b"[1, 2]", json.dumps({**DOCUMENT, "driver": None}).encode()):
        assert published_position_frame(bad, "t") is None


def test_an_order_frame_shows_the_order_as_of_its_event():
    view = {"id": "o1", "vendor_id": "v1", "status": "ready"}
    event = {"type": "accept", "payload": {"order_id": "o1", "vendor_id": "v1", "to_status": "accepted"}}
    assert order_frame(event, view) == {"type": "order", "event": "accept",
                                        "order": {"id": "o1", "vendor_id": "v1", "status": "accepted"}}
    assert view["status"] == "ready"   # the view read once for the batch is not changed
    place = {"type": "place", "payload": {"order_id": "o1", "vendor_id": "v1"}}
    assert order_frame(place, view)["order"] == view


def test_heartbeats_and_timestamps():
    assert heartbeat_frame(1767261600.123456) == {"type": "heartbeat", "ts": 1767261600.123}
    assert epoch_seconds("2026-01-01T10:00:00+00:00", 0.0) == 1767261600.0
    assert epoch_seconds("yesterday", 42.0) == epoch_seconds(None, 42.0) == 42.0


def test_frame_text_is_compact_json():
    assert frame_text({"type": "status", "n": [1, 2]}) == '{"type":"status","n":[1,2]}'


def test_a_bundled_delivery_s_position_carries_its_stop_and_a_lone_one_does_not():
    from dispatch.tracking.frames import position_frame

    doc = {"driver": {"lat": 1.0, "lng": 2.0, "ts": 3.0}, "eta_dropoff_s": 400, "stop": 2, "stops": 3}
    frame = position_frame(doc)
    assert (frame["stop"], frame["stops"], frame["eta_dropoff_s"]) == (2, 3, 400)
    assert "stop" not in position_frame({"driver": {"lat": 1.0, "lng": 2.0}})
    assert "stop" not in position_frame({**doc, "stop": "2"})   # only whole numbers pass
