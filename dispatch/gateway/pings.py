"""Validating a driver's GPS ping: a pure function over plain data, no I/O.

A ping arrives as a decoded JSON object. Every rejection is a ``dispatch.core.errors.Refusal``
naming the field and a reason from the shared vocabulary there (the reasons are also the
labels of the rejection counter), so that a driver app, a tracker integrator and an operator
all see the same thing. A bad ping is a 422; a batch with more pings than allowed a 413.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from dispatch.core.errors import (
    FUTURE_TIMESTAMP,
    MISSING_FIELD,
    NOT_FINITE,
    NULL_ISLAND,
    OUT_OF_RANGE,
    STALE_TIMESTAMP,
    TOO_LARGE,
    UNKNOWN_FIELD,
    WRONG_TYPE,
    Refusal,
)
from dispatch.core.ids import InvalidId, canonical_uuid

# Physical bounds of what a phone can honestly report.
BOUNDS: dict[str, tuple[float, float]] = {
    "lat": (-90.0, 90.0),
    "lng": (-180.0, 180.0),
    "accuracy": (0.0, 10_000.0),   # metres; worse than 10 km is not a fix
    "speed": (0.0, 100.0),         # m/s reported by the device (360 km/h)
    "heading": (0.0, 360.0),       # degrees, 360 accepted as north
    "battery": (0.0, 100.0),       # percent
}
REQUIRED = ("driver_id", "lat", "lng", "accuracy", "speed", "heading", "timestamp")
OPTIONAL = ("battery", "seq")
NULL_ISLAND_EPS = 1e-4  # about 11 m: (0, 0) is a GPS chip's "no fix", not a place anyone delivers


def _refused(reason: str, field: str | None, message: str) -> Refusal:
    return Refusal(422, reason, message, field)


def error_item(refusal: Refusal) -> dict[str, Any]:
    """One refused ping of a batch as the gateway lists it: reason, field (null when the ping
    is not an object), message and its index in the batch."""
    out: dict[str, Any] = {"reason": refusal.reason, "field": refusal.field, "message": refusal.message}
    if refusal.index is not None:
        out["index"] = refusal.index
    return out


@dataclass(frozen=True, slots=True)
class Ping:
    driver_id: str
    lat: float
    lng: float
    accuracy: float
    speed: float
    heading: float
    timestamp: float
    battery: float | None = None


def _number(obj: dict[str, Any], field: str) -> float:
    value = obj[field]
    # bool is an int subclass: true is not a coordinate.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refused(WRONG_TYPE, field, f"{field} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise _refused(NOT_FINITE, field, f"{field} must be finite, got {value}")
    return value


def _bounded(obj: dict[str, Any], field: str) -> float:
    value = _number(obj, field)
    lo, hi = BOUNDS[field]
    if not lo <= value <= hi:
        raise _refused(OUT_OF_RANGE, field, f"{field} must be between {lo:g} and {hi:g}, got {value:g}")
    return value


_ALLOWED = frozenset((*REQUIRED, *OPTIONAL, "type"))
_REQUIRED = frozenset(REQUIRED)
_BOUNDED = tuple((f, *BOUNDS[f]) for f in ("lat", "lng", "accuracy", "speed", "heading"))


def _fast(obj: dict[str, Any], now: float, max_age_s: float, max_future_s: float) -> Ping | None:
    """The ping when every rule plainly holds, in one pass without a call per field; None when
    anything needs a closer look (``validate_ping`` then finds and names the fault). NaN fails
    every comparison, so it falls through."""
    keys = obj.keys()
    if not _REQUIRED <= keys or not keys <= _ALLOWED:
        return None
    driver_id = obj["driver_id"]
    if driver_id.__class__ is not str or len(driver_id) != 36:
        return None
    numbers = []
    for field, lo, hi in _BOUNDED:
        value = obj[field]
        if value.__class__ is not float and value.__class__ is not int or not lo <= value <= hi:
            return None   # (an int is compared exactly, so converting a bounded one cannot overflow)
        numbers.append(float(value))
    lat, lng, accuracy, speed, heading = numbers
    if abs(lat) < NULL_ISLAND_EPS and abs(lng) < NULL_ISLAND_EPS:
        return None
    timestamp = obj["timestamp"]
    if (timestamp.__class__ is not float and timestamp.__class__ is not int
            or not now - max_age_s <= timestamp <= now + max_future_s):
        return None
    battery = obj.get("battery")
    if battery is not None:
        if battery.__class__ is not float and battery.__class__ is not int or not 0.0 <= battery <= 100.0:
            return None
        battery = float(battery)
    if "seq" in obj and obj["seq"].__class__ is not int:
        return None
    try:
        driver_id = canonical_uuid(driver_id, "driver_id")
    except InvalidId:
        return None
    return Ping(driver_id, lat, lng, accuracy, speed, heading, float(timestamp), battery)


def validate_ping(obj: Any, *, now: float, max_age_s: float, max_future_s: float) -> Ping:
    """Return a validated ping or raise a 422 ``Refusal`` naming the first bad field."""
    if obj.__class__ is dict:
        ping = _fast(obj, now, max_age_s, max_future_s)
        if ping is not None:
            return ping
    if not isinstance(obj, dict):
        raise _refused(WRONG_TYPE, None, f"a ping must be a JSON object, got {type(obj).__name__}")
    for field in REQUIRED:
        if field not in obj:
            raise _refused(MISSING_FIELD, field, f"{field} is required")
    for field in obj:
        if field not in REQUIRED and field not in OPTIONAL and field != "type":
            shown = field if len(field) <= 40 else field[:40] + "…"
            raise _refused(UNKNOWN_FIELD, shown, f"unknown field {shown!r}")
    driver_id = obj["driver_id"]
    if not isinstance(driver_id, str):
        raise _refused(WRONG_TYPE, "driver_id", "driver_id must be a UUID string")
    try:
        driver_id = canonical_uuid(driver_id, "driver_id")
    except InvalidId:
        raise _refused(WRONG_TYPE, "driver_id", "driver_id is not a UUID") from None
    lat = _bounded(obj, "lat")
    lng = _bounded(obj, "lng")
    if abs(lat) < NULL_ISLAND_EPS and abs(lng) < NULL_ISLAND_EPS:
        raise _refused(NULL_ISLAND, "lat", "(0, 0) is the GPS chip's no-fix value, not a position")
    accuracy = _bounded(obj, "accuracy")
    speed = _bounded(obj, "speed")
    heading = _bounded(obj, "heading")
    timestamp = _number(obj, "timestamp")
    if timestamp > now + max_future_s:
        raise _refused(FUTURE_TIMESTAMP, "timestamp",
                           f"timestamp is {timestamp - now:.0f} s in the future (limit {max_future_s:g} s); "
                           "check the device clock")
    if timestamp < now - max_age_s:
        raise _refused(STALE_TIMESTAMP, "timestamp",
                           f"timestamp is {now - timestamp:.0f} s old; positions older than "
                           f"{max_age_s:g} s are no longer live")
    battery = _bounded(obj, "battery") if obj.get("battery") is not None else None
    if "seq" in obj and (isinstance(obj["seq"], bool) or not isinstance(obj["seq"], int)):
        raise _refused(WRONG_TYPE, "seq", "seq must be an integer")
    return Ping(driver_id, lat, lng, accuracy, speed, heading, timestamp, battery)


def validate_batch(items: Any, *, now: float, max_age_s: float, max_future_s: float,
                   max_items: int) -> list[Ping]:
    """All or nothing: one bad ping refuses the batch, and every bad ping is reported.

    The batch's refusal (422) carries the first bad ping's reason and field, and in ``errors``
    every bad ping as ``error_item`` lists it; a list that is not one, empty or too long is
    refused as a whole (422, or 413 ``too_large``)."""
    if not isinstance(items, list):
        raise _refused(WRONG_TYPE, "pings", "pings must be a JSON array")
    if not items:
        raise _refused(MISSING_FIELD, "pings", "pings is empty")
    if len(items) > max_items:
        raise Refusal(413, TOO_LARGE, f"{len(items)} pings in one request; the limit is {max_items}", "pings")
    pings: list[Ping] = []
    errors: list[Refusal] = []
    for index, item in enumerate(items):
        try:
            pings.append(validate_ping(item, now=now, max_age_s=max_age_s, max_future_s=max_future_s))
        except Refusal as exc:
            exc.index = index
            errors.append(exc)
    if errors:
        first = errors[0]
        raise Refusal(422, first.reason, f"{len(errors)} ping(s) refused; nothing was accepted", first.field,
                      errors=[error_item(e) for e in errors])
    return pings
