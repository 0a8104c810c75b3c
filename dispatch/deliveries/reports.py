"""What a driver may report about their own delivery (pick_up, deliver, fail): pure checks.

The report arrives as a websocket frame or a REST body; this module decides whether it is
well formed (a delivery id, a known event, a proof of delivery only with ``deliver`` and a
reason only with ``fail``, both bounded) before anything touches a database. Whether the
delivery is the driver's and the transition legal is the dispatcher's business.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from dispatch.core.errors import (
    INVALID_VALUE,
    MISSING_FIELD,
    TOO_LARGE,
    UNEXPECTED_FIELD,
    WRONG_TYPE,
    Refusal,
)
from dispatch.core.ids import InvalidId, canonical_uuid
from dispatch.deliveries.state import DeliveryEvent

__all__ = ["DRIVER_EVENTS", "MAX_PROOF_BYTES", "MAX_REASON_CHARS", "DriverUpdate",
           "DriverUpdateRefused", "parse_driver_update"]

# What a driver may report about their own delivery.
DRIVER_EVENTS = {"pick_up": DeliveryEvent.PICK_UP, "deliver": DeliveryEvent.DELIVER,
                 "fail": DeliveryEvent.FAIL}
MAX_PROOF_BYTES = 8 * 1024
MAX_REASON_CHARS = 500


class DriverUpdateRefused(Refusal):
    """A driver's pick_up/deliver/fail report was refused; nothing changed."""


@dataclass(frozen=True, slots=True)
class DriverUpdate:
    delivery_id: str
    event: DeliveryEvent
    proof_of_delivery: dict[str, Any] | None
    reason: str | None


def parse_driver_update(payload: Any, delivery_id: object = None) -> DriverUpdate:
    """Validate ``{"delivery_id", "event": "pick_up"|"deliver"|"fail", "proof_of_delivery",
    "reason"}`` (the delivery id may come from the URL instead). Pure; raises DriverUpdateRefused."""
    if not isinstance(payload, dict):
        raise DriverUpdateRefused(422, WRONG_TYPE, "the body must be a JSON object")
    raw_id = delivery_id if delivery_id is not None else payload.get("delivery_id")
    if raw_id is None:
        raise DriverUpdateRefused(422, MISSING_FIELD, "delivery_id is required", "delivery_id")
    if not isinstance(raw_id, str):
        raise DriverUpdateRefused(422, WRONG_TYPE, "delivery_id must be a UUID", "delivery_id")
    try:
        delivery = canonical_uuid(raw_id, "delivery_id")
    except InvalidId:
        raise DriverUpdateRefused(422, WRONG_TYPE, "delivery_id must be a UUID", "delivery_id") from None
    event = payload.get("event")
    if not isinstance(event, str) or event not in DRIVER_EVENTS:   # a list or dict is unhashable
        raise DriverUpdateRefused(422, INVALID_VALUE,
                                  f"event must be one of {', '.join(DRIVER_EVENTS)}", "event")
    proof = payload.get("proof_of_delivery")
    if event == "deliver":
        if not isinstance(proof, dict) or not proof:
            raise DriverUpdateRefused(422, MISSING_FIELD, "deliver needs proof_of_delivery "
                                      "(a JSON object: photo, signature, code...)", "proof_of_delivery")
        if len(json.dumps(proof)) > MAX_PROOF_BYTES:
            raise DriverUpdateRefused(413, TOO_LARGE, f"proof_of_delivery is over {MAX_PROOF_BYTES} bytes",
                                      "proof_of_delivery")
    elif proof is not None:
        raise DriverUpdateRefused(422, UNEXPECTED_FIELD, f"{event} takes no proof_of_delivery",
                                  "proof_of_delivery")
    reason = payload.get("reason")
    if event == "fail":
        if reason is None:
            raise DriverUpdateRefused(422, MISSING_FIELD,
                                      f"fail needs a reason (1-{MAX_REASON_CHARS} characters)", "reason")
        if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON_CHARS:
            raise DriverUpdateRefused(422, INVALID_VALUE,
                                      f"reason must be 1-{MAX_REASON_CHARS} characters of text", "reason")
    elif reason is not None:
        raise DriverUpdateRefused(422, UNEXPECTED_FIELD, f"{event} takes no reason", "reason")
    return DriverUpdate(delivery, DRIVER_EVENTS[event], proof, reason)
