"""``wakala dsr``: data subject requests from the operator's shell.

::

    wakala dsr access   --tenant T --subject-type customer|driver|user --subject ID
                        --verified-by METHOD --reference REF --reason TEXT
                        [--out FILE] [--zip FILE] [--force]
    wakala dsr erase    (the same, without --out, --zip, --force)
    wakala dsr correct  (the same) --set FIELD=VALUE [--set ...]
    wakala dsr restrict (the same)
    wakala dsr export   --tenant T REQUEST_ID (--zip FILE | --out FILE) [--force]
    wakala dsr show     --tenant T REQUEST_ID
    wakala dsr log      --tenant T SUBJECT_ID [--limit N]

The same rules and execution as ``POST /v1/admin/subject-requests``
(``dispatch.identity.subject_requests.submit``): the requester must have been verified
(``--verified-by`` one of ``dispatch.identity.subjects.VERIFICATION_METHODS``), the request is
recorded with ``via`` = ``cli:<operating-system user>`` and executed at once. ``access`` prints
the JSON document, or writes it to ``--out``, and/or writes it as a zip (a CSV per table, the
JSON and a README: ``dispatch.identity.subject_archive``) to ``--zip``. ``export`` makes the
document of an earlier completed access request afresh (``GET .../{id}/export``, logged the
same way) and writes it to ``--zip`` or ``--out``. Output files are created with mode 0600 (it
is personal data) and an existing file is never written over without ``--force`` (which
replaces it with a new 0600 file); the paths are checked before anything is recorded, made or
logged. Exit status: 0 done, 2 a user error (unknown subject or request, bad id, unverified,
a second erasure, an existing output file).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import tempfile
from datetime import UTC, datetime
from typing import Any

from dispatch.core.console import format_table
from schema.errors import WakalaError
from schema.settings import PostgresSettings

__all__ = ["OutputExists", "OutputUnusable", "register"]


class OutputExists(WakalaError):
    """The ``--out`` or ``--zip`` file exists already: an export is not written over another
    file unless ``--force``."""


class OutputUnusable(WakalaError):
    """The output path cannot take the export: a directory, a folder that does not exist, or
    the same file named twice."""


def _assignment(text: str) -> tuple[str, str]:
    """``FIELD=VALUE`` (argparse type); the field and value are the request rules' to check."""
    field, sep, value = text.partition("=")
    if not sep or not field.strip():
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {text[:60]!r}")
    return field.strip(), value


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number from 1 to 1000, got {text[:20]!r}") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"a whole number from 1 to 1000, got {value}")
    return value


def _via() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"subject_type": args.subject_type, "subject_id": args.subject,
                            "verification": {"method": args.verified_by, "reference": args.reference},
                            "reason": args.reason}
    if args.kind == "correct":
        body["changes"] = dict(args.set or [])
    return body


def _check_targets(paths: list[str], force: bool) -> None:
    """Refuse before anything is recorded, exported or logged: an output that exists (unless
    ``force``), is a directory, sits in a folder that does not exist, or is named twice."""
    seen: set[str] = set()
    for path in paths:
        real = os.path.realpath(path)
        if real in seen:
            raise OutputUnusable(f"{path} is named twice; give --out and --zip different files")
        seen.add(real)
        if os.path.isdir(path):
            raise OutputUnusable(f"{path} is a directory; name a file for the export")
        if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise OutputUnusable(f"the folder of {path} does not exist")
        if os.path.lexists(path) and not force:
            raise OutputExists(f"{path} exists; choose a new file for the export (or --force to replace it)")


