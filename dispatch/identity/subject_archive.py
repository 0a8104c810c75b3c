"""A data subject access export as a zip of CSV files, for people who open it in a spreadsheet.
Pure: the access document in, the zip's bytes out, no I/O (the I/O is
``dispatch.identity.subject_requests``; the API and the CLI hand the bytes on).

What the archive holds::

    README.txt           whose data, which request, when it was made and checked, what each file is
    export.json          the access document itself, whole: the authoritative copy
    subject.csv          the subject's own row, every column
    tables/<table>.csv   one per tenant table of the document, the rows about the person
    control/<table>.csv  the platform's rows about them (the document's ``control`` part)
    redis.csv            the live keys about them: key, value

How the CSV files are written, so that a reader (a person, a spreadsheet, a script) gets back
what the document says:

- UTF-8 with a byte-order mark (Excel otherwise reads accented and non-Latin names wrongly),
  RFC 4180: commas, double quotes where needed, CRLF line ends. A table without rows is an
  empty file.
- The header is the union of the columns of the table's rows: ``id`` first when there is one,
  then the rest by name, so the order does not depend on which row came first.
- Values: null or a column the row does not have -> an empty cell; text as it is; booleans
  ``true``/``false``; numbers as written in the document; dates and times ISO 8601 (a time
  zone offset kept); UUIDs canonical; bytes base64 (RFC 4648 standard alphabet, padded);
  objects and lists compact JSON (no spaces, keys in the document's order, non-ASCII kept).
  An empty text and a null are both an empty cell: ``export.json`` tells them apart. Text
  that is not valid Unicode (a lone surrogate: the database cannot hold one, a caller's
  document might) is written as U+FFFD rather than failing the export.
- Formula injection (OWASP "CSV injection"): a cell whose text starts with ``=``, ``+``,
  ``-``, ``@``, a tab or a carriage return would be run as a formula by a spreadsheet, so it
  gets a leading apostrophe. A cell starting with an apostrophe gets one too, which makes the
  rule reversible: a leading apostrophe is always ours, remove exactly one (``unguard``) to
  get the value. Numbers are left alone (``-5`` from a number column is a number, not a
  formula); header names are guarded like cells.
- File names are the table names with anything but letters, digits, ``_`` and ``-`` replaced
  by ``_`` (a name never climbs out of its folder); two names that come out the same get
  ``~2``, ``~3``.

The bytes are deterministic: entries in a fixed order, every timestamp 1980-01-01 00:00 (the
zip epoch), Unix permissions 0600 (``unzip`` restores them: it is personal data), DEFLATE at
level 9. The same document, request and ``made_at`` give the same bytes.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import uuid
import zipfile
from collections.abc import Iterable, Mapping
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

__all__ = ["FORMULA_TRIGGERS", "access_archive", "archive_name", "cell", "json_text", "table_csv", "unguard"]

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
_GUARDED = (*FORMULA_TRIGGERS, "'")
_EPOCH = (1980, 1, 1, 0, 0, 0)
_MODE = 0o100600   # a regular file, read and write for its owner only
_UNSAFE = re.compile(r"[^\w-]")
_NAME_MAX = 100
_SURROGATE = re.compile("[\ud800-\udfff]")


def _utf8(text: str, *, bom: bool = False) -> bytes:
    """UTF-8 (with a byte-order mark for the CSV files); a lone surrogate becomes U+FFFD."""
    return (b"\xef\xbb\xbf" if bom else b"") + _SURROGATE.sub("\ufffd", text).encode("utf-8")


def _scalar(value: Any) -> Any:
    """A value JSON cannot write as it is, as text (``export.json`` and the CSV cells agree)."""
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


def json_text(value: Any, *, indent: int | None = None) -> str:
    """``value`` as JSON: compact unless ``indent``, non-ASCII kept, other values per ``_scalar``."""
    separators = (",", ":") if indent is None else (",", ": ")
    return json.dumps(value, separators=separators, indent=indent, ensure_ascii=False, default=_scalar)


def _guard(text: str) -> str:
    return "'" + text if text.startswith(_GUARDED) else text


def unguard(text: str) -> str:
    """A cell as read back from one of our CSV files, without the apostrophe the guard added."""
    return text[1:] if text.startswith("'") else text


def cell(value: Any) -> str:
    """One value as a CSV cell (the rules in the module doc), formula-guarded."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | Decimal):
        return str(value)
    if isinstance(value, str):
        return _guard(value)
    if isinstance(value, dict | list | tuple | set | frozenset):
        return _guard(json_text(value))
    return _guard(_scalar(value))


def _columns(rows: list[Mapping[str, Any]]) -> list[str]:
    names = {str(k) for row in rows for k in row}
    return (["id"] if "id" in names else []) + sorted(names - {"id"})


def _as_row(row: Any) -> Mapping[str, Any]:
    return {str(k): v for k, v in row.items()} if isinstance(row, Mapping) else {"value": row}


