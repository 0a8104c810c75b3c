"""Replay drivers on the OsmAnd route: which drivers, the requests they send, and the replies.

Each request shape is read back by the engine's own parser (``dispatch.gateway.osmand``), so a
fix that a replay sends is a fix the engine reads as the one the driver meant: position,
speed in the protocol's units, heading, accuracy and time. No services: httpx's mock
transport stands in for the network, the engine's parser for the engine.
"""

from __future__ import annotations

import asyncio
import json
import math
from urllib.parse import parse_qsl

import httpx
import pytest

from dispatch.gateway.osmand import from_json, from_params
from loadtest.replay import ReplayOptions
from loadtest.tracker_phone import (
    KNOTS_PER_MPS,
    OSMAND_PATH,
    SHAPES,
    parse_share,
    send_fix,
    tracker_drivers,
    tracker_request,
)

KEY = "wkg_" + "0" * 32 + "_" + "a" * 43
FIX = {"lat": -26.2485123, "lng": 27.8543217, "accuracy_m": 7.3, "speed_mps": 12.5, "heading": 271.4,
       "timestamp": 1_760_000_123.456}
DRIVERS = [f"driver-{i}" for i in range(10)]


def sent(shape: str, **fix: float) -> httpx.Request:
    """The HTTP request a tracker of ``shape`` puts on the wire for one fix."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"accepted": 1})

    async def go() -> None:
        async with httpx.AsyncClient(base_url="http://engine", transport=httpx.MockTransport(answer)) as http:
            assert (await send_fix(http, tracker_request(shape, KEY, **{**FIX, **fix})))[:2] == (True, None)

    asyncio.run(go())
    return seen[0]


def read_by_engine(request: httpx.Request):
    """What the engine's parser makes of the request (the route's own choice of parser)."""
    if request.url.params:
        return from_params(dict(request.url.params))
    if request.headers["content-type"] == "application/x-www-form-urlencoded":
        return from_params(dict(parse_qsl(request.content.decode())))
    return from_json(json.loads(request.content))


@pytest.mark.parametrize("shape", SHAPES)
def test_each_shape_is_read_by_the_engine_as_the_fix_the_driver_meant(shape):
    request = sent(shape)
    assert request.url.path == OSMAND_PATH
    assert request.method == ("GET" if shape == "get" else "POST")
    fix = read_by_engine(request)
    assert fix.key == KEY
    ping = fix.ping
    assert ping["lat"] == pytest.approx(FIX["lat"], abs=1e-6) and ping["lng"] == pytest.approx(FIX["lng"], abs=1e-6)
    assert ping["speed"] == pytest.approx(12.5, abs=0.01)            # m/s again, whatever went on the wire
    assert ping["heading"] == pytest.approx(271.4, abs=0.05)
    assert ping["accuracy"] == pytest.approx(7.3, abs=0.05)
    assert ping["timestamp"] == pytest.approx(FIX["timestamp"], abs=0.001)   # milliseconds survive
    assert 0 < ping["battery"] <= 100


def test_speed_goes_in_knots_in_the_query_shapes_and_in_metres_per_second_in_json():
    assert KNOTS_PER_MPS == pytest.approx(1.943844, rel=1e-6)        # 1 knot = 1852 m per hour
    assert sent("get", speed_mps=10.0).url.params["speed"] == "19.44"
    assert dict(parse_qsl(sent("form", speed_mps=10.0).content.decode()))["speed"] == "19.44"
    assert json.loads(sent("json", speed_mps=10.0).content)["location"]["coords"]["speed"] == 10.0


def test_fixes_a_tenth_of_a_second_apart_keep_distinct_timestamps_in_the_query():
    a = sent("get", timestamp=1_760_000_000.0).url.params["timestamp"]
    b = sent("get", timestamp=1_760_000_000.1).url.params["timestamp"]
    assert a != b and a == "1760000000000"   # epoch milliseconds, which the engine reads as such


def test_json_carries_an_iso_timestamp_and_a_battery_level_between_0_and_1():
    location = json.loads(sent("json").content)["location"]
    assert location["timestamp"] == "2025-10-09T08:55:23.456Z"
    assert location["battery"]["level"] == 0.8 and location["is_moving"] is True


def test_an_unknown_shape_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown tracker shape 'sms'"):
        tracker_request("sms", KEY, **FIX)


@pytest.mark.parametrize("status, body, expected", [
    (200, {"accepted": 1}, (True, None)),
    (200, {"accepted": 0, "reason": "stale_timestamp", "message": "old"}, (False, "stale_timestamp")),
    (200, {"accepted": 0}, (False, None)),
    (422, {"error": {"reason": "out_of_range", "field": "lon", "message": "..."}}, (False, "out_of_range")),
    (429, {"error": {"reason": "rate_limited"}}, (False, "rate_limited")),
    (502, "<html>bad gateway</html>", (False, "http_502")),
    (401, ["not", "an", "object"], (False, "http_401")),
])
def test_the_engine_s_answers_are_read_as_accepted_or_refused_with_their_reason(status, body, expected):
    def answer(_request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, json=body)

    async def go():
        async with httpx.AsyncClient(base_url="http://engine", transport=httpx.MockTransport(answer)) as http:
            return await send_fix(http, tracker_request("get", KEY, **FIX))

    accepted, reason, ms = asyncio.run(go())
    assert (accepted, reason) == expected and ms >= 0


def test_the_same_seed_and_share_choose_the_same_drivers_and_shapes_in_turn():
    chosen = tracker_drivers(DRIVERS, 0.3, seed=11)
    assert chosen == tracker_drivers(DRIVERS, 0.3, seed=11)
    assert len(chosen) == 3 and set(chosen) <= set(DRIVERS)
    assert list(chosen.values()) == list(SHAPES)   # one driver of each shape
    assert list(chosen) == [d for d in DRIVERS if d in chosen]   # in the scenario's order
    draws = {tuple(tracker_drivers(DRIVERS, 0.3, seed=s)) for s in range(20)}
    assert len(draws) > 5   # the seed decides, not the position in the file


@pytest.mark.parametrize("share, count", [(0.0, 0), (0.04, 0), (0.05, 0), (0.15, 2), (0.5, 5), (1.0, 10)])
def test_the_share_is_rounded_to_whole_drivers(share, count):
    assert len(tracker_drivers(DRIVERS, share, seed=3)) == count
    assert tracker_drivers([], share, seed=3) == {}


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "-0.1", "1.01", "30%", "", "0,3", "1e9", None])
def test_hostile_shares_are_refused_naming_the_option(text):
    with pytest.raises(ValueError, match="--osmand-share must be a number between 0 and 1"):
        parse_share(text)
    with pytest.raises(ValueError, match="--osmand-share"):
        tracker_drivers(DRIVERS, math.nan if text is None else text, seed=1)   # type: ignore[arg-type]


@pytest.mark.parametrize("share", [math.nan, -0.5, 2.0, math.inf])
def test_replay_options_refuse_a_share_outside_0_to_1(share, tmp_path):
    with pytest.raises(ValueError, match="--osmand-share"):
        ReplayOptions(scenario=tmp_path / "x.jsonl", osmand_share=share)


def test_shares_read_as_users_write_them():
    assert [parse_share(t) for t in ("0", "0.3", " 1 ", "1.0", ".25")] == [0.0, 0.3, 1.0, 1.0, 0.25]
