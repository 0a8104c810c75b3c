"""What retention may delete, and how: the catalogue, policy validation, the SQL. No I/O.

The seed's ``apply_retention_policies()`` spliced a policy row's ``table_name`` and its
``conditions`` (through ``jsonb_to_sql_conditions``) into dynamic SQL and ran one unbounded
``DELETE`` per table. Here a policy row only *chooses*: a table of :data:`CATALOGUE`, a number
of days, equality conditions on columns the catalogue allows, active or not. Everything that
becomes SQL text comes from this module's constants; identifiers are quoted by
:func:`quote_ident`; the cutoff, batch size, cursor and condition values are parameters.

How a table is aged is decided per table, not by a generic ``created_at``:

* a credential (``auth_tokens``, ``user_sessions``, ``idempotency_keys``) ages from the moment
  it stopped working (expired or revoked), never from its creation;
* an outbox row only once it is published (``published_at`` is NULL until then), and a delivery
  event only once its delivery is over (the tracking page's timeline reads them while it is live);
* a tracking link from its revocation or the end of its delivery;
* a conversation from its last activity;
* ``analytics_events`` is partitioned by month: whole months older than the cutoff are dropped
  (no row-by-row delete), and only its default partition is deleted from in batches;
* ``orders`` is a *unit*: an order goes with its deliveries (their links and events), payments,
  refunds, returns, items, reservations, history and events, in one transaction per batch, and
  only when it is closed with nothing pending. Financial records have a legal floor
  (:data:`FINANCIAL_FLOOR_DAYS`) and are deleted only when the operator allows it
  (``WAKALA_RETENTION_ALLOW_FINANCIAL=1``); the other financial tables cannot be named alone.

Batches are keyed by ``ctid`` (a TID range scan continues where the previous batch stopped, so
a run reads each table once whatever its indexes) and take their rows ``FOR UPDATE SKIP
LOCKED``: a row a writer holds is left for the next run, so retention never waits on a writer,
and a writer waits on retention for one batch at most.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from schema.errors import ConfigError, WakalaError
from schema.settings import env_int, env_number

__all__ = [
    "CATALOGUE", "DEFAULT_POLICIES", "FINANCIAL_FLOOR_DAYS", "KEPT_WITH_ORDERS", "MAX_DAYS",
    "Policy", "RetentionPolicyError", "RetentionSettings", "TableRule", "count_batch_sql", "delete_batch_sql",
    "order_ids_batch_sql", "order_unit_sql", "partition_month", "partitions_to_drop",
    "quote_ident", "validate_days", "validate_policy", "validate_reason", "validate_table",
]

MAX_DAYS = 36_500                 # a century: anything longer is a typing mistake
FINANCIAL_FLOOR_DAYS = 1_827      # 5 years: Tax Administration Act s29 (and the Companies Act's 7 is the default)
MAX_CONDITION_VALUES = 50
MAX_CONDITION_TEXT = 100
TENANT_SCHEMA = re.compile(r"^tenant_[0-9a-f]{12}$")
ANALYTICS_PARTITION = re.compile(r"^analytics_events_y(\d{4})m(\d{2})$")


class RetentionPolicyError(WakalaError):
    """A retention policy (a row of data_retention_policies, or a CLI request) is refused."""


def quote_ident(name: str) -> str:
    """A PostgreSQL identifier, quoted (as ``quote_ident``/``%I`` would, quotes doubled)."""
    if "\0" in name:
        raise ValueError("a NUL cannot be in a PostgreSQL identifier")
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class TableRule:
    """How one table is aged. ``old`` is a boolean SQL expression over the row alias ``t``,
    with ``$1`` the cutoff and ``{s}`` the quoted tenant schema; ``conditions`` names the
    columns a policy may add equality conditions on, each with its allowed values (None: any
    short text)."""

    table: str
    age: str                                      # what "age" means, for people
    old: str
    default_days: int
    default_active: bool
    reason: str
    conditions: Mapping[str, frozenset[str] | None] = field(default_factory=dict)
    kind: str = "rows"                            # rows | partitioned | orders
    min_days: int = 1
    financial: bool = False


# An order is old when it is closed, last changed before the cutoff, has no delivery still
# under way and no refund still pending (alias o; {s} the quoted schema).
ORDER_OLD = """o."status" IN ('delivered', 'rejected', 'failed', 'cancelled', 'returned') \
AND COALESCE(o."updated_at", o."created_at") < $1 \
AND NOT EXISTS (SELECT 1 FROM {s}."deliveries" d WHERE d."order_id" = o."id" \
AND d."status" NOT IN ('delivered', 'failed', 'cancelled')) \
AND NOT EXISTS (SELECT 1 FROM {s}."refunds" r WHERE r."order_id" = o."id" AND r."status" = 'pending')"""
# A tracking link: revoked, or its delivery over (alias t).
LINK_OLD = """t."revoked_at" < $1 OR EXISTS (SELECT 1 FROM {s}."deliveries" d \
WHERE d."id" = t."delivery_id" AND d."status" IN ('delivered', 'failed', 'cancelled') \
AND COALESCE(d."delivered_at", d."failed_at", d."cancelled_at", d."updated_at") < $1)"""
# A delivery event: published, and its delivery over.
DELIVERY_EVENT_OLD = """t."published_at" < $1 AND EXISTS (SELECT 1 FROM {s}."deliveries" d \
WHERE d."id" = t."delivery_id" AND d."status" IN ('delivered', 'failed', 'cancelled'))"""

_RULES = (
    TableRule("auth_tokens", "since it expired or was revoked",
              'LEAST(t."expires_at", t."revoked_at") < $1', 30, True,
              "token hashes are useless once expired or revoked; 30 days keep them for "
              "investigating recent misuse", {"token_type": None}),
    TableRule("user_sessions", "since it expired", 't."expires_at" < $1', 30, True,
              "expired sessions identify devices and addresses; 30 days after expiry covers "
              "a support question"),
    TableRule("tracking_links", "since it was revoked or its delivery ended",
              LINK_OLD, 30, True,
              "a link stops working an hour after its delivery ends; 30 days after that (or "
              "after revocation) covers a customer query"),
    TableRule("idempotency_keys", "since it expired", 't."expires_at" < $1', 7, True,
              "keys are only needed until they expire (24 h); the reservation sweeper deletes "
              "them sooner, this is the backstop"),
    TableRule("delivery_events_outbox", "since it was published, once its delivery ended",
              DELIVERY_EVENT_OLD, 90, True,
              "published events live on in Kafka; a delivery's timeline is read while it is "
              "live; 90 days for incident analysis", {"event_type": None}),
    TableRule("order_events_outbox", "since it was published", 't."published_at" < $1', 90, True,
              "published events live on in Kafka and in order_status_history; 90 days for "
              "incident analysis", {"event_type": None}),
    TableRule("whatsapp_messages", "since it was sent or received", 't."created_at" < $1', 365, True,
              "message contents are personal information; a year covers order disputes and "
              "card chargebacks",
              {"direction": frozenset({"inbound", "outbound"}), "type": None}),
    TableRule("notifications", "since it was created", 't."created_at" < $1', 180, True,
              "notification copies have no use once read or failed; 180 days covers delivery "
              "complaints",
              {"channel": frozenset({"whatsapp", "sms", "email", "push"}), "status": None,
               "type": None}),
    TableRule("conversations", "since its last activity",
              'GREATEST(t."created_at", t."updated_at", t."last_message_at") < $1', 365, True,
              "chat state of customers who have not written for a year is stale and personal",
              {"state": None}),
    TableRule("user_activities", "since it happened", 't."created_at" < $1', 365, True,
              "behaviour records tied to a user: a year of history is enough for product "
              "decisions", {"activity_type": None}),
    TableRule("analytics_events", "since the end of its month (whole months are dropped)",
              't."timestamp" < $1', 395, True,
              "13 months: the same month a year ago can still be compared; older months are "
              "dropped whole", kind="partitioned"),
    TableRule("orders", "since it closed (with its payments, deliveries, refunds, returns)",
              ORDER_OLD, 2_557, False,
              "financial records: Companies Act s24 requires 7 years (Tax Administration Act "
              "s29: 5); kept unless an operator activates this",
              kind="orders", min_days=FINANCIAL_FLOOR_DAYS, financial=True),
)
CATALOGUE: Mapping[str, TableRule] = MappingProxyType({r.table: r for r in _RULES})
DEFAULT_POLICIES = tuple((r.table, r.default_days, r.default_active, r.reason) for r in _RULES)
# Financial tables that only ever go with their order (a policy cannot name them alone).
KEPT_WITH_ORDERS = frozenset({"payments", "deliveries", "refunds", "returns", "order_items",
                              "order_status_history", "order_promotions"})
# The order unit, children first: (table, which rows belong to the orders in $1).
ORDER_UNIT = (
    ("tracking_links", 'delivery_id IN (SELECT id FROM {s}."deliveries" WHERE order_id = ANY($1::uuid[]))'),
    ("delivery_events_outbox",
     'delivery_id IN (SELECT id FROM {s}."deliveries" WHERE order_id = ANY($1::uuid[]))'),
    ("deliveries", "order_id = ANY($1::uuid[])"),
    ("refunds", "order_id = ANY($1::uuid[])"),
    ("returns", "order_id = ANY($1::uuid[])"),
    ("payments", "order_id = ANY($1::uuid[])"),
    ("order_items", "order_id = ANY($1::uuid[])"),
    ("order_events_outbox", "order_id = ANY($1::uuid[])"),
    ("inventory_reservations", "order_id = ANY($1::uuid[])"),
    ("order_promotions", "order_id = ANY($1::uuid[])"),
    ("order_status_history", "order_id = ANY($1::uuid[])"),
    ("orders", "id = ANY($1::uuid[])"),
)


@dataclass(frozen=True)
class Policy:
    """A validated policy: the rule it applies, its period and conditions."""

    id: str | None
    rule: TableRule
    days: int
    conditions: tuple[tuple[str, tuple[str, ...]], ...]
    active: bool

    @property
    def table(self) -> str:
        return self.rule.table

    def condition_values(self) -> list[list[str]]:
        """The condition parameters, in the order the SQL numbers them ($4, $5, ...)."""
        return [list(values) for _, values in self.conditions]


def validate_table(table: object) -> TableRule:
    if not isinstance(table, str) or not table:
        raise RetentionPolicyError(f"table_name must be a table name, got {table!r}")
    if table in KEPT_WITH_ORDERS:
        raise RetentionPolicyError(
            f"table_name {table!r}: financial records are kept with their order; set a policy "
            "on orders instead (it deletes an order with its payments, deliveries and refunds)")
    rule = CATALOGUE.get(table)
    if rule is None:
        raise RetentionPolicyError(
            f"table_name {table[:80]!r} is not a table retention knows how to age; "
            f"known: {', '.join(sorted(CATALOGUE))}")
    return rule


def validate_days(rule: TableRule, days: object, field_name: str = "retention_days") -> int:
    if isinstance(days, bool) or not isinstance(days, int):
        raise RetentionPolicyError(f"{field_name} must be a whole number of days, got {days!r}")
    if days < 1 or days > MAX_DAYS:
        raise RetentionPolicyError(f"{field_name} must be between 1 and {MAX_DAYS}, got {days}")
    if days < rule.min_days:
        raise RetentionPolicyError(
            f"{field_name} {days} for {rule.table} is below the legal minimum of {rule.min_days} "
            "days (Tax Administration Act s29: 5 years; the Companies Act s24 asks 7)")
    return days


def validate_reason(reason: object) -> str | None:
    """The optional why of a policy: printable text of at most 500 characters."""
    if reason is None:
        return None
    if not isinstance(reason, str) or not 0 < len(reason.strip()) <= 500 or not reason.isprintable():
        raise RetentionPolicyError(
            f"reason must be 1-500 printable characters (no line breaks), got {str(reason)[:80]!r}")
    return reason.strip()


def _conditions(rule: TableRule, raw: object) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if raw is None or raw == {}:
        return ()
    if not isinstance(raw, Mapping):
        raise RetentionPolicyError(f"conditions must be a JSON object of column: [values], got {raw!r}")
    if rule.kind == "partitioned" and raw:
        raise RetentionPolicyError(
            f"conditions are not allowed on {rule.table}: whole months are dropped")
    out = []
    for key in sorted(raw, key=str):
        if key not in rule.conditions:
            allowed = ", ".join(sorted(rule.conditions)) or "none"
            raise RetentionPolicyError(
                f"conditions key {str(key)[:80]!r} is not allowed on {rule.table} (allowed: {allowed})")
        values = raw[key]
        if isinstance(values, str):
            values = [values]
        if (not isinstance(values, list) or not values or len(values) > MAX_CONDITION_VALUES
                or not all(isinstance(v, str) and 0 < len(v) <= MAX_CONDITION_TEXT
                           and "\0" not in v for v in values)):
            raise RetentionPolicyError(
                f"conditions.{key} must be a text or a list of 1-{MAX_CONDITION_VALUES} texts of "
                f"1-{MAX_CONDITION_TEXT} characters, got {str(values)[:80]!r}")
        vocabulary = rule.conditions[key]
        unknown = [v for v in values if vocabulary is not None and v not in vocabulary]
        if unknown:
            raise RetentionPolicyError(
                f"conditions.{key}: {unknown[0][:80]!r} is not one of {', '.join(sorted(vocabulary or ()))}")
        out.append((key, tuple(dict.fromkeys(values))))
    return tuple(out)


def validate_policy(row: Mapping[str, object], *, allow_financial: bool = False) -> Policy:
    """A data_retention_policies row (or a CLI request shaped like one) -> :class:`Policy`.

    ``delete_after_days``, when set, is the period (the seed's name for it); it may not be
    shorter than ``retention_days``. ``archive_after_days`` is refused: nothing is archived
    (backups keep history), and a policy that says otherwise would mislead its reader.
    An *active* financial policy is refused unless ``allow_financial``."""
    rule = validate_table(row.get("table_name"))
    days = validate_days(rule, row.get("retention_days"))
    delete_after = row.get("delete_after_days")
    if delete_after is not None:
        delete_after = validate_days(rule, delete_after, "delete_after_days")
        if delete_after < days:
            raise RetentionPolicyError(
                f"delete_after_days {delete_after} is shorter than retention_days {days}: rows "
                "would go before their retention period ends")
        days = delete_after
    if row.get("archive_after_days") is not None:
        raise RetentionPolicyError(
            "archive_after_days is not supported (nothing is archived; backups keep history); "
            "set it to NULL")
    active = row.get("is_active", True)
    if not isinstance(active, bool):
        raise RetentionPolicyError(f"is_active must be true or false, got {active!r}")
    if active and rule.financial and not allow_financial:
        raise RetentionPolicyError(
            f"an active policy on {rule.table} deletes financial records; it is refused unless "
            "WAKALA_RETENTION_ALLOW_FINANCIAL=1 (or --allow-financial) says the business means it")
    policy_id = row.get("id")
    return Policy(None if policy_id is None else str(policy_id), rule, days,
                  _conditions(rule, row.get("conditions")), active)


def _schema(schema_name: str) -> str:
    if not TENANT_SCHEMA.match(schema_name):
        raise ValueError(f"not a tenant schema name: {schema_name!r}")
    return quote_ident(schema_name)


def _where(policy: Policy, s: str) -> str:
    parts = [policy.rule.old.format(s=s)]
    parts += [f"t.{quote_ident(col)}::text = ANY(${i}::text[])"
              for i, (col, _) in enumerate(policy.conditions, start=4)]
    return " AND ".join(f"({p})" for p in parts)


def _table(policy: Policy, schema_name: str, table: str | None = None) -> tuple[str, str]:
    s = _schema(schema_name)
    return s, f"{s}.{quote_ident(table or policy.table)}"


# Statement templates: {qt} the quoted schema.table, {where} the rule's expression and the
# policy's conditions (both from this module), {s} the quoted schema, {lock} FOR UPDATE or not.
DELETE_BATCH_SQL = """WITH batch AS MATERIALIZED (
    SELECT t.ctid FROM {qt} t WHERE t.ctid > $3::tid AND {where} LIMIT $2 FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM {qt} t WHERE t.ctid = ANY(ARRAY(SELECT ctid FROM batch)) AND {where} RETURNING 1
)
SELECT (SELECT count(*) FROM gone) AS deleted, (SELECT count(*) FROM batch) AS scanned,
       (SELECT max(ctid) FROM batch) AS last"""
COUNT_BATCH_SQL = """SELECT count(*) AS scanned, max(ctid) AS last FROM (
    SELECT t.ctid FROM {qt} t WHERE t.ctid > $3::tid AND {where} LIMIT $2
) batch"""
ORDER_IDS_SQL = """SELECT o.id FROM {s}."orders" o WHERE o.id > $3::uuid AND {where}
ORDER BY o.id LIMIT $2{lock}"""
UNIT_DELETE_SQL = "WITH gone AS (DELETE FROM {qt} WHERE {where} RETURNING 1) SELECT count(*) FROM gone"
UNIT_COUNT_SQL = "SELECT count(*) FROM {qt} WHERE {where}"


def delete_batch_sql(policy: Policy, schema_name: str, table: str | None = None) -> str:
    """One batch: $1 cutoff, $2 batch size, $3 the last ctid of the previous batch, $4...
    the condition values. Returns deleted, scanned (rows the batch picked) and last (ctid).
    ``table`` overrides the policy's (the default partition of analytics_events)."""
    if policy.rule.kind == "orders":
        raise ValueError("orders are deleted as units (order_ids_batch_sql, order_unit_sql)")
    s, qt = _table(policy, schema_name, table)
    return DELETE_BATCH_SQL.format(qt=qt, where=_where(policy, s))


def count_batch_sql(policy: Policy, schema_name: str, table: str | None = None) -> str:
    """The dry run's batch: what ``delete_batch_sql`` would pick, counted, nothing locked."""
    if policy.rule.kind == "orders":
        raise ValueError("orders are counted as units (order_ids_batch_sql, order_unit_sql)")
    s, qt = _table(policy, schema_name, table)
    return COUNT_BATCH_SQL.format(qt=qt, where=_where(policy, s))


def order_ids_batch_sql(schema_name: str, *, lock: bool) -> str:
    """The next batch of old orders: $1 cutoff, $2 batch size, $3 the last id of the previous
    batch (keyset on the primary key); locked SKIP LOCKED when deleting."""
    s = _schema(schema_name)
    return ORDER_IDS_SQL.format(s=s, where=ORDER_OLD.format(s=s),
                                lock=" FOR UPDATE SKIP LOCKED" if lock else "")


def order_unit_sql(schema_name: str, *, delete: bool) -> list[tuple[str, str]]:
    """(table, statement) for each table of the order unit, children first; $1 the order ids.
    ``delete``: DELETE returning the count; otherwise a count of the same rows."""
    s = _schema(schema_name)
    template = UNIT_DELETE_SQL if delete else UNIT_COUNT_SQL
    return [(table, template.format(qt=f"{s}.{quote_ident(table)}", where=where.format(s=s)))
            for table, where in ORDER_UNIT]


def partition_month(name: str, parent: str = "analytics_events") -> tuple[int, int] | None:
    """(year, month) of a monthly partition ``<parent>_yYYYYmMM``; None otherwise."""
    match = ANALYTICS_PARTITION.match(name) if parent == "analytics_events" else re.match(
        rf"^{re.escape(parent)}_y(\d{{4}})m(\d{{2}})$", name)
    if not match:
        return None
    year, month = int(match.group(1)), int(match.group(2))
    return (year, month) if 1 <= month <= 12 and year >= 1970 else None


def partitions_to_drop(names: list[str], cutoff_year: int, cutoff_month: int,
                       parent: str = "analytics_events") -> list[str]:
    """The monthly partitions that end on or before the cutoff (every row in them is older).

    A partition of month M holds [M, M+1): it may go when the first instant of M+1 is not after
    the cutoff, that is when M+1 is the cutoff's month or earlier. Names that are not monthly
    partitions are never dropped."""
    doomed = []
    for name in sorted(names):
        month = partition_month(name, parent)
        if month is None:
            continue
        next_month = (month[0] + month[1] // 12, month[1] % 12 + 1)
        if next_month <= (cutoff_year, cutoff_month):
            doomed.append(name)
    return doomed


_FLAGS = {"1": True, "true": True, "yes": True, "on": True,
          "0": False, "false": False, "no": False, "off": False, "": None}


def _env_flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    value = None if raw is None else _FLAGS.get(raw.strip().lower(), "bad")
    if value == "bad":
        raise ConfigError(f"{name} must be 1 or 0 (true/false, yes/no), got {raw!r}")
    return default if value is None else bool(value)


@dataclass(frozen=True)
class RetentionSettings:
    """``WAKALA_RETENTION_*``: how often retention runs and how gently.

    ``round_s`` (``WAKALA_MAINTENANCE_INTERVAL_S``) is how often the engine's maintenance loop
    wakes (analytics partitions ahead, due backups, and retention when ``interval_s`` has passed
    since the last complete run, whichever process made it).

    A batch is ``batch_size`` rows in one short transaction under ``lock_timeout_ms`` and
    ``statement_timeout_ms``, then ``pause_s`` of nothing, so that replication and autovacuum
    keep up and a writer never queues behind a long delete. The first run of a process comes
    a random ``jitter_s`` or less after it starts (engine processes restarted together do not
    all try at once; the advisory lock lets one of them run it anyway)."""

    enabled: bool = True
    round_s: float = 3_600.0
    interval_s: float = 86_400.0
    jitter_s: float = 600.0
    batch_size: int = 1_000
    pause_s: float = 0.05
    lock_timeout_ms: int = 1_000
    statement_timeout_ms: int = 30_000
    partitions_ahead: int = 3
    allow_financial: bool = False
    access_log_keep_months: int = 24     # the control plane's data_access_log (schema.retention.control)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RetentionSettings:
        env = os.environ if env is None else env
        return cls(
            enabled=_env_flag(env, "WAKALA_RETENTION", True),
            round_s=env_number(env, "WAKALA_MAINTENANCE_INTERVAL_S", 3_600.0, 1.0, 86_400.0),
            interval_s=env_number(env, "WAKALA_RETENTION_INTERVAL_S", 86_400.0, 60.0, 30 * 86_400.0),
            jitter_s=env_number(env, "WAKALA_RETENTION_JITTER_S", 600.0, 0.0, 86_400.0),
            batch_size=env_int(env, "WAKALA_RETENTION_BATCH_SIZE", 1_000, 1, 50_000),
            pause_s=env_int(env, "WAKALA_RETENTION_PAUSE_MS", 50, 0, 60_000) / 1000,
            lock_timeout_ms=env_int(env, "WAKALA_RETENTION_LOCK_TIMEOUT_MS", 1_000, 10, 60_000),
            statement_timeout_ms=env_int(env, "WAKALA_RETENTION_STATEMENT_TIMEOUT_MS", 30_000,
                                         100, 3_600_000),
            partitions_ahead=env_int(env, "WAKALA_RETENTION_PARTITIONS_AHEAD", 3, 0, 24),
            allow_financial=_env_flag(env, "WAKALA_RETENTION_ALLOW_FINANCIAL", False),
            access_log_keep_months=env_int(env, "WAKALA_ACCESS_LOG_KEEP_MONTHS", 24, 1, 1200),
        )
