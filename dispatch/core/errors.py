"""The one refusal type and its reason vocabulary.

Every part of the engine that says no to a caller (the ping gateway, the REST API, the
catalogue, orders, tokens, users, tracking links) raises ``Refusal`` or a subclass: an
HTTP-like ``status``, a ``reason`` word from the vocabulary below, the ``field`` at fault
(``lines[2].quantity``) or None, and a ``message`` a person can act on. Nothing was written
when one is raised. The reasons are stable strings: driver apps, integrators, metrics labels
and dashboards key on them, so a new one is added here, never invented at the raise site.

How a refusal travels is the shell's business: ``dispatch.web.http`` renders it as a JSON
error body, the driver websocket as an error frame, a tracking socket as a close code.
"""

from __future__ import annotations

from typing import Any

from schema.errors import WakalaError

# Input shape (pings, request bodies, frames).
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
NOT_FINITE = "not_finite"
OUT_OF_RANGE = "out_of_range"
NULL_ISLAND = "null_island"
FUTURE_TIMESTAMP = "future_timestamp"
STALE_TIMESTAMP = "stale_timestamp"
UNKNOWN_FIELD = "unknown_field"
UNEXPECTED_FIELD = "unexpected_field"     # a known field that this event does not take
TOO_LARGE = "too_large"
BAD_JSON = "bad_json"
INVALID_VALUE = "invalid_value"
TOO_LONG = "too_long"                     # text over its length limit (names, descriptions)
TOO_MANY = "too_many"                     # a list over its item limit
EMPTY = "empty"                           # text or a list that must have something in it
BAD_FORMAT = "bad_format"                 # text of the wrong shape (a slug, a URL, a SKU)
INVALID_REQUEST = "invalid_request"
INVALID_TEXT = "invalid_text"             # text that is not valid Unicode (a lone surrogate) or holds a NUL
URI_TOO_LONG = "uri_too_long"             # a request target or header over its limit
# Who is asking.
UNKNOWN_TOKEN = "unknown_token"
REVOKED_TOKEN = "revoked_token"
EXPIRED_TOKEN = "expired_token"
WRONG_DRIVER = "wrong_driver"
INVALID_TOKEN = "invalid_token"           # a tracking link's token: malformed, unknown or revoked
UNKNOWN_USER = "unknown_user"
BAD_SIGNATURE = "bad_signature"           # a payment callback not signed with our key
FORBIDDEN = "forbidden"
RATE_LIMITED = "rate_limited"
CONSENT_WITHDRAWN = "consent_withdrawn"   # the driver withdrew consent to location tracking
# What is asked about.
NOT_FOUND = "not_found"
UNKNOWN_DELIVERY = "unknown_delivery"     # a driver's report about a delivery that is not theirs
DUPLICATE = "duplicate"
ILLEGAL_TRANSITION = "illegal_transition"
UNKNOWN_CATEGORY = "unknown_category"
DUPLICATE_SKU = "duplicate_sku"
DUPLICATE_SLUG = "duplicate_slug"
STOCK_RESERVED = "stock_reserved"         # stock cannot go below what orders hold
NOT_CONFIGURED = "not_configured"
# Deliveries, offers and tracking.
OFFER_NOT_HELD = "offer_not_held"         # a reply to an offer the driver does not hold
OFFER_WITHDRAWN = "offer_withdrawn"       # accepted too late: the delivery went elsewhere
NO_DISPATCHER = "no_dispatcher"           # this engine process does not dispatch
NOT_READY = "not_ready"                   # no tracking link before the order is ready
TRACKING_ENDED = "tracking_ended"         # the link's grace after delivery is over
TOO_SLOW = "too_slow"                     # a socket that does not keep up is closed
IMPLAUSIBLE_JUMP = "implausible_jump"     # a fix too far from the last one to be driven: not stored
# Proof of delivery.
PROOF_REQUIRED = "proof_required"         # delivered refused: a proof the tenant requires is missing (field names it)
WRONG_PIN = "wrong_pin"                   # a delivery PIN that does not match (the attempt is counted)
PIN_LOCKED = "pin_locked"                 # too many wrong PINs: a reset by the vendor, or fail the delivery
INVALID_IMAGE = "invalid_image"           # bytes that are not a whole, well-formed image of the declared type
UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"   # a Content-Type the route does not take (415)
# The engine itself.
UNAVAILABLE = "unavailable"               # a service the engine needs is down: retry later (503)
INTERNAL_ERROR = "internal_error"         # an unhandled error on our side (500)

