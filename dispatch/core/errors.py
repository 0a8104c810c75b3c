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
TOO_LARGE = "too_large"
BAD_JSON = "bad_json"
INVALID_VALUE = "invalid_value"
INVALID_REQUEST = "invalid_request"
# Who is asking.
UNKNOWN_TOKEN = "unknown_token"
REVOKED_TOKEN = "revoked_token"
EXPIRED_TOKEN = "expired_token"
WRONG_DRIVER = "wrong_driver"
FORBIDDEN = "forbidden"
RATE_LIMITED = "rate_limited"
# What is asked about.
NOT_FOUND = "not_found"
DUPLICATE = "duplicate"
ILLEGAL_TRANSITION = "illegal_transition"
NOT_CONFIGURED = "not_configured"


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
    anything else a 400 ``invalid_request`` with its message."""
    if isinstance(exc, Refusal):
        return exc
    status = getattr(exc, "status", None) or 400
    reason = getattr(exc, "reason", None) or (NOT_FOUND if status == 404 else INVALID_REQUEST)
    message = getattr(exc, "message", None) or str(exc)
    return Refusal(status, reason, message, getattr(exc, "field", None))
