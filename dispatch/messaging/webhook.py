"""Meta's WhatsApp webhook, the rules: the signature, the subscription check, and the payload
read into typed records. Pure: no I/O (the shell is ``dispatch.messaging.inbound``, the route
``dispatch.api.whatsapp``).

**Who is calling.** Meta signs every POST with the app secret: ``X-Hub-Signature-256:
sha256=<hex of HMAC-SHA256(app secret, raw body bytes)>``. The HMAC is over the bytes as
received (never re-encoded JSON) and compared in constant time; a missing header, another
algorithm (``sha1=``), a malformed digest and a wrong one are all ``bad_signature`` naming the
header, so nothing in the answer helps a forger. The subscription GET (``hub.mode=subscribe``,
``hub.verify_token``, ``hub.challenge``) is answered with the challenge only when the token
matches ours.

**What is read, and how strictly.** A signed payload comes from Meta, which batches many
notifications into one POST and adds fields and message types over time. So:

* unknown fields are ignored (Meta's documents grow; refusing them would drop real traffic),
  and a change of another ``field`` (template status, account updates) is counted and
  skipped;
* the envelope (``object``, ``entry``, ``changes``, ``value``, ``metadata``) is checked as a
  whole: a payload we cannot walk is refused whole, naming the field, and nothing of it is
  written;
* each message and each status is checked on its own: one we cannot read is refused (with its
  path, ``entry[0].changes[0].value.messages[3].from``) and the others of the batch are still
  recorded, because Meta does not send a batch twice after we acknowledged it;
* everything is bounded: entries, changes, items per batch, text lengths, error lists; phones
  are E.164 digits (Meta's ``wa_id``: no ``+``); statuses are ``sent``, ``delivered``,
  ``read``, ``failed``; timestamps are whole Unix seconds (a digit string or an integer, never a
  float, ``NaN`` or an exponent) between 2018 and an hour ahead of our clock.

A message type we know (``TYPES``) keeps a small, bounded part of its content (text, media id
and caption, a location, the reply chosen); another well-formed type is recorded as
``unsupported`` with its name, so a new kind of message is still seen. The sender's profile
name is not kept: the tenant already knows the user, and a copy here would escape erasure.

**Receipts never go backwards.** ``STATUS_ORDER`` ranks the statuses: ``sent`` < ``failed`` <
``delivered`` < ``read``. Meta does not promise order (a ``read`` may arrive before its
``delivered``), so a receipt only raises a message's status; ``failed`` beats ``sent`` (the
send did not get through) but not ``delivered`` (which proves it did).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dispatch.core.errors import (
    BAD_FORMAT,
    BAD_SIGNATURE,
    EMPTY,
    FORBIDDEN,
    FUTURE_TIMESTAMP,
    INVALID_VALUE,
    MISSING_FIELD,
    NOT_FINITE,
    OUT_OF_RANGE,
    STALE_TIMESTAMP,
    TOO_LONG,
    TOO_MANY,
    WRONG_TYPE,
    Refusal,
)
from dispatch.core.ids import InvalidId, canonical_uuid

__all__ = ["MAX_ITEMS", "SIGNATURE_HEADER", "STATUSES", "STATUS_ORDER", "TYPES", "InboundMessage", "Notification",
           "StatusReceipt", "conversation_id_for", "parse_notification", "sign", "status_rank",
           "tenant_hint", "verify_signature", "verify_subscription"]

SIGNATURE_HEADER = "X-Hub-Signature-256"
OBJECT = "whatsapp_business_account"
STATUSES = ("sent", "delivered", "read", "failed")
STATUS_ORDER = ("sent", "failed", "delivered", "read")   # a receipt only moves a status rightwards
# Meta's message types; another well-formed name is recorded as ``unsupported``.
TYPES = ("text", "image", "audio", "video", "document", "sticker", "location", "contacts", "interactive",
         "button", "reaction", "order", "system", "request_welcome", "unsupported")
COMMANDS = {"stop": "stop", "start": "start"}      # an inbound text that is exactly one of these

MAX_ENTRIES = 100
MAX_CHANGES = 100            # per entry
MAX_ITEMS = 1000             # messages and statuses in one POST (Meta batches up to this order)
MAX_ERRORS = 10              # per failed status
MAX_TEXT = 4096              # a text message's body (Meta's own limit)
MAX_CAPTION = 1024
MAX_SHORT = 256              # titles, ids of replies, button payloads, mime types, names
MAX_OPAQUE = 512             # biz_opaque_callback_data (Meta's limit)
MAX_ID = 255                 # whatsapp_messages.message_id
MIN_TIMESTAMP = 1_514_764_800    # 2018-01-01: before the Business API existed
MAX_AHEAD_S = 3600               # Meta's clock against ours

_HEX64 = re.compile(r"[0-9a-f]{64}")
_DIGITS = re.compile(r"[1-9][0-9]{6,14}")            # E.164 without the +
_WAMID = re.compile(r"[A-Za-z0-9._=:+/-]{1,255}")
_TYPE = re.compile(r"[a-z_]{1,40}")
_CHALLENGE = re.compile(r"[A-Za-z0-9._~-]{1,256}")
_UUID_IN = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_TENANT_KEY = re.compile(r"tenant(?:_id)?[\"']?\s*[:=]\s*[\"']?(" + _UUID_IN.pattern + ")")
_DISPLAY_NOISE = str.maketrans("", "", " -()+.")


# --- who is calling -------------------------------------------------------------------------

def sign(app_secret: str, raw: bytes) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends for ``raw`` (tests and the fake Graph server)."""
    return "sha256=" + hmac.new(app_secret.encode(), raw, hashlib.sha256).hexdigest()