def _write_new(path: str, data: str | bytes, *, force: bool = False) -> None:
    """Write ``data`` to a new file of mode 0600. With ``force`` an existing file is replaced by
    a new one (a temporary file renamed over it), so the old file's mode and links never carry
    the export."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if force:
        fd, temporary = tempfile.mkstemp(prefix=".wakala-export-", dir=os.path.dirname(os.path.abspath(path)))
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(raw)
            os.chmod(temporary, 0o600)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise OutputExists(f"{path} appeared meanwhile; the export was not written, run again") from None
    with os.fdopen(fd, "wb") as out:
        out.write(raw)


def _outputs(args: argparse.Namespace) -> list[str]:
    return [p for p in (getattr(args, "out", None), getattr(args, "zip_path", None)) if p]


async def _submit(args: argparse.Namespace) -> int:
    import redis.asyncio as aioredis

    from dispatch.api.subjects import HOOKS
    from dispatch.identity.subject_archive import access_archive
    from dispatch.identity.subject_requests import submit
    from dispatch.identity.subjects import parse_request
    from schema.db import TenantDatabase
    from streams.settings import StreamSettings

    request = parse_request(_body(args), args.kind)
    force = bool(getattr(args, "force", False))
    _check_targets(_outputs(args), force)
    redis = aioredis.from_url(StreamSettings.from_env().redis_url)
    try:
        async with TenantDatabase(PostgresSettings.from_env()) as db:
            done = await submit(db, redis, args.tenant, request, requested_by=None, via=_via(), hooks=HOOKS)
    finally:
        await redis.aclose()
    row = done["request"]
    print(f"request {row['id']} ({row['request_type']} of {row['subject_type']} {row['subject_id']}): "
          f"{row['status']}, due {row['due_at']:%Y-%m-%d}; {json.dumps(row['response'])}")
    if "export" in done:
        text = json.dumps(done["export"], indent=2, default=str, ensure_ascii=False)
        if args.out:
            _write_new(args.out, text, force=force)
            print(f"export written to {args.out}")
        if args.zip_path:
            _write_new(args.zip_path, access_archive(done["export"], row, made_at=datetime.now(UTC)), force=force)
            print(f"zip export written to {args.zip_path}")
        if not args.out and not args.zip_path:
            print(text)
    return 0


async def _export(args: argparse.Namespace) -> int:
    import redis.asyncio as aioredis

    from dispatch.api.subjects import HOOKS, export_zip
    from dispatch.identity.subject_requests import export_again
    from schema.db import TenantDatabase
    from streams.settings import StreamSettings

    target = args.zip_path or args.out
    _check_targets([target], args.force)
    redis = aioredis.from_url(StreamSettings.from_env().redis_url)
    try:
        async with TenantDatabase(PostgresSettings.from_env()) as db:
            if args.zip_path:
                _, data = await export_zip(db, redis, args.tenant, args.request_id, viewer=None, via=_via())
            else:
                data = json.dumps(await export_again(db, redis, args.tenant, args.request_id, viewer=None,
                                                     via=_via(), hooks=HOOKS), indent=2, default=str,
                                  ensure_ascii=False)
    finally:
        await redis.aclose()
    _write_new(target, data, force=args.force)
    print(f"export of request {args.request_id} written to {target}")
    return 0


async def _show(args: argparse.Namespace) -> int:
    from dispatch.identity.subject_requests import get_request
    from schema.db import TenantDatabase

    async with TenantDatabase(PostgresSettings.from_env()) as db:
        row = await get_request(db, args.tenant, args.request_id)
    print(json.dumps(row, indent=2, default=str))
    return 0


async def _log(args: argparse.Namespace) -> int:
    from dispatch.identity.access_log import subject_log
    from schema.db import TenantDatabase

    async with TenantDatabase(PostgresSettings.from_env()) as db:
        rows = await subject_log(db, args.tenant, args.subject, limit=args.limit)
    print(format_table(["when", "who", "action", "why", "fields"],
                       [(r["created_at"], r["user_id"] or r["metadata"].get("via", "-"), r["action"], r["purpose"],
                         len(r["accessed_fields"] or [])) for r in rows]))
    print(f"{len(rows)} look(s) at subject {args.subject}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``dsr`` to the top-level subparsers of ``wakala``."""
    from dispatch.identity.subjects import CORRECTABLE, SUBJECT_TYPES, VERIFICATION_METHODS

    p = sub.add_parser("dsr", help="data subject requests: access, erase, correct, restrict; who looked")
    dsub = p.add_subparsers(dest="action", required=True)
    helps = {"access": "export everything held about a person (logged)",
             "erase": "anonymise a person everywhere (orders and totals are kept)",
             "correct": "correct a person's contact or identity fields",
             "restrict": "mark a person restricted (no marketing messages)"}
    for kind, text in helps.items():
        q = dsub.add_parser(kind, help=text)
        q.add_argument("--tenant", required=True, help="the tenant's id")
        q.add_argument("--subject-type", required=True, choices=SUBJECT_TYPES)
        q.add_argument("--subject", required=True, help="the customer's, driver's or user's id")
        q.add_argument("--verified-by", required=True, choices=sorted(VERIFICATION_METHODS),
                       help="how the requester's identity was checked")
        q.add_argument("--reference", required=True, help="evidence of the check (ticket, OTP message id)")
        q.add_argument("--reason", required=True, help="why (kept with the request and the access log)")
        if kind == "access":
            q.add_argument("--out", help="write the JSON export to this new file (mode 0600)")
            q.add_argument("--zip", dest="zip_path", metavar="FILE",
                           help="write the export as a zip (a CSV per table, the JSON, a README) to this new "
                                "file (mode 0600)")
            q.add_argument("--force", action="store_true", help="replace --out / --zip files that exist")
        if kind == "correct":
            fields = sorted({f for fs in CORRECTABLE.values() for f in fs})
            q.add_argument("--set", action="append", type=_assignment, required=True,
                           help=f"FIELD=VALUE, repeatable ({', '.join(fields)})")
        q.set_defaults(handler=_submit, kind=kind)
    export = dsub.add_parser("export", help="make a completed access request's export again (logged)")
    export.add_argument("--tenant", required=True)
    export.add_argument("request_id")
    target = export.add_mutually_exclusive_group(required=True)
    target.add_argument("--zip", dest="zip_path", metavar="FILE",
                        help="write it as a zip (a CSV per table, the JSON, a README) to this new file (mode 0600)")
    target.add_argument("--out", metavar="FILE", help="write the JSON document to this new file (mode 0600)")
    export.add_argument("--force", action="store_true", help="replace the file if it exists")
    export.set_defaults(handler=_export)
    show = dsub.add_parser("show", help="one request: status, due date, who asked, how verified")
    show.add_argument("--tenant", required=True)
    show.add_argument("request_id")
    show.set_defaults(handler=_show)
    log = dsub.add_parser("log", help="who looked at a person's data, newest first")
    log.add_argument("--tenant", required=True)
    log.add_argument("subject")
    log.add_argument("--limit", type=_limit, default=100)
    log.set_defaults(handler=_log)
