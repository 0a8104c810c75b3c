"""Which WhatsApp messages an order or delivery event makes: pure rules, no I/O.

An event (one record of ``order-events`` or ``delivery-events``, as
``dispatch.deliveries.outbox.event_message`` wrote it) becomes zero or more planned
messages, each one template to one person:

==================  ==========  =============  ===========================================
template            to          kind           made by
==================  ==========  =============  ===========================================
order_confirmed     customer    transactional  order ``place`` (cash) or ``pay`` (card...)
vendor_new_order    vendor      transactional  the same event: the shop has an order to act on
driver_assigned     customer    transactional  delivery ``accept`` (a driver took it), with a
                                               tracking link made when the message goes
driver_arriving     customer    transactional  delivery ``arrived_dropoff`` (geofence)
order_delivered     customer    transactional  delivery ``deliver``
delivery_failed     customer    transactional  delivery ``fail``
rate_and_return     customer    marketing      delivery ``deliver``: a rating and come-back
                                               invitation, sent only with marketing consent
==================  ==========  =============  ===========================================

Why these events. An order is *confirmed* when it is committed: a cash order when it is
placed (the shop may accept it at once), any other order when its payment arrives; before
that a card order may still be abandoned, and telling the customer "confirmed" would be
false. The shop's "new order" goes out on the same event, when the shop has something to do.
A cash order paid by callback before acceptance does not confirm twice (``pay`` of a cash
order plans nothing). Delivery messages come from ``delivery-events`` only; the order side's
matching events (``dispatch``, ``deliver``, ``fail_delivery`` on ``order-events``) plan
nothing, so one happening never makes two messages.

Each planned message has a stable ``dedupe_key`` (event id, template, recipient): the
notifications table holds it UNIQUE, so an event the broker delivers twice plans the same
keys and inserts nothing the second time.

Parameters are cleaned for the Cloud API (``clean_param``): a shop name is text a vendor
typed, and Meta refuses body parameters with newlines, tabs or runs of spaces (error 132018);
control characters and lone surrogates are dropped and long values cut.
"""

from __future__ import annotations

import json
import re
import unicodedata
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dispatch.core.errors import BAD_JSON, INVALID_VALUE, MISSING_FIELD, WRONG_TYPE, Refusal

__all__ = [
    "TEMPLATES", "TRACKING_URL", "Event", "OrderContext", "Planned", "Template", "clean_param",
    "dedupe_key", "is_stale", "parse_event", "plan", "preview", "render_params", "to_whatsapp_number",
    "wanted",
]

TRANSACTIONAL, MARKETING = "transactional", "marketing"
CUSTOMER, VENDOR = "customer", "vendor"
ORDER, DELIVERY = "order", "delivery"
TRACKING_URL = "tracking_url"   # the parameter filled when the message goes (a fresh link)
PARAM_MAX = 200                 # characters of one parameter (Meta allows more; a message stays short)
DEFAULT_LANGUAGE = "en"


@dataclass(frozen=True)
class Template:
    """A template as approved in WhatsApp Manager: its name, the languages it was approved
    in, what its body says (``{{1}}``... are ``params`` in order), who gets it and its kind."""

    name: str
    audience: str
    kind: str
    params: tuple[str, ...]
    body: str
    languages: tuple[str, ...] = (DEFAULT_LANGUAGE,)


