"""Data subject request rules: body validation names the field, the due date, erased values."""

import uuid
from datetime import UTC, datetime

import pytest

from dispatch.core.errors import Refusal
from dispatch.identity.subjects import (
    CORRECTABLE,
    REQUEST_TYPES,
    SUBJECT_ROWS,
    USER_OF,
    Column,
    due_at,
    erase_sql,
    erased_value,
    parse_request,
    quote_ident,
)

SID = "5b0c7f3e-8d5e-4c5a-9b1e-0d6f1f2a3b4c"


def good(**changes) -> dict:
    out = {"type": "access", "subject_type": "customer", "subject_id": SID,
           "verification": {"method": "id_document", "reference": "ID ending 0871"}, "reason": "asked in store"}
    out.update(changes)
    return {k: v for k, v in out.items() if v is not ...}


def refused(body, kind=None) -> Refusal:
    with pytest.raises(Refusal) as exc:
        parse_request(body, kind)
    assert exc.value.status == 422
    return exc.value


def test_a_good_body_is_read_with_the_seed_request_type():
    for kind, stored in REQUEST_TYPES.items():
        extra = {"changes": {"first_name": " Thandi "}} if kind == "correct" else {}
        request = parse_request(good(type=kind, **extra))
        assert (request.kind, request.request_type, request.subject_id) == (kind, stored, SID)
        assert request.changes == ({"first_name": "Thandi"} if kind == "correct" else None)
    assert parse_request(good(subject_id=SID.upper())).subject_id == SID   # canonical
    assert parse_request(good(type=...), "erase").kind == "erase"           # the CLI fixes the type


@pytest.mark.parametrize(("body", "field", "reason"), [
    (good(verification=...), "verification", "missing_field"),
    (good(verification="yes"), "verification", "wrong_type"),
    (good(verification={"method": "trust_me", "reference": "x"}), "verification.method", "invalid_value"),
    (good(verification={"method": "id_document"}), "verification.reference", "missing_field"),
    (good(verification={"method": "id_document", "reference": "  "}), "verification.reference", "empty"),
    (good(verification={"method": "id_document", "reference": "x" * 201}), "verification.reference", "too_long"),
    (good(verification={"method": "id_document", "reference": "x", "by": "me"}), "verification", "unknown_field"),
    (good(type="delete"), "type", "invalid_value"),
    (good(type=None), "type", "missing_field"),
    (good(type=["access"]), "type", "wrong_type"),
    (good(subject_type="vendor"), "subject_type", "invalid_value"),
    (good(subject_id="not-a-uuid"), "subject_id", "invalid_value"),
    (good(subject_id="' OR 1=1 --"), "subject_id", "invalid_value"),
    (good(subject_id=12), "subject_id", "wrong_type"),
    (good(subject_id=...), "subject_id", "missing_field"),
    (good(reason=...), "reason", "missing_field"),
    (good(reason="x" * 501), "reason", "too_long"),
    (good(reason="a\x00b"), "reason", "invalid_value"),
    (good(reason="\ud800"), "reason", "invalid_value"),
    (good(reason=5), "reason", "wrong_type"),
    (good(extra=1), "extra", "unknown_field"),
    (good(changes={"first_name": "X"}), "changes", "unknown_field"),
    (good(type="correct"), "changes", "missing_field"),
    (good(type="correct", changes={}), "changes", "empty"),
    (good(type="correct", changes=["first_name"]), "changes", "wrong_type"),
    (good(type="correct", changes={"phone_number": "+27820000000"}), "changes.phone_number", "unknown_field"),
    (good(type="correct", changes={"first_name": "x" * 101}), "changes.first_name", "too_long"),
    (good(type="correct", changes={"first_name": 7}), "changes.first_name", "wrong_type"),
    (good(type="correct", subject_type="user", changes={"email": "not an email"}), "changes.email", "invalid_value"),
    (good(type="correct", subject_type="driver", changes={"vehicle_registration": "GP;DROP"}),
     "changes.vehicle_registration", "invalid_value"),
    (good(type="correct", changes={f"f{i}": "x" for i in range(50)}), "changes", "too_many"),
])
def test_a_bad_body_is_refused_naming_the_field(body, field, reason):
    refusal = refused(body)
    assert (refusal.field, refusal.reason) == (field, reason)


@pytest.mark.parametrize("body", [None, [], "access", 3, [good()]])
def test_a_body_that_is_not_an_object_is_refused(body):
    assert refused(body).field == "body"


def test_every_correctable_field_passes_with_a_plausible_value():
    samples = {"first_name": "Thandi", "last_name": "Zulu", "name": "Thandi Zulu", "email": "t@example.org",
               "vehicle_registration": "GP 12 XY"}
    for subject_type, fields in CORRECTABLE.items():
        changes = {f: samples[f] for f in fields}
        assert parse_request(good(type="correct", subject_type=subject_type, changes=changes)).changes == changes


def test_the_answer_is_due_thirty_days_after_the_request():
    asked = datetime(2026, 2, 10, 9, 30, tzinfo=UTC)
    assert due_at(asked) == datetime(2026, 3, 12, 9, 30, tzinfo=UTC)


def test_erased_values_follow_the_method_and_the_column():
    text = Column("phone_number", "varchar", False, 20)
    assert erased_value(text, "placeholder") == "left('erased-' || left(replace(id::text, '-', ''), 12), 20)"
    assert erased_value(Column("notes", "text", True, None), "null") == "NULL"
    assert erased_value(Column("content", "text", False, None), "null") == "''"       # NOT NULL text
    assert erased_value(Column("current_location", "geography", True, None), "null") == "NULL"
    drop = erased_value(Column("addresses", "jsonb", True, None), "drop")
    assert drop is not None and "'[]'" in drop and drop.endswith("::jsonb")
    assert erased_value(Column("delivery_address", "jsonb", False, None), "null").endswith("::jsonb")
    assert erased_value(Column("ip_address", "inet", True, None), "delete") is None


def test_erase_sql_quotes_identifiers_and_deletes_when_nothing_is_set():
    assert erase_sql("user_sessions", "user_id = $1", {}) == 'DELETE FROM "user_sessions" WHERE user_id = $1'
    assert erase_sql("users", "id = $1", {"name": "NULL", "email": "NULL"}) == (
        'UPDATE "users" SET "email" = NULL, "name" = NULL WHERE id = $1')
    assert quote_ident('a"b') == '"a""b"'


def test_every_subject_type_knows_its_rows_and_its_user():
    assert set(SUBJECT_ROWS) == set(USER_OF) == {"customer", "driver", "user"}
    for rows in SUBJECT_ROWS.values():
        for table, condition, kinds in rows:
            assert "$1" in condition and kinds and table.isidentifier()
    assert str(uuid.UUID(SID)) == SID
