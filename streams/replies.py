"""Redis replies as Python values, whichever way the client was configured."""

from __future__ import annotations

from typing import Any


def as_text(value: Any) -> str:
    """A Redis reply value as text (bytes without decode_responses, str with it)."""
    return value.decode() if isinstance(value, bytes) else str(value)
