"""The access export as a zip: a CSV per table that reads back to the document's values,
formula-guarded cells, safe file names, a README, and the same bytes for the same input."""

import ast
import base64
import csv
import io
import json
import uuid
import zipfile
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from dispatch.identity.subject_archive import (
    FORMULA_TRIGGERS,
    access_archive,
    archive_name,
    cell,
    table_csv,
    unguard,
)

SID = "5b0c7f3e-8d5e-4c5a-9b1e-0d6f1f2a3b4c"
RID = "0f7a4c1e-2b3d-4e5f-8a9b-1c2d3e4f5a6b"
MADE = datetime(2026, 12, 5, 10, 30, tzinfo=UTC)
REQUEST = {"id": RID, "request_type": "access", "status": "completed", "verification_method": "id_document",
           "requested_at": datetime(2026, 12, 1, 9, 0, tzinfo=UTC),
           "processed_at": datetime(2026, 12, 1, 9, 0, 2, tzinfo=UTC)}


def document() -> dict:
    return {
        "subject_type": "customer", "subject_id": SID,
        "subject": {"id": SID, "first_name": "Zoë", "last_name": "Nkosí-王", "metadata": {"vip": True}},
        "tables": {
            "customers": [{"id": SID, "first_name": "Zoë", "created_at": "2026-01-02T03:04:05+00:00"}],
            "orders": [{"id": "o-1", "total_amount": 120.5, "notes": "=HYPERLINK(\"http://x\")"},
                       {"id": "o-2", "delivery_address": {"street": "1 Vilakazi St", "gate": [1, 2]}}],
            "auth_tokens": [],
        },
        "control": {"tenant_users": [{"user_id": SID, "phone_number": "+27821234567",
                                      "created_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)}]},
        "redis": {"order:t:o-1": "{\"street\":\"1 Vilakazi St\"}", "driver:state:d": {"status": "online"}},
    }


def unzip(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        return {info.filename: archive.read(info) for info in archive.infolist()}


def rows_of(data: bytes) -> list[dict[str, str]]:
    """A CSV file of the archive read as the README says: UTF-8, header row, one apostrophe off."""
    text = data.decode("utf-8-sig")
    if not text:
        return []
    header, *body = csv.reader(io.StringIO(text, newline=""))
    names = [unguard(h) for h in header]
    return [dict(zip(names, (unguard(c) for c in row), strict=True)) for row in body]


def test_every_table_is_a_csv_beside_the_json_and_the_readme():
    files = unzip(access_archive(document(), REQUEST, made_at=MADE))
    assert list(files) == ["README.txt", "export.json", "subject.csv", "tables/customers.csv", "tables/orders.csv",
                           "tables/auth_tokens.csv", "control/tenant_users.csv", "redis.csv"]
    assert json.loads(files["export.json"]) == json.loads(json.dumps(document(), default=datetime.isoformat))
    orders = rows_of(files["tables/orders.csv"])
    assert len(orders) == 2 and list(orders[0]) == ["id", "delivery_address", "notes", "total_amount"]
    assert orders[0]["notes"] == "=HYPERLINK(\"http://x\")" and orders[0]["delivery_address"] == ""
    assert json.loads(orders[1]["delivery_address"]) == {"street": "1 Vilakazi St", "gate": [1, 2]}
    assert rows_of(files["subject.csv"]) == [{"id": SID, "first_name": "Zoë", "last_name": "Nkosí-王",
                                              "metadata": '{"vip":true}'}]
    assert rows_of(files["control/tenant_users.csv"])[0]["created_at"] == "2026-01-02T03:04:05+00:00"
    redis = {r["key"]: r["value"] for r in rows_of(files["redis.csv"])}
    assert redis == {"order:t:o-1": '{"street":"1 Vilakazi St"}', "driver:state:d": '{"status":"online"}'}


def test_values_read_back_from_the_csv_as_documented():
    when = datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=timezone(timedelta(hours=2)))
    blob = bytes(range(256))
    row = {"id": "r1", "none": None, "yes": True, "no": False, "int": 42, "negative": -5, "float": 0.1,
           "amount": Decimal("120.00"), "when": when, "day": date(1990, 1, 2), "uuid": uuid.UUID(SID),
           "blob": blob, "object": {"ä": [1, None, "x,y"]}, "list": ["a", "b"], "empty": "",
           "quoted": 'say "hi", then\r\nleave', "nul": "x\x00y"}
    back = rows_of(table_csv([row]))[0]
    assert back == {"id": "r1", "none": "", "yes": "true", "no": "false", "int": "42", "negative": "-5",
                    "float": "0.1", "amount": "120.00", "when": "2026-03-04T05:06:07.890000+02:00",
                    "day": "1990-01-02", "uuid": SID, "blob": base64.b64encode(blob).decode(),
                    "object": '{"ä":[1,null,"x,y"]}', "list": '["a","b"]', "empty": "",
                    "quoted": 'say "hi", then\r\nleave', "nul": "x\x00y"}
    assert base64.b64decode(back["blob"]) == blob
    assert datetime.fromisoformat(back["when"]) == when


@pytest.mark.parametrize("start", [*FORMULA_TRIGGERS, "'"])
def test_cells_a_spreadsheet_would_run_get_an_apostrophe_that_unguard_removes(start):
    hostile = f"{start}cmd|' /C calc'!A0"
    raw = table_csv([{f"{start}column": hostile}]).decode("utf-8-sig")
    header, row = list(csv.reader(io.StringIO(raw, newline="")))
    assert header[0].startswith("'") and row[0] == "'" + hostile
    assert (unguard(header[0]), unguard(row[0])) == (f"{start}column", hostile)


def test_numbers_and_harmless_text_are_not_guarded():
    assert [cell(v) for v in (-5, -0.5, Decimal("-1.10"), "plain", " =1+1", "a=b", 'x"y')] == \
        ["-5", "-0.5", "-1.10", "plain", " =1+1", "a=b", 'x"y']
    assert cell("-5") == "'-5" and cell(["=x"]) == '["=x"]' and cell({"=k": 1}) == '{"=k":1}'
    assert cell("=1+1") == "'=1+1" and unguard(cell("''x")) == "''x"


def test_a_table_without_rows_is_an_empty_file_and_listed_as_such():
    files = unzip(access_archive(document(), REQUEST))
    assert files["tables/auth_tokens.csv"] == b"" and rows_of(files["tables/auth_tokens.csv"]) == []
    assert "tables/auth_tokens.csv" in files["README.txt"].decode() and "(0 rows)" in files["README.txt"].decode()
    bare = unzip(access_archive({"subject_type": "user", "subject_id": SID, "tables": {}}))
    assert list(bare) == ["README.txt", "export.json"]
    assert json.loads(bare["export.json"]) == {"subject_type": "user", "subject_id": SID, "tables": {}}


def test_rows_with_different_columns_share_one_header():
    rows = rows_of(table_csv([{"b": 1}, {"a": 2, "id": "x"}, "loose value"]))
    assert rows == [{"id": "", "a": "", "b": "1", "value": ""}, {"id": "x", "a": "2", "b": "", "value": ""},
                    {"id": "", "a": "", "b": "", "value": "loose value"}]


def test_unicode_and_hostile_table_names_stay_inside_their_folder():
    doc = {"subject_type": "customer", "subject_id": SID, "tables": {
        "clientès_顧客": [{"id": 1}], "../../etc/passwd": [{"id": 2}], "a/b": [{"id": 3}], "a_b": [{"id": 4}],
        "Orders": [{"id": 5}], "orders": [{"id": 6}], "": [{"id": 7}], "x" * 300: [{"id": 8}],
        "nul\x00name": [{"id": 9}]}}
    files = unzip(access_archive(doc))
    tables = [n for n in files if n.startswith("tables/")]
    assert tables == ["tables/clientès_顧客.csv", "tables/______etc_passwd.csv", "tables/a_b.csv",
                      "tables/a_b~2.csv", "tables/Orders.csv", "tables/orders~2.csv", "tables/_.csv",
                      f"tables/{'x' * 100}.csv", "tables/nul_name.csv"]
    assert [rows_of(files[n])[0]["id"] for n in tables] == [str(i) for i in range(1, 10)]
    assert all(".." not in n and "\x00" not in n for n in files)


def test_the_readme_names_the_subject_the_request_and_every_file():
    files = unzip(access_archive(document(), REQUEST, made_at=MADE))
    readme = files["README.txt"].decode()
    for text in (f"customer {SID} (Zoë Nkosí-王)", RID, "2026-12-01T09:00:00+00:00", "2026-12-01T09:00:02+00:00",
                 "id_document", "2026-12-05T10:30:00+00:00", "apostrophe", "tables/orders.csv", "(2 rows)",
                 "control/tenant_users.csv", "redis.csv", "export.json"):
        assert text in readme, text
    assert "Request:   -" in unzip(access_archive(document()))["README.txt"].decode()


def test_the_same_document_gives_the_same_bytes():
    first = access_archive(document(), REQUEST, made_at=MADE)
    assert access_archive(document(), REQUEST, made_at=MADE) == first
    assert access_archive(document(), REQUEST, made_at=MADE + timedelta(seconds=1)) != first
    with zipfile.ZipFile(io.BytesIO(first)) as archive:
        infos = archive.infolist()
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {(i.external_attr >> 16) & 0o777 for i in infos} == {0o600}
    assert {i.compress_type for i in infos} == {zipfile.ZIP_DEFLATED}


def test_lone_surrogates_do_not_break_the_export():
    files = unzip(access_archive({"subject_type": "user", "subject_id": SID, "tables": {"t": [{"v": "a\ud800b"}]}}))
    assert rows_of(files["tables/t.csv"]) == [{"v": "a\ufffdb"}]


def test_the_download_name_is_the_request_id_and_nothing_else():
    assert archive_name({"id": RID}) == f"subject-access-{RID}.zip"
    assert archive_name({"id": '"; filename="../evil.sh'}) == "subject-access-filenameevilsh.zip"
    assert archive_name({}) == "subject-access-export.zip"


def test_the_archive_module_does_no_io():
    path = Path(__file__).parents[3] / "dispatch" / "identity" / "subject_archive.py"
    tree = ast.parse(path.read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {n.split(".")[0] for n in names} <= {"__future__", "base64", "collections", "csv", "datetime",
                                                "decimal", "io", "json", "re", "typing", "uuid", "zipfile"}