def verify_signature(app_secret: str, raw: bytes, header: str | None) -> None:
    """Nothing when ``header`` is Meta's signature of ``raw``; else 401 ``bad_signature`` naming
    the header (missing, another algorithm, malformed or wrong: the message says which, never
    what the right value would be)."""
    if not header:
        raise _bad_signature(f"{SIGNATURE_HEADER} is missing: Meta signs every webhook with the app secret")
    scheme, _, digest = header.strip().partition("=")
    if scheme.lower() != "sha256":
        raise _bad_signature(f"{SIGNATURE_HEADER} must be sha256=<hex>; other algorithms are not accepted")
    digest = digest.lower()
    if not _HEX64.fullmatch(digest):
        raise _bad_signature(f"{SIGNATURE_HEADER} must be sha256= and 64 hex digits")
    expected = hmac.new(app_secret.encode(), raw, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, digest):
        raise _bad_signature(f"{SIGNATURE_HEADER} does not match the body: not signed with our app secret")


def _bad_signature(message: str) -> Refusal:
    return Refusal(401, BAD_SIGNATURE, message, SIGNATURE_HEADER)


def verify_subscription(verify_token: str, params: Mapping[str, str]) -> str:
    """The challenge to echo for Meta's subscription GET; 403 ``forbidden`` naming
    ``hub.mode`` or ``hub.verify_token`` when it is not a subscription with our token, 422
    naming ``hub.challenge`` when the challenge is missing or not a plain token."""
    if params.get("hub.mode") != "subscribe":
        raise Refusal(403, FORBIDDEN, "hub.mode must be subscribe", "hub.mode")
    given = params.get("hub.verify_token") or ""
    if not hmac.compare_digest(given.encode("utf-8", "surrogatepass"), verify_token.encode()):
        raise Refusal(403, FORBIDDEN, "hub.verify_token does not match the verify token set for this engine",
                      "hub.verify_token")
    challenge = params.get("hub.challenge")
    if challenge is None:
        raise Refusal(422, MISSING_FIELD, "hub.challenge is required", "hub.challenge")
    if not _CHALLENGE.fullmatch(challenge):
        raise Refusal(422, BAD_FORMAT, "hub.challenge must be 1-256 letters, digits or ._~-", "hub.challenge")
    return challenge


# --- what was sent --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A message a person sent to the business number."""

    message_id: str          # Meta's wamid (whatsapp_messages.message_id)
    wa_id: str               # the sender, E.164 digits without +
    business_number: str     # the number it was sent to (metadata.display_phone_number), digits
    phone_number_id: str     # Meta's id of that number
    timestamp: int           # Unix seconds, Meta's clock
    type: str                # one of TYPES
    content: dict[str, Any]  # the bounded part of the content kept (see the module docstring)
    reply_to: str | None = None   # the wamid this message answers (context.id), if any

    @property
    def sender(self) -> str:
        """The sender as the engine stores phones (E.164 with the +)."""
        return "+" + self.wa_id

    @property
    def command(self) -> str | None:
        """``stop`` or ``start`` when the message is a text of exactly that word (any case)."""
        if self.type != "text":
            return None
        return COMMANDS.get(str(self.content.get("body", "")).strip().casefold())


