"""JSON on the location hot path: orjson for well-formed input, the standard library's exact
answers for everything else.

Every upload is parsed once in the gateway and once in the worker, and every ack and bundle is
encoded: with the standard library those were the largest single items in both processes'
profiles (``json.decoder.raw_decode`` and ``json.encoder.iterencode``). orjson parses and
encodes the same documents several times faster.

The two parsers disagree only on input that is refused anyway, and the refusal reasons are a
public contract (``bad_json``, ``not_finite:<f>``, ``invalid_text``, ...): orjson refuses
``NaN``/``Infinity`` literals, ``1e400``, lone surrogates and nesting over 1024 levels, where the
standard library returns a value that the validators then refuse with a precise reason. So a
document orjson refuses is parsed again by ``json.loads``, which either raises (``ValueError``,
``UnicodeDecodeError`` or ``RecursionError``, as before) or returns the value the validators
expect. Well-formed input never pays for the second parse. (orjson reads integers beyond 64 bits
as floats, the standard library as ints; every number field is range-checked, so both are
refused with the same reason.)

``dumps`` returns bytes and is for values already validated as finite: orjson writes NaN as
``null`` where the standard library writes the invalid literal ``NaN``.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["dumps", "loads"]

_orjson_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError
dumps = orjson.dumps


def loads(raw: str | bytes | bytearray | memoryview) -> Any:
    """Parse JSON; raises ``ValueError`` (``UnicodeDecodeError`` included) or ``RecursionError``
    exactly where ``json.loads`` does."""
    try:
        return _orjson_loads(raw)
    except _JSONDecodeError:
        return json.loads(bytes(raw) if isinstance(raw, memoryview) else raw)