# Commerce: orders, stock, promotions, payments.
CLIENT_PRICE = "client_price"
INVALID_ID = "invalid_id"
DUPLICATE_LINE = "duplicate_line"
UNKNOWN_VENDOR = "unknown_vendor"
VENDOR_UNAVAILABLE = "vendor_unavailable"
UNKNOWN_CUSTOMER = "unknown_customer"
CUSTOMER_UNAVAILABLE = "customer_unavailable"
OUTSIDE_DELIVERY_RADIUS = "outside_delivery_radius"
PAYMENT_METHOD_NOT_ACCEPTED = "payment_method_not_accepted"
UNKNOWN_PRODUCT = "unknown_product"
PRODUCT_OF_ANOTHER_VENDOR = "product_of_another_vendor"
PRODUCT_UNAVAILABLE = "product_unavailable"
UNKNOWN_VARIANT = "unknown_variant"
BELOW_MINIMUM_ORDER = "below_minimum_order"
INVALID_PROMOTION = "invalid_promotion"
OUT_OF_STOCK = "out_of_stock"
INVALID_RETURN_LINE = "invalid_return_line"
AMOUNT_MISMATCH = "amount_mismatch"
IDEMPOTENCY_CONFLICT = "idempotency_conflict"
TOO_MANY_PENDING = "too_many_pending"     # a customer holds too many unpaid orders' stock


class Refusal(WakalaError, ValueError):
    """A request refused; nothing was written.

    ``status`` is the HTTP status a REST caller gets (422 the input is wrong, 409 it
    conflicts with the current state, 404 no such thing for this caller, 401/403/429 who is
    asking). ``headers`` are extra response headers (``Retry-After``); ``errors`` the
    per-item refusals of a batch; ``index`` the item's position in its batch.
    """

    status: int = 400
    reason: str = INVALID_REQUEST
    field: str | None = None

    def __init__(self, status: int, reason: str, message: str, field: str | None = None, *,
                 headers: dict[str, str] | None = None, errors: list[dict[str, Any]] | None = None,
                 index: int | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.field = status, reason, message, field
        self.headers, self.errors, self.index = headers, errors, index

    def as_dict(self) -> dict[str, Any]:
        """The refusal as a client sees it: reason, message, and field/errors/index if set."""
        out: dict[str, Any] = {"reason": self.reason, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        if self.errors is not None:
            out["errors"] = self.errors
        if self.index is not None:
            out["index"] = self.index
        return out


class NotFound(Refusal):
    """No such object for this caller: absent, another tenant's or another party's (the same
    answer, so a caller learns nothing of what is not theirs)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(404, NOT_FOUND, message, field)


def as_refusal(exc: WakalaError) -> Refusal:
    """Any domain error as a refusal: a ``Refusal`` as it is; an error carrying ``status``,
    ``reason``, ``field`` attributes (``InvalidId``, ``IllegalTransition``...) with them;
    an error named ``...NotFound`` a 404; anything else a 400 ``invalid_request`` with its
    message. (The API first turns outages into 503 and unknown tenants into 404:
    ``dispatch.api.common.refusal_of``.)"""
    if isinstance(exc, Refusal):
        return exc
    status = getattr(exc, "status", None) or (404 if type(exc).__name__.endswith("NotFound") else 400)
    reason = getattr(exc, "reason", None) or (NOT_FOUND if status == 404 else INVALID_REQUEST)
    message = getattr(exc, "message", None) or str(exc)
    return Refusal(status, reason, message, getattr(exc, "field", None))