@dataclass(frozen=True, slots=True)
class StatusReceipt:
    """What became of a message the business sent."""

    message_id: str           # the outbound message's wamid
    status: str               # one of STATUSES
    timestamp: int
    recipient: str            # E.164 digits without +
    tenant: str | None        # the tenant named in biz_opaque_callback_data (canonical UUID), if any
    errors: tuple[dict[str, Any], ...] = ()

    @property
    def rank(self) -> int:
        return status_rank(self.status)


@dataclass(frozen=True, slots=True)
class Notification:
    """One POST, read: what can be recorded, what was refused item by item, and how many
    changes were of another kind (skipped)."""

    messages: tuple[InboundMessage, ...] = ()
    statuses: tuple[StatusReceipt, ...] = ()
    refused: tuple[Refusal, ...] = field(default=())
    skipped: int = 0


def status_rank(status: str | None) -> int:
    """A status's place in ``STATUS_ORDER`` from 1; 0 for anything else (a row still queued)."""
    try:
        return STATUS_ORDER.index(status) + 1   # type: ignore[arg-type]
    except ValueError:
        return 0


def conversation_id_for(user_id: str) -> str:
    """A tenant's conversation with one of its users: ``user:<user id>``, the id the outbound
    sender gives its messages too (``dispatch.messaging.store``), so both directions read as
    one thread. Stable, one per user (a user has one phone number in a tenant), and free of
    the phone number itself, which an erasure replaces in ``users`` and ``whatsapp_messages``
    but would not find in a conversation id."""
    return f"user:{user_id}"


def tenant_hint(opaque: str | None) -> str | None:
    """The tenant that ``biz_opaque_callback_data`` names, canonical, or None. Accepts the UUID
    alone, or ``tenant=<uuid>`` / ``tenant_id:<uuid>`` / ``{"tenant_id": "<uuid>"}`` inside a
    longer value. It is a hint: the receipt is applied only where that tenant holds the wamid."""
    if not opaque:
        return None
    found = _TENANT_KEY.search(opaque)
    candidate = found.group(1) if found else opaque.strip()
    try:
        return canonical_uuid(candidate, "biz_opaque_callback_data")
    except InvalidId:
        return None


def parse_notification(payload: Any, now: float) -> Notification:
    """Meta's webhook payload as records. Raises ``Refusal`` (naming the field) when the
    envelope cannot be walked; refuses single messages and statuses into ``refused``."""
    body = _dict(payload, "body")
    if body.get("object") != OBJECT:
        raise Refusal(422, INVALID_VALUE, f"object must be {OBJECT}", "object")
    entries = _list(body.get("entry"), "entry", MAX_ENTRIES)
    messages: list[InboundMessage] = []
    statuses: list[StatusReceipt] = []
    refused: list[Refusal] = []
    skipped = items = 0
    for i, raw_entry in enumerate(entries):
        entry = _dict(raw_entry, f"entry[{i}]")
        changes = _list(entry.get("changes"), f"entry[{i}].changes", MAX_CHANGES)
        for j, raw_change in enumerate(changes):
            at = f"entry[{i}].changes[{j}]"
            change = _dict(raw_change, at)
            if change.get("field") != "messages":
                skipped += 1
                continue
            value = _dict(change.get("value"), f"{at}.value")
            raw_messages = _list(value.get("messages", []), f"{at}.value.messages", MAX_ITEMS)
            raw_statuses = _list(value.get("statuses", []), f"{at}.value.statuses", MAX_ITEMS)
            items += len(raw_messages) + len(raw_statuses)
            if items > MAX_ITEMS:
                raise Refusal(422, TOO_MANY, f"at most {MAX_ITEMS} messages and statuses in one notification",
                              f"{at}.value")
            business = phone_number_id = ""
            if raw_messages:
                meta = _dict(value.get("metadata"), f"{at}.value.metadata")
                business = _display_number(meta.get("display_phone_number"),
                                           f"{at}.value.metadata.display_phone_number")
                phone_number_id = _text(meta.get("phone_number_id"), f"{at}.value.metadata.phone_number_id",
                                        64, digits=True)
            for k, raw in enumerate(raw_messages):
                try:
                    messages.append(_message(raw, f"{at}.value.messages[{k}]", business, phone_number_id, now))
                except Refusal as refusal:
                    refused.append(refusal)
            for k, raw in enumerate(raw_statuses):
                try:
                    statuses.append(_status(raw, f"{at}.value.statuses[{k}]", now))
                except Refusal as refusal:
                    refused.append(refusal)
    return Notification(tuple(messages), tuple(statuses), tuple(refused), skipped)


