"""Ping validation as a pure function: every refusal by reason and field; no service needed."""

from __future__ import annotations

import math
import subprocess
import sys
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.core import errors
from dispatch.core.errors import Refusal
from dispatch.gateway import pings as pings_module
from dispatch.gateway.pings import Ping, error_item, validate_batch, validate_ping

NOW = 1_800_000_000.0
LIMITS = {"now": NOW, "max_age_s": 30.0, "max_future_s": 60.0}
DRIVER = str(uuid.uuid4())


def ping(**overrides):
    body = {"driver_id": DRIVER, "lat": -26.2485, "lng": 27.8540, "accuracy": 8.0, "speed": 6.5,
            "heading": 90.0, "timestamp": NOW - 1, "battery": 71}
    body.update(overrides)
    return body


def refused(obj) -> Refusal:
    with pytest.raises(Refusal) as caught:
        validate_ping(obj, **LIMITS)
    return caught.value


def test_a_good_ping_is_returned_with_its_driver_id_canonical():
    upper = DRIVER.upper()
    assert validate_ping(ping(driver_id=upper, seq=3, type="ping"), **LIMITS) == Ping(
        DRIVER, -26.2485, 27.8540, 8.0, 6.5, 90.0, NOW - 1, 71.0)
    assert validate_ping(ping(battery=None), **LIMITS).battery is None
    assert validate_ping(ping(heading=360, speed=0), **LIMITS).heading == 360.0


HOSTILE = [
    (errors.NOT_FINITE, "lat", {"lat": math.nan}),
    (errors.NOT_FINITE, "lng", {"lng": math.inf}),
    (errors.OUT_OF_RANGE, "lat", {"lat": 91.0}),
    (errors.OUT_OF_RANGE, "lng", {"lng": -180.5}),
    (errors.OUT_OF_RANGE, "heading", {"heading": 361}),
    (errors.OUT_OF_RANGE, "speed", {"speed": -1}),
    (errors.OUT_OF_RANGE, "accuracy", {"accuracy": 10_001}),
    (errors.OUT_OF_RANGE, "battery", {"battery": 101}),
    (errors.NULL_ISLAND, "lat", {"lat": 0.0, "lng": 0.0}),
    (errors.WRONG_TYPE, "lat", {"lat": "-26.2"}),
    (errors.WRONG_TYPE, "speed", {"speed": True}),
    (errors.WRONG_TYPE, "driver_id", {"driver_id": "'; DROP TABLE drivers; --"}),
    (errors.WRONG_TYPE, "driver_id", {"driver_id": 42}),
    (errors.WRONG_TYPE, "seq", {"seq": "1"}),
    (errors.WRONG_TYPE, "seq", {"seq": True}),
    (errors.FUTURE_TIMESTAMP, "timestamp", {"timestamp": NOW + 61}),
    (errors.STALE_TIMESTAMP, "timestamp", {"timestamp": NOW - 31}),
    (errors.UNKNOWN_FIELD, "tenant_id", {"tenant_id": str(uuid.uuid4())}),
]


@pytest.mark.parametrize("reason, field, overrides", HOSTILE, ids=[f"{r}-{f}-{i}" for i, (r, f, _) in enumerate(HOSTILE)])
def test_each_bad_ping_is_a_422_naming_its_reason_and_field(reason, field, overrides):
    refusal = refused(ping(**overrides))
    assert (refusal.status, refusal.reason, refusal.field) == (422, reason, field)
    assert refusal.message and isinstance(refusal, ValueError)


def test_every_required_field_is_required():
    for field in ("driver_id", "lat", "lng", "accuracy", "speed", "heading", "timestamp"):
        body = ping()
        del body[field]
        refusal = refused(body)
        assert (refusal.reason, refusal.field) == (errors.MISSING_FIELD, field)


def test_a_ping_that_is_not_an_object_names_no_field_and_long_unknown_names_are_cut():
    refusal = refused([1, 2])
    assert (refusal.reason, refusal.field) == (errors.WRONG_TYPE, None)
    refusal = refused(ping(**{"x" * 100: 1}))
    assert refusal.reason == errors.UNKNOWN_FIELD and refusal.field == "x" * 40 + "…"


def test_a_batch_is_all_or_nothing_and_lists_every_bad_ping():
    with pytest.raises(Refusal) as caught:
        validate_batch([ping(), ping(lat=math.nan), "not a ping", ping()], max_items=10, **LIMITS)
    refusal = caught.value
    assert (refusal.status, refusal.reason, refusal.field) == (422, errors.NOT_FINITE, "lat")
    assert refusal.message == "2 ping(s) refused; nothing was accepted"
    assert refusal.errors == [
        {"reason": errors.NOT_FINITE, "field": "lat", "message": refusal.errors[0]["message"], "index": 1},
        {"reason": errors.WRONG_TYPE, "field": None, "message": refusal.errors[1]["message"], "index": 2},
    ]
    assert validate_batch([ping(), ping(lat=-26.25)], max_items=2, **LIMITS)[1].lat == -26.25


@pytest.mark.parametrize("items, status, reason", [
    ({"a": 1}, 422, errors.WRONG_TYPE), ([], 422, errors.MISSING_FIELD), ([{}] * 3, 413, errors.TOO_LARGE),
])
def test_a_batch_that_is_not_a_short_list_is_refused_whole(items, status, reason):
    with pytest.raises(Refusal) as caught:
        validate_batch(items, max_items=2, **LIMITS)
    assert (caught.value.status, caught.value.reason, caught.value.field, caught.value.errors) == (
        status, reason, "pings", None)


def test_error_item_always_names_the_field():
    assert error_item(Refusal(422, errors.WRONG_TYPE, "m")) == {"reason": "wrong_type", "field": None, "message": "m"}


def test_the_validator_imports_no_io_library():
    code = ("import sys, dispatch.gateway.pings; "
            "print(sorted(m for m in ('asyncpg', 'redis', 'fastapi', 'starlette', 'aiokafka', 'websockets') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- the fast path agrees with the field-by-field checks ----------------------------------------

_NOW = 1_700_000_000.0
_anything = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                      st.text(max_size=5), st.lists(st.integers(), max_size=2))
_fixes = st.fixed_dictionaries(
    {"driver_id": st.sampled_from(["3f1c2a9e-8d7b-4c6a-9e5f-1a2b3c4d5e6f", "3F1C2A9E-8D7B-4C6A-9E5F-1A2B3C4D5E6F",
                                   "not-a-uuid-but-36-characters-long!!!", 7]),
     "lat": st.one_of(st.floats(-91, 91), _anything), "lng": st.one_of(st.floats(-181, 181), _anything),
     "accuracy": st.one_of(st.floats(0, 20), _anything), "speed": st.one_of(st.integers(0, 120), _anything),
     "heading": st.floats(-1, 361), "timestamp": st.one_of(st.floats(_NOW - 40, _NOW + 70), _anything)},
    optional={"battery": _anything, "seq": _anything, "type": st.just("ping"), "extra": st.just(1)})


def _outcome(fix):
    try:
        return validate_ping(fix, now=_NOW, max_age_s=30, max_future_s=60)
    except Exception as exc:  # noqa: BLE001 - compared, type and reason
        return type(exc).__name__, getattr(exc, "reason", None), getattr(exc, "field", None)


@settings(max_examples=400, deadline=None)
@given(_fixes)
def test_the_fast_path_accepts_exactly_what_the_field_checks_accept(fix):
    fast = _outcome(fix)
    original = pings_module._fast
    pings_module._fast = lambda *args: None
    try:
        slow = _outcome(fix)
    finally:
        pings_module._fast = original
    assert fast == slow
