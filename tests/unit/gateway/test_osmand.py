"""The OsmAnd protocol read into the engine's ping: both shapes, unit conversions, defaults,
and hostile values refused naming the tracker's own field."""

from datetime import UTC, datetime

import pytest

from dispatch.core.errors import Refusal
from dispatch.gateway.osmand import (
    JSON_NAMES,
    KNOTS,
    QUERY_NAMES,
    UNKNOWN_ACCURACY_M,
    from_json,
    from_params,
    rename_field,
)
from dispatch.gateway.pings import validate_ping

KEY = "wkg_" + "a" * 32 + "_" + "b" * 43
NOW = 1_780_000_000.0


def query(**extra) -> dict[str, str]:
    # what Traccar Client 8 sends: every value as text, speed in knots
    base = {"id": KEY, "timestamp": "1780000000", "lat": "-26.2485", "lon": "27.8540", "speed": "10.0",
            "bearing": "91.5", "altitude": "1602.0", "accuracy": "8.0", "batt": "71.0"}
    return {**base, **{k: v for k, v in extra.items() if v is not None}}


def traccar9(**coords) -> dict:
    body = {"device_id": KEY, "location": {
        "timestamp": "2026-05-28T20:26:40.000Z", "is_moving": True, "odometer": 1234.5, "event": "motionchange",
        "coords": {"latitude": -26.2485, "longitude": 27.8540, "accuracy": 6.5, "speed": 4.2, "heading": 180.0,
                   "altitude": 1600.1},
        "battery": {"level": 0.85, "is_charging": False}}}
    body["location"]["coords"].update(coords)
    return body


def test_the_query_shape_converts_knots_and_names():
    fix = from_params(query())
    assert fix.key == KEY and fix.names is QUERY_NAMES
    assert fix.ping == {"lat": -26.2485, "lng": 27.854, "timestamp": 1_780_000_000.0, "speed": 10.0 * KNOTS,
                        "heading": 91.5, "accuracy": 8.0, "battery": 71.0}
    ping = validate_ping({**fix.ping, "driver_id": "0b1c2d3e-4f50-4617-8283-949596979899"}, now=NOW,
                         max_age_s=30, max_future_s=5)
    assert round(ping.speed, 3) == 5.144


@pytest.mark.parametrize("stamp, expected", [
    ("1780000000", 1_780_000_000.0), ("1780000000123", 1_780_000_000.123),
    ("2026-05-28T20:26:40Z", 1_780_000_000.0), ("2026-05-28T22:26:40+02:00", 1_780_000_000.0),
    ("2026-05-28 20:26:40", 1_780_000_000.0),
])
def test_timestamps_in_seconds_milliseconds_or_iso(stamp, expected):
    assert from_params(query(timestamp=stamp)).ping["timestamp"] == pytest.approx(expected)


def test_what_a_tracker_leaves_out_gets_a_default():
    fix = from_params({"deviceid": KEY, "lat": "-26.2", "lon": "27.9", "timestamp": "1780000000", "hdop": "1.2",
                       "someattr": "ignored", "ignition": "true"})
    assert fix.ping["speed"] == 0.0 and fix.ping["heading"] == 0.0 and fix.ping["accuracy"] == pytest.approx(6.0)
    assert "battery" not in fix.ping
    bare = from_params({"id": KEY, "lat": "-26.2", "lon": "27.9", "timestamp": "1780000000"})
    assert bare.ping["accuracy"] == UNKNOWN_ACCURACY_M


def test_the_traccar_client_9_json_shape():
    fix = from_json(traccar9())
    assert fix.key == KEY and fix.names is JSON_NAMES
    assert fix.ping == {"lat": -26.2485, "lng": 27.854, "timestamp": 1_780_000_000.0, "speed": 4.2,
                        "heading": 180.0, "accuracy": 6.5, "battery": 85.0}
    unknown = from_json(traccar9(speed=-1, heading=-1, accuracy=-1))
    assert (unknown.ping["speed"], unknown.ping["heading"], unknown.ping["accuracy"]) == (0.0, 0.0,
                                                                                          UNKNOWN_ACCURACY_M)
    no_battery = traccar9()
    del no_battery["location"]["battery"]
    assert "battery" not in from_json(no_battery).ping


