"""Validating a driver's GPS ping: a pure function over plain data, no I/O.

A ping arrives as a decoded JSON object. Every rejection names the field and a reason from a
small fixed vocabulary (the reasons are also the labels of the rejection counter), so that a
driver app, a tracker integrator and an operator all see the same thing.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any

# Reasons a ping (or a whole request) is refused. Stable strings: clients and dashboards key on them.
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
NOT_FINITE = "not_finite"
OUT_OF_RANGE = "out_of_range"
NULL_ISLAND = "null_island"
FUTURE_TIMESTAMP = "future_timestamp"
STALE_TIMESTAMP = "stale_timestamp"
UNKNOWN_FIELD = "unknown_field"
TOO_LARGE = "too_large"
BAD_JSON = "bad_json"
WRONG_DRIVER = "wrong_driver"
UNKNOWN_TOKEN = "unknown_token"
REVOKED_TOKEN = "revoked_token"
EXPIRED_TOKEN = "expired_token"
RATE_LIMITED = "rate_limited"

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


class PingRejected(ValueError):
    """A ping or request is refused; ``reason`` is one of the constants above."""

    def __init__(self, reason: str, field: str | None, message: str, index: int | None = None):
        super().__init__(message)
        self.reason = reason
        self.field = field
        self.message = message
        self.index = index

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reason": self.reason, "field": self.field, "message": self.message}
        if self.index is not None:
            out["index"] = self.index
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
        raise PingRejected(WRONG_TYPE, field, f"{field} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise PingRejected(NOT_FINITE, field, f"{field} must be finite, got {value}")
    return value


def _bounded(obj: dict[str, Any], field: str) -> float:
    value = _number(obj, field)
    lo, hi = BOUNDS[field]
    if not lo <= value <= hi:
        raise PingRejected(OUT_OF_RANGE, field, f"{field} must be between {lo:g} and {hi:g}, got {value:g}")
    return value


def validate_ping(obj: Any, *, now: float, max_age_s: float, max_future_s: float) -> Ping:
    """Return a validated ping or raise PingRejected naming the first bad field."""
    if not isinstance(obj, dict):
        raise PingRejected(WRONG_TYPE, None, f"a ping must be a JSON object, got {type(obj).__name__}")
    for field in REQUIRED:
        if field not in obj:
            raise PingRejected(MISSING_FIELD, field, f"{field} is required")
    for field in obj:
        if field not in REQUIRED and field not in OPTIONAL and field != "type":
            shown = field if len(field) <= 40 else field[:40] + "…"
            raise PingRejected(UNKNOWN_FIELD, shown, f"unknown field {shown!r}")
    driver_id = obj["driver_id"]
    if not isinstance(driver_id, str):
        raise PingRejected(WRONG_TYPE, "driver_id", "driver_id must be a UUID string")
    try:
        driver_id = str(uuid.UUID(driver_id))
    except ValueError:
        raise PingRejected(WRONG_TYPE, "driver_id", "driver_id is not a UUID") from None
    lat = _bounded(obj, "lat")
    lng = _bounded(obj, "lng")
    if abs(lat) < NULL_ISLAND_EPS and abs(lng) < NULL_ISLAND_EPS:
        raise PingRejected(NULL_ISLAND, "lat", "(0, 0) is the GPS chip's no-fix value, not a position")
    accuracy = _bounded(obj, "accuracy")
    speed = _bounded(obj, "speed")
    heading = _bounded(obj, "heading")
    timestamp = _number(obj, "timestamp")
    if timestamp > now + max_future_s:
        raise PingRejected(FUTURE_TIMESTAMP, "timestamp",
                           f"timestamp is {timestamp - now:.0f} s in the future (limit {max_future_s:g} s); "
                           "check the device clock")
    if timestamp < now - max_age_s:
        raise PingRejected(STALE_TIMESTAMP, "timestamp",
                           f"timestamp is {now - timestamp:.0f} s old; positions older than "
                           f"{max_age_s:g} s are no longer live")
    battery = _bounded(obj, "battery") if obj.get("battery") is not None else None
    if "seq" in obj and (isinstance(obj["seq"], bool) or not isinstance(obj["seq"], int)):
        raise PingRejected(WRONG_TYPE, "seq", "seq must be an integer")
    return Ping(driver_id, lat, lng, accuracy, speed, heading, timestamp, battery)


def validate_batch(items: Any, *, now: float, max_age_s: float, max_future_s: float,
                   max_items: int) -> list[Ping]:
    """All or nothing: one bad ping refuses the batch, and every bad ping is reported."""
    if not isinstance(items, list):
        raise PingRejected(WRONG_TYPE, "pings", "pings must be a JSON array")
    if not items:
        raise PingRejected(MISSING_FIELD, "pings", "pings is empty")
    if len(items) > max_items:
        raise PingRejected(TOO_LARGE, "pings", f"{len(items)} pings in one request; the limit is {max_items}")
    pings: list[Ping] = []
    errors: list[PingRejected] = []
    for index, item in enumerate(items):
        try:
            pings.append(validate_ping(item, now=now, max_age_s=max_age_s, max_future_s=max_future_s))
        except PingRejected as exc:
            exc.index = index
            errors.append(exc)
    if errors:
        raise BatchRejected(errors)
    return pings


class BatchRejected(ValueError):
    def __init__(self, errors: list[PingRejected]):
        super().__init__(f"{len(errors)} ping(s) rejected")
        self.errors = errors
