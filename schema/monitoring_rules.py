"""Pure rules of the database metrics: the setting, the sample's shape, the thresholds.

A sample is a flat list of :class:`Metric` rows, one per reading, the shape of the control
plane's ``database_metrics`` table (``shard_id`` None is the control database). Per-table
readings (sizes, dead tuples) are separate rows whose ``metadata`` names the table, so a
dashboard can chart one table without parsing JSON arrays; statement texts come from
``pg_stat_statements``, which normalises constants to ``$n``, and are cut to
``QUERY_TEXT_LIMIT`` characters so a sample row stays small.

No I/O here: ``schema.monitoring`` takes the readings and writes them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from schema.errors import ConfigError
from schema.settings import env_int

__all__ = [
    "CACHE_HIT_WARN",
    "LONG_TRANSACTION_WARN_S",
    "QUERY_TEXT_LIMIT",
    "Metric",
    "MetricsSettings",
    "insert_columns",
    "warnings_for",
]

#: Below this share of blocks found in shared buffers, a database reads from disk too often.
CACHE_HIT_WARN = 0.90
#: A transaction open longer than this holds back vacuum (dead tuples pile up) on its database.
LONG_TRANSACTION_WARN_S = 300.0
QUERY_TEXT_LIMIT = 300
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True)
class MetricsSettings:
    """``WAKALA_DB_METRICS`` (on by default: 1/0, true/false, yes/no, on/off) and
    ``WAKALA_DB_METRICS_KEEP_DAYS`` (30; rows older than this are pruned, 1..3650)."""

    enabled: bool = True
    keep_days: int = 30

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MetricsSettings:
        env = os.environ if env is None else env
        raw = (env.get("WAKALA_DB_METRICS") or "").strip().lower()
        if raw and raw not in _TRUE | _FALSE:
            raise ConfigError(f"WAKALA_DB_METRICS must be one of 1/0, true/false, yes/no, on/off; "
                              f"got {env.get('WAKALA_DB_METRICS')!r}")
        return cls(enabled=raw not in _FALSE,
                   keep_days=env_int(env, "WAKALA_DB_METRICS_KEEP_DAYS", 30, 1, 3650))


@dataclass(frozen=True)
class Metric:
    """One reading: ``value`` None when the reading was skipped (``metadata`` says why)."""

    shard_id: int | None
    name: str
    value: float | None
    unit: str
    recorded_at: datetime
    metadata: dict[str, Any] = field(default_factory=dict)


def insert_columns(metrics: Iterable[Metric]) -> tuple[list[str], list[float | None], list[str],
                                                       list[str], list[datetime]]:
    """Column arrays (name, value, unit, metadata JSON, time) for one ``unnest`` insert."""
    names: list[str] = []
    values: list[float | None] = []
    units: list[str] = []
    metadata: list[str] = []
    times: list[datetime] = []
    for m in metrics:
        names.append(m.name[:100])
        values.append(m.value)
        units.append(m.unit[:50])
        metadata.append(json.dumps(m.metadata, sort_keys=True, default=str))
        times.append(m.recorded_at)
    return names, values, units, metadata, times


def truncate_query(text: str | None) -> str:
    """A statement's text on one line, at most QUERY_TEXT_LIMIT characters."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= QUERY_TEXT_LIMIT else flat[:QUERY_TEXT_LIMIT - 1] + "…"


def _where(m: Metric) -> str:
    return "control" if m.shard_id is None else f"shard {m.shard_id}"


def warnings_for(metrics: Iterable[Metric], *, max_connections: int | None = None) -> list[str]:
    """Operator-facing warnings for one sample: an unreachable database, a low cache hit
    ratio, a long-open transaction, connections near ``max_connections`` (per server: the
    sum over the databases on it is not known here, so each database is judged alone)."""
    out: list[str] = []
    for m in metrics:
        if m.name == "reachable" and m.value == 0:
            out.append(f"{_where(m)}: not reachable ({m.metadata.get('error', 'no detail')})")
        elif m.name == "cache_hit_ratio" and m.value is not None and m.value < CACHE_HIT_WARN:
            out.append(f"{_where(m)}: cache hit ratio {m.value:.1%} (below {CACHE_HIT_WARN:.0%})")
        elif (m.name == "longest_transaction_age" and m.value is not None
              and m.value > LONG_TRANSACTION_WARN_S):
            out.append(f"{_where(m)}: a transaction has been open {m.value:.0f} s "
                       f"(over {LONG_TRANSACTION_WARN_S:.0f} s holds back vacuum)")
        elif (m.name == "connections_total" and m.value is not None and max_connections
              and m.value >= 0.8 * max_connections):
            out.append(f"{_where(m)}: {m.value:.0f} connections of max_connections {max_connections}")
    return out
