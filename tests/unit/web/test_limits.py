"""EdgeLimits as a pure ASGI layer, driven with hand-made messages: no server, no services."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.exceptions

from dispatch.web.limits import EdgeLimits, target_refusal


class State:
    pass


class Recorder:
    """An inner app that reads its whole body (as a parsing route would) and counts it."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.state, self.received, self.calls, self.fail = State(), 0, 0, fail

    async def __call__(self, scope, receive, send) -> None:
        self.calls += 1
        more = True
        while more:
            message = await receive()
            self.received += len(message.get("body", b""))
            more = message.get("more_body", False)
        if self.fail is not None:
            raise self.fail
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def scope(path="/v1/orders", query=b"", headers=(), kind="http"):
    return {"type": kind, "path": path, "raw_path": path.encode(), "query_string": query, "method": "POST",
            "headers": list(headers), "extensions": {"websocket.http.response": {}}}


async def run(app, sc, chunks, *, endless=False):
    """Feed ``chunks`` (then, if ``endless``, 1 MB chunks forever); (sent messages, bytes pulled)."""
    pulled = 0
    queue = list(chunks)

    async def receive():
        nonlocal pulled
        if queue:
            body = queue.pop(0)
            pulled += len(body)
            return {"type": "http.request", "body": body, "more_body": bool(queue) or endless}
        if endless:
            pulled += 1 << 20
            return {"type": "http.request", "body": b"x" * (1 << 20), "more_body": True}
        await asyncio.sleep(3600)

    sent = []

    async def send(message):
        sent.append(message)

    await asyncio.wait_for(app(sc, receive, send), 5)
    return sent, pulled


def status_and_body(sent):
    start = next(m for m in sent if m["type"].endswith("response.start"))
    body = b"".join(m.get("body", b"") for m in sent if m["type"].endswith("response.body"))
    return start["status"], json.loads(body) if body.startswith(b"{") else body, dict(start.get("headers", []))


async def test_an_endless_chunked_body_is_refused_after_the_limit_and_never_reaches_the_app():
    inner = Recorder()
    sent, pulled = await run(EdgeLimits(inner, max_body_bytes=4096, max_url_bytes=4096), scope(), [], endless=True)
    status, body, headers = status_and_body(sent)
    assert status == 413 and body["error"]["reason"] == "too_large" and headers[b"connection"] == b"close"
    assert inner.calls == 0 and pulled <= (1 << 20)   # one chunk read past the limit, not the stream


async def test_a_declared_length_over_the_limit_is_refused_before_reading():
    inner = Recorder()
    sent, pulled = await run(EdgeLimits(inner, max_body_bytes=4096, max_url_bytes=4096),
                             scope("/v1/drivers/shift", headers=[(b"content-length", b"999999")]), [b"x"])
    status, body, _ = status_and_body(sent)
    assert status == 413 and pulled == 0 and inner.calls == 0
    assert body == {"error": {"reason": "too_large", "message": "body over 4096 bytes"}}   # the gateway's envelope


async def test_a_body_within_the_limit_reaches_the_app_whole():
    inner = Recorder()
    sent, _ = await run(EdgeLimits(inner, max_body_bytes=4096, max_url_bytes=4096), scope(), [b"a" * 2000, b"b" * 2000])
    assert status_and_body(sent)[0] == 200 and inner.received == 4000


@pytest.mark.parametrize("failure, status", [(RuntimeError("db-7.internal exploded"), 500),
                                             (redis.exceptions.ConnectionError("db-7.internal:6379"), 503)])
async def test_an_exception_escaping_the_app_is_answered_in_the_envelope(failure, status):
    sent, _ = await run(EdgeLimits(Recorder(failure), max_body_bytes=4096, max_url_bytes=4096), scope(), [b"{}"])
    got, body, headers = status_and_body(sent)
    assert got == status and "db-7" not in json.dumps(body)
    assert (b"retry-after" in headers) == (status == 503)


def test_target_refusals():
    assert target_refusal(scope(query=b"q=" + b"x" * 5000), 4096, 16384).status == 414
    assert target_refusal(scope(headers=[(b"x-pad", b"y" * 20000)]), 4096, 16384).status == 431
    refusal = target_refusal(scope(query=b"a=1&na%6De=x%00y"), 4096, 16384)
    assert (refusal.status, refusal.reason, refusal.field) == (422, "invalid_text", "name")
    assert target_refusal(scope("/v1/orders/%00"), 4096, 16384).field == "path"
    assert target_refusal(scope(query=b"q=maize"), 4096, 16384) is None


async def test_a_websocket_upgrade_over_the_limits_is_denied_with_the_status():
    inner = Recorder()
    sent, _ = await run(EdgeLimits(inner, max_body_bytes=4096, max_url_bytes=4096),
                        scope("/v1/drivers/stream", query=b"x" * 5000, kind="websocket"), [])
    assert status_and_body(sent)[0] == 414 and inner.calls == 0


async def test_a_token_from_an_address_past_its_budget_is_refused_before_the_body_or_the_route():
    from dispatch.web.failures import FailureLimiter

    failures = FailureLimiter(2, 60)
    edge = EdgeLimits(Recorder(), max_body_bytes=4096, max_url_bytes=4096, failures=failures)
    token = [(b"authorization", b"Bearer wkd_made_up")]

    def from_(address, headers):
        return {**scope(headers=headers), "client": (address, 40000)}

    sent, _ = await run(edge, from_("10.0.0.9", token), [b"{}"])
    assert status_and_body(sent)[0] == 200   # within its budget: the route decides
    failures.failed("10.0.0.9")
    failures.failed("10.0.0.9")
    sent, pulled = await run(edge, from_("10.0.0.9", token), [b"{}"])
    status, body, headers = status_and_body(sent)
    assert (status, body["error"]["reason"], body["error"]["field"]) == (429, "rate_limited", "authorization")
    assert int(headers[b"retry-after"]) >= 1 and pulled == 0 and edge.app.calls == 1
    # the same address without a token (a tracking page, a callback) and another address pass
    assert status_and_body((await run(edge, from_("10.0.0.9", []), [b"{}"]))[0])[0] == 200
    assert status_and_body((await run(edge, from_("10.0.0.8", token), [b"{}"]))[0])[0] == 200