def table_csv(rows: Iterable[Any]) -> bytes:
    """The rows (mappings; anything else becomes a ``value`` column) as one CSV file's bytes."""
    plain = [_as_row(r) for r in rows]
    if not plain:
        return b""
    columns = _columns(plain)
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([_guard(c) for c in columns])
    writer.writerows([cell(row.get(c)) for c in columns] for row in plain)
    return _utf8(out.getvalue(), bom=True)


def _file_name(name: str, taken: set[str]) -> str:
    base = _UNSAFE.sub("_", name)[:_NAME_MAX] or "_"
    chosen, n = base, 1
    while chosen.casefold() in taken:   # case-insensitive file systems unpack both
        n += 1
        chosen = f"{base}~{n}"
    taken.add(chosen.casefold())
    return chosen


def _sections(document: Mapping[str, Any]) -> list[tuple[str, str, list[Any]]]:
    """(file name, what it is, rows) of every CSV file, in archive order."""
    files: list[tuple[str, str, list[Any]]] = []
    subject = document.get("subject")
    if isinstance(subject, Mapping):
        files.append(("subject.csv", "your own record, every column", [subject]))
    for part, folder, what in (("tables", "tables", "rows about you in"), ("control", "control",
                                                                           "the platform's rows about you in")):
        taken: set[str] = set()
        section = document.get(part)
        for table, rows in (section.items() if isinstance(section, Mapping) else ()):
            listed = list(rows) if isinstance(rows, list | tuple) else [rows]
            files.append((f"{folder}/{_file_name(str(table), taken)}.csv", f"{what} {table}", listed))
    live = document.get("redis")
    if isinstance(live, Mapping) and live:
        files.append(("redis.csv", "live data about you in the engine's memory (Redis): key, value",
                      [{"key": k, "value": v} for k, v in live.items()]))
    return files


def _when(value: Any) -> str:
    if value is None or value == "":
        return "-"
    return value if isinstance(value, str) else str(_scalar(value))


def _readme(document: Mapping[str, Any], request: Mapping[str, Any], made_at: datetime | None,
            files: list[tuple[str, str, list[Any]]]) -> str:
    subject = document.get("subject") if isinstance(document.get("subject"), Mapping) else {}
    name = subject.get("name") or " ".join(str(subject[k]) for k in ("first_name", "last_name") if subject.get(k))
    who = f"{document.get('subject_type', 'subject')} {document.get('subject_id', '-')}" + (f" ({name})" if name else "")
    lines = [f"Personal data held about {who}", "",
             f"Request:   {request.get('id', '-')} ({request.get('request_type', 'access')}), "
             f"status {request.get('status', '-')}",
             f"Requested: {_when(request.get('requested_at'))}",
             f"Completed: {_when(request.get('processed_at'))}",
             f"Verified:  {request.get('verification_method') or '-'}"]
    if made_at is not None:
        lines.append(f"This copy: {made_at.isoformat()} (made afresh from the data held at that moment)")
    listed = [("README.txt", "this file"),
              ("export.json", "everything below in one JSON document: the authoritative copy")]
    listed += [(path, f"{what} ({len(rows)} row{'' if len(rows) == 1 else 's'})") for path, what, rows in files]
    width = max(len(path) for path, _ in listed)
    lines += ["", "Files", *(f"  {path:<{width}}  {what}" for path, what in listed)]
    lines += ["", "Reading the CSV files",
              "  UTF-8, comma separated, one header row (the columns of the table's rows); a table",
              "  without rows is an empty file.",
              "  An empty cell has no value. Dates and times are ISO 8601; objects and lists are JSON;",
              "  binary values are base64.",
              "  A cell starting with an apostrophe (') had one added so that a spreadsheet shows it as",
              "  text instead of running it as a formula: the value is the cell without that apostrophe.",
              ""]
    return "\r\n".join(lines)


def _entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.create_system = 3   # Unix, so that the permissions below are read
    info.external_attr = _MODE << 16
    return info


def access_archive(document: Mapping[str, Any], request: Mapping[str, Any] | None = None, *,
                   made_at: datetime | None = None) -> bytes:
    """The access ``document`` (``subject_requests.subject_export``) as zip bytes: README.txt,
    export.json and a CSV per table (the module doc). ``request`` is the request's row (id,
    type, when asked, completed, how verified) and ``made_at`` when this copy was made, both
    for the README only."""
    files = _sections(document)
    contents = [("README.txt", _utf8(_readme(document, request or {}, made_at, files))),
                ("export.json", _utf8(json_text(document, indent=2) + "\n"))]
    contents += [(path, table_csv(rows)) for path, _, rows in files]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in contents:
            archive.writestr(_entry(name), data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return out.getvalue()


def archive_name(request: Mapping[str, Any]) -> str:
    """The archive's file name for a download: ``subject-access-<request id>.zip`` (the id is a
    UUID from our own row; anything else is cut to letters, digits and ``-``)."""
    rid = re.sub(r"[^0-9A-Za-z-]", "", str(request.get("id", "")))[:36] or "export"
    return f"subject-access-{rid}.zip"
