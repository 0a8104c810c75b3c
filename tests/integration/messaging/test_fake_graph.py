"""The fake Graph API as the city replay uses it: a process steered and read over HTTP, and
the signed status webhooks it sends. Also: records on the event topics that are not events
write nothing."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sys
import uuid

import httpx
import pytest
from aiohttp import web

from dispatch.messaging.graph import build_template_request
from dispatch.messaging.graph_client import GraphClient
from dispatch.messaging.notifier import Notifier
from loadtest.fake_graph import FakeGraph, ThreadedFakeGraph
from loadtest.processes import free_port
from schema.db import TenantDatabase
from schema.tenants import create_tenant
from tests.integration.streams.harness import eventually

pytestmark = pytest.mark.timeout(60)


def send(base: str, **kw):
    args = dict(to="27821230001", template="order_delivered", language="en", params=["WK-1", "Spaza"],
                tenant_id="t-1")
    args.update(kw)
    return build_template_request(base, "1555", "tok", **args)


async def test_the_fake_runs_as_a_process_and_is_steered_and_read_over_http():
    port = free_port()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "loadtest.fake_graph", "--port", str(port),
                                                "--token", "tok", stdout=asyncio.subprocess.PIPE)
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        base = f"http://127.0.0.1:{port}/v21.0"
        assert base in line
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http, GraphClient(2.0) as client:
            assert (await http.post("/_fake/mode", json={"fail_next": 1, "status": 429, "retry_after": 3})).status_code == 200
            throttled = await client.send(send(base))
            assert (throttled.kind, throttled.retry_after_s) == ("retry", 3.0)
            assert (await client.send(send(base))).kind == "sent"
            refused = await client.send(send(base, template="not_approved"))
            assert (refused.kind, refused.code) == ("failed", 132001)
            wrong = build_template_request(base, "1555", "other", to="27821230001", template="order_delivered",
                                           language="en", params=["a", "b"], tenant_id="t")
            assert (await client.send(wrong)).code == 190
            assert (await http.post("/_fake/mode", json={"no_such_mode": 1})).status_code == 400
            assert (await http.post("/_fake/mode", content=b"[")).status_code == 400
            counters = (await http.get("/_fake/counters")).json()
            assert counters["by_template"]["order_delivered"] == {"http_429": 1, "accepted": 1, "invalid": 1}
            assert counters["by_template"]["not_approved"] == {"invalid": 1} and counters["total"] == 4
            requests = (await http.get("/_fake/requests")).json()
            assert [r["status"] for r in requests] == [429, 200, 400, 401]
            assert requests[1]["body"]["biz_opaque_callback_data"] == "t-1" and requests[1]["wamid"].startswith("wamid.")
            await http.post("/_fake/mode", json={"reset": True})
            assert (await http.get("/_fake/counters")).json()["total"] == 0
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_accepted_messages_are_followed_by_signed_status_webhooks():
    received: list[tuple[bytes, str]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((await request.read(), request.headers["X-Hub-Signature-256"]))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/whatsapp/webhook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with FakeGraph(callback_url=f"http://127.0.0.1:{port}/v1/whatsapp/webhook", app_secret="s3cret",
                             read_receipts=True, webhook_delay_s=0.01) as fake, GraphClient(2.0) as client:
            outcome = await client.send(send(fake.url, tenant_id="tenant-42"))
            await eventually(lambda: asyncio.sleep(0, len(received) == 3), within=5)
            statuses = []
            for raw, signature in received:
                assert signature == "sha256=" + hmac.new(b"s3cret", raw, hashlib.sha256).hexdigest()
                status, = json.loads(raw)["entry"][0]["changes"][0]["value"]["statuses"]
                assert (status["id"], status["recipient_id"], status["biz_opaque_callback_data"]) == (
                    outcome.wamid, "27821230001", "tenant-42")
                statuses.append(status["status"])
            assert statuses == ["sent", "delivered", "read"]
            assert fake.counters()["by_template"]["order_delivered"] == {
                "accepted": 1, "webhook_sent": 1, "webhook_delivered": 1, "webhook_read": 1}
    finally:
        await runner.cleanup()


def test_the_threaded_fake_serves_synchronous_callers():
    with ThreadedFakeGraph() as fake:
        answer = httpx.post(f"{fake.url}/1555/messages", json=send(fake.url).json,
                            headers={"Authorization": "Bearer x"})
        assert answer.status_code == 200 and answer.json()["messages"][0]["id"].startswith("wamid.")
        assert httpx.get(f"http://127.0.0.1:{fake.port}/_fake/counters").json()["total"] == 1


async def test_records_that_are_not_events_write_nothing(platform):
    tenant = await create_tenant(platform, "Hostile Records")
    async with TenantDatabase(platform) as db:
        notifier = Notifier(db, "127.0.0.1:1", order_topic="o", delivery_topic="d", group="g", max_attempts=1)
        good = {"id": str(uuid.uuid4()), "tenant_id": str(tenant.id), "order_id": str(uuid.uuid4()),
                "type": "place", "created_at": "2099-01-01T00:00:00+00:00", "payload": {"payment_method": "cash"}}
        for value in (None, b"", b"\x00\xff", b"{", b"[]", json.dumps({**good, "id": "x"}).encode(),
                      json.dumps({**good, "tenant_id": str(uuid.uuid4())}).encode(),   # no such tenant
                      json.dumps({**good, "created_at": "2001-01-01T00:00:00+00:00"}).encode(),   # stale
                      json.dumps(good).encode()):   # no such order
            assert await notifier.handle(value, "order") == 0
        async with db.tenant_transaction(tenant.id, readonly=True) as tx:
            assert await tx.fetchval("SELECT count(*) FROM notifications") == 0
