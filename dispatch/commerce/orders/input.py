"""What a client may send about an order, checked before anything touches a database.

``parse_new_order`` turns an API body into a ``NewOrder`` or raises ``Refusal`` (422)
naming the field and a reason:

=================  ==============================================================
reason             when
=================  ==============================================================
``client_price``   a money key (``price``, ``unit_price``, ``total``, ...) anywhere in
                   the body: prices come from the catalogue, never from the client
``unknown_field``  a key the body or a line does not take (``customer_id`` included:
                   the customer is whoever is authenticated)
``missing_field``  a required key is absent
``wrong_type``     a value of the wrong JSON type (a bool or a float as a quantity)
``invalid_id``     an id that is not a UUID
``out_of_range``   quantity outside 1..1000, latitude/longitude off the Earth, too
                   many lines (100) or promotion codes (5), text too long
``not_finite``     NaN or infinity
``null_island``    the delivery location (0, 0), a GPS default, not an address
``duplicate_line`` the same product and variant on two lines (send one line)
``invalid_value``  a payment method or promotion code of the wrong form
=================  ==============================================================

The other arguments of the order verbs are checked here too: an order id
(``parse_order_id``: a malformed one names no order, so it is ``OrderNotFound`` like any
order the caller cannot see), a customer or vendor id (``canonical_id``, ``optional_id``)
and the free-text reason of a rejection, cancellation or return (``parse_reason``).

Pure: no I/O. The database checks (the products exist, are the vendor's and active, the
stock, the promotions) are ``dispatch.commerce.orders.placing``'s.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dispatch.commerce.orders.lifecycle import OrderNotFound
from dispatch.core.errors import (
    CLIENT_PRICE,
    DUPLICATE_LINE,
    INVALID_ID,
    INVALID_VALUE,
    MISSING_FIELD,
    Refusal,
)
from dispatch.core.ids import InvalidId, canonical_uuid, parse_uuid

__all__ = [
    "MAX_LINES",
    "MAX_QUANTITY",
    "PAYMENT_METHODS",
    "NewOrder",
    "OrderLine",
    "canonical_id",
    "optional_id",
    "parse_lines",
    "parse_new_order",
    "parse_order_id",
    "parse_reason",
    "recheck",
]

MAX_LINES = 100
MAX_QUANTITY = 1000
MAX_PROMO_CODES = 5
MAX_NOTES = 500
MAX_ADDRESS_KEYS = 20
MAX_ADDRESS_TEXT = 200
MAX_REASON = 500
PAYMENT_METHODS = ("cash", "card", "eft", "mobile_money")
MONEY_KEYS = frozenset({
    "price", "unit_price", "total", "total_price", "total_amount", "subtotal", "line_total",
    "discount", "discount_amount", "tax", "tax_amount", "delivery_fee", "amount",
})
BODY_KEYS = frozenset({"vendor_id", "lines", "delivery_lat", "delivery_lng", "delivery_address",
                       "promo_codes", "payment_method", "notes"})
REQUIRED_KEYS = ("vendor_id", "lines", "delivery_lat", "delivery_lng", "delivery_address")
LINE_KEYS = frozenset({"product_id", "variant_id", "quantity"})
PROMO_CODE = re.compile(r"^[A-Za-z0-9_-]{1,50}$")
_SCAN_DEPTH = 32


@dataclass(frozen=True)
class OrderLine:
    product_id: str
    variant_id: str | None
    quantity: int


@dataclass(frozen=True)
class NewOrder:
    customer_id: str
    vendor_id: str
    lines: tuple[OrderLine, ...]
    delivery_lat: float
    delivery_lng: float
    delivery_address: dict = field(hash=False)
    promo_codes: tuple[str, ...] = ()
    payment_method: str = "cash"
    notes: str | None = None


def _refuse(reason: str, message: str, where: str) -> Refusal:
    return Refusal(422, reason, message, where)


def _find_money_key(value: Any, path: str, depth: int = 0) -> str | None:
    """The path of the first money key in ``value`` (dicts and lists, bounded depth)."""
    if depth > _SCAN_DEPTH:
        return None
    if isinstance(value, Mapping):
        for key, inner in value.items():
            here = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and key.lower() in MONEY_KEYS:
                return here
            if (found := _find_money_key(inner, here, depth + 1)) is not None:
                return found
    elif isinstance(value, list | tuple):
        for i, inner in enumerate(value):
            if (found := _find_money_key(inner, f"{path}[{i}]", depth + 1)) is not None:
                return found
    return None


def canonical_id(value: object, where: str) -> str:
    """A customer, vendor, product or variant id in canonical form, or 422 naming ``where``:
    ``wrong_type`` for anything but text, ``invalid_id`` for text that is not a UUID."""
    if not isinstance(value, str | uuid.UUID):
        raise _refuse("wrong_type", f"{where} must be a UUID string", where)
    try:
        return canonical_uuid(value, where)
    except InvalidId:
        raise _refuse(INVALID_ID, f"{where} is not a UUID", where) from None


def optional_id(value: object | None, where: str) -> str | None:
    """``canonical_id`` that lets None through (a filter or an owner check not asked for)."""
    return None if value is None else canonical_id(value, where)


def parse_order_id(value: object) -> uuid.UUID:
    """An order id, or OrderNotFound: a malformed id names no order anyone has."""
    try:
        return parse_uuid(value, "order_id")
    except InvalidId:
        raise OrderNotFound(value) from None


def parse_reason(reason: object, *, required: bool) -> str | None:
    """Why a person rejects, cancels or returns: 1-500 characters, trimmed (None when not
    ``required`` and not given)."""
    if reason is None and not required:
        return None
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
        raise _refuse(MISSING_FIELD, f"reason (1-{MAX_REASON} characters) is required", "reason")
    return reason.strip()


def _only(body: Mapping, allowed: frozenset[str], where: str) -> None:
    unknown = sorted(str(k) for k in body if k not in allowed)
    if unknown:
        at = f"{where}.{unknown[0]}" if where else unknown[0]
        raise _refuse("unknown_field", f"{at} is not a field here; allowed: {', '.join(sorted(allowed))}", at)


def _line(value: object, where: str) -> OrderLine:
    if not isinstance(value, Mapping):
        raise _refuse("wrong_type", f"{where} must be an object", where)
    _only(value, LINE_KEYS, where)
    for key in ("product_id", "quantity"):
        if key not in value:
            raise _refuse("missing_field", f"{where}.{key} is required", f"{where}.{key}")
    product = canonical_id(value["product_id"], f"{where}.product_id")
    variant = value.get("variant_id")
    variant = None if variant is None else canonical_id(variant, f"{where}.variant_id")
    quantity = value["quantity"]
    if type(quantity) is not int:   # bool is an int subclass; 2.0 is not a count
        raise _refuse("wrong_type", f"{where}.quantity must be a whole number", f"{where}.quantity")
    if not 1 <= quantity <= MAX_QUANTITY:
        raise _refuse("out_of_range", f"{where}.quantity must be from 1 to {MAX_QUANTITY}",
                      f"{where}.quantity")
    return OrderLine(product, variant, quantity)


def parse_lines(value: object, *, where: str = "lines") -> tuple[OrderLine, ...]:
    """1 to 100 lines, each a product, an optional variant and a quantity; no line twice."""
    if (found := _find_money_key(value, where)) is not None:
        raise _refuse(CLIENT_PRICE, f"{found}: prices come from the catalogue, not the client", found)
    if not isinstance(value, list | tuple):
        raise _refuse("wrong_type", f"{where} must be a list", where)
    if not 1 <= len(value) <= MAX_LINES:
        raise _refuse("out_of_range", f"{where} must have 1 to {MAX_LINES} lines", where)
    lines = tuple(_line(item, f"{where}[{i}]") for i, item in enumerate(value))
    seen: dict[tuple[str, str | None], int] = {}
    for i, line in enumerate(lines):
        first = seen.setdefault((line.product_id, line.variant_id), i)
        if first != i:
            raise _refuse(DUPLICATE_LINE, f"{where}[{i}] repeats {where}[{first}]; send one line "
                          "with the total quantity", f"{where}[{i}]")
    return lines


def _coordinate(body: Mapping, key: str, bound: float) -> float:
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refuse("wrong_type", f"{key} must be a number", key)
    if not math.isfinite(value):
        raise _refuse("not_finite", f"{key} must be finite", key)
    if not -bound <= value <= bound:
        raise _refuse("out_of_range", f"{key} must be from {-bound:g} to {bound:g}", key)
    return float(value)


def _address(value: object) -> dict:
    where = "delivery_address"
    if not isinstance(value, Mapping) or not value:
        raise _refuse("wrong_type", f"{where} must be a non-empty object", where)
    if len(value) > MAX_ADDRESS_KEYS:
        raise _refuse("out_of_range", f"{where} takes at most {MAX_ADDRESS_KEYS} fields", where)
    out = {}
    for key, inner in value.items():
        at = f"{where}.{key}"
        if not isinstance(key, str) or not 1 <= len(key) <= 50:
            raise _refuse(INVALID_VALUE, f"{where} keys are 1-50 characters", where)
        if isinstance(inner, str):
            if len(inner) > MAX_ADDRESS_TEXT:
                raise _refuse("out_of_range", f"{at} is longer than {MAX_ADDRESS_TEXT}", at)
        elif isinstance(inner, float) and not math.isfinite(inner):
            raise _refuse("not_finite", f"{at} must be finite", at)
        elif not (inner is None or isinstance(inner, bool | int | float)):
            raise _refuse("wrong_type", f"{at} must be text, a number, true/false or null", at)
        out[key] = inner
    return out


def _promo_codes(value: object) -> tuple[str, ...]:
    where = "promo_codes"
    if not isinstance(value, list | tuple):
        raise _refuse("wrong_type", f"{where} must be a list of codes", where)
    if len(value) > MAX_PROMO_CODES:
        raise _refuse("out_of_range", f"at most {MAX_PROMO_CODES} promotion codes", where)
    codes: list[str] = []
    for i, code in enumerate(value):
        if not isinstance(code, str) or not PROMO_CODE.match(code):
            raise _refuse(INVALID_VALUE, f"{where}[{i}] must be 1-50 letters, digits, _ or -",
                          f"{where}[{i}]")
        if code.upper() not in codes:
            codes.append(code.upper())
    return tuple(codes)


def parse_new_order(body: object, *, customer_id: object) -> NewOrder:
    """Validate an API body (see the module's table); ``customer_id`` is the caller's."""
    if not isinstance(body, Mapping):
        raise _refuse("wrong_type", "the body must be a JSON object", "body")
    if (found := _find_money_key(body, "")) is not None:
        raise _refuse(CLIENT_PRICE, f"{found}: prices come from the catalogue, not the client", found)
    _only(body, BODY_KEYS, "")
    for key in REQUIRED_KEYS:
        if key not in body:
            raise _refuse("missing_field", f"{key} is required", key)
    customer = canonical_id(customer_id, "customer_id")
    vendor = canonical_id(body["vendor_id"], "vendor_id")
    lines = parse_lines(body["lines"])
    lat = _coordinate(body, "delivery_lat", 90)
    lng = _coordinate(body, "delivery_lng", 180)
    if lat == 0 and lng == 0:
        raise _refuse("null_island", "(0, 0) is a GPS default, not a delivery location", "delivery_lat")
    address = _address(body["delivery_address"])
    codes = _promo_codes(body.get("promo_codes", ()))
    method = body.get("payment_method", "cash")
    if not isinstance(method, str) or method not in PAYMENT_METHODS:
        raise _refuse(INVALID_VALUE, f"payment_method must be one of {', '.join(PAYMENT_METHODS)}",
                      "payment_method")
    notes = body.get("notes")
    if notes is not None and (not isinstance(notes, str) or len(notes) > MAX_NOTES):
        raise _refuse("out_of_range" if isinstance(notes, str) else "wrong_type",
                      f"notes must be text of at most {MAX_NOTES} characters", "notes")
    return NewOrder(customer, vendor, lines, lat, lng, address, codes, method, notes)


def recheck(order: NewOrder) -> NewOrder:
    """``order`` through the same checks as an API body (for callers that build a NewOrder)."""
    if not isinstance(order, NewOrder):
        raise _refuse("wrong_type", "expected a NewOrder", "body")
    lines: object = order.lines
    if isinstance(lines, list | tuple):
        lines = [{"product_id": line.product_id, "variant_id": line.variant_id,
                  "quantity": line.quantity} if isinstance(line, OrderLine) else line
                 for line in lines]
    body = {
        "vendor_id": order.vendor_id, "lines": lines, "delivery_lat": order.delivery_lat,
        "delivery_lng": order.delivery_lng, "delivery_address": order.delivery_address,
        "promo_codes": order.promo_codes, "payment_method": order.payment_method,
        "notes": order.notes,
    }
    return parse_new_order(body, customer_id=order.customer_id)