TEMPLATES: Mapping[str, Template] = {t.name: t for t in (
    Template("order_confirmed", CUSTOMER, TRANSACTIONAL, ("shop", "order_number", "total"),
             "{{1}} has your order {{2}} (R{{3}}). We will message you when a driver is on the way."),
    Template("vendor_new_order", VENDOR, TRANSACTIONAL, ("order_number", "total", "payment"),
             "New order {{1}}: R{{2}}, {{3}}. Open your orders screen to accept it."),
    Template("driver_assigned", CUSTOMER, TRANSACTIONAL, ("order_number", "shop", TRACKING_URL),
             "A driver is collecting your order {{1}} from {{2}}. Follow it live: {{3}}"),
    Template("driver_arriving", CUSTOMER, TRANSACTIONAL, ("order_number", "shop"),
             "Your driver is almost at your door with order {{1}} from {{2}}."),
    Template("order_delivered", CUSTOMER, TRANSACTIONAL, ("order_number", "shop"),
             "Order {{1}} from {{2}} was delivered. Enjoy!"),
    Template("delivery_failed", CUSTOMER, TRANSACTIONAL, ("order_number", "shop"),
             "We could not deliver order {{1}} from {{2}}. The shop will contact you about a refund "
             "or a new delivery."),
    Template("rate_and_return", CUSTOMER, MARKETING, ("shop",),
             "Thank you for ordering from {{1}}! Reply with a rating from 1 to 5, and come back soon: "
             "reply STOP to get no more offers."),
)}

# (topic kind, event type) -> templates it may make (before the order's facts are known).
_BY_EVENT: Mapping[tuple[str, str], tuple[str, ...]] = {
    (ORDER, "place"): ("order_confirmed", "vendor_new_order"),
    (ORDER, "pay"): ("order_confirmed", "vendor_new_order"),
    (DELIVERY, "accept"): ("driver_assigned",),
    (DELIVERY, "arrived_dropoff"): ("driver_arriving",),
    (DELIVERY, "deliver"): ("order_delivered", "rate_and_return"),
    (DELIVERY, "fail"): ("delivery_failed",),
}
CASH = "cash"


@dataclass(frozen=True)
class Event:
    """One outbox event as read from its topic."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    topic: str                      # ORDER or DELIVERY
    type: str
    order_id: uuid.UUID
    created_at: datetime | None
    payload: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OrderContext:
    """What the messages of an order need, read from the tenant when an event is planned."""

    order_number: str
    shop: str
    total: str
    payment_method: str
    customer_id: str
    customer_user_id: str | None    # None: the customer has no account, hence no number
    vendor_id: str
    vendor_user_id: str | None
    language: str = DEFAULT_LANGUAGE


@dataclass(frozen=True)
class Planned:
    """One message to insert as a notification."""

    template: Template
    recipient_type: str
    recipient_id: str
    user_id: str | None
    dedupe_key: str
    params: Mapping[str, str]       # every param but TRACKING_URL
    language: str


def _refuse(reason: str, message: str, field_name: str) -> Refusal:
    return Refusal(422, reason, message, field_name)


def _uuid_field(data: Mapping[str, Any], name: str, label: str) -> uuid.UUID:
    value = data.get(name)
    if value is None:
        raise _refuse(MISSING_FIELD, f"{label} is missing", label)
    if not isinstance(value, str):
        raise _refuse(WRONG_TYPE, f"{label} must be a UUID string", label)
    try:
        return uuid.UUID(value)
    except ValueError:
        raise _refuse(INVALID_VALUE, f"{label} is not a UUID: {value[:60]!r}", label) from None


def parse_event(raw: bytes | str, topic: str) -> Event:
    """An ``Event`` from a record's value; a ``Refusal`` naming the field for anything else
    (the notifier logs it, counts it and goes on: a bad record must not stop the stream)."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _refuse(BAD_JSON, "the record is not JSON", "value") from None
    if not isinstance(data, dict):
        raise _refuse(WRONG_TYPE, "the record must be a JSON object", "value")
    payload = data.get("payload")
    if not isinstance(payload, dict):
        raise _refuse(MISSING_FIELD if payload is None else WRONG_TYPE, "payload must be an object", "payload")
    kind = data.get("type")
    if not isinstance(kind, str) or not 0 < len(kind) <= 64:
        raise _refuse(MISSING_FIELD if kind is None else WRONG_TYPE, "type must be an event name", "type")
    created = data.get("created_at")
    created_at = None
    if created is not None:
        try:
            created_at = datetime.fromisoformat(created) if isinstance(created, str) else None
        except ValueError:
            created_at = None
        if created_at is None or created_at.tzinfo is None:
            raise _refuse(INVALID_VALUE, "created_at must be an ISO 8601 time with its offset", "created_at")
    order_source = data if topic == ORDER else payload
    return Event(
        id=_uuid_field(data, "id", "id"), tenant_id=_uuid_field(data, "tenant_id", "tenant_id"),
        topic=topic, type=kind,
        order_id=_uuid_field(order_source, "order_id", "order_id" if topic == ORDER else "payload.order_id"),
        created_at=created_at, payload=payload)


