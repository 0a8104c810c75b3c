"""The one id parser: every UUID that crosses a boundary (a request, a Redis reply, a Kafka
message, a token, a CLI argument) goes through here.

It lives at the bottom of the tree because every package parses ids: ``schema`` (tenant
ids), ``streams`` (driver ids in pings and keys) and every room of ``dispatch``. Keys and
SQL parameters always see the canonical lower-case text (``canonical_uuid``) or a
``uuid.UUID`` (``parse_uuid``); the fast path accepts text already in canonical form
without building a ``uuid.UUID``.
"""

from __future__ import annotations

import re
import uuid

from schema.errors import WakalaError

_CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# The longest spelling uuid.UUID reads is "urn:uuid:" + 36 characters: anything longer is
# refused before it is parsed (hostile input costs nothing).
_LONGEST = 45


class InvalidId(WakalaError, ValueError):
    """A value that should be a UUID is not; ``field`` names the input."""

    status = 422
    reason = "invalid_value"

    def __init__(self, field: str, value: object) -> None:
        self.field = field
        self.message = f"{field} must be a UUID, got {value!r:.60}"
        super().__init__(self.message)


def canonical_uuid(value: object, field: str = "id") -> str:
    """Canonical lower-case UUID text (the form used in every key), or ``InvalidId``."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        if len(value) == 36 and _CANONICAL.fullmatch(value):
            return value
        if len(value) > _LONGEST:
            raise InvalidId(field, value)
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise InvalidId(field, value)


def parse_uuid(value: object, field: str = "id") -> uuid.UUID:
    """``value`` (a ``uuid.UUID`` or its text in any form ``uuid.UUID`` reads) as a UUID, or
    ``InvalidId`` naming ``field``. Bytes, numbers and other types are refused, not coerced."""
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str) and len(value) <= _LONGEST:
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise InvalidId(field, value)


def optional_uuid(value: object, field: str = "id") -> uuid.UUID | None:
    """``parse_uuid`` that lets None through (an optional reference)."""
    return None if value is None else parse_uuid(value, field)
