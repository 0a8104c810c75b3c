"""An offer as the driver sees it, and the driver's reply: plain data and pure checks.

The offer engine (``offers.py``) decides who is offered what and when; what travels to the
driver (the frame, with money as a decimal string) and what comes back (``offer_reply``,
validated here) are data with no I/O, testable without Redis.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from dispatch.core.errors import MISSING_FIELD, OFFER_NOT_HELD, WRONG_TYPE, Refusal
from dispatch.core.ids import InvalidId, canonical_uuid
from schema.errors import WakalaError


class InvalidOffer(WakalaError, ValueError):
    """Offer terms or engine settings out of range (pay not a Decimal, a negative ETA, ...)."""


class RoundInProgress(WakalaError):
    """The delivery already has an open offer or a driver; a new round would burn candidates."""


class OfferNotHeld(WakalaError):
    """The driver has no open offer of this delivery (never made, someone else's, expired)."""

    reason = OFFER_NOT_HELD


class InvalidOfferReply(Refusal):
    """A driver's ``offer_reply`` frame is malformed; ``reason`` and ``field`` say how."""

    def __init__(self, reason: str, field: str, message: str) -> None:
        super().__init__(422, reason, message, field)


@dataclass(frozen=True, slots=True)
class OfferCandidate:
    """A driver to offer to, in ranking order, with its ETA to the pickup."""

    driver_id: str
    pickup_eta_s: int


@dataclass(frozen=True, slots=True)
class Offer:
    """What the driver sees. ``pay`` is money: a Decimal, sent as a string, never a float."""

    delivery_id: str
    tenant_id: str
    pickup: tuple[float, float]   # (lat, lng)
    dropoff: tuple[float, float]  # (lat, lng)
    pay: Decimal
    pickup_eta_s: int
    dropoff_eta_s: int
    expires_at: float             # epoch seconds

    def frame(self) -> dict[str, Any]:
        return {
            "type": "offer",
            "delivery_id": self.delivery_id,
            "pickup": {"lat": self.pickup[0], "lng": self.pickup[1]},
            "dropoff": {"lat": self.dropoff[0], "lng": self.dropoff[1]},
            "pay": str(self.pay),
            "pickup_eta_s": self.pickup_eta_s,
            "dropoff_eta_s": self.dropoff_eta_s,
            "expires_at": self.expires_at,
        }


@dataclass(frozen=True, slots=True)
class BundleStop:
    """One drop-off of a bundle offer, in drop-off order (``stop`` counts from 1)."""

    delivery_id: str
    stop: int
    dropoff: tuple[float, float]  # (lat, lng)
    pay: Decimal
    dropoff_eta_s: int            # from the pickup to this door, through the stops before it


@dataclass(frozen=True, slots=True)
class BundleOffer:
    """Several deliveries of one pickup offered as one: accept or decline them all.

    The frame keeps the single offer's fields so an app that knows only those still reads a
    sensible offer: ``delivery_id`` is the first stop's (a reply may name it), ``dropoff``
    and ``dropoff_eta_s`` the last stop's (where the trip ends), ``pay`` the bundle's total.
    ``bundle_id`` and ``deliveries`` (in drop-off order) are the bundle's own fields.
    """

    bundle_id: str
    tenant_id: str
    pickup: tuple[float, float]
    stops: tuple[BundleStop, ...]
    pickup_eta_s: int
    expires_at: float

    @property
    def delivery_id(self) -> str:
        return self.stops[0].delivery_id

    def frame(self) -> dict[str, Any]:
        last = self.stops[-1]
        return {
            "type": "offer",
            "delivery_id": self.delivery_id,
            "bundle_id": self.bundle_id,
            "pickup": {"lat": self.pickup[0], "lng": self.pickup[1]},
            "dropoff": {"lat": last.dropoff[0], "lng": last.dropoff[1]},
            "pay": str(sum((s.pay for s in self.stops), Decimal(0))),
            "pickup_eta_s": self.pickup_eta_s,
            "dropoff_eta_s": last.dropoff_eta_s,
            "expires_at": self.expires_at,
            "deliveries": [{"delivery_id": s.delivery_id, "stop": s.stop,
                            "dropoff": {"lat": s.dropoff[0], "lng": s.dropoff[1]},
                            "pay": str(s.pay), "dropoff_eta_s": s.dropoff_eta_s} for s in self.stops],
        }


@dataclass(frozen=True, slots=True)
class OfferReply:
    """``delivery_id`` names a single offer or any delivery of a bundle offer; ``bundle_id``
    (optional) names a bundle offer. At least one of the two is given."""

    delivery_id: str | None
    accept: bool
    bundle_id: str | None = None


def _reply_id(payload: dict[str, Any], field: str) -> str | None:
    if field not in payload:
        return None
    raw = payload[field]
    if not isinstance(raw, str):
        raise InvalidOfferReply(WRONG_TYPE, field, f"{field} must be a UUID")
    try:
        return canonical_uuid(raw, field)
    except InvalidId:
        raise InvalidOfferReply(WRONG_TYPE, field, f"{field} must be a UUID") from None


def parse_offer_reply(payload: dict[str, Any]) -> OfferReply:
    """Validate ``{"type": "offer_reply", "delivery_id": <uuid>, "bundle_id"?: <uuid>,
    "accept": <bool>}`` (``delivery_id`` may be left out when ``bundle_id`` is given). Pure."""
    if "delivery_id" not in payload and "bundle_id" not in payload:
        raise InvalidOfferReply(MISSING_FIELD, "delivery_id", "delivery_id (or bundle_id) is required")
    if "accept" not in payload:
        raise InvalidOfferReply(MISSING_FIELD, "accept", "accept (true or false) is required")
    delivery_id = _reply_id(payload, "delivery_id")
    bundle_id = _reply_id(payload, "bundle_id")
    if not isinstance(payload["accept"], bool):
        raise InvalidOfferReply(WRONG_TYPE, "accept", "accept must be true or false")
    return OfferReply(delivery_id, payload["accept"], bundle_id)


RoundStatus = Literal["offered", "assigned", "unassigned", "abandoned"]


@dataclass(frozen=True, slots=True)
class RoundOutcome:
    """Where a round stands after a step.

    ``offered``: open offer to ``driver_id``; ``assigned``: ``driver_id`` accepted;
    ``unassigned``: given up, ``reason`` says why; ``abandoned``: the delivery could not take
    the transition (cancelled meanwhile, unknown), ``reason`` says which. A bundle's round
    also names the bundle and its deliveries in drop-off order (``delivery_id`` the first).
    """

    delivery_id: str
    status: RoundStatus
    driver_id: str | None = None
    reason: str | None = None
    bundle_id: str | None = None
    delivery_ids: tuple[str, ...] = ()


def offer_id(value: object, field: str) -> str:
    """An id in offer terms as canonical text; ``InvalidOffer`` if it is not a UUID."""
    try:
        return canonical_uuid(value if isinstance(value, str | uuid.UUID) else str(value), field)
    except InvalidId:
        raise InvalidOffer(f"{field} must be a UUID, got {value!r:.60}") from None


def eta_s(value: object, field: str) -> int:
    """A non-negative whole number of seconds; ``InvalidOffer`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidOffer(f"{field} must be a non-negative int of seconds, got {value!r}")
    return value
