"""The database metrics' setting, row shape and thresholds."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from schema.errors import ConfigError
from schema.monitoring_rules import (
    QUERY_TEXT_LIMIT,
    Metric,
    MetricsSettings,
    insert_columns,
    truncate_query,
    warnings_for,
)

AT = datetime(2026, 12, 5, tzinfo=UTC)


def test_metrics_are_on_by_default_and_keep_thirty_days():
    assert MetricsSettings.from_env({}) == MetricsSettings(True, 30)
    assert MetricsSettings.from_env({"WAKALA_DB_METRICS": ""}).enabled


@pytest.mark.parametrize("raw, enabled", [("0", False), ("off", False), ("No", False), (" false ", False),
                                          ("1", True), ("ON", True), ("yes", True)])
def test_the_switch_reads_the_usual_spellings(raw, enabled):
    assert MetricsSettings.from_env({"WAKALA_DB_METRICS": raw}).enabled is enabled


@pytest.mark.parametrize("raw", ["maybe", "2", "-1", "true; DROP TABLE x", "\x00", "nan"])
def test_a_hostile_switch_is_refused_naming_the_variable(raw):
    with pytest.raises(ConfigError, match="WAKALA_DB_METRICS"):
        MetricsSettings.from_env({"WAKALA_DB_METRICS": raw})


@pytest.mark.parametrize("raw", ["0", "3651", "1.5", "abc", "-3", "inf"])
def test_keep_days_out_of_range_is_refused(raw):
    with pytest.raises(ConfigError, match="WAKALA_DB_METRICS_KEEP_DAYS"):
        MetricsSettings.from_env({"WAKALA_DB_METRICS_KEEP_DAYS": raw})


def test_insert_columns_are_parallel_arrays_with_json_metadata():
    rows = [Metric(0, "table_size", 10.0, "bytes", AT, {"schema": "public", "table": "t"}),
            Metric(0, "slow_statements", None, "ms", AT, {"skipped": "no extension"})]
    names, values, units, meta, times = insert_columns(rows)
    assert names == ["table_size", "slow_statements"]
    assert values == [10.0, None]
    assert units == ["bytes", "ms"]
    assert [json.loads(m) for m in meta] == [{"schema": "public", "table": "t"}, {"skipped": "no extension"}]
    assert times == [AT, AT]


def test_long_names_are_cut_to_the_column_widths():
    names, _, units, _, _ = insert_columns([Metric(None, "n" * 500, 1.0, "u" * 99, AT)])
    assert len(names[0]) == 100 and len(units[0]) == 50


def test_statement_text_is_flattened_and_cut():
    assert truncate_query("SELECT 1\n   FROM  t") == "SELECT 1 FROM t"
    assert truncate_query(None) == ""
    long = truncate_query("x " * 1000)
    assert len(long) == QUERY_TEXT_LIMIT and long.endswith("…")


def test_warnings_name_the_database_and_the_threshold():
    sample = [
        Metric(None, "reachable", 1.0, "bool", AT),
        Metric(1, "reachable", 0.0, "bool", AT, {"error": "OSError: refused"}),
        Metric(0, "cache_hit_ratio", 0.5, "ratio", AT),
        Metric(None, "cache_hit_ratio", 0.99, "ratio", AT),
        Metric(0, "cache_hit_ratio", None, "ratio", AT),
        Metric(0, "longest_transaction_age", 900.0, "seconds", AT),
        Metric(None, "longest_transaction_age", 2.0, "seconds", AT),
        Metric(0, "connections_total", 85.0, "connections", AT),
    ]
    warnings = warnings_for(sample, max_connections=100)
    assert warnings == [
        "shard 1: not reachable (OSError: refused)",
        "shard 0: cache hit ratio 50.0% (below 90%)",
        "shard 0: a transaction has been open 900 s (over 300 s holds back vacuum)",
        "shard 0: 85 connections of max_connections 100",
    ]
    assert warnings_for(sample[:1]) == []
