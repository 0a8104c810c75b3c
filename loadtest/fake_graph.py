"""A local stand-in for the WhatsApp Business Cloud API (Meta's Graph API), for tests and replays.

It answers ``POST /<version>/<phone number id>/messages`` as the Cloud API does, after checking
every request's shape the way Meta would refuse it: the bearer token, the phone-number id, the
JSON body (``messaging_product``, ``to`` as 8-15 digits, ``type`` ``template``, the template's
name and language among those "approved" here, one body parameter per placeholder, each a
non-empty text without newlines, tabs or four spaces in a row), and no unknown keys. A good
request gets ``{"messaging_product", "contacts", "messages": [{"id": "wamid..."}]}``; a bad
one Meta's error shape (``{"error": {"message", "type", "code", "fbtrace_id"}}``) with 400
(401 for the token).

Failure modes, for the tests and replays to ask for (``POST /_fake/mode``, JSON, all optional;
or ``FakeGraph.set_mode``):

* ``{"fail_next": n, "status": 500|429|400..., "retry_after": s, "code": c}``: the next ``n``
  sends are answered with that status (and ``Retry-After``, and a Graph error ``code``);
* ``{"timeout_next": n, "hang_s": s}``: the next ``n`` sends get no answer for ``hang_s``
  seconds (default 30; the client times out first);
* ``{"delay_s": s}``: every answer waits ``s``;
* ``{"reset": true}``: forget the requests and the counters, modes off.

What it received: ``GET /_fake/requests`` (JSON list: time, path, authorization, body,
answer status, wamid, template) and ``GET /_fake/counters``
(``{"total", "by_template": {name: {outcome: n}}, "by_status": {...}}``; outcomes are
``accepted``, ``http_<status>``, ``timeout``, ``invalid``, and the webhook statuses sent).

Status webhooks (optional): with ``callback_url`` and ``app_secret``, every accepted message
is followed by signed webhooks, ``sent`` then ``delivered`` (and ``read`` with
``read_receipts``), in Meta's payload shape (``entry[].changes[].value.statuses[]`` with
``id``, ``status``, ``timestamp``, ``recipient_id``, ``biz_opaque_callback_data``), signed
``X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app_secret, raw body)>``.

From a process: ``python -m loadtest.fake_graph --port 8099 [--token T] [--phone-number-id P]
[--callback-url URL --app-secret S] [--read-receipts]``; the base URL to give the engine
(``WAKALA_WHATSAPP_GRAPH_URL``) is printed. In a test's event loop: ``async with
FakeGraph(...) as fake``; from synchronous code: ``ThreadedFakeGraph``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import re
import secrets
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

__all__ = ["APPROVED", "FakeGraph", "ThreadedFakeGraph", "main"]

VERSION = "v21.0"
# Templates "approved" at this fake Meta: name -> (languages, body parameters).
APPROVED: dict[str, tuple[tuple[str, ...], int]] = {
    "order_confirmed": (("en",), 3),
    "vendor_new_order": (("en",), 3),
    "driver_assigned": (("en",), 3),
    "driver_arriving": (("en",), 2),
    "order_delivered": (("en",), 2),
    "delivery_failed": (("en",), 2),
    "rate_and_return": (("en",), 1),
}
_TO = re.compile(r"[1-9][0-9]{7,14}")
_TOP_KEYS = {"messaging_product", "recipient_type", "to", "type", "template", "biz_opaque_callback_data"}


class Invalid(Exception):
    def __init__(self, code: int, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def _graph_error(code: int, message: str, kind: str = "OAuthException") -> dict:
    return {"error": {"message": message, "type": kind, "code": code,
                      "fbtrace_id": base64.b32encode(secrets.token_bytes(10)).decode()}}


def check_send(body: Any, approved: Mapping[str, tuple[tuple[str, ...], int]]) -> tuple[str, str]:
    """(to, template name) of a well-formed template send; ``Invalid`` (Meta's code) otherwise."""
    if not isinstance(body, dict):
        raise Invalid(100, "(#100) The parameter body must be a JSON object")
    unknown = set(body) - _TOP_KEYS
    if unknown:
        raise Invalid(100, f"(#100) Param {sorted(unknown)[0]} is not a valid parameter")
    if body.get("messaging_product") != "whatsapp":
        raise Invalid(100, "(#100) The parameter messaging_product is required and must be whatsapp")
    if body.get("recipient_type", "individual") != "individual":
        raise Invalid(100, "(#100) recipient_type must be individual")
    to = body.get("to")
    if not isinstance(to, str) or not _TO.fullmatch(to):
        raise Invalid(131030, "(#131030) Recipient phone number not in allowed list or malformed")
    if body.get("type") != "template":
        raise Invalid(131047, "(#131047) Re-engagement message: only templates may start a conversation")
    opaque = body.get("biz_opaque_callback_data")
    if opaque is not None and (not isinstance(opaque, str) or len(opaque) > 512):
        raise Invalid(100, "(#100) biz_opaque_callback_data must be a string of at most 512 characters")
    template = body.get("template")
    if not isinstance(template, dict) or set(template) - {"name", "language", "components"}:
        raise Invalid(100, "(#100) template must be an object with name, language, components")
    name, language = template.get("name"), template.get("language")
    if not isinstance(language, dict) or set(language) - {"code", "policy"} or not isinstance(language.get("code"), str):
        raise Invalid(100, "(#100) template.language must be {\"code\": ...}")
    if not isinstance(name, str) or name not in approved:
        raise Invalid(132001, f"(#132001) Template name does not exist in the translation: {str(name)[:60]}")
    languages, expected = approved[name]
    if language["code"] not in languages:
        raise Invalid(132001, f"(#132001) Template {name} does not exist in {language['code'][:10]}")
    components = template.get("components", [])
    if not isinstance(components, list):
        raise Invalid(100, "(#100) template.components must be a list")
    given = 0
    for component in components:
        if not isinstance(component, dict) or component.get("type") not in ("header", "body", "button"):
            raise Invalid(100, "(#100) a component must be an object of type header, body or button")
        parameters = component.get("parameters", [])
        if not isinstance(parameters, list):
            raise Invalid(100, "(#100) component parameters must be a list")
        for p in parameters:
            if not isinstance(p, dict) or p.get("type") != "text" or set(p) != {"type", "text"}:
                raise Invalid(100, "(#100) a parameter must be {\"type\": \"text\", \"text\": ...}")
            text = p["text"]
            if not isinstance(text, str) or not text.strip() or len(text) > 1024:
                raise Invalid(132000, "(#132000) a parameter's text must be 1-1024 characters")
            if "\n" in text or "\t" in text or "    " in text:
                raise Invalid(132018, "(#132018) Param text cannot have new-line/tab characters or more "
                                      "than 4 consecutive spaces")
        if component["type"] == "body":
            given += len(parameters)
    if given != expected:
        raise Invalid(132000, f"(#132000) Number of parameters does not match the expected number of "
                              f"params: {given} given, {expected} expected")
    return to, name


@dataclass
class Mode:
    fail_next: int = 0
    status: int = 500
    retry_after: float | None = None
    code: int | None = None
    timeout_next: int = 0
    hang_s: float = 30.0
    delay_s: float = 0.0


@dataclass
class _State:
    requests: list[dict[str, Any]] = field(default_factory=list)
    counters: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    mode: Mode = field(default_factory=Mode)


class FakeGraph:
    """The fake Cloud API in the current event loop (``async with``, or ``start``/``stop``)."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
                 phone_number_id: str | None = None, callback_url: str | None = None,
                 app_secret: str | None = None, read_receipts: bool = False,
                 webhook_delay_s: float = 0.05, approved: Mapping[str, tuple[tuple[str, ...], int]] | None = None):
        self.host, self.port = host, port
        self.token, self.phone_number_id = token, phone_number_id
        self.callback_url, self.app_secret = callback_url, app_secret
        self.read_receipts, self.webhook_delay_s = read_receipts, webhook_delay_s
        self.approved = dict(APPROVED if approved is None else approved)
        self.state = _State()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task] = set()
        self._closing: asyncio.Event | None = None
        self.webhook_failures = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> FakeGraph:
        self._closing = asyncio.Event()
        app = web.Application(client_max_size=1 << 20)
        app.router.add_post("/{version}/{phone_id}/messages", self._messages)
        app.router.add_get("/_fake/requests", self._get_requests)
        app.router.add_get("/_fake/counters", self._get_counters)
        app.router.add_post("/_fake/mode", self._post_mode)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]   # type: ignore[union-attr]
        if self.callback_url:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        return self

    async def stop(self) -> None:
        if self._closing is not None:
            self._closing.set()   # hanging answers end now
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2)
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeGraph:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """The base URL to configure (``WAKALA_WHATSAPP_GRAPH_URL``)."""
        return f"http://{self.host}:{self.port}/{VERSION}"

    # -- reading back and steering -------------------------------------------------------------

    @property
    def requests(self) -> list[dict[str, Any]]:
        return list(self.state.requests)

    def accepted(self, template: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.state.requests if r["status"] == 200 and (template is None or r["template"] == template)]

    def counters(self) -> dict[str, Any]:
        by_status: dict[str, int] = defaultdict(int)
        for outcomes in self.state.counters.values():
            for outcome, n in outcomes.items():
                by_status[outcome] += n
        return {"total": len(self.state.requests),
                "by_template": {t: dict(o) for t, o in self.state.counters.items()},
                "by_status": dict(by_status)}

    def set_mode(self, **changes: Any) -> None:
        if changes.pop("reset", False):
            self.state = _State()
        for key, value in changes.items():
            if not hasattr(self.state.mode, key):
                raise ValueError(f"unknown mode {key!r}; known: {', '.join(Mode.__dataclass_fields__)}")
            setattr(self.state.mode, key, value)

    # -- routes ------------------------------------------------------------------------------------

    async def _get_requests(self, _request: web.Request) -> web.Response:
        return web.json_response(self.requests)

    async def _get_counters(self, _request: web.Request) -> web.Response:
        return web.json_response(self.counters())

    async def _post_mode(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object")
            self.set_mode(**changes)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"mode": self.state.mode.__dict__})

    def _count(self, template: str, outcome: str) -> None:
        self.state.counters[template][outcome] += 1

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        record: dict[str, Any] = {"at": time.time(), "path": request.path,
                                  "authorization": request.headers.get("Authorization"),
                                  "content_type": request.headers.get("Content-Type"),
                                  "body": None, "status": None, "wamid": None, "template": None}
        self.state.requests.append(record)
        mode = self.state.mode
        try:
            record["body"] = body = json.loads(raw)
        except ValueError:
            body = None
        template = body.get("template") if isinstance(body, dict) else None
        record["template"] = name = (template.get("name") if isinstance(template, dict) else None) or "?"
        if mode.delay_s:
            await asyncio.sleep(mode.delay_s)
        if mode.timeout_next > 0:
            mode.timeout_next -= 1
            record["status"] = "timeout"
            self._count(str(name), "timeout")
            assert self._closing is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), mode.hang_s)
            return web.json_response(_graph_error(1, "late"), status=504)
        if mode.fail_next > 0:
            mode.fail_next -= 1
            record["status"] = mode.status
            self._count(str(name), f"http_{mode.status}")
            headers = {} if mode.retry_after is None else {"Retry-After": f"{mode.retry_after:g}"}
            code = mode.code or (130429 if mode.status == 429 else 131000 if mode.status >= 500 else 100)
            return web.json_response(_graph_error(code, f"(#{code}) fake failure"), status=mode.status, headers=headers)
        try:
            auth = request.headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or not auth[7:].strip() or (
                    self.token is not None and not hmac.compare_digest(auth[7:], self.token)):
                raise Invalid(190, "Invalid OAuth access token - Cannot parse access token", 401)
            if self.phone_number_id is not None and request.match_info["phone_id"] != self.phone_number_id:
                raise Invalid(100, "(#100) Unsupported post request: unknown phone number id")
            if not request.headers.get("Content-Type", "").startswith("application/json"):
                raise Invalid(100, "(#100) the body must be application/json")
            if body is None:
                raise Invalid(100, "(#100) the body is not JSON")
            to, name = check_send(body, self.approved)
        except Invalid as exc:
            record["status"] = exc.status
            record["error"] = exc.message
            self._count(str(name), "invalid")
            return web.json_response(_graph_error(exc.code, exc.message), status=exc.status)
        wamid = "wamid." + base64.urlsafe_b64encode(secrets.token_bytes(24)).decode().rstrip("=")
        record.update(status=200, wamid=wamid)
        self._count(name, "accepted")
        if self._session is not None:
            task = asyncio.ensure_future(self._webhooks(wamid, to, name, body.get("biz_opaque_callback_data"),
                                                        request.match_info["phone_id"]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return web.json_response({"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": to}],
                                  "messages": [{"id": wamid}]})

    # -- status webhooks -----------------------------------------------------------------------------

    def status_payload(self, wamid: str, status: str, to: str, opaque: str | None, phone_id: str) -> bytes:
        entry: dict[str, Any] = {"id": wamid, "status": status, "timestamp": str(int(time.time())),
                                 "recipient_id": to}
        if opaque is not None:
            entry["biz_opaque_callback_data"] = opaque
        if status == "sent":
            entry["conversation"] = {"id": secrets.token_hex(16), "origin": {"type": "utility"}}
            entry["pricing"] = {"billable": True, "pricing_model": "CBP", "category": "utility"}
        body = {"object": "whatsapp_business_account", "entry": [{
            "id": "102290129340398",
            "changes": [{"field": "messages", "value": {
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550000000", "phone_number_id": phone_id},
                "statuses": [entry]}}]}]}
        return json.dumps(body, separators=(",", ":")).encode()

    def sign(self, raw: bytes) -> str:
        assert self.app_secret is not None
        return "sha256=" + hmac.new(self.app_secret.encode(), raw, hashlib.sha256).hexdigest()

    async def _webhooks(self, wamid: str, to: str, template: str, opaque: str | None, phone_id: str) -> None:
        assert self._session is not None and self.callback_url is not None
        for status in ("sent", "delivered", *(("read",) if self.read_receipts else ())):
            await asyncio.sleep(self.webhook_delay_s)
            raw = self.status_payload(wamid, status, to, opaque, phone_id)
            try:
                async with self._session.post(self.callback_url, data=raw, headers={
                        "Content-Type": "application/json", "X-Hub-Signature-256": self.sign(raw)}) as answer:
                    ok = answer.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            self._count(template, f"webhook_{status}" if ok else f"webhook_{status}_failed")
            if not ok:
                self.webhook_failures += 1
                return


class ThreadedFakeGraph:
    """``FakeGraph`` on its own event loop in a daemon thread, for synchronous callers."""

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-graph", daemon=True)
        self.fake: FakeGraph | None = None

    def __enter__(self) -> FakeGraph:
        self._thread.start()
        self.fake = asyncio.run_coroutine_threadsafe(FakeGraph(**self._kwargs).start(), self._loop).result(10)
        return self.fake

    def __exit__(self, *exc: object) -> None:
        if self.fake is not None:
            asyncio.run_coroutine_threadsafe(self.fake.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeGraph(host=args.host, port=args.port, token=args.token, phone_number_id=args.phone_number_id,
                     callback_url=args.callback_url, app_secret=args.app_secret, read_receipts=args.read_receipts)
    await fake.start()
    print(f"fake Graph API on {fake.url} (WAKALA_WHATSAPP_GRAPH_URL); /_fake/requests, /_fake/counters, "
          f"POST /_fake/mode", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await fake.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.fake_graph", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--token", help="the only bearer token accepted (default: any)")
    parser.add_argument("--phone-number-id", help="the only phone-number id accepted (default: any)")
    parser.add_argument("--callback-url", help="send signed status webhooks here")
    parser.add_argument("--app-secret", help="the key that signs the webhooks (needed with --callback-url)")
    parser.add_argument("--read-receipts", action="store_true", help="also send 'read' statuses")
    args = parser.parse_args(argv)
    if bool(args.callback_url) != bool(args.app_secret):
        parser.error("--callback-url and --app-secret go together")
    if not 0 <= args.port <= 65535:
        parser.error("--port must be 0-65535")
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
