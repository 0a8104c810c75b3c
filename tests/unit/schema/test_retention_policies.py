"""The retention catalogue and its rules: hostile policy rows, the SQL built, partitions, settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from schema.errors import ConfigError, WakalaError
from schema.retention.policies import (
    CATALOGUE,
    DEFAULT_POLICIES,
    FINANCIAL_FLOOR_DAYS,
    KEPT_WITH_ORDERS,
    MAX_DAYS,
    RetentionPolicyError,
    RetentionSettings,
    count_batch_sql,
    delete_batch_sql,
    order_ids_batch_sql,
    order_unit_sql,
    partition_month,
    partitions_to_drop,
    quote_ident,
    validate_policy,
    validate_reason,
)

SCHEMA = "tenant_0123456789ab"
MIGRATION = Path(__file__).resolve().parents[3] / "schema/migrations/control/0006_retention.sql"


def _row(**over):
    row = {"id": "p1", "table_name": "whatsapp_messages", "retention_days": 30, "conditions": {},
           "is_active": True, "archive_after_days": None, "delete_after_days": None}
    return {**row, **over}


def test_the_migration_inserts_exactly_the_catalogue_defaults():
    sql = MIGRATION.read_text()
    inserted = re.findall(r"\('(\w+)', (\d+), (true|false),\s*'((?:[^']|'')*)'\)", sql)
    assert [(t, int(d), a == "true", r.replace("''", "'")) for t, d, a, r in inserted] == list(DEFAULT_POLICIES)


def test_orders_are_kept_by_default_and_every_other_default_is_active():
    defaults = {table: active for table, _, active, _ in DEFAULT_POLICIES}
    assert defaults.pop("orders") is False
    assert all(defaults.values())
    assert dict((t, d) for t, d, _, _ in DEFAULT_POLICIES)["orders"] >= FINANCIAL_FLOOR_DAYS


@pytest.mark.parametrize("table", [
    "users", "pg_authid", 'whatsapp_messages"; DROP TABLE users; --', "whatsapp_messages;",
    "WhatsApp_Messages", " whatsapp_messages", "tenant_0123456789ab.whatsapp_messages", "",
    "x" * 10_000, "whatsapp_messages\0",
])
def test_a_table_outside_the_catalogue_is_refused_by_name(table):
    with pytest.raises(RetentionPolicyError, match="table_name"):
        validate_policy(_row(table_name=table))


@pytest.mark.parametrize("table", [None, 7, ["whatsapp_messages"], {"t": 1}])
def test_a_table_name_that_is_not_text_is_refused(table):
    with pytest.raises(RetentionPolicyError, match="table_name must be a table name"):
        validate_policy(_row(table_name=table))


@pytest.mark.parametrize("table", sorted(KEPT_WITH_ORDERS))
def test_financial_tables_cannot_be_named_alone(table):
    with pytest.raises(RetentionPolicyError, match="kept with their order"):
        validate_policy(_row(table_name=table, retention_days=4000), allow_financial=True)


@pytest.mark.parametrize("days", [0, -1, -36500, MAX_DAYS + 1, 10**12])
def test_days_out_of_range_are_refused(days):
    with pytest.raises(RetentionPolicyError, match="retention_days must be between 1 and 36500"):
        validate_policy(_row(retention_days=days))


@pytest.mark.parametrize("days", [True, "30", 30.0, 1.5, None, [30]])
def test_days_that_are_not_whole_numbers_are_refused(days):
    with pytest.raises(RetentionPolicyError, match="whole number of days"):
        validate_policy(_row(retention_days=days))


def test_delete_after_days_is_the_period_and_may_not_undercut_retention_days():
    assert validate_policy(_row(retention_days=30, delete_after_days=60)).days == 60
    with pytest.raises(RetentionPolicyError, match="delete_after_days 10 is shorter"):
        validate_policy(_row(retention_days=30, delete_after_days=10))
    with pytest.raises(RetentionPolicyError, match="delete_after_days must be between"):
        validate_policy(_row(delete_after_days=0))


def test_archiving_is_refused_rather_than_silently_ignored():
    with pytest.raises(RetentionPolicyError, match="archive_after_days is not supported"):
        validate_policy(_row(archive_after_days=10))


def test_an_active_orders_policy_needs_the_operator_to_allow_financial_deletion():
    with pytest.raises(RetentionPolicyError, match="WAKALA_RETENTION_ALLOW_FINANCIAL"):
        validate_policy(_row(table_name="orders", retention_days=2557))
    assert validate_policy(_row(table_name="orders", retention_days=2557, is_active=False)).active is False
    assert validate_policy(_row(table_name="orders", retention_days=2557), allow_financial=True).days == 2557


@pytest.mark.parametrize("days", [1, 365, FINANCIAL_FLOOR_DAYS - 1])
def test_orders_below_the_legal_floor_are_refused_even_when_allowed(days):
    with pytest.raises(RetentionPolicyError, match="below the legal minimum"):
        validate_policy(_row(table_name="orders", retention_days=days, is_active=False), allow_financial=True)


@pytest.mark.parametrize("active", ["yes", 1, None, "true"])
def test_is_active_must_be_a_boolean(active):
    with pytest.raises(RetentionPolicyError, match="is_active"):
        validate_policy(_row(is_active=active))


@pytest.mark.parametrize(("conditions", "message"), [
    ({"1=1) OR (true": ["x"]}, "conditions key '1=1\\) OR \\(true' is not allowed"),
    ({"created_at": ["x"]}, "conditions key 'created_at' is not allowed"),
    ({"direction": ["sideways"]}, "'sideways' is not one of inbound, outbound"),
    ({"direction": []}, "conditions.direction must be"),
    ({"direction": [1]}, "conditions.direction must be"),
    ({"direction": {"inbound": 1}}, "conditions.direction must be"),
    ({"type": ["x" * 101]}, "conditions.type must be"),
    ({"type": ["a\0b"]}, "conditions.type must be"),
    ({"type": [str(i) for i in range(51)]}, "conditions.type must be"),
    (["direction"], "conditions must be a JSON object"),
    ("direction = 'inbound'", "conditions must be a JSON object"),
])
def test_hostile_conditions_are_refused_naming_the_field(conditions, message):
    with pytest.raises(RetentionPolicyError, match=message):
        validate_policy(_row(conditions=conditions))


def test_conditions_are_refused_where_whole_partitions_are_dropped():
    with pytest.raises(RetentionPolicyError, match="not allowed on analytics_events"):
        validate_policy(_row(table_name="analytics_events", conditions={"event_type": ["x"]}))


def test_conditions_become_parameters_never_sql_text():
    policy = validate_policy(_row(conditions={"type": ["'; DROP TABLE users; --", "text"],
                                              "direction": "inbound"}))
    sql = delete_batch_sql(policy, SCHEMA)
    assert "DROP" not in sql and "inbound" not in sql
    assert 't."direction"::text = ANY($4::text[])' in sql and 't."type"::text = ANY($5::text[])' in sql
    assert policy.condition_values() == [["inbound"], ["'; DROP TABLE users; --", "text"]]


def test_the_batch_delete_is_bounded_keyed_by_ctid_and_skips_locked_rows():
    sql = delete_batch_sql(validate_policy(_row()), SCHEMA)
    assert f'"{SCHEMA}"."whatsapp_messages"' in sql
    assert "LIMIT $2 FOR UPDATE SKIP LOCKED" in sql and "t.ctid > $3::tid" in sql
    assert sql.count('t."created_at" < $1') == 2       # picked and re-checked when deleted
    count = count_batch_sql(validate_policy(_row()), SCHEMA)
    assert "DELETE" not in count and "FOR UPDATE" not in count and "LIMIT $2" in count


@pytest.mark.parametrize("table", sorted(CATALOGUE))
def test_every_rule_builds_sql_naming_only_its_schema(table):
    rule = CATALOGUE[table]
    policy = validate_policy(_row(table_name=table, retention_days=max(30, rule.min_days), is_active=False))
    if rule.kind == "orders":
        statements = [order_ids_batch_sql(SCHEMA, lock=True)] + [s for _, s in order_unit_sql(SCHEMA, delete=True)]
    else:
        statements = [delete_batch_sql(policy, SCHEMA), count_batch_sql(policy, SCHEMA)]
    for sql in statements:
        assert "{" not in sql and "}" not in sql
        schemas = set(re.findall(r'"(tenant_[0-9a-f]+)"', sql))
        assert schemas == {SCHEMA}


@pytest.mark.parametrize("schema_name", ["public", "tenant_0123", 'tenant_0123456789ab"; --',
                                         "tenant_0123456789AB", "pg_catalog"])
def test_sql_is_built_only_for_tenant_schemas(schema_name):
    with pytest.raises(ValueError, match="not a tenant schema"):
        delete_batch_sql(validate_policy(_row()), schema_name)
    with pytest.raises(ValueError, match="not a tenant schema"):
        order_unit_sql(schema_name, delete=True)


def test_orders_go_as_units_children_first():
    policy = validate_policy(_row(table_name="orders", retention_days=2557), allow_financial=True)
    with pytest.raises(ValueError, match="units"):
        delete_batch_sql(policy, SCHEMA)
    tables = [t for t, _ in order_unit_sql(SCHEMA, delete=True)]
    assert tables[-1] == "orders"
    assert tables.index("tracking_links") < tables.index("deliveries") < tables.index("orders")
    assert tables.index("refunds") < tables.index("payments") and tables.index("refunds") < tables.index("returns")
    assert all("DELETE" not in s for _, s in order_unit_sql(SCHEMA, delete=False))
    ids = order_ids_batch_sql(SCHEMA, lock=True)
    assert "status\" IN ('delivered', 'rejected', 'failed', 'cancelled', 'returned')" in ids
    assert "r.\"status\" = 'pending'" in ids and "FOR UPDATE SKIP LOCKED" in ids
    assert "FOR UPDATE" not in order_ids_batch_sql(SCHEMA, lock=False)


def test_quote_ident_doubles_quotes_and_refuses_nul():
    assert quote_ident('a"b') == '"a""b"'
    with pytest.raises(ValueError):
        quote_ident("a\0b")


@pytest.mark.parametrize(("names", "cutoff", "dropped"), [
    # a month goes when it ended on or before the cutoff
    (["analytics_events_y2025m01", "analytics_events_y2025m02", "analytics_events_y2025m03"], (2025, 3),
     ["analytics_events_y2025m01", "analytics_events_y2025m02"]),
    (["analytics_events_y2024m12", "analytics_events_y2025m01"], (2025, 1), ["analytics_events_y2024m12"]),
    (["analytics_events_y2024m11"], (2024, 11), []),
    # never anything but monthly partitions
    (["analytics_events_default", "analytics_events_y2020m13", "analytics_events_y2020m00",
      "analytics_events_y20201m01", "analytics_events_y2020m01_old", "users", "analytics_events_y1969m12"],
     (2030, 1), []),
])
def test_partitions_to_drop(names, cutoff, dropped):
    assert partitions_to_drop(names, *cutoff) == dropped


def test_partition_month_reads_only_its_own_names():
    assert partition_month("analytics_events_y2026m07") == (2026, 7)
    assert partition_month("analytics_events_y2026m7") is None


@pytest.mark.parametrize("reason", ["", "   ", "x" * 501, "line\nbreak", "nul\0", 5])
def test_hostile_reasons_are_refused(reason):
    with pytest.raises(RetentionPolicyError, match="reason must be"):
        validate_reason(reason)


def test_settings_defaults_and_values():
    assert RetentionSettings.from_env({}) == RetentionSettings()
    got = RetentionSettings.from_env({"WAKALA_RETENTION": "0", "WAKALA_RETENTION_BATCH_SIZE": "200",
                                      "WAKALA_RETENTION_PAUSE_MS": "250", "WAKALA_RETENTION_ALLOW_FINANCIAL": "yes",
                                      "WAKALA_MAINTENANCE_INTERVAL_S": "60"})
    assert (got.enabled, got.batch_size, got.pause_s, got.allow_financial, got.round_s) == (False, 200, 0.25, True, 60)


@pytest.mark.parametrize(("name", "value"), [
    ("WAKALA_RETENTION_INTERVAL_S", "soon"), ("WAKALA_RETENTION_INTERVAL_S", "1"),
    ("WAKALA_RETENTION_INTERVAL_S", "nan"), ("WAKALA_RETENTION_BATCH_SIZE", "0"),
    ("WAKALA_RETENTION_BATCH_SIZE", "1e9"), ("WAKALA_RETENTION_BATCH_SIZE", "2.5"),
    ("WAKALA_RETENTION_PAUSE_MS", "-1"), ("WAKALA_RETENTION_LOCK_TIMEOUT_MS", "0"),
    ("WAKALA_RETENTION_STATEMENT_TIMEOUT_MS", "inf"), ("WAKALA_RETENTION_PARTITIONS_AHEAD", "100"),
    ("WAKALA_RETENTION_JITTER_S", "-5"), ("WAKALA_RETENTION", "maybe"),
    ("WAKALA_RETENTION_ALLOW_FINANCIAL", "2"), ("WAKALA_MAINTENANCE_INTERVAL_S", "0"),
])
def test_hostile_settings_are_refused_naming_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        RetentionSettings.from_env({name: value})


def test_refusals_are_wakala_errors():
    assert issubclass(RetentionPolicyError, WakalaError)


def test_the_access_log_keeps_24_months_unless_told_and_refuses_nonsense():
    assert RetentionSettings.from_env({}).access_log_keep_months == 24
    assert RetentionSettings.from_env({"WAKALA_ACCESS_LOG_KEEP_MONTHS": "60"}).access_log_keep_months == 60
    for bad in ("0", "-3", "1201", "two years", "nan"):
        with pytest.raises(ConfigError):
            RetentionSettings.from_env({"WAKALA_ACCESS_LOG_KEEP_MONTHS": bad})


def test_monthly_partitions_are_read_for_any_parent():
    assert partition_month("data_access_log_y2026m12", "data_access_log") == (2026, 12)
    assert partition_month("analytics_events_y2026m12", "data_access_log") is None
    assert partitions_to_drop(["data_access_log_y2024m11", "data_access_log_default", "analytics_events_y2020m01"],
                              2025, 1, "data_access_log") == ["data_access_log_y2024m11"]
