"""Looks at other people's personal data, the rules: why a look is allowed and what it showed.
Pure: no I/O (the I/O is ``dispatch.identity.access_log``).

A tenant admin (or support agent) who reads a customer's or driver's personal data through the
API must say why, in the ``X-Access-Purpose`` header: a short free text a reviewer can follow up
("ticket 4411: customer says the driver never came"). Without it the read is refused (422
naming the header) and nothing is shown, so every look in ``data_access_log`` has who, whose,
what and why. People reading their own data (a customer's own orders, a driver's own consent)
are not logged: that is not a look at another person.
"""

from __future__ import annotations

from typing import Any

from dispatch.core.errors import INVALID_TEXT, MISSING_FIELD, TOO_LONG, Refusal

__all__ = ["ORDER_FIELDS", "PURPOSE_HEADER", "PURPOSE_MAX", "order_subjects", "parse_access_purpose"]

PURPOSE_HEADER = "X-Access-Purpose"
PURPOSE_MIN = 3
PURPOSE_MAX = 255
# The customer's personal data an order view shows (``commerce.orders.records.view_from_row``).
ORDER_FIELDS = ("customer_id", "delivery_address", "delivery_location", "notes")


def parse_access_purpose(value: str | None) -> str:
    """The stated purpose of a read (3-255 printable characters, trimmed); 422 naming the
    header otherwise."""
    if value is None or len(value.strip()) < PURPOSE_MIN:
        raise Refusal(422, MISSING_FIELD, f"say why you read this person's data in the {PURPOSE_HEADER} header "
                      f"({PURPOSE_MIN}-{PURPOSE_MAX} characters, e.g. a ticket number)", PURPOSE_HEADER)
    text = value.strip()
    if len(text) > PURPOSE_MAX:
        raise Refusal(422, TOO_LONG, f"{PURPOSE_HEADER} is limited to {PURPOSE_MAX} characters", PURPOSE_HEADER)
    if not text.isprintable():
        raise Refusal(422, INVALID_TEXT, f"{PURPOSE_HEADER} must be printable text", PURPOSE_HEADER)
    return text


def order_subjects(views: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(subject id, table, record id) of each customer whose data a list of order views shows,
    one per order (the log says which order was seen)."""
    return [(v["customer_id"], "orders", v["id"]) for v in views]
