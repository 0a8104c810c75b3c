"""The OsmAnd protocol, the rules: a tracker's fix read into the engine's own ping. Pure: no I/O
(the route is ``dispatch.gateway.trackers``).

Two shapes arrive, one fix per request, as those clients send them:

* **Query or form** (OsmAnd, Traccar Client up to 8, hundreds of GPS trackers):
  ``id`` (or ``deviceid``), ``lat``, ``lon``, ``timestamp`` (epoch seconds, epoch
  milliseconds, or ISO 8601), ``speed`` in **knots**, ``bearing`` (degrees), ``altitude``,
  ``accuracy`` (metres), ``batt`` (percent), ``hdop``. Other attributes are ignored.
* **JSON** (Traccar Client 9): ``{"device_id", "location": {"timestamp" (ISO 8601),
  "coords": {"latitude", "longitude", "accuracy", "speed" (**m/s**), "heading",
  "altitude"}, "battery": {"level" (0-1), "is_charging"}, "is_moving", "odometer",
  "event"}}``.

What the engine's ping needs and a tracker may not send: ``speed`` and ``heading``
(-1 is "unknown" in Traccar Client 9) default to 0; ``accuracy`` to ``5 x hdop`` metres when
only the HDOP is known, else ``UNKNOWN_ACCURACY_M`` (a phone's poor fix; the worker's jump
check still applies). Every value is then checked by ``dispatch.gateway.pings.validate_ping``
like a websocket ping, and a refusal names the field **as the tracker sent it**
(``lon``, ``bearing``, ``location.coords.longitude``), not the engine's name.

Numbers in the query are decimal text only: ``nan``, ``inf``, hex, ``1_000`` and the like are
refused (Python's ``float`` would take them all).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dispatch.core.errors import (
    INVALID_VALUE,
    MISSING_FIELD,
    NOT_FINITE,
    TOO_LONG,
    WRONG_TYPE,
    Refusal,
)

__all__ = ["KNOTS", "UNKNOWN_ACCURACY_M", "TrackerFix", "from_json", "from_params", "rename_field"]

KNOTS = 0.514444               # metres per second in a knot
UNKNOWN_ACCURACY_M = 50.0
HDOP_METRES = 5.0              # metres of horizontal error per unit of HDOP (a common rule of thumb)
PARAM_MAX = 200                # characters of one parameter's value
_DECIMAL = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,3})?$")
_NOT_FINITE = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}
MS_THRESHOLD = 10_000_000_000   # an epoch value above this is in milliseconds (year 2286 in seconds)

# engine field -> the tracker's own name, per shape
QUERY_NAMES = {"lat": "lat", "lng": "lon", "speed": "speed", "heading": "bearing", "accuracy": "accuracy",
               "timestamp": "timestamp", "battery": "batt", "driver_id": "id"}
JSON_NAMES = {"lat": "location.coords.latitude", "lng": "location.coords.longitude",
              "speed": "location.coords.speed", "heading": "location.coords.heading",
              "accuracy": "location.coords.accuracy", "timestamp": "location.timestamp",
              "battery": "location.battery.level", "driver_id": "device_id"}


@dataclass(frozen=True)
class TrackerFix:
    """A fix read from a tracker request: the key it came with and the engine ping's fields
    (without ``driver_id``: the key decides whose it is). ``names`` maps engine fields to the
    tracker's own, for refusals."""

    key: str
    ping: dict[str, Any]
    names: Mapping[str, str]


def rename_field(refusal: Refusal, names: Mapping[str, str]) -> Refusal:
    """The refusal with its field as the tracker named it."""
    if refusal.field in names:
        refusal.field = names[refusal.field]
    return refusal


def _number_text(value: str, field: str) -> float:
    text = value.strip()
    if text.lower() in _NOT_FINITE:
        raise Refusal(422, NOT_FINITE, f"{field} must be a finite number", field)
    if not _DECIMAL.match(text):
        raise Refusal(422, WRONG_TYPE, f"{field} must be a decimal number", field)
    number = float(text)
    if not math.isfinite(number):
        raise Refusal(422, NOT_FINITE, f"{field} must be a finite number", field)
    return number


def _timestamp_text(value: str, field: str) -> float:
    """Epoch seconds or milliseconds, or ISO 8601 (``Z`` or an offset; no offset is UTC)."""
    text = value.strip()
    if _DECIMAL.match(text):
        number = float(text)
        return number / 1000 if number > MS_THRESHOLD else number
    return _iso(text, field)


def _iso(text: str, field: str) -> float:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise Refusal(422, WRONG_TYPE, f"{field} must be epoch seconds or ISO 8601", field) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _accuracy(accuracy: float | None, hdop: float | None) -> float:
    if accuracy is not None:
        return accuracy
    if hdop is not None and 0 < hdop <= 100:
        return hdop * HDOP_METRES
    return UNKNOWN_ACCURACY_M


