"""How every `wakala bench ...` reports: a readable table, then one JSON line of figures."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from dispatch.core.console import format_table


def percentiles_ms(samples: Sequence[float]) -> dict[str, float | None]:
    if len(samples) == 0:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    arr = np.asarray(samples, dtype=float)
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {"p50_ms": round(float(p50), 2), "p90_ms": round(float(p90), 2),
            "p99_ms": round(float(p99), 2), "max_ms": round(float(arr.max()), 2)}


def emit(title: str, rows: Sequence[tuple[str, object]], figures: dict[str, object]) -> None:
    print(title)
    print(format_table(["measure", "value"], rows))
    print(json.dumps(figures, sort_keys=True))