def _message(raw: Any, at: str, business: str, phone_number_id: str, now: float) -> InboundMessage:
    message = _dict(raw, at)
    kind = _text(message.get("type"), f"{at}.type", 40)
    if not _TYPE.fullmatch(kind):
        raise Refusal(422, BAD_FORMAT, "type must be lower-case letters and _", f"{at}.type")
    content = _content(message, kind, at) if kind in TYPES else {"type": kind}
    context = message.get("context")
    reply_to = None
    if context is not None:
        context = _dict(context, f"{at}.context")
        if context.get("id") is not None:
            reply_to = _wamid(context.get("id"), f"{at}.context.id")
    return InboundMessage(
        message_id=_wamid(message.get("id"), f"{at}.id"),
        wa_id=_phone(message.get("from"), f"{at}.from"),
        business_number=business, phone_number_id=phone_number_id,
        timestamp=_timestamp(message.get("timestamp"), f"{at}.timestamp", now),
        type=kind if kind in TYPES else "unsupported", content=content, reply_to=reply_to)


def _content(message: dict, kind: str, at: str) -> dict[str, Any]:
    """The bounded part of a known type's content that is kept."""
    if kind == "text":
        text = _dict(message.get("text"), f"{at}.text")
        return {"body": _text(text.get("body"), f"{at}.text.body", MAX_TEXT)}
    if kind in ("image", "audio", "video", "document", "sticker"):
        media = _dict(message.get(kind), f"{at}.{kind}")
        out = {"media_id": _text(media.get("id"), f"{at}.{kind}.id", MAX_SHORT)}
        for key, limit in (("mime_type", MAX_SHORT), ("caption", MAX_CAPTION), ("filename", MAX_SHORT)):
            if media.get(key) is not None:
                out[key] = _text(media[key], f"{at}.{kind}.{key}", limit, empty=True)
        return out
    if kind == "location":
        where = _dict(message.get("location"), f"{at}.location")
        out = {"latitude": _number(where.get("latitude"), f"{at}.location.latitude", 90),
               "longitude": _number(where.get("longitude"), f"{at}.location.longitude", 180)}
        for key in ("name", "address"):
            if where.get(key) is not None:
                out[key] = _text(where[key], f"{at}.location.{key}", MAX_SHORT, empty=True)
        return out
    if kind == "interactive":
        chosen = _dict(message.get("interactive"), f"{at}.interactive")
        reply_kind = _text(chosen.get("type"), f"{at}.interactive.type", 40)
        if not _TYPE.fullmatch(reply_kind):
            raise Refusal(422, BAD_FORMAT, "type must be lower-case letters and _", f"{at}.interactive.type")
        reply = _dict(chosen.get(reply_kind), f"{at}.interactive.{reply_kind}")
        out = {"kind": reply_kind}
        for key in ("id", "title", "description"):
            if reply.get(key) is not None:
                out[key] = _text(reply[key], f"{at}.interactive.{reply_kind}.{key}", MAX_SHORT, empty=True)
        return out
    if kind == "button":
        button = _dict(message.get("button"), f"{at}.button")
        return {key: _text(button[key], f"{at}.button.{key}", MAX_SHORT, empty=True)
                for key in ("text", "payload") if button.get(key) is not None}
    if kind == "reaction":
        reaction = _dict(message.get("reaction"), f"{at}.reaction")
        out = {"message_id": _wamid(reaction.get("message_id"), f"{at}.reaction.message_id")}
        if reaction.get("emoji") is not None:
            out["emoji"] = _text(reaction["emoji"], f"{at}.reaction.emoji", 16, empty=True)
        return out
    return {}


def _status(raw: Any, at: str, now: float) -> StatusReceipt:
    status = _dict(raw, at)
    value = status.get("status")
    if value not in STATUSES:
        raise Refusal(422, INVALID_VALUE, f"status must be one of {', '.join(STATUSES)}", f"{at}.status")
    opaque = status.get("biz_opaque_callback_data")
    if opaque is not None:
        opaque = _text(opaque, f"{at}.biz_opaque_callback_data", MAX_OPAQUE, empty=True)
    errors: tuple[dict[str, Any], ...] = ()
    if status.get("errors") is not None:
        errors = tuple(_error(e, f"{at}.errors[{n}]")
                       for n, e in enumerate(_list(status["errors"], f"{at}.errors", MAX_ERRORS)))
    return StatusReceipt(
        message_id=_wamid(status.get("id"), f"{at}.id"), status=value,
        timestamp=_timestamp(status.get("timestamp"), f"{at}.timestamp", now),
        recipient=_phone(status.get("recipient_id"), f"{at}.recipient_id"),
        tenant=tenant_hint(opaque), errors=errors)


