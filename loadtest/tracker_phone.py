"""Drivers of a replayed city whose positions come from a GPS tracker (the OsmAnd protocol).

``wakala loadtest replay --osmand-share 0.3`` sends three drivers in ten through
``/v1/trackers/osmand`` instead of their app's websocket pings, as a fleet that runs Traccar
Client or cheap trackers beside the driver app would. Which drivers: a seeded draw over the
scenario's drivers (:func:`tracker_drivers`), so a replay of the same file with the same share
picks the same ones. Each of them keeps the app's websocket for its shift and offers (a tracker
only reports positions) and never sends a ping over it.

The request shapes rotate over the chosen drivers, one shape per driver for its whole shift,
as a real fleet mixes devices:

* ``get``: OsmAnd and Traccar Client 8, the fix in the query string of a GET;
* ``json``: Traccar Client 9, a JSON POST (``device_id``, ``location.coords``);
* ``form``: many hardware trackers, the same fields as ``get`` in a form-encoded POST body.

Units are the protocol's, not the engine's: speed in **knots** in the query and form shapes,
**m/s** in the JSON one; the query timestamp in epoch **milliseconds** (fixes come more often
than once a wall second at 10x and 20x; whole seconds would stamp two fixes alike), the JSON
one ISO 8601 with milliseconds; battery in percent (``batt``) or 0-1 (``battery.level``).

:func:`tracker_request` is pure (a fix in, the request out); :func:`send_fix` is the thin I/O
beside it.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

__all__ = ["KNOTS_PER_MPS", "OSMAND_PATH", "SHAPES", "TrackerRequest", "parse_share", "send_fix",
           "tracker_drivers", "tracker_request"]

OSMAND_PATH = "/v1/trackers/osmand"
SHAPES = ("get", "json", "form")
KNOTS_PER_MPS = 3600.0 / 1852.0     # a knot is one nautical mile (1852 m) an hour


def parse_share(text: object, option: str = "--osmand-share") -> float:
    """A share of drivers in [0, 1] (``0.3``); a ValueError naming ``option`` otherwise
    (NaN, infinities, percentages, negatives)."""
    try:
        share = float(str(text).strip())
    except ValueError:
        raise ValueError(f"{option} must be a number between 0 and 1, got {text!r}") from None
    if not math.isfinite(share) or not 0.0 <= share <= 1.0:
        raise ValueError(f"{option} must be a number between 0 and 1, got {text!r}")
    return share


def tracker_drivers(driver_keys: Sequence[str], share: float, seed: int) -> dict[str, str]:
    """Driver key -> request shape for ``round(share * n)`` of the drivers, drawn with ``seed``
    (the same scenario and share always choose the same drivers), shapes in turn."""
    share = parse_share(share)
    count = round(share * len(driver_keys))
    chosen = set(random.Random(f"osmand:{seed}").sample(range(len(driver_keys)), count))
    ordered = [key for i, key in enumerate(driver_keys) if i in chosen]
    return {key: SHAPES[i % len(SHAPES)] for i, key in enumerate(ordered)}


@dataclass(frozen=True)
class TrackerRequest:
    """One fix as the tracker sends it: ``method`` and the query ``params``, a ``form`` body
    or a ``json`` body (at most one of the two)."""

    method: str
    params: dict[str, str] | None = None
    form: dict[str, str] | None = None
    json: dict[str, Any] | None = None


def tracker_request(shape: str, key: str, *, lat: float, lng: float, accuracy_m: float, speed_mps: float,
                    heading: float, timestamp: float, battery: float = 0.8) -> TrackerRequest:
    """The request a tracker of ``shape`` sends for one fix (``battery`` 0-1)."""
    if shape == "json":
        stamp = datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return TrackerRequest("POST", json={"device_id": key, "location": {
            "timestamp": stamp, "is_moving": speed_mps > 0, "event": "motionchange" if speed_mps > 0 else "heartbeat",
            "coords": {"latitude": round(lat, 7), "longitude": round(lng, 7), "accuracy": round(accuracy_m, 1),
                       "speed": round(speed_mps, 2), "heading": round(heading, 1), "altitude": 1600.0},
            "battery": {"level": round(battery, 2), "is_charging": False}}})
    if shape not in ("get", "form"):
        raise ValueError(f"unknown tracker shape {shape!r}; known: {', '.join(SHAPES)}")
    fields = {"id": key, "lat": f"{lat:.6f}", "lon": f"{lng:.6f}", "timestamp": str(round(timestamp * 1000)),
              "speed": f"{speed_mps * KNOTS_PER_MPS:.2f}", "bearing": f"{heading:.1f}",
              "accuracy": f"{accuracy_m:.1f}", "altitude": "1600", "batt": f"{battery * 100:.0f}"}
    return TrackerRequest("GET", params=fields) if shape == "get" else TrackerRequest("POST", form=fields)


async def send_fix(http: httpx.AsyncClient, request: TrackerRequest) -> tuple[bool, str | None, float]:
    """Send one fix: (accepted, the refusal's reason or None, milliseconds). The engine's
    ``{"accepted": 0, "reason": ...}`` (a stale fix) is a refusal like an error answer; a
    transport failure raises ``httpx.HTTPError`` for the caller to count."""
    started = time.perf_counter()
    resp = await http.request(request.method, OSMAND_PATH, params=request.params, data=request.form,
                              json=request.json)
    ms = (time.perf_counter() - started) * 1000
    try:
        body = resp.json()
    except ValueError:
        body = None
    if resp.status_code == 200 and isinstance(body, dict) and "accepted" in body:
        # {"accepted": 0} without a reason is the websocket's ``ack`` of 0: refused, unnamed
        reason = body.get("reason")
        return body["accepted"] == 1, reason if isinstance(reason, str) else None, ms
    if isinstance(body, dict):
        error = body.get("error")
        reason = error.get("reason") if isinstance(error, dict) else body.get("reason")
        if isinstance(reason, str):
            return False, reason, ms
    return False, f"http_{resp.status_code}", ms
