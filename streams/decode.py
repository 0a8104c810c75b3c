"""Decoding a `driver-locations` message into a DriverPing: pure, strict, and cheap.

The gateway validated the ping already, but the agent trusts nothing on the topic: a producer
with a bug, an old gateway or a hand-typed message must not crash ingestion or poison Redis.
``decode_ping`` is the only way from bytes to a ``DriverPing``; what it refuses goes to the
dead-letter topic with the reason.

Reasons are short machine-friendly strings, ``kind`` or ``kind:field``:

==========================  ========================================================
``too_large``               a ping object over MAX_PING_BYTES, a message over
                            MAX_MESSAGE_BYTES or an array over MAX_PINGS_PER_MESSAGE
``bad_json``                not UTF-8 JSON, or not a JSON object (or array of them)
``empty_batch``             an empty array
``mixed_drivers``           an array holding pings of more than one driver or tenant
``schema_version``          ``v`` is not SCHEMA_VERSION
``missing_field:<f>``       a required field is absent (``null`` counts as absent)
``wrong_type:<f>``          a number that is not a number (``true`` is not a number)
                            or a string that is not a string
``not_finite:<f>``          NaN or ±Infinity (Python's json accepts them)
``out_of_range:<f>``        outside the physical bounds below; for vehicle_type, longer
                            than 50 or outside ``[A-Za-z0-9_.- ]``
``bad_uuid:<f>``            driver_id / tenant_id is not a UUID
``future_timestamp:ts``     the fix is stamped more than ``max_future_s`` after the
                            gateway received it (a wrong device clock would otherwise
                            freeze the driver: every honest ping after it looks old)
``bad_bundle``              an object with ``uploads`` that is not a bundle of version
                            BUNDLE_VERSION holding an array of uploads
==========================  ========================================================

A message is one ping, one driver's upload (an array of pings) or a bundle of uploads
(``streams.bundles``); ``decode_message`` takes all three and judges each upload of a bundle on
its own.

Unknown fields are ignored (a tolerant reader, so that a newer gateway adding an optional
field does not dead-letter everything during a rolling upgrade); UUIDs are normalised to
canonical lower-case text, because they become Redis keys.
"""

from __future__ import annotations

import math
import re
from typing import Any

from schema.ids import InvalidId, canonical_uuid
from streams import codec
from streams.bundles import BUNDLE_VERSION, MAX_BUNDLE_BYTES
from streams.records import SCHEMA_VERSION, DriverPing

MAX_PING_BYTES = 4096          # a ping is ~330 bytes of JSON; anything near this is not a ping
MAX_PINGS_PER_MESSAGE = 500    # the gateway's largest batch
MAX_MESSAGE_BYTES = MAX_PINGS_PER_MESSAGE * MAX_PING_BYTES // 4
MAX_BUNDLE_MESSAGE_BYTES = 4 * MAX_BUNDLE_BYTES   # the gateway builds bundles of at most MAX_BUNDLE_BYTES
MAX_VEHICLE_TYPE_LEN = 50      # drivers.vehicle_type is VARCHAR(50)
# Same physical bounds as the gateway's validation (dispatch/gateway/pings.py; the record's field names differ).
BOUNDS: dict[str, tuple[float, float]] = {
    "lat": (-90.0, 90.0),
    "lng": (-180.0, 180.0),
    "accuracy_m": (0.0, 10_000.0),
    "speed_mps": (0.0, 100.0),
    "heading_deg": (0.0, 360.0),
    "battery": (0.0, 100.0),
    "ts": (1.0, 4_102_444_800.0),           # epoch seconds, before 2100
    "received_at": (1.0, 4_102_444_800.0),
}
_VEHICLE_TYPE = re.compile(r"[A-Za-z0-9_.\- ]+")
_json_loads = codec.loads
_isfinite = math.isfinite


