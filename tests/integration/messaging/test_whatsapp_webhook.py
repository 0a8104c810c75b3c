"""Meta's WhatsApp webhook through the running engine and real PostgreSQL: the subscription
check, signed inbound messages into conversations and whatsapp_messages (redeliveries insert
nothing), receipts onto outbound rows in and out of order, STOP / START, and hostile requests
that write nothing."""

import json
import time
import uuid

import asyncpg
import httpx
import pytest

from dispatch.identity.consent_store import consent_history, consent_states
from dispatch.identity.users import create_user
from dispatch.messaging.webhook import sign
from schema.db import TenantDatabase
from schema.tenants import create_tenant
from tests.integration.engine_helpers import running_app
from tests.integration.shared_platform import shared_platform  # noqa: F401 - one platform for the module

pytestmark = pytest.mark.timeout(180)


APP_SECRET = "meta-app-secret-for-tests-0123456789"
VERIFY = "verify-token-for-tests"
PATH = "/v1/whatsapp/webhook"
BUSINESS = "27110000000"


def wa_id() -> str:
    return f"2783{uuid.uuid4().int % 10**7:07d}"


def wamid() -> str:
    return f"wamid.{uuid.uuid4().hex}"


def inbound(sender: str, mid: str, body: str = "Is my order on its way?", ts: int | None = None, **extra) -> dict:
    return {"from": sender, "id": mid, "timestamp": str(ts or int(time.time()) - 2), "type": "text",
            "text": {"body": body}, **extra}


def receipt(mid: str, status: str, recipient: str, ts: int, tenant=None, **extra) -> dict:
    out = {"id": mid, "status": status, "timestamp": str(ts), "recipient_id": recipient, **extra}
    if tenant is not None:
        out["biz_opaque_callback_data"] = f"tenant={tenant}"
    return out


def notification(messages=(), statuses=()) -> bytes:
    value: dict = {"messaging_product": "whatsapp",
                   "metadata": {"display_phone_number": BUSINESS, "phone_number_id": "1122334455"}}
    if messages:
        value["messages"] = list(messages)
        value["contacts"] = [{"profile": {"name": "Thandi"}, "wa_id": m["from"]} for m in messages]
    if statuses:
        value["statuses"] = list(statuses)
    return json.dumps({"object": "whatsapp_business_account",
                       "entry": [{"id": "1029384756", "changes": [{"field": "messages", "value": value}]}]}).encode()


async def post(http: httpx.AsyncClient, raw: bytes, signature: str | None = "sign") -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if signature == "sign":
        signature = sign(APP_SECRET, raw)
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    return await http.post(PATH, content=raw, headers=headers)


@pytest.fixture(scope="module")
async def api(platform, module_stream_settings):
    async with running_app(platform, module_stream_settings, whatsapp_app_secret=APP_SECRET,
                           whatsapp_verify_token=VERIFY) as (addr, state):
        async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http:
            yield http


async def person(platform, tenant, phone: str, role: str = "customer") -> dict:
    """A user of the tenant; creating it lists it in the control plane's directory."""
    async with TenantDatabase(platform) as db:
        user = await create_user(db, tenant.id, {"phone": "+" + phone, "name": "Thandi", "role": role})
    control = await asyncpg.connect(platform.control.url())
    try:
        assert await control.fetchval("SELECT phone_number FROM tenant_users WHERE tenant_id = $1 AND user_id = $2",
                                      tenant.id, uuid.UUID(user["user_id"])) == "+" + phone
    finally:
        await control.close()
    return user


async def rows(platform, tenant) -> dict:
    async with TenantDatabase(platform) as db, db.tenant_transaction(tenant.id, readonly=True) as tx:
        messages = [dict(r) for r in await tx.fetch(
            "SELECT message_id, conversation_id, from_number, to_number, direction, type, content, status, "
            "status_timestamp, metadata FROM whatsapp_messages ORDER BY created_at, message_id")]
        conversations = [dict(r) for r in await tx.fetch(
            "SELECT conversation_id, user_id, state, last_message_at, metadata FROM conversations ORDER BY created_at")]
    for m in messages:
        m["content"], m["metadata"] = json.loads(m["content"]), json.loads(m["metadata"])
    return {"messages": messages, "conversations": conversations}


async def outbound(platform, tenant, mid: str, to: str, status: str = "sent", notification_id=None) -> None:
    async with TenantDatabase(platform) as db, db.tenant_transaction(tenant.id) as tx:
        await tx.execute(
            "INSERT INTO whatsapp_messages (message_id, conversation_id, from_number, to_number, direction, type, "
            "content, status, notification_id) VALUES ($1, 'c-out', $2, $3, 'outbound', 'template', '{}'::jsonb, $4, $5)",
            mid, "+" + BUSINESS, "+" + to, status, notification_id)