def from_params(params: Mapping[str, str]) -> TrackerFix:
    """A fix from the query or form parameters (first value of each name)."""
    for name, value in params.items():
        if len(value) > PARAM_MAX:
            raise Refusal(422, TOO_LONG, f"{name[:40]} is limited to {PARAM_MAX} characters", name[:40])
    key = params.get("id") or params.get("deviceid")
    if not key:
        raise Refusal(401, MISSING_FIELD, "id (the tracker key) is required", "id")
    for required in ("lat", "lon", "timestamp"):
        if not params.get(required, "").strip():
            raise Refusal(422, MISSING_FIELD, f"{required} is required", required)

    def number(name: str) -> float | None:
        raw = params.get(name)
        return None if raw is None or not raw.strip() else _number_text(raw, name)

    speed = number("speed")
    bearing = number("bearing")
    number("altitude")   # checked, not kept
    battery = number("batt")
    ping = {"lat": number("lat"), "lng": number("lon"), "timestamp": _timestamp_text(params["timestamp"], "timestamp"),
            "speed": 0.0 if speed is None else speed * KNOTS, "heading": 0.0 if bearing is None else bearing,
            "accuracy": _accuracy(number("accuracy"), number("hdop"))}
    if battery is not None:
        ping["battery"] = battery
    return TrackerFix(key, ping, QUERY_NAMES)


def _json_number(obj: Mapping[str, Any], name: str, field: str, *, unknown_below_zero: bool = False) -> float | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Refusal(422, WRONG_TYPE, f"{field} must be a number", field)
    number = float(value)
    if not math.isfinite(number):
        raise Refusal(422, NOT_FINITE, f"{field} must be finite", field)
    return None if unknown_below_zero and number < 0 else number


def _object(value: Any, field: str, *, required: bool = True) -> Mapping[str, Any]:
    if value is None and not required:
        return {}
    if value is None:
        raise Refusal(422, MISSING_FIELD, f"{field} is required", field)
    if not isinstance(value, dict):
        raise Refusal(422, WRONG_TYPE, f"{field} must be an object", field)
    return value


def from_json(body: Any) -> TrackerFix:
    """A fix from Traccar Client 9's JSON body."""
    root = _object(body, "body")
    key = root.get("device_id")
    if not key:
        raise Refusal(401, MISSING_FIELD, "device_id (the tracker key) is required", "device_id")
    if not isinstance(key, str):
        raise Refusal(401, WRONG_TYPE, "device_id must be text", "device_id")
    location = _object(root.get("location"), "location")
    coords = _object(location.get("coords"), "location.coords")
    battery = _object(location.get("battery"), "location.battery", required=False)
    for name in ("latitude", "longitude"):
        if coords.get(name) is None:
            raise Refusal(422, MISSING_FIELD, f"location.coords.{name} is required", f"location.coords.{name}")
    stamp = location.get("timestamp")
    if stamp is None:
        raise Refusal(422, MISSING_FIELD, "location.timestamp is required", "location.timestamp")
    if isinstance(stamp, str):
        if len(stamp) > PARAM_MAX:
            raise Refusal(422, TOO_LONG, "location.timestamp is too long", "location.timestamp")
        timestamp = _iso(stamp.strip(), "location.timestamp")
    elif isinstance(stamp, int | float) and not isinstance(stamp, bool) and math.isfinite(stamp):
        timestamp = stamp / 1000 if stamp > MS_THRESHOLD else float(stamp)
    else:
        raise Refusal(422, WRONG_TYPE, "location.timestamp must be ISO 8601 or epoch seconds", "location.timestamp")
    speed = _json_number(coords, "speed", "location.coords.speed", unknown_below_zero=True)
    heading = _json_number(coords, "heading", "location.coords.heading", unknown_below_zero=True)
    _json_number(coords, "altitude", "location.coords.altitude")
    level = _json_number(battery, "level", "location.battery.level", unknown_below_zero=True)
    if level is not None and level > 1:
        raise Refusal(422, INVALID_VALUE, "location.battery.level is a fraction from 0 to 1",
                      "location.battery.level")
    ping = {"lat": _json_number(coords, "latitude", "location.coords.latitude"),
            "lng": _json_number(coords, "longitude", "location.coords.longitude"),
            "timestamp": timestamp, "speed": 0.0 if speed is None else speed,
            "heading": 0.0 if heading is None else heading,
            "accuracy": _accuracy(_json_number(coords, "accuracy", "location.coords.accuracy",
                                               unknown_below_zero=True), None)}
    if level is not None:
        ping["battery"] = round(level * 100, 1)
    return TrackerFix(key, ping, JSON_NAMES)