class UndecodablePing(ValueError):
    """A message on the locations topic is not a valid ping; ``reason`` says why (see module)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _number(obj: dict[str, Any], field: str) -> float:
    value = obj.get(field)
    if value is None:
        raise UndecodablePing(f"missing_field:{field}")
    # bool is an int subclass: true is not a coordinate.
    if value.__class__ is not float and (value.__class__ is not int):
        raise UndecodablePing(f"wrong_type:{field}")
    try:
        value = float(value)
    except OverflowError:  # an integer literal with hundreds of digits
        raise UndecodablePing(f"out_of_range:{field}") from None
    if not _isfinite(value):
        raise UndecodablePing(f"not_finite:{field}")
    lo, hi = BOUNDS[field]
    if not lo <= value <= hi:
        raise UndecodablePing(f"out_of_range:{field}")
    return value


def _uuid(obj: dict[str, Any], field: str) -> str:
    value = obj.get(field)
    if value is None:
        raise UndecodablePing(f"missing_field:{field}")
    if value.__class__ is not str:
        raise UndecodablePing(f"wrong_type:{field}")
    try:
        return canonical_uuid(value, field)
    except InvalidId:
        raise UndecodablePing(f"bad_uuid:{field}") from None


def _load(raw: bytes | bytearray | memoryview | None, limit: int) -> Any:
    if raw is None:
        raise UndecodablePing("bad_json")
    if len(raw) > limit:
        raise UndecodablePing("too_large")
    try:
        return _json_loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise UndecodablePing("bad_json") from None


def decode_ping(raw: bytes | bytearray | memoryview | None, *, max_future_s: float = 60.0) -> DriverPing:
    """Decode one message value holding one ping object, or raise UndecodablePing(reason)."""
    return _decode_object(_load(raw, MAX_PING_BYTES), max_future_s)


def decode_pings(raw: bytes | bytearray | memoryview | None, *, max_future_s: float = 60.0) -> list[DriverPing]:
    """Decode a message value: one ping object, or a JSON array of one driver's pings.

    The gateway sends each upload (one driver's batch of fixes) as one message: a Kafka
    message per fix would cost the broker, the gateway and the agent 5-10x more per ping. All
    pings of an array must belong to one driver and tenant (the message key); one bad ping
    dead-letters the whole message, as the gateway would have refused the whole upload.
    """
    return _decode_plain(_load(raw, MAX_MESSAGE_BYTES), len(raw), max_future_s)


def _decode_plain(obj: Any, size: int, max_future_s: float) -> list[DriverPing]:
    """A parsed message that is not a bundle: an upload array, or one ping object of at most
    MAX_PING_BYTES (``size`` is the raw message's)."""
    if obj.__class__ is list:
        return _decode_upload(obj, max_future_s)
    if size > MAX_PING_BYTES:
        raise UndecodablePing("too_large")
    return [_decode_object(obj, max_future_s)]


# An upload of a bundle that did not decode: its reason and the upload's decoded JSON (for the
# dead letter's preview), or None for the whole message.
Rejected = tuple[UndecodablePing, Any]


def decode_message(raw: bytes | bytearray | memoryview | None, *,
                   max_future_s: float = 60.0) -> tuple[list[DriverPing], list[Rejected]]:
    """Decode any message of the topic: (the pings, the rejected parts).

    A ping or an upload is all or nothing, as in ``decode_pings`` (a rejection's part is then
    None: the whole message). In a bundle each upload is judged on its own: the good ones'
    pings are returned, each bad one is rejected with its reason and its JSON."""
    try:
        # Only a bundle (a JSON object) may be larger than MAX_MESSAGE_BYTES: refuse anything
        # else before parsing it.
        limit = MAX_BUNDLE_MESSAGE_BYTES if raw is not None and raw[:1] == b"{" else MAX_MESSAGE_BYTES
        obj = _load(raw, limit)
        if obj.__class__ is not dict or "uploads" not in obj:
            if len(raw) > MAX_MESSAGE_BYTES:
                raise UndecodablePing("too_large")
            return _decode_plain(obj, len(raw), max_future_s), []
        uploads = obj["uploads"]
        version = obj.get("v")
        if version.__class__ is not int or version != BUNDLE_VERSION or uploads.__class__ is not list:
            raise UndecodablePing("bad_bundle")
    except UndecodablePing as exc:
        return [], [(exc, None)]
    pings: list[DriverPing] = []
    rejected: list[Rejected] = []
    for upload in uploads:
        if upload.__class__ is not list:
            rejected.append((UndecodablePing("bad_json"), upload))
            continue
        try:
            pings += _decode_upload(upload, max_future_s)
        except UndecodablePing as exc:
            rejected.append((exc, upload))
    return pings, rejected


def _decode_upload(obj: list[Any], max_future_s: float) -> list[DriverPing]:
    if not obj:
        raise UndecodablePing("empty_batch")
    if len(obj) > MAX_PINGS_PER_MESSAGE:
        raise UndecodablePing("too_large")
    pings = [_decode_object(item, max_future_s) for item in obj]
    first = pings[0]
    for ping in pings:
        if ping.driver_id != first.driver_id or ping.tenant_id != first.tenant_id:
            raise UndecodablePing("mixed_drivers")
    return pings


# The fields every ping has, in DriverPing's order, with their bounds: the fast path's table.
_REQUIRED_NUMBERS = tuple((f, *BOUNDS[f]) for f in ("lat", "lng", "accuracy_m", "speed_mps", "heading_deg", "ts",
                                                    "received_at"))
# Ids already seen in canonical form (drivers repeat every upload): a set lookup instead of a
# regular expression per id. Cleared when full, so it stays bounded.
_KNOWN_IDS: set[str] = set()
_KNOWN_IDS_MAX = 200_000


def _decode_object(obj: Any, max_future_s: float) -> DriverPing:
    """One ping object. Well-formed pings take ``_fast``; anything it is unsure of goes the
    field-by-field way, which names the first fault."""
    if obj.__class__ is dict:
        ping = _fast(obj, max_future_s)
        if ping is not None:
            return ping
    return _checked(obj, max_future_s)


def _fast(obj: dict[str, Any], max_future_s: float) -> DriverPing | None:
    """The ping if every field is present, of its exact type, finite and within bounds, the
    ids canonical and known, and the fix not from the future; otherwise None (no reason: the
    checked path finds it). NaN fails every comparison, so it falls through too."""
    if obj.get("v") != SCHEMA_VERSION or obj["v"].__class__ is not int:
        return None
    driver_id, tenant_id = obj.get("driver_id"), obj.get("tenant_id")
    if (driver_id.__class__ is not str or tenant_id.__class__ is not str
            or driver_id not in _KNOWN_IDS or tenant_id not in _KNOWN_IDS):
        return None
    numbers = []
    for field, lo, hi in _REQUIRED_NUMBERS:
        value = obj.get(field)
        if value.__class__ is not float and value.__class__ is not int or not lo <= value <= hi:
            return None   # (an int is compared exactly, so converting a bounded one cannot overflow)
        numbers.append(float(value))
    battery = obj.get("battery")
    if battery is not None:
        if battery.__class__ is not float and battery.__class__ is not int or not 0.0 <= battery <= 100.0:
            return None
        battery = float(battery)
    vehicle_type = obj.get("vehicle_type")
    if vehicle_type.__class__ is not str or vehicle_type not in _KNOWN_VEHICLES:
        return None
    lat, lng, accuracy, speed, heading, ts, received_at = numbers
    if ts > received_at + max_future_s:
        return None
    return DriverPing(SCHEMA_VERSION, driver_id, tenant_id, lat, lng, accuracy, speed, heading, ts,
                      received_at, vehicle_type, battery)


# Vehicle types already accepted by the checked path (a handful in practice), bounded like ids.
_KNOWN_VEHICLES: set[str] = set()
_KNOWN_VEHICLES_MAX = 1_000


def _remember(known: set[str], value: str, limit: int) -> None:
    if len(known) >= limit:
        known.clear()
    known.add(value)


def _checked(obj: Any, max_future_s: float) -> DriverPing:
    if obj.__class__ is not dict:
        raise UndecodablePing("bad_json")
    version = obj.get("v")
    if version is None:
        raise UndecodablePing("missing_field:v")
    if version.__class__ is not int or version != SCHEMA_VERSION:
        raise UndecodablePing("schema_version")
    driver_id = _uuid(obj, "driver_id")
    tenant_id = _uuid(obj, "tenant_id")
    lat = _number(obj, "lat")
    lng = _number(obj, "lng")
    accuracy = _number(obj, "accuracy_m")
    speed = _number(obj, "speed_mps")
    heading = _number(obj, "heading_deg")
    ts = _number(obj, "ts")
    received_at = _number(obj, "received_at")
    vehicle_type = obj.get("vehicle_type")
    if vehicle_type is None:
        raise UndecodablePing("missing_field:vehicle_type")
    if vehicle_type.__class__ is not str:
        raise UndecodablePing("wrong_type:vehicle_type")
    if len(vehicle_type) > MAX_VEHICLE_TYPE_LEN or not _VEHICLE_TYPE.fullmatch(vehicle_type):
        raise UndecodablePing("out_of_range:vehicle_type")
    battery = _number(obj, "battery") if obj.get("battery") is not None else None
    if ts > received_at + max_future_s:
        raise UndecodablePing("future_timestamp:ts")
    _remember(_KNOWN_VEHICLES, vehicle_type, _KNOWN_VEHICLES_MAX)
    _remember(_KNOWN_IDS, driver_id, _KNOWN_IDS_MAX)
    _remember(_KNOWN_IDS, tenant_id, _KNOWN_IDS_MAX)
    return DriverPing(SCHEMA_VERSION, driver_id, tenant_id, lat, lng, accuracy, speed, heading, ts,
                      received_at, vehicle_type, battery)