async def sent_notification(platform, tenant, user_id: str) -> uuid.UUID:
    async with TenantDatabase(platform) as db, db.tenant_transaction(tenant.id) as tx:
        return await tx.fetchval(
            "INSERT INTO notifications (user_id, type, channel, content, status, sent_at) "
            "VALUES ($1, 'order_confirmed', 'whatsapp', 'Your order is confirmed', 'sent', now()) RETURNING id",
            uuid.UUID(user_id))


async def notification_row(platform, tenant, nid: uuid.UUID) -> dict:
    async with TenantDatabase(platform) as db, db.tenant_transaction(tenant.id, readonly=True) as tx:
        return dict(await tx.fetchrow("SELECT status, read_at, last_error FROM notifications WHERE id = $1", nid))


async def outbound_row(platform, tenant, mid: str) -> dict:
    async with TenantDatabase(platform) as db, db.tenant_transaction(tenant.id, readonly=True) as tx:
        row = dict(await tx.fetchrow("SELECT status, status_timestamp, metadata FROM whatsapp_messages "
                                     "WHERE message_id = $1", mid))
    row["metadata"] = json.loads(row["metadata"])
    return row


async def test_the_subscription_check_answers_the_challenge_only_with_our_token(api):
    http = api
    ok = await http.get(PATH, params={"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "1158201444"})
    assert ok.status_code == 200 and ok.text == "1158201444"
    assert ok.headers["content-type"].startswith("text/plain")
    for params, status, field in (({"hub.mode": "subscribe", "hub.verify_token": "guess", "hub.challenge": "1"}, 403,
                                   "hub.verify_token"),
                                  ({"hub.mode": "unsubscribe", "hub.verify_token": VERIFY, "hub.challenge": "1"}, 403,
                                   "hub.mode"),
                                  ({}, 403, "hub.mode"),
                                  ({"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "<b>x</b>"},
                                   422, "hub.challenge")):
        resp = await http.get(PATH, params=params)
        assert resp.status_code == status and resp.json()["error"]["field"] == field, resp.text


async def test_a_signed_message_is_recorded_once_in_its_conversation(platform, api):
    http = api
    tenant = await create_tenant(platform, f"WA {uuid.uuid4().hex[:6]}")
    phone = wa_id()
    user = await person(platform, tenant, phone)
    first, second = wamid(), wamid()
    now = int(time.time())
    raw = notification([inbound(phone, first, ts=now - 60)])
    resp = await post(http, raw)
    assert resp.status_code == 200 and resp.json()["recorded"] == 1, resp.text
    got = await rows(platform, tenant)
    [message] = got["messages"]
    conversation_id = f"user:{user['user_id']}"
    assert message == {"message_id": first, "conversation_id": conversation_id, "from_number": "+" + phone,
                       "to_number": "+" + BUSINESS, "direction": "inbound", "type": "text",
                       "content": {"body": "Is my order on its way?"}, "status": "received",
                       "status_timestamp": message["status_timestamp"],
                       "metadata": {"phone_number_id": "1122334455"}}
    assert int(message["status_timestamp"].timestamp()) == now - 60
    [conversation] = got["conversations"]
    assert conversation["conversation_id"] == conversation_id and str(conversation["user_id"]) == user["user_id"]
    assert int(conversation["last_message_at"].timestamp()) == now - 60

    again = await post(http, raw)   # Meta redelivers
    assert again.status_code == 200 and again.json()["duplicates"] == 1 and again.json()["recorded"] == 0
    assert await rows(platform, tenant) == got

    # a later message joins the same conversation; an older one arriving late does not move it back
    await post(http, notification([inbound(phone, second, "thanks", ts=now - 10)]))
    await post(http, notification([inbound(phone, wamid(), "earlier", ts=now - 3600)]))
    got = await rows(platform, tenant)
    assert len(got["messages"]) == 3 and {m["conversation_id"] for m in got["messages"]} == {conversation_id}
    [conversation] = got["conversations"]
    assert int(conversation["last_message_at"].timestamp()) == now - 10


async def test_a_sender_no_tenant_knows_is_acknowledged_and_recorded_nowhere(platform, api):
    http = api
    tenant = await create_tenant(platform, f"WA {uuid.uuid4().hex[:6]}")
    await person(platform, tenant, wa_id())
    resp = await post(http, notification([inbound(wa_id(), wamid())]))
    assert resp.status_code == 200 and resp.json()["unknown_senders"] == 1 and resp.json()["recorded"] == 0
    assert await rows(platform, tenant) == {"messages": [], "conversations": []}


async def test_receipts_raise_an_outbound_status_in_any_order_and_never_lower_it(platform, api):
    http = api
    tenant = await create_tenant(platform, f"WA {uuid.uuid4().hex[:6]}")
    phone = wa_id()
    user = await person(platform, tenant, phone)
    in_order, out_of_order, failing, by_phone = wamid(), wamid(), wamid(), wamid()
    told, failed_one = await sent_notification(platform, tenant, user["user_id"]), \
        await sent_notification(platform, tenant, user["user_id"])
    for mid, nid in ((in_order, told), (out_of_order, None), (failing, failed_one), (by_phone, None)):
        await outbound(platform, tenant, mid, phone, status="accepted", notification_id=nid)
    t = int(time.time()) - 300

    for n, status in enumerate(("sent", "delivered", "read")):
        resp = await post(http, notification(statuses=[receipt(in_order, status, phone, t + n, tenant.id)]))
        assert resp.status_code == 200 and resp.json()["receipts_applied"] == 1, resp.text
    row = await outbound_row(platform, tenant, in_order)
    assert row["status"] == "read" and int(row["status_timestamp"].timestamp()) == t + 2
    assert set(row["metadata"]["receipts"]) == {"sent", "delivered", "read"}
    told_now = await notification_row(platform, tenant, told)   # the outbox follows
    assert told_now["status"] == "read" and int(told_now["read_at"].timestamp()) == t + 2

    # read first, then the late delivered and sent: kept as read, their times recorded
    resp = await post(http, notification(statuses=[receipt(out_of_order, "read", phone, t + 5, tenant.id),
                                                   receipt(out_of_order, "delivered", phone, t + 3, tenant.id),
                                                   receipt(out_of_order, "sent", phone, t + 1, tenant.id)]))
    assert (resp.json()["receipts_applied"], resp.json()["receipts_kept"]) == (1, 2), resp.text
    row = await outbound_row(platform, tenant, out_of_order)
    assert row["status"] == "read" and int(row["status_timestamp"].timestamp()) == t + 5
    assert set(row["metadata"]["receipts"]) == {"sent", "delivered", "read"}

    # failed beats sent and keeps Meta's error; a later delivered (proof it arrived) beats failed
    error = {"code": 131026, "title": "Message undeliverable", "error_data": {"details": "no WhatsApp account"}}
    await post(http, notification(statuses=[receipt(failing, "sent", phone, t, tenant.id)]))
    await post(http, notification(statuses=[receipt(failing, "failed", phone, t + 1, tenant.id, errors=[error])]))
    row = await outbound_row(platform, tenant, failing)
    assert row["status"] == "failed" and row["metadata"]["errors"] == [
        {"code": 131026, "title": "Message undeliverable", "details": "no WhatsApp account"}]
    assert await notification_row(platform, tenant, failed_one) == {
        "status": "failed", "read_at": None, "last_error": "meta: 131026 Message undeliverable no WhatsApp account"}
    await post(http, notification(statuses=[receipt(failing, "delivered", phone, t + 2, tenant.id)]))
    assert (await outbound_row(platform, tenant, failing))["status"] == "delivered"

    # without the tenant in biz_opaque_callback_data the recipient's phone finds it
    resp = await post(http, notification(statuses=[receipt(by_phone, "delivered", phone, t)]))
    assert resp.json()["receipts_applied"] == 1 and (await outbound_row(platform, tenant, by_phone))["status"] == \
        "delivered"

    # a wamid no tenant holds, or a hint naming a tenant that does not exist: acknowledged, ignored
    before = await rows(platform, tenant)
    resp = await post(http, notification(statuses=[receipt(wamid(), "read", phone, t, tenant.id),
                                                   receipt(wamid(), "read", wa_id(), t, uuid.uuid4())]))
    assert resp.status_code == 200 and resp.json()["receipts_unknown"] == 2, resp.text
    assert await rows(platform, tenant) == before


async def test_stop_withdraws_and_start_gives_marketing_consent_once(platform, api):
    http = api
    tenant = await create_tenant(platform, f"WA {uuid.uuid4().hex[:6]}")
    phone = wa_id()
    user = await person(platform, tenant, phone)
    subject = ("customer", user["customer_id"])
    start = notification([inbound(phone, wamid(), "START")])
    resp = await post(http, start)
    assert resp.json()["consents"] == 1, resp.text
    async with TenantDatabase(platform) as db:
        assert (await consent_states(db, tenant.id, *subject))["marketing"].given is True
        resp = await post(http, notification([inbound(phone, wamid(), "stop ")]))
        assert resp.json()["consents"] == 1
        state = (await consent_states(db, tenant.id, *subject))["marketing"]
        assert state.given is False and state.channel == "whatsapp"
        await post(http, start)   # a redelivered START is not a new consent
        assert (await consent_states(db, tenant.id, *subject))["marketing"].given is False
        assert len(await consent_history(db, tenant.id, *subject)) == 2


async def test_hostile_requests_write_nothing_and_name_the_reason(platform, api):
    http = api
    tenant = await create_tenant(platform, f"WA {uuid.uuid4().hex[:6]}")
    phone = wa_id()
    await person(platform, tenant, phone)
    raw = notification([inbound(phone, wamid())])
    for signature in (None, "sha1=" + "0" * 40, "sha256=" + "0" * 64, sign("another-secret", raw), "sha256=zz"):
        resp = await post(http, raw, signature)
        assert resp.status_code == 401, (signature, resp.text)
        assert resp.json()["error"] == {"status": 401, "reason": "bad_signature", "field": "X-Hub-Signature-256",
                                        "message": resp.json()["error"]["message"]}
    tampered = raw.replace(b"on its way", b"on its wax")
    assert (await post(http, tampered, sign(APP_SECRET, raw))).status_code == 401
    big = b'{"object": "' + b"x" * (300 * 1024) + b'"}'
    resp = await post(http, big)
    assert resp.status_code == 413 and resp.json()["error"]["reason"] == "too_large"

    # signed but unusable: acknowledged (Meta would redeliver anything else), nothing written
    for body, reason, field in ((b"{not json", "bad_json", None),
                                (b'{"object": "page", "entry": []}', "invalid_value", "object"),
                                (notification([inbound(phone, wamid())] * 1001), "too_many",
                                 "entry[0].changes[0].value.messages"),
                                (notification([inbound(phone, wamid(), "nul \x00 here")]), "invalid_text",
                                 "entry[0].changes[0].value.messages[0].text.body")):
        resp = await post(http, body)
        assert resp.status_code == 200, resp.text
        assert resp.json()["refused"][0]["reason"] == reason and resp.json()["refused"][0]["field"] == field, resp.text
    resp = await post(http, notification([inbound("27 82 not a phone", wamid()), inbound(phone, "wamid <x>")]))
    assert resp.status_code == 200 and [r["field"].rsplit(".", 1)[-1] for r in resp.json()["refused"]] == ["from", "id"]
    assert await rows(platform, tenant) == {"messages": [], "conversations": []}


async def test_the_webhook_says_the_channel_is_off_without_its_secrets(platform, stream_settings):
    async with running_app(platform, stream_settings) as (addr, _state):
        async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http:
            raw = notification()
            for resp in (await http.post(PATH, content=raw, headers={"X-Hub-Signature-256": sign("", raw)}),
                         await http.get(PATH, params={"hub.mode": "subscribe", "hub.verify_token": "",
                                                      "hub.challenge": "1"})):
                assert resp.status_code == 503 and resp.json()["error"]["reason"] == "not_configured", resp.text
                assert "WhatsApp channel is off" in resp.json()["error"]["message"]


async def test_a_person_of_two_tenants_is_routed_by_the_message_they_answer(platform, api):
    http = api
    a = await create_tenant(platform, f"WA {uuid.uuid4().hex[:6]}")
    b = await create_tenant(platform, f"WA {uuid.uuid4().hex[:6]}")
    phone = wa_id()
    user_a, user_b = await person(platform, a, phone), await person(platform, b, phone)
    asked = wamid()
    await outbound(platform, a, asked, phone)

    # a reply to tenant A's message goes to A only, and there START gives consent
    resp = await post(http, notification([inbound(phone, wamid(), "START", context={"from": BUSINESS, "id": asked})]))
    assert (resp.json()["recorded"], resp.json()["consents"]) == (1, 1), resp.text
    assert [m["direction"] for m in (await rows(platform, a))["messages"]] == ["outbound", "inbound"]
    assert (await rows(platform, b))["messages"] == []

    # a message answering nothing reaches both; START there is consent to neither
    resp = await post(http, notification([inbound(phone, wamid(), "start")]))
    assert (resp.json()["recorded"], resp.json()["consents"]) == (2, 0), resp.text
    # STOP withdraws everywhere it reached
    resp = await post(http, notification([inbound(phone, wamid(), "STOP")]))
    assert (resp.json()["recorded"], resp.json()["consents"]) == (2, 2), resp.text
    async with TenantDatabase(platform) as db:
        for tenant, user in ((a, user_a), (b, user_b)):
            history = await consent_history(db, tenant.id, "customer", user["customer_id"])
            assert [r["consent_given"] for r in history] == ([False, True] if tenant is a else [False])
    assert len((await rows(platform, b))["conversations"]) == 1
