"""Text the engine can store and send back: valid Unicode, no NUL. Pure; no I/O.

JSON may spell a lone UTF-16 surrogate (``"\\ud800"``) or a NUL (``"\\u0000"``) with an
escape, and Python's decoder accepts both (bytes are even decoded with ``surrogatepass``, so
a raw, UTF-8-encoded surrogate gets through as well). Neither survives the trip onward: a
lone surrogate cannot be encoded as UTF-8 (the response, the broker message or the query
raises), and PostgreSQL refuses a NUL in ``text``. So decoded JSON is checked once, at the
edge, and refused with ``invalid_text`` naming the field (``lines[0].note``; a bad key is
named by its path with the key escaped).

The check is cheap where it matters: a surrogate or NUL can only come from a ``\\u`` escape
or (in bytes) a ``0xED`` lead byte, so input holding neither (every well-behaved ping batch)
is not walked at all; two one-byte scans at memchr speed (~2 us for a 500-ping batch). Otherwise the decoded value is walked.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["bad_text_path", "is_valid_text", "may_hold_bad_text", "printable"]


def may_hold_bad_text(raw: str | bytes | bytearray) -> bool:
    """Whether JSON text ``raw`` can decode to a lone surrogate or a NUL (False: it cannot)."""
    if isinstance(raw, str):
        # A str came through a strict UTF-8 decoder (a websocket text frame) or from Python:
        # only an escape, or a surrogate already in it, can make one.
        return "\\" in raw and "\\u" in raw or not raw.isascii() and not is_valid_text(raw)
    # One-byte searches first: they run at memchr speed, a two-byte one ~80 times slower.
    return b"\xed" in raw or b"\\" in raw and b"\\u" in raw


def is_valid_text(value: str) -> bool:
    """True when ``value`` encodes as UTF-8 (no lone surrogate) and holds no NUL."""
    if "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(value: str) -> str:
    """``value`` safe to put in a response or a log: surrogates and NUL as escapes."""
    if is_valid_text(value):
        return value
    return value.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def bad_text_path(value: Any, path: str = "") -> str | None:
    """The path of the first string (or key) in decoded JSON ``value`` that is not valid
    text, or None if all are. Paths read ``lines[0].note``; an invalid key is escaped."""
    # An explicit stack, not recursion: the decoder already bounds depth, but a walk that
    # cannot overflow is one less thing to reason about.
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if not is_valid_text(item):
                return where or "body"
        elif isinstance(item, dict):
            entries: Iterable[tuple[Any, Any]] = item.items()
            children = []
            for key, child in entries:
                if isinstance(key, str) and not is_valid_text(key):
                    return _join(where, printable(key))
                children.append((child, _join(where, str(key))))
            stack.extend(reversed(children))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{i}]") for i, child in reversed(list(enumerate(item))))
    return None
