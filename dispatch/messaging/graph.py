"""The WhatsApp Cloud API's send-message call, without I/O: the request, and what its answer
means (``graph_client`` is the aiohttp shell that makes the call).

Request: ``POST {base}/{phone_number_id}/messages`` with ``Authorization: Bearer <token>`` and::

    {"messaging_product": "whatsapp", "recipient_type": "individual", "to": "27821234567",
     "type": "template",
     "template": {"name": "order_confirmed", "language": {"code": "en"},
                  "components": [{"type": "body", "parameters": [{"type": "text", "text": "..."}]}]},
     "biz_opaque_callback_data": "<tenant id>"}

``biz_opaque_callback_data`` comes back in every status webhook of the message, so the
webhook knows the tenant without a lookup.

Answers (``classify``), and why each is treated so:

* 2xx with ``{"messages": [{"id": "wamid..."}]}``: **sent**. A 2xx whose body has no usable
  message id (not JSON, no ``messages``, an id that is not a short printable string) is
  **failed** (``bad_response``), not retried: Meta took the request, and sending it again
  would most likely deliver it twice. The row records why.
* 429, any 5xx, a timeout, a connection that failed: **retry**, after an exponential backoff
  with jitter (``backoff``), or after ``Retry-After`` if the answer gave one and it is longer.
* A 4xx whose Graph error code is a throttle (4, 80007, 130429, 131048, 131056) or that says
  ``is_transient``: **retry** as well (Meta answers some rate limits with 400).
* Any other 4xx (a bad number, a template not approved, an expired token, a parameter
  refused) and anything else unexpected: **failed**, with the code and Meta's message (cut
  short and stripped of control characters: the answer is not ours to trust).

A timeout is ambiguous (Meta may have accepted the request and its answer got lost), and Meta
has no idempotency key; retrying it is what the channel's contract asks for, so such a
message may, rarely, arrive twice. Everything the engine can know (an event delivered
again, two senders, an answered failure) never sends twice.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["BACKOFF_MAX_S", "FAILED", "RETRY", "SENT", "GraphRequest", "Outcome", "backoff",
           "build_template_request", "classify", "parse_retry_after"]

SENT, RETRY, FAILED = "sent", "retry", "failed"
BACKOFF_MAX_S = 900.0        # a retry waits at most this (before Retry-After, which may be longer)
RETRY_AFTER_MAX_S = 3600.0   # a Retry-After beyond this is read as this
ERROR_TEXT_MAX = 300
# Graph error codes that mean "slow down", whatever the HTTP status: application and account
# throttles (4, 80007), the Cloud API's throughput limit (130429), spam rate limit (131048),
# and the per-recipient pair rate limit (131056).
THROTTLE_CODES = frozenset({4, 80007, 130429, 131048, 131056})
_WAMID = re.compile(r"[A-Za-z0-9._=:+/\-]{1,255}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass(frozen=True)
class GraphRequest:
    url: str
    headers: Mapping[str, str]
    body: bytes
    json: Mapping[str, object]   # the body, decoded (what whatsapp_messages.content records)


@dataclass(frozen=True)
class Outcome:
    """What one send came to: ``kind`` SENT / RETRY / FAILED, Meta's message id when sent,
    a short ``error`` otherwise, and a ``retry_after_s`` the answer asked for."""

    kind: str
    wamid: str | None = None
    error: str | None = None
    retry_after_s: float | None = None
    status: int | None = None
    code: int | None = None


def build_template_request(base_url: str, phone_number_id: str, token: str, *, to: str, template: str,
                           language: str, params: list[str], tenant_id: str) -> GraphRequest:
    """The POST that sends ``template`` with body ``params`` to ``to`` (digits only)."""
    components = [{"type": "body", "parameters": [{"type": "text", "text": p} for p in params]}] if params else []
    body = {
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": to, "type": "template",
        "template": {"name": template, "language": {"code": language}, "components": components},
        "biz_opaque_callback_data": tenant_id,
    }
    return GraphRequest(
        url=f"{base_url.rstrip('/')}/{phone_number_id}/messages",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        body=json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
        json=body)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), within
    [0, RETRY_AFTER_MAX_S]; None for a missing or meaningless value."""
    if value is None:
        return None
    value = value.strip()[:64]
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(RETRY_AFTER_MAX_S, max(0.0, seconds))


def backoff(attempt: int, base_s: float, rand: float, *, cap_s: float = BACKOFF_MAX_S) -> float:
    """The wait after failed attempt number ``attempt`` (1, 2, ...): ``base_s`` doubled per
    attempt, capped, with "equal jitter" (between half and all of it, ``rand`` in [0, 1)), so
    the messages a Graph outage failed together do not all come back in the same second."""
    ceiling = min(cap_s, base_s * 2.0 ** min(max(attempt, 1) - 1, 60))
    return ceiling / 2 + ceiling / 2 * min(max(rand, 0.0), 1.0)


def _text(value: object, limit: int = ERROR_TEXT_MAX) -> str:
    return _CONTROL.sub(" ", str(value))[:limit]


def _graph_error(body: bytes | None) -> tuple[int | None, str, bool]:
    """(code, message, is_transient) of a Graph error body; what can be read of a hostile one."""
    try:
        data = json.loads(body or b"")
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None, _text((body or b"")[:120].decode("utf-8", "replace")), False
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return None, "no error object", False
    code = error.get("code")
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    message = error.get("message")
    details = error.get("error_data", {}).get("details") if isinstance(error.get("error_data"), dict) else None
    text = _text(message) if isinstance(message, str) else "no message"
    if isinstance(details, str):
        text = _text(f"{text}: {details}")
    return code, text, error.get("is_transient") is True


def _wamid(body: bytes | None) -> str | None:
    try:
        data = json.loads(body or b"")
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    messages = data.get("messages") if isinstance(data, dict) else None
    if not isinstance(messages, list) or len(messages) != 1 or not isinstance(messages[0], dict):
        return None
    wamid = messages[0].get("id")
    return wamid if isinstance(wamid, str) and _WAMID.fullmatch(wamid) else None


def classify(status: int | None, body: bytes | None = None, headers: Mapping[str, str] | None = None, *,
             timed_out: bool = False, transport_error: str | None = None) -> Outcome:
    """What an answer (or the lack of one) means for the message; see the module doc."""
    if timed_out:
        return Outcome(RETRY, error="timeout: no answer from the Graph API")
    if status is None:
        return Outcome(RETRY, error=_text(f"transport: {transport_error or 'no answer'}"))
    retry_after = parse_retry_after((headers or {}).get("Retry-After"))
    if 200 <= status < 300:
        wamid = _wamid(body)
        if wamid is None:
            return Outcome(FAILED, error=f"bad_response: HTTP {status} without a message id", status=status)
        return Outcome(SENT, wamid=wamid, status=status)
    code, message, transient = _graph_error(body)
    error = _text(f"HTTP {status}" + (f" code {code}" if code is not None else "") + f": {message}")
    if status == 429 or status >= 500 or code in THROTTLE_CODES or (400 <= status < 500 and transient):
        return Outcome(RETRY, error=error, retry_after_s=retry_after, status=status, code=code)
    return Outcome(FAILED, error=error, status=status, code=code)