def _error(raw: Any, at: str) -> dict[str, Any]:
    error = _dict(raw, at)
    out: dict[str, Any] = {}
    code = error.get("code")
    if code is not None:
        if type(code) is not int or not 0 <= code < 10**9:
            raise Refusal(422, WRONG_TYPE, "code must be a whole number", f"{at}.code")
        out["code"] = code
    for key, limit in (("title", MAX_SHORT), ("message", MAX_CAPTION)):
        if error.get(key) is not None:
            out[key] = _text(error[key], f"{at}.{key}", limit, empty=True)
    data = error.get("error_data")
    if data is not None and _dict(data, f"{at}.error_data").get("details") is not None:
        out["details"] = _text(data["details"], f"{at}.error_data.details", MAX_CAPTION, empty=True)
    return out


# --- field readers: each refusal names the field --------------------------------------------

def _dict(value: Any, at: str) -> dict:
    if value is None:
        raise Refusal(422, MISSING_FIELD, f"{at} is required", at)
    if not isinstance(value, dict):
        raise Refusal(422, WRONG_TYPE, f"{at} must be an object", at)
    return value


def _list(value: Any, at: str, limit: int) -> list:
    if value is None:
        raise Refusal(422, MISSING_FIELD, f"{at} is required", at)
    if not isinstance(value, list):
        raise Refusal(422, WRONG_TYPE, f"{at} must be a list", at)
    if len(value) > limit:
        raise Refusal(422, TOO_MANY, f"{at} holds at most {limit} items", at)
    return value


def _text(value: Any, at: str, limit: int, *, empty: bool = False, digits: bool = False) -> str:
    if value is None:
        raise Refusal(422, MISSING_FIELD, f"{at} is required", at)
    if not isinstance(value, str):
        raise Refusal(422, WRONG_TYPE, f"{at} must be text", at)
    if not value and not empty:
        raise Refusal(422, EMPTY, f"{at} must not be empty", at)
    if len(value) > limit:
        raise Refusal(422, TOO_LONG, f"{at} is limited to {limit} characters", at)
    if digits and not (value.isascii() and value.isdigit()):
        raise Refusal(422, BAD_FORMAT, f"{at} must be digits", at)
    return value


def _wamid(value: Any, at: str) -> str:
    text = _text(value, at, MAX_ID)
    if not _WAMID.fullmatch(text):
        raise Refusal(422, BAD_FORMAT, f"{at} must be a WhatsApp message id (letters, digits, ._=:+/-)", at)
    return text


def _phone(value: Any, at: str) -> str:
    text = _text(value, at, 15)
    if not _DIGITS.fullmatch(text):
        raise Refusal(422, BAD_FORMAT, f"{at} must be a phone number in E.164 digits without + (7-15 digits)", at)
    return text


def _display_number(value: Any, at: str) -> str:
    """Meta's display number, which may come formatted (``+1 555-010-0000``): its digits."""
    text = _text(value, at, 32).translate(_DISPLAY_NOISE)
    if not _DIGITS.fullmatch(text):
        raise Refusal(422, BAD_FORMAT, f"{at} must be a phone number (7-15 digits)", at)
    return text


def _timestamp(value: Any, at: str, now: float) -> int:
    """Whole Unix seconds, as a digit string (Meta's form) or an integer; nothing else."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise Refusal(422, WRONG_TYPE, f"{at} must be Unix seconds (digits)", at)
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit() and len(value) <= 12):
            raise Refusal(422, BAD_FORMAT, f"{at} must be Unix seconds (up to 12 digits)", at)
        value = int(value)
    if value < MIN_TIMESTAMP:
        raise Refusal(422, STALE_TIMESTAMP, f"{at} is before 2018", at)
    if value > now + MAX_AHEAD_S:
        raise Refusal(422, FUTURE_TIMESTAMP, f"{at} is more than {MAX_AHEAD_S} s ahead of our clock", at)
    return value


def _number(value: Any, at: str, bound: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Refusal(422, WRONG_TYPE, f"{at} must be a number", at)
    if not math.isfinite(value):
        raise Refusal(422, NOT_FINITE, f"{at} must be finite", at)
    if not -bound <= value <= bound:
        raise Refusal(422, OUT_OF_RANGE, f"{at} must be from -{bound:g} to {bound:g}", at)
    return float(value)
