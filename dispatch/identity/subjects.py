"""Data subject requests, the rules: which requests there are, how a request body is read,
when it is due, and where a person's rows are. Pure: no I/O (the I/O is
``dispatch.identity.subject_requests``).

A request is recorded and executed in one step, and only once the requester has been verified:
the caller (a tenant admin, or the operator at the CLI) says how (``verification.method``, one
of ``VERIFICATION_METHODS``) and gives a reference a reviewer can follow up (an ID number's last
digits, an OTP message id, a ticket). There is no "pending, verify later" state to forget: a
body without verification is refused and nothing is recorded. The statutory answer time is 30
days from the request (``due_at``); executing at once meets it, and the column is there for
requests that fail and must be retried.

Where a person's rows are (``SUBJECT_ROWS``): for each subject type, the tenant tables that
hold rows about them, the SQL condition that picks those rows (``$1`` is the subject's id),
and which registry ``subject_type`` values apply to that table. A customer's deliveries hold
the vendor's pickup address too; only the columns the registry marks ``customer`` are theirs.
The user account behind a customer or driver (``users`` and what hangs off it: sessions,
notifications, WhatsApp messages) is always part of the person.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from dispatch.core.errors import (
    EMPTY,
    INVALID_VALUE,
    MISSING_FIELD,
    TOO_LONG,
    TOO_MANY,
    UNKNOWN_FIELD,
    WRONG_TYPE,
    Refusal,
)
from dispatch.core.ids import InvalidId, parse_uuid

__all__ = ["CORRECTABLE", "DUE_AFTER", "REQUEST_TYPES", "SUBJECT_ROWS", "SUBJECT_TYPES",
           "VERIFICATION_METHODS", "Column", "SubjectRequest", "due_at", "erase_sql", "erased_value",
           "parse_changes", "parse_request", "quote_ident", "subject_table"]

# API word -> the seed's request_type value in data_subject_requests.
REQUEST_TYPES = {"access": "access", "correct": "rectification", "erase": "erasure", "restrict": "restriction"}
SUBJECT_TYPES = ("customer", "driver", "user")
STATUSES = ("pending", "completed", "failed")
VERIFICATION_METHODS = {
    "id_document": "the requester showed an identity document matching the record",
    "otp_registered_phone": "a one-time code sent to the phone number on record was read back",
    "account_session": "the request came from the subject's own signed-in account",
    "written_mandate": "a signed mandate from the subject (for a representative), on file",
}
DUE_AFTER = timedelta(days=30)
REASON_MAX = 500
REFERENCE_MAX = 200
_FIELDS = {"type", "subject_type", "subject_id", "verification", "reason", "changes"}

# What ``correct`` may change, per subject type: contact and identity fields, each with a
# length limit and a shape. A phone number is not here: it is the login and the WhatsApp
# routing key, changed through the account itself, not by an erasure-grade request.
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,190}\.[^@\s]{2,63}$")
_PLATE = re.compile(r"^[A-Za-z0-9 -]{2,20}$")
CORRECTABLE: dict[str, dict[str, tuple[int, re.Pattern[str] | None]]] = {
    "customer": {"first_name": (100, None), "last_name": (100, None)},
    "driver": {"first_name": (100, None), "last_name": (100, None), "vehicle_registration": (20, _PLATE)},
    "user": {"name": (255, None), "email": (255, _EMAIL)},
}
_TABLE_OF = {"customer": "customers", "driver": "drivers", "user": "users"}

# The subject's user account id, from the subject's own row.
USER_OF = {
    "customer": "SELECT user_id FROM customers WHERE id = $1",
    "driver": "SELECT user_id FROM drivers WHERE id = $1",
    "user": "SELECT id FROM users WHERE id = $1",
}
_CUSTOMER_ORDERS = "order_id IN (SELECT id FROM orders WHERE customer_id = $1)"
_CUSTOMER_DELIVERIES = ("delivery_id IN (SELECT id FROM deliveries WHERE "
                        "order_id IN (SELECT id FROM orders WHERE customer_id = $1))")
_USER_PHONE = "(SELECT phone_number FROM users WHERE id = $1)"
# (table, condition on $1 = subject id, registry subject types that are this person's)
_USER_ROWS = (
    ("users", "id = $1", ("user",)),
    ("user_sessions", "user_id = $1", ("user",)),
    ("notifications", "user_id = $1", ("user",)),
    ("whatsapp_messages", f"from_number = {_USER_PHONE} OR to_number = {_USER_PHONE}", ("user",)),
)
SUBJECT_ROWS: dict[str, tuple[tuple[str, str, tuple[str, ...]], ...]] = {
    "customer": (
        ("customers", "id = $1", ("customer",)),
        ("orders", "customer_id = $1", ("customer",)),
        ("order_items", _CUSTOMER_ORDERS, ("customer",)),
        ("order_status_history", _CUSTOMER_ORDERS, ("user",)),
        ("deliveries", _CUSTOMER_ORDERS, ("customer",)),
        ("delivery_proof_images", _CUSTOMER_DELIVERIES, ("customer",)),
    ),
    "driver": (
        ("drivers", "id = $1", ("driver",)),
        ("deliveries", "driver_id = $1", ("driver",)),
    ),
    "user": (),
}
USER_ROWS = _USER_ROWS


@dataclass(frozen=True, slots=True)
class SubjectRequest:
    """A validated request body."""

    kind: str                 # access | correct | erase | restrict
    subject_type: str
    subject_id: str
    verification_method: str
    verification_reference: str
    reason: str
    changes: dict[str, str] | None = None

    @property
    def request_type(self) -> str:
        """The stored request_type (the seed's vocabulary)."""
        return REQUEST_TYPES[self.kind]


def _text(value: Any, field: str, max_len: int) -> str:
    if value is None:
        raise Refusal(422, MISSING_FIELD, f"{field} is required", field)
    if not isinstance(value, str):
        raise Refusal(422, WRONG_TYPE, f"{field} must be text", field)
    text = value.strip()
    if not text:
        raise Refusal(422, EMPTY, f"{field} must not be empty", field)
    if len(text) > max_len:
        raise Refusal(422, TOO_LONG, f"{field} is longer than {max_len} characters", field)
    if "\x00" in text or any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        raise Refusal(422, INVALID_VALUE, f"{field} holds a NUL or an invalid character", field)
    return text


def _choice(value: Any, field: str, allowed: tuple[str, ...] | list[str]) -> str:
    if not isinstance(value, str):
        raise Refusal(422, MISSING_FIELD if value is None else WRONG_TYPE,
                      f"{field} must be one of {', '.join(allowed)}", field)
    if value not in allowed:
        raise Refusal(422, INVALID_VALUE, f"{field} must be one of {', '.join(allowed)}", field)
    return value


def parse_changes(subject_type: str, value: Any) -> dict[str, str]:
    """The fields a correction sets: a non-empty object of ``CORRECTABLE`` fields, each text
    within its limit and shape."""
    allowed = CORRECTABLE[subject_type]
    if not isinstance(value, dict):
        raise Refusal(422, MISSING_FIELD if value is None else WRONG_TYPE,
                      "changes must be an object of the fields to correct", "changes")
    if not value:
        raise Refusal(422, EMPTY, f"changes must name at least one of {', '.join(allowed)}", "changes")
    if len(value) > len(allowed):
        raise Refusal(422, TOO_MANY, f"changes takes at most {', '.join(allowed)}", "changes")
    out: dict[str, str] = {}
    for key, raw in value.items():
        if key not in allowed:
            raise Refusal(422, UNKNOWN_FIELD, f"a {subject_type}'s correctable fields are "
                          f"{', '.join(allowed)}", f"changes.{key}"[:80])
        max_len, shape = allowed[key]
        text = _text(raw, f"changes.{key}", max_len)
        if shape is not None and not shape.match(text):
            raise Refusal(422, INVALID_VALUE, f"changes.{key} is not a valid {key.replace('_', ' ')}",
                          f"changes.{key}")
        out[key] = text
    return out


def parse_request(body: Any, kind: str | None = None) -> SubjectRequest:
    """A request body, or a ``Refusal`` naming the field. ``kind`` fixes the type (the CLI's
    sub-command); otherwise the body's ``type`` says it."""
    if not isinstance(body, dict):
        raise Refusal(422, WRONG_TYPE, "the body must be a JSON object", "body")
    unknown = sorted(str(k)[:40] for k in body if k not in _FIELDS)
    if unknown:
        raise Refusal(422, UNKNOWN_FIELD, f"unknown field(s) {', '.join(unknown)}; a request takes "
                      f"{', '.join(sorted(_FIELDS))}", unknown[0])
    kind = _choice(body.get("type") if kind is None else kind, "type", list(REQUEST_TYPES))
    subject_type = _choice(body.get("subject_type"), "subject_type", SUBJECT_TYPES)
    raw_id = body.get("subject_id")
    if not isinstance(raw_id, str):
        raise Refusal(422, MISSING_FIELD if raw_id is None else WRONG_TYPE, "subject_id must be a UUID",
                      "subject_id")
    try:
        subject_id = str(parse_uuid(raw_id, "subject_id"))
    except InvalidId:
        raise Refusal(422, INVALID_VALUE, "subject_id must be a UUID", "subject_id") from None
    verification = body.get("verification")
    if not isinstance(verification, dict):
        raise Refusal(422, MISSING_FIELD if verification is None else WRONG_TYPE,
                      "verification {method, reference} is required: a request is executed only for "
                      "a verified requester", "verification")
    if set(verification) - {"method", "reference"}:
        raise Refusal(422, UNKNOWN_FIELD, "verification takes only method and reference", "verification")
    method = _choice(verification.get("method"), "verification.method", list(VERIFICATION_METHODS))
    reference = _text(verification.get("reference"), "verification.reference", REFERENCE_MAX)
    reason = _text(body.get("reason"), "reason", REASON_MAX)
    changes = None
    if kind == "correct":
        changes = parse_changes(subject_type, body.get("changes"))
    elif "changes" in body:
        raise Refusal(422, UNKNOWN_FIELD, "changes is only for a correct request", "changes")
    return SubjectRequest(kind, subject_type, subject_id, method, reference, reason, changes)


def due_at(requested_at: datetime) -> datetime:
    """When the answer is due: 30 days after the request."""
    return requested_at + DUE_AFTER


def quote_ident(name: str) -> str:
    """An SQL identifier, quoted (the names come from the registry and information_schema)."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class Column:
    """What erasure needs to know of a column (from information_schema)."""

    name: str
    udt_name: str
    nullable: bool
    max_len: int | None


def erased_value(column: Column, method: str) -> str | None:
    """The SQL expression an erased column is set to, or None when the method deletes the row.

    ``placeholder``: ``erased-`` and 12 hex characters of the row's id (so unique columns, a
    phone number or a licence number, stay unique), cut to the column's length; ``null``:
    NULL, or the empty text / empty JSON where the column may not be NULL (a notification's
    content); ``drop``: JSON emptied (``[]`` stays a list, anything else becomes ``{}``).
    """
    col = quote_ident(column.name)
    is_json = column.udt_name in ("json", "jsonb")
    if method == "delete":
        return None
    if method == "drop" or (is_json and not column.nullable):
        empty = f"CASE WHEN jsonb_typeof({col}::jsonb) = 'array' THEN '[]' ELSE '{{}}' END"
        return f"({empty})::{column.udt_name}" if is_json else ("NULL" if column.nullable else "''")
    if method == "placeholder" and column.udt_name in ("varchar", "text", "bpchar"):
        text = "'erased-' || left(replace(id::text, '-', ''), 12)"
        return f"left({text}, {column.max_len})" if column.max_len else text
    if column.nullable:
        return "NULL"
    return "''" if column.udt_name in ("varchar", "text", "bpchar") else "DEFAULT"


def erase_sql(table: str, condition: str, assignments: dict[str, str]) -> str:
    """The UPDATE that erases ``assignments`` (column -> expression) of the rows ``condition``
    picks; a ``DELETE`` when there is nothing to set (the row itself goes)."""
    if not assignments:
        return f"DELETE FROM {quote_ident(table)} WHERE {condition}"   # noqa: S608 - fixed identifiers
    sets = ", ".join(f"{quote_ident(c)} = {e}" for c, e in sorted(assignments.items()))
    return f"UPDATE {quote_ident(table)} SET {sets} WHERE {condition}"   # noqa: S608


def subject_table(subject_type: str) -> str:
    """The table whose row is the subject itself."""
    return _TABLE_OF[subject_type]
