"""What the tracking hub sends, built without I/O: the frames and one socket's frame queue.

The hub (``dispatch.tracking.hub``) reads Redis and Kafka and writes to websockets; every
decision about *what* goes on the wire is made here, over plain dicts and strings, so it
is tested without a service. The frames after the snapshot (``dispatch.tracking.snapshot``):

* ``position``: the driver's position and the live ETAs, from the tracking document the
  location worker publishes (and ``stop``/``stops`` for a bundle's delivery). The driver's id
  stays out: it is not the customer's business.
* ``status`` (``to_state`` of a ``delivery-events`` message) and ``arrived`` (the tracker's
  ``arrived_dropoff`` event, which changes no state).
* ``order``: a vendor screen's order, as it stands after the event.
* ``heartbeat``: every ``heartbeat_s``, so a page can tell a quiet delivery from a dead link.

Frames are serialised once (:func:`frame_text`) and the same text goes to every socket that
shows them.

The :class:`FrameQueue` is where a slow client is handled: positions are coalesced into one
slot (a slow reader gets the newest position, never a backlog), every other frame queues in
order up to a limit, and a frame beyond it is refused so the hub can close that client
instead of letting one reader hold memory for everybody.
"""

from __future__ import annotations

import contextlib
import json
from collections import deque
from datetime import datetime
from typing import Any

from dispatch.deliveries.state import ARRIVED_DROPOFF_EVENT

__all__ = [
    "FrameQueue",
    "epoch_seconds",
    "frame_text",
    "heartbeat_frame",
    "order_frame",
    "position_frame",
    "published_position_frame",
    "status_frame",
]

def frame_text(frame: dict[str, Any]) -> str:
    """The frame as it goes on the wire: compact JSON (datetimes and UUIDs as strings)."""
    return json.dumps(frame, separators=(",", ":"), default=str)


class FrameQueue:
    """One client's outgoing frames: ordered frames up to ``limit``, plus one position slot.

    ``put`` refuses (returns False) a frame beyond the limit: the caller closes the client.
    ``pop`` gives queued frames first, in order, then the latest position. A frame may carry a
    key (its event id) so frames already shown by a snapshot can be discarded.
    """

    __slots__ = ("frames", "limit", "position")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit = limit
        self.frames: deque[tuple[str | None, str]] = deque()
        self.position: str | None = None

    def put(self, frame: str, key: str | None = None) -> bool:
        if len(self.frames) >= self.limit:
            return False
        self.frames.append((key, frame))
        return True

    def put_position(self, frame: str) -> None:
        self.position = frame   # coalesced: the older one is never sent

    def drop_position(self) -> None:
        self.position = None

    def discard(self, keys: frozenset[str] | set[str]) -> None:
        if keys and self.frames:
            self.frames = deque(f for f in self.frames if f[0] not in keys)

    def pop(self) -> str | None:
        if self.frames:
            return self.frames.popleft()[1]
        frame, self.position = self.position, None
        return frame

    def __len__(self) -> int:
        return len(self.frames)


def position_frame(document: dict[str, Any]) -> dict[str, Any] | None:
    """The watcher's position frame from a tracking document; None if it has no driver."""
    driver = document.get("driver")
    if not isinstance(driver, dict):
        return None
    frame = {"type": "position", "lat": driver.get("lat"), "lng": driver.get("lng"),
             "heading_deg": driver.get("heading_deg"), "speed_mps": driver.get("speed_mps"),
             "ts": driver.get("ts"), "eta_pickup_s": document.get("eta_pickup_s"),
             "eta_dropoff_s": document.get("eta_dropoff_s"), "received_at": document.get("received_at")}
    if isinstance(document.get("stop"), int) and isinstance(document.get("stops"), int):
        frame["stop"], frame["stops"] = document["stop"], document["stops"]   # a bundle's stop k of n
    return frame


def published_position_frame(data: Any, tenant_id: str) -> dict[str, Any] | None:
    """The position frame of a tracking document as published (JSON), or None.

    None for anything that is not a JSON object of *tenant_id*: the channel is named by the
    delivery id alone, so the tenant check keeps one tenant's positions from ever reaching
    another tenant's watcher.
    """
    try:
        document = json.loads(data)
    except (ValueError, TypeError):
        return None
    if not isinstance(document, dict) or document.get("tenant_id") != tenant_id:
        return None
    return position_frame(document)


def status_frame(event: dict[str, Any]) -> dict[str, Any] | None:
    """The watcher's frame for a ``delivery-events`` message; None for events it does not show."""
    payload = event.get("payload")
    if not isinstance(payload, dict):
        return None
    if event.get("type") == ARRIVED_DROPOFF_EVENT:
        return {"type": "arrived", "at": "dropoff"}
    to_state = payload.get("to_state")
    if not isinstance(to_state, str):
        return None
    return {"type": "status", "status": to_state, "at": payload.get("at") or event.get("created_at")}


def order_frame(event: dict[str, Any], view: dict[str, Any]) -> dict[str, Any]:
    """A vendor screen's frame for an ``order-events`` message and the order's current view.

    The view is read after the event, possibly after later events too; a status change
    carries its ``to_status``, so the frame shows the order as of this event and a screen
    replaying a burst sees each status in turn.
    """
    payload = event["payload"]
    if isinstance(payload.get("to_status"), str):
        view = {**view, "status": payload["to_status"]}
    return {"type": "order", "event": event.get("type"), "order": view}


def heartbeat_frame(now: float) -> dict[str, Any]:
    """The periodic frame that tells a page its link is alive (``now``: Unix seconds)."""
    return {"type": "heartbeat", "ts": round(now, 3)}


def epoch_seconds(at: object, default: float) -> float:
    """Unix seconds of an ISO 8601 timestamp (an event's ``at``); *default* if it is not one."""
    if isinstance(at, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(at).timestamp()
    return default