@pytest.mark.parametrize("params, status, reason, field", [
    ({"lat": "1", "lon": "1", "timestamp": "1"}, 401, "missing_field", "id"),
    (query(lat=""), 422, "missing_field", "lat"),
    (query(lon=None) | {"lon": " "}, 422, "missing_field", "lon"),
    (query(timestamp=""), 422, "missing_field", "timestamp"),
    (query(lat="NaN"), 422, "not_finite", "lat"),
    (query(lon="inf"), 422, "not_finite", "lon"),
    (query(speed="-Infinity"), 422, "not_finite", "speed"),
    (query(lat="0x1A"), 422, "wrong_type", "lat"),
    (query(lat="1_000"), 422, "wrong_type", "lat"),
    (query(bearing="north"), 422, "wrong_type", "bearing"),
    (query(timestamp="yesterday"), 422, "wrong_type", "timestamp"),
    (query(lat="1e999"), 422, "not_finite", "lat"),
    (query(batt="9" * 201), 422, "too_long", "batt"),
])
def test_hostile_query_values_name_the_trackers_field(params, status, reason, field):
    with pytest.raises(Refusal) as caught:
        from_params(params)
    assert (caught.value.status, caught.value.reason, caught.value.field) == (status, reason, field)


@pytest.mark.parametrize("body, status, reason, field", [
    ([], 422, "wrong_type", "body"),
    ({"location": {}}, 401, "missing_field", "device_id"),
    ({"device_id": 5, "location": {}}, 401, "wrong_type", "device_id"),
    ({"device_id": KEY}, 422, "missing_field", "location"),
    ({"device_id": KEY, "location": []}, 422, "wrong_type", "location"),
    ({"device_id": KEY, "location": {"timestamp": "2026-05-28T20:26:40Z"}}, 422, "missing_field",
     "location.coords"),
    (traccar9(latitude=None), 422, "missing_field", "location.coords.latitude"),
    (traccar9(longitude="27.8"), 422, "wrong_type", "location.coords.longitude"),
    (traccar9(latitude=True), 422, "wrong_type", "location.coords.latitude"),
    (traccar9(speed=float("nan")), 422, "not_finite", "location.coords.speed"),
    (traccar9(altitude=float("inf")), 422, "not_finite", "location.coords.altitude"),
])
def test_hostile_json_values_name_the_trackers_field(body, status, reason, field):
    with pytest.raises(Refusal) as caught:
        from_json(body)
    assert (caught.value.status, caught.value.reason, caught.value.field) == (status, reason, field)


def test_bad_timestamps_and_battery_levels_in_json():
    body = traccar9()
    body["location"]["timestamp"] = "the day before yesterday"
    with pytest.raises(Refusal) as caught:
        from_json(body)
    assert caught.value.field == "location.timestamp"
    body["location"]["timestamp"] = True
    with pytest.raises(Refusal):
        from_json(body)
    body = traccar9()
    body["location"]["battery"]["level"] = 85
    with pytest.raises(Refusal) as caught:
        from_json(body)
    assert (caught.value.reason, caught.value.field) == ("invalid_value", "location.battery.level")


def test_range_refusals_from_the_ping_rules_carry_the_trackers_names():
    fix = from_params(query(lat="91"))
    with pytest.raises(Refusal) as caught:
        validate_ping({**fix.ping, "driver_id": "0b1c2d3e-4f50-4617-8283-949596979899"}, now=NOW, max_age_s=30,
                      max_future_s=5)
    assert rename_field(caught.value, fix.names).field == "lat"
    fix = from_json(traccar9(heading=400))
    with pytest.raises(Refusal) as caught:
        validate_ping({**fix.ping, "driver_id": "0b1c2d3e-4f50-4617-8283-949596979899"}, now=NOW, max_age_s=30,
                      max_future_s=5)
    assert rename_field(caught.value, fix.names).field == "location.coords.heading"
    assert datetime.fromtimestamp(NOW, UTC).year == 2026
