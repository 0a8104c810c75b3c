"""The ingest load client's pure parts: upload frames, reading replies, failure kinds, backoff."""

from __future__ import annotations

import json
import random

import pytest
from websockets.exceptions import ConnectionClosedError, InvalidMessage, InvalidStatus
from websockets.frames import Close
from websockets.http11 import Response

from dispatch.gateway.pings import REQUIRED
from dispatch.gateway.sender import encode_frame
from loadtest.ingest_clients import DEG_PER_S, FixSource, backoff_s, failure_kind, read_reply

DRIVER = "6f1c1a8e-2b7e-4f7e-9a57-3f1f3b3d9c10"


def test_an_upload_carries_the_fixes_due_since_the_last_as_valid_json():
    fixes = FixSource(DRIVER, 7, origin_ts=1_000.0, hz=2.0, start_ts=1_000.0, max_fixes=20)
    frame, n = fixes.upload(1_004.9, seq=3)
    body = json.loads(frame)
    assert n == 10 and body["type"] == "pings" and body["seq"] == 3 and len(body["pings"]) == 10
    assert all(set(REQUIRED) <= set(p) and p["driver_id"] == DRIVER for p in body["pings"])
    stamps = [p["timestamp"] for p in body["pings"]]
    assert stamps == [1_000.0 + k / 2 for k in range(10)]
    frame, n = fixes.upload(1_009.9, seq=4)   # the next upload continues where the last stopped
    assert n == 10 and json.loads(frame)["pings"][0]["timestamp"] == 1_005.0


def test_positions_are_a_function_of_time_so_a_new_session_continues_the_track():
    a = FixSource(DRIVER, 7, origin_ts=1_000.0, hz=1.0, start_ts=1_000.0, max_fixes=50)
    b = FixSource(DRIVER, 7, origin_ts=1_000.0, hz=1.0, start_ts=1_030.0, max_fixes=50)
    first = json.loads(a.upload(1_030.0, 1)[0])["pings"][-1]
    later = json.loads(b.upload(1_031.0, 1)[0])["pings"][0]
    assert later["lng"] == first["lng"]
    assert later["lat"] == pytest.approx(first["lat"], abs=1e-6)    # both at ts 1,030
    assert json.loads(b.upload(1_031.0, 2)[0] or "{}") == {}           # nothing new due yet


def test_a_stalled_driver_sends_at_most_max_fixes_the_newest():
    fixes = FixSource(DRIVER, 1, origin_ts=0.0, hz=1.0, start_ts=0.0, max_fixes=20)
    frame, n = fixes.upload(99.5, 1)
    pings = json.loads(frame)["pings"]
    assert n == 20 and pings[0]["timestamp"] == 80.0 and pings[-1]["timestamp"] == 99.0
    assert pings[-1]["lat"] - pings[0]["lat"] == pytest.approx(19 * DEG_PER_S, abs=2e-6)


def test_replies_are_read_without_decoding_acks_and_errors_for_this_upload_counted():
    assert read_reply(encode_frame({"type": "ack", "seq": 4, "accepted": 10}), 4) == ("ack", 10)
    assert read_reply(encode_frame({"type": "ack", "seq": None, "accepted": 0}).encode(), 4) == ("ack", 0)
    refused = encode_frame({"type": "error", "seq": 4, "reason": "rate_limited", "message": "slow down"})
    assert read_reply(refused, 4) == ("error", "rate_limited")
    notice = encode_frame({"type": "error", "reason": "implausible_jump", "message": "m", "recorded_at": 1.0})
    assert read_reply(notice, 4) == ("notice", "implausible_jump")   # a worker notice answers no upload
    assert read_reply(encode_frame({"type": "offer", "delivery_id": "x"}), 4) == ("notice", "offer")
    assert read_reply("not json", 4) == ("notice", "undecodable")


def test_failures_are_named_by_type_and_status_or_close_code():
    assert failure_kind(InvalidStatus(Response(503, "Service Unavailable", []))) == "failed:InvalidStatus:503"
    assert failure_kind(ConnectionClosedError(Close(1013, "try again"), None)) == "failed:ConnectionClosedError:1013"
    assert failure_kind(InvalidMessage("did not receive a valid HTTP response")) == "failed:InvalidMessage"
    assert failure_kind(AssertionError()) == "failed:AssertionError"
    assert failure_kind(TimeoutError()) == "failed:TimeoutError"


def test_backoff_doubles_to_a_cap_with_jitter():
    rng = random.Random(1)
    for attempt, base in ((1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (12, 8.0)):
        waits = [backoff_s(attempt, rng) for _ in range(200)]
        assert 0.5 * base <= min(waits) and max(waits) <= 1.5 * base