def wanted(topic: str, event_type: str) -> tuple[str, ...]:
    """The templates an event of this type may make; () for the many that make none (checked
    before anything is decoded further or read from the database)."""
    return _BY_EVENT.get((topic, event_type), ())


def is_stale(event: Event, now: datetime, max_age_s: float) -> bool:
    """True for an event too old to message about: a "driver arriving" hours late is noise,
    and a consumer group reading the topic from its start must not message last week's
    customers. An event without a time is not stale."""
    return event.created_at is not None and (now - event.created_at).total_seconds() > max_age_s


def dedupe_key(event_id: uuid.UUID | str, template: str, recipient_type: str, recipient_id: str) -> str:
    return f"{event_id}/{template}/{recipient_type}/{recipient_id}"


def plan(event: Event, ctx: OrderContext) -> list[Planned]:
    """The messages ``event`` makes, given its order's facts."""
    names = wanted(event.topic, event.type)
    if event.topic == ORDER and names:
        method = event.payload.get("payment_method") or ctx.payment_method
        if (event.type == "place") != (method == CASH):
            return []   # a card order confirms on payment; a cash order on placing, once
    params = {"shop": ctx.shop, "order_number": ctx.order_number, "total": ctx.total,
              "payment": "cash on delivery" if ctx.payment_method == CASH else "paid"}
    out = []
    for name in names:
        template = TEMPLATES[name]
        if template.audience == VENDOR:
            recipient, user = ctx.vendor_id, ctx.vendor_user_id
        else:
            recipient, user = ctx.customer_id, ctx.customer_user_id
        language = ctx.language if ctx.language in template.languages else DEFAULT_LANGUAGE
        out.append(Planned(template, template.audience, recipient, user,
                           dedupe_key(event.id, name, template.audience, recipient),
                           {p: clean_param(params[p]) for p in template.params if p != TRACKING_URL},
                           language))
    return out


_SPACES = re.compile(r"\s+")


def clean_param(value: object, limit: int = PARAM_MAX) -> str:
    """Text the Cloud API takes as a body parameter: no control or format characters, no
    lone surrogates, whitespace runs made one space, at most ``limit`` characters, never
    empty (Meta refuses an empty parameter)."""
    text = str(value).encode("utf-8", "replace").decode("utf-8")   # lone surrogates -> "?"
    text = "".join(c for c in text if unicodedata.category(c)[0] != "C" or c in "\t\n\r")
    text = _SPACES.sub(" ", text).strip()
    if len(text) > limit:
        text = text[:limit - 1].rstrip() + "…"
    return text or "-"


def render_params(template: Template, params: Mapping[str, str]) -> list[str]:
    """The body parameters in the template's order; KeyError names a missing one."""
    return [params[p] for p in template.params]


def preview(template: Template, values: list[str]) -> str:
    """The body as the person reads it (the notification's ``content``)."""
    text = template.body
    for i, value in enumerate(values, start=1):
        text = text.replace("{{" + str(i) + "}}", value)
    return text


_DIGITS = re.compile(r"[0-9]{8,15}")


def to_whatsapp_number(phone: str | None) -> str | None:
    """The Cloud API's ``to`` from a stored E.164 number (+27821234567 -> 27821234567); None
    when there is no usable number."""
    if not phone:
        return None
    digits = re.sub(r"[ ()\-]", "", phone).removeprefix("+")
    return digits if _DIGITS.fullmatch(digits) and not digits.startswith("0") else None
