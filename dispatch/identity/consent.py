"""Consent, the rules: what a person can consent to, the wording they saw, how a change is
read, and what a history of records means now. Pure: no I/O (the I/O is
``dispatch.identity.consent_store``).

Two purposes are recorded (``PURPOSES``):

* ``marketing``: messages that promote something (a vendor's specials, a promotion code) on
  WhatsApp, SMS, e-mail or push. Opt-in: a person with no record has not consented, and
  nothing marketing is sent to them. Messages about an order they placed (confirmed, driver
  assigned, delivered) are not marketing and need no consent (POPIA section 11(1)(b): they
  carry out the contract the customer asked for); a restricted person (a ``restrict`` data
  subject request) gets no marketing whatever their consent says.
* ``location_tracking``: a driver's live location while the driver app streams. The tenant
  engages the driver under a contract, and locating the driver during a shift is how that
  contract is carried out, so a driver with no record is tracked (section 11(1)(b)); the
  record holds the driver's acceptance of the current wording, and a withdrawal is honoured
  at once (section 11(3), the right to object): the gateway refuses the driver's pings, the
  driver cannot start a shift, and their live location and availability are deleted, until
  they consent again. A tenant that wants opt-in tracking has its driver app ask before the
  first shift; the engine records what the app sends.

Wording is versioned (``WORDING``): a record stores the version and the very text the person
saw, so a later rewording never changes what an old consent meant. Withdrawing needs no
version (nothing is being agreed to). The channel says where the consent was captured.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dispatch.core.errors import (
    INVALID_TEXT,
    INVALID_VALUE,
    MISSING_FIELD,
    TOO_LONG,
    UNKNOWN_FIELD,
    WRONG_TYPE,
    Refusal,
)

__all__ = ["CHANNELS", "PURPOSES", "WORDING", "ConsentChange", "ConsentState", "current_state",
           "may_send", "parse_change", "parse_purpose"]


@dataclass(frozen=True)
class Purpose:
    subject_types: tuple[str, ...]   # who can give it
    lawful_basis: str                 # the basis recorded with every record (``consent_records.lawful_basis``)
    default_given: bool               # what "no record" means (see the module docstring)


PURPOSES: dict[str, Purpose] = {
    "marketing": Purpose(("customer", "user"), "consent", False),
    "location_tracking": Purpose(("driver",), "contract_with_right_to_object", True),
}
# Where a consent was captured: the person's own app or page, a WhatsApp reply, a call or
# paper form recorded by the tenant's staff.
CHANNELS = ("app", "web", "whatsapp", "sms", "email", "phone", "in_person", "paper")
# (purpose, version) -> the wording shown. New wording gets a new version; old ones stay so a
# record can always be matched to what was said.
WORDING: dict[tuple[str, str], str] = {
    ("marketing", "2026-12"):
        "Yes, send me specials and promotions from the shops I buy from, on the channel I chose. "
        "I can stop them at any time by replying STOP or changing this setting.",
    ("location_tracking", "2026-12"):
        "While I am on shift, the app shares my phone's location with the dispatcher to offer me "
        "deliveries and with each customer whose order I carry, until that order is delivered. "
        "I can withdraw this at any time; I then cannot take deliveries until I allow it again.",
}
NOTE_MAX = 500
_FIELDS = {"given", "version", "channel", "note"}


@dataclass(frozen=True)
class ConsentChange:
    """A validated change: give (with the version and its wording) or withdraw."""

    purpose: str
    given: bool
    channel: str
    version: str | None = None
    text: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class ConsentState:
    """What the records say now for one person and purpose."""

    purpose: str
    given: bool
    recorded: bool                    # False: no record, ``given`` is the purpose's default
    version: str | None = None
    channel: str | None = None
    given_at: datetime | None = None
    withdrawn_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"purpose": self.purpose, "given": self.given, "recorded": self.recorded,
                "version": self.version, "channel": self.channel,
                "given_at": self.given_at.isoformat() if self.given_at else None,
                "withdrawn_at": self.withdrawn_at.isoformat() if self.withdrawn_at else None}


def parse_purpose(value: Any, subject_type: str, field: str = "purpose") -> str:
    """A purpose this kind of subject can consent to; 422 naming ``field`` otherwise."""
    if not isinstance(value, str):
        raise Refusal(422, WRONG_TYPE, f"{field} must be text", field)
    purposes = [p for p, spec in PURPOSES.items() if subject_type in spec.subject_types]
    if value not in purposes:
        raise Refusal(422, INVALID_VALUE, f"{field} must be one of {', '.join(purposes)} for a {subject_type}",
                      field)
    return value


def parse_change(purpose: str, body: Any) -> ConsentChange:
    """``{"given": true, "version": "2026-12", "channel": "app"}`` or ``{"given": false,
    "channel": "app"}`` (plus an optional ``note``): 422 naming the field for anything else.
    A version must exist for the purpose; its wording is what gets recorded."""
    if not isinstance(body, dict):
        raise Refusal(422, WRONG_TYPE, "the body must be a JSON object", "body")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise Refusal(422, UNKNOWN_FIELD, f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(_FIELDS))}",
                      unknown[0])
    if "given" not in body:
        raise Refusal(422, MISSING_FIELD, "given is required (true to consent, false to withdraw)", "given")
    given = body["given"]
    if type(given) is not bool:
        raise Refusal(422, WRONG_TYPE, "given must be true or false", "given")
    channel = body.get("channel")
    if channel is None:
        raise Refusal(422, MISSING_FIELD, f"channel is required: one of {', '.join(CHANNELS)}", "channel")
    if channel not in CHANNELS:
        raise Refusal(422, INVALID_VALUE, f"channel must be one of {', '.join(CHANNELS)}", "channel")
    note = body.get("note")
    if note is not None:
        if not isinstance(note, str):
            raise Refusal(422, WRONG_TYPE, "note must be text", "note")
        if len(note) > NOTE_MAX:
            raise Refusal(422, TOO_LONG, f"note is limited to {NOTE_MAX} characters", "note")
        if "\x00" in note:
            raise Refusal(422, INVALID_TEXT, "note must not hold a NUL character", "note")
    versions = sorted(v for p, v in WORDING if p == purpose)
    version = body.get("version")
    if not given:
        if version is not None and version not in versions:
            raise Refusal(422, INVALID_VALUE, f"version must be one of {', '.join(versions)}", "version")
        return ConsentChange(purpose, False, channel, version, None, note)
    if version is None:
        raise Refusal(422, MISSING_FIELD, f"version is required to consent: the wording shown, one of "
                      f"{', '.join(versions)}", "version")
    if not isinstance(version, str) or version not in versions:
        raise Refusal(422, INVALID_VALUE, f"version must be one of {', '.join(versions)}", "version")
    return ConsentChange(purpose, True, channel, version, WORDING[(purpose, version)], note)


def current_state(purpose: str, records: list[dict[str, Any]], now: datetime) -> ConsentState:
    """The state a person's records for ``purpose`` give at ``now``: the newest record decides
    (given and not withdrawn nor expired: given; anything else: not given); with no record,
    the purpose's default. ``records`` are rows of ``consent_records`` (any order)."""
    mine = [r for r in records if r["purpose"] == purpose]
    if not mine:
        return ConsentState(purpose, PURPOSES[purpose].default_given, False)
    last = max(mine, key=lambda r: (r["given_at"], r["id"]))
    expired = last.get("expires_at") is not None and last["expires_at"] <= now
    given = bool(last["consent_given"]) and last.get("withdrawn_at") is None and not expired
    withdrawn_at = last.get("withdrawn_at") or (None if last["consent_given"] else last["given_at"])
    return ConsentState(purpose, given, True, last.get("version"), last.get("channel"),
                        last["given_at"] if last["consent_given"] else None, withdrawn_at)


def may_send(kind: str, marketing: ConsentState | None, restricted: bool) -> bool:
    """Whether a message of ``kind`` (``transactional`` or ``marketing``) may go to a person:
    transactional always; marketing only with consent given now and processing not restricted."""
    if kind == "transactional":
        return True
    if kind != "marketing":
        raise ValueError(f"message kind must be transactional or marketing, got {kind!r}")
    return marketing is not None and marketing.given and not restricted
