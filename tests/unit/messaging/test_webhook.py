"""Meta's webhook rules: the signature, the subscription check, the payload read into records,
and a hostile corpus where every refusal names its field."""

import copy
import json
import time

import pytest

from dispatch.core.errors import Refusal
from dispatch.messaging.webhook import (
    MAX_ITEMS,
    SIGNATURE_HEADER,
    STATUS_ORDER,
    conversation_id_for,
    parse_notification,
    sign,
    status_rank,
    tenant_hint,
    verify_signature,
    verify_subscription,
)

SECRET = "app-secret-0123456789"
NOW = 1_767_225_600.0
TS = str(int(NOW) - 5)
TENANT = "0b6f1d8e-6a43-4d55-9d1c-3f1a2b4c5d6e"


def message(**over) -> dict:
    base = {"from": "27821234567", "id": "wamid.HBgLMjc4MjEyMzQ1NjcVAgASGBQ3", "timestamp": TS, "type": "text",
            "text": {"body": "Is my order on its way?"}}
    base.update(over)
    return base


def status(**over) -> dict:
    base = {"id": "wamid.OUT1", "status": "delivered", "timestamp": TS, "recipient_id": "27821234567",
            "biz_opaque_callback_data": TENANT}
    base.update(over)
    return base


def payload(messages=(), statuses=(), **value_over) -> dict:
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": "27110000000", "phone_number_id": "1122334455"},
             "contacts": [{"profile": {"name": "Thandi"}, "wa_id": "27821234567"}]}
    if messages:
        value["messages"] = list(messages)
    if statuses:
        value["statuses"] = list(statuses)
    value.update(value_over)
    return {"object": "whatsapp_business_account",
            "entry": [{"id": "1029384756", "changes": [{"field": "messages", "value": value}]}]}


def refused(body) -> Refusal:
    with pytest.raises(Refusal) as caught:
        parse_notification(body, NOW)
    return caught.value


# --- signature ------------------------------------------------------------------------------

def test_a_body_signed_with_the_app_secret_passes():
    raw = json.dumps(payload([message()])).encode()
    verify_signature(SECRET, raw, sign(SECRET, raw))
    verify_signature(SECRET, raw, sign(SECRET, raw).upper().replace("SHA256=", "sha256="))   # hex in capitals


@pytest.mark.parametrize(("header", "words"), [
    (None, "missing"), ("", "missing"),
    ("sha1=" + "0" * 40, "other algorithms"), ("md5=abc", "other algorithms"), ("0" * 64, "other algorithms"),
    ("sha256=", "64 hex"), ("sha256=xyz", "64 hex"), ("sha256=" + "0" * 63, "64 hex"), ("sha256=" + "g" * 64, "64 hex"),
    ("sha256=" + "0" * 64, "does not match"),
])
def test_missing_foreign_and_malformed_signatures_are_refused_naming_the_header(header, words):
    with pytest.raises(Refusal) as caught:
        verify_signature(SECRET, b"{}", header)
    assert caught.value.status == 401 and caught.value.reason == "bad_signature"
    assert caught.value.field == SIGNATURE_HEADER and words in caught.value.message


def test_a_tampered_body_or_another_secret_does_not_verify():
    raw = json.dumps(payload([message()])).encode()
    good = sign(SECRET, raw)
    for body, header in ((raw.replace(b"on its way", b"on its wax"), good), (raw + b" ", good),
                         (raw, sign("another-secret", raw))):
        with pytest.raises(Refusal) as caught:
            verify_signature(SECRET, body, header)
        assert caught.value.reason == "bad_signature"


# --- subscription GET -----------------------------------------------------------------------

def test_the_subscription_check_echoes_the_challenge_only_with_our_token():
    params = {"hub.mode": "subscribe", "hub.verify_token": "verify-me", "hub.challenge": "1158201444"}
    assert verify_subscription("verify-me", params) == "1158201444"
    for over, field, code in (({"hub.mode": "unsubscribe"}, "hub.mode", 403), ({"hub.mode": None}, "hub.mode", 403),
                              ({"hub.verify_token": "guess"}, "hub.verify_token", 403),
                              ({"hub.verify_token": None}, "hub.verify_token", 403),
                              ({"hub.verify_token": "verify-me\udcff"}, "hub.verify_token", 403),
                              ({"hub.challenge": None}, "hub.challenge", 422),
                              ({"hub.challenge": "<script>alert(1)</script>"}, "hub.challenge", 422),
                              ({"hub.challenge": "9" * 257}, "hub.challenge", 422)):
        hostile = {k: v for k, v in {**params, **over}.items() if v is not None}
        with pytest.raises(Refusal) as caught:
            verify_subscription("verify-me", hostile)
        assert (caught.value.field, caught.value.status) == (field, code), over


# --- payload --------------------------------------------------------------------------------

def test_a_text_message_and_receipts_are_read_into_records():
    note = parse_notification(payload([message(context={"from": "27110000000", "id": "wamid.ASKED"})],
                                      [status(), status(id="wamid.OUT2", status="failed", biz_opaque_callback_data=None,
                                                        errors=[{"code": 131026, "title": "Message undeliverable",
                                                                 "error_data": {"details": "not on WhatsApp"}}])]),
                              NOW)
    [got] = note.messages
    assert (got.wa_id, got.sender, got.business_number, got.phone_number_id) == (
        "27821234567", "+27821234567", "27110000000", "1122334455")
    assert got.type == "text" and got.content == {"body": "Is my order on its way?"}
    assert got.timestamp == int(TS) and got.reply_to == "wamid.ASKED" and got.command is None
    delivered, failed = note.statuses
    assert (delivered.status, delivered.tenant, delivered.recipient) == ("delivered", TENANT, "27821234567")
    assert failed.tenant is None and failed.errors == (
        {"code": 131026, "title": "Message undeliverable", "details": "not on WhatsApp"},)
    assert note.refused == () and note.skipped == 0


def test_each_known_type_keeps_a_bounded_part_of_its_content():
    cases = {
        "image": ({"image": {"id": "m1", "mime_type": "image/jpeg", "caption": "my gate", "sha256": "x" * 999}},
                  {"media_id": "m1", "mime_type": "image/jpeg", "caption": "my gate"}),
        "location": ({"location": {"latitude": -26.2, "longitude": 27.9, "name": "Home"}},
                     {"latitude": -26.2, "longitude": 27.9, "name": "Home"}),
        "interactive": ({"interactive": {"type": "button_reply", "button_reply": {"id": "yes", "title": "Yes"}}},
                        {"kind": "button_reply", "id": "yes", "title": "Yes"}),
        "button": ({"button": {"text": "Track", "payload": "track"}}, {"text": "Track", "payload": "track"}),
        "reaction": ({"reaction": {"message_id": "wamid.X", "emoji": "👍"}}, {"message_id": "wamid.X", "emoji": "👍"}),
        "sticker": ({"sticker": {"id": "s1"}}, {"media_id": "s1"}),
    }
    for kind, (extra, kept) in cases.items():
        [got] = parse_notification(payload([message(type=kind, text=None, **extra)]), NOW).messages
        assert (got.type, got.content) == (kind, kept)
    [new] = parse_notification(payload([message(type="hologram", hologram={"x": 1})]), NOW).messages
    assert (new.type, new.content) == ("unsupported", {"type": "hologram"})


def test_stop_and_start_are_commands_only_as_the_whole_text():
    for body, command in (("STOP", "stop"), (" stop\n", "stop"), ("Start", "start"), ("stop it", None),
                          ("STOPP", None), ("", None)):
        msg = parse_notification(payload([message(text={"body": body or " "})]), NOW).messages[0]
        assert msg.command == (command if body else None), body


def test_changes_of_another_field_are_skipped_and_an_empty_value_is_nothing():
    body = payload()
    body["entry"][0]["changes"].append({"field": "message_template_status_update", "value": {"event": "APPROVED"}})
    note = parse_notification(body, NOW)
    assert (note.messages, note.statuses, note.skipped) == ((), (), 1)


def test_receipts_rank_so_that_a_status_never_goes_backwards():
    assert STATUS_ORDER == ("sent", "failed", "delivered", "read")
    assert status_rank(None) == status_rank("queued") == 0 < status_rank("sent") < status_rank("failed") \
        < status_rank("delivered") < status_rank("read")


def test_the_tenant_hint_is_read_from_the_forms_a_sender_may_use():
    upper = TENANT.upper()
    for opaque in (TENANT, upper, f"tenant={TENANT};notification=7", f"tenant_id:{TENANT}",
                   json.dumps({"tenant_id": TENANT, "order": "8f"})):
        assert tenant_hint(opaque) == TENANT, opaque
    for opaque in (None, "", "order-17", "tenant=not-a-uuid", TENANT + "x"):
        assert tenant_hint(opaque) is None, opaque


def test_a_conversation_id_holds_no_phone_number():
    assert conversation_id_for("5b0c7f3e-8d5e-4c5a-9b1e-0d6f1f2a3b4c") == "user:5b0c7f3e-8d5e-4c5a-9b1e-0d6f1f2a3b4c"


# --- hostile payloads -----------------------------------------------------------------------

@pytest.mark.parametrize(("mutate", "field", "reason"), [
    (lambda b: b.update(object="page"), "object", "invalid_value"),
    (lambda b: b.pop("entry"), "entry", "missing_field"),
    (lambda b: b.update(entry={"0": {}}), "entry", "wrong_type"),
    (lambda b: b.update(entry=[{}] * 101), "entry", "too_many"),
    (lambda b: b["entry"][0].update(changes="messages"), "entry[0].changes", "wrong_type"),
    (lambda b: b["entry"][0]["changes"][0].update(value=[1]), "entry[0].changes[0].value", "wrong_type"),
    (lambda b: b["entry"][0]["changes"][0]["value"].update(messages={"a": 1}),
     "entry[0].changes[0].value.messages", "wrong_type"),
    (lambda b: b["entry"][0]["changes"][0]["value"].update(messages=[message()] * (MAX_ITEMS + 1)),
     "entry[0].changes[0].value.messages", "too_many"),
    (lambda b: b["entry"][0]["changes"][0]["value"].pop("metadata"), "entry[0].changes[0].value.metadata",
     "missing_field"),
    (lambda b: b["entry"][0]["changes"][0]["value"]["metadata"].update(display_phone_number="call us"),
     "entry[0].changes[0].value.metadata.display_phone_number", "bad_format"),
    (lambda b: b["entry"][0]["changes"][0]["value"]["metadata"].update(phone_number_id="12ab"),
     "entry[0].changes[0].value.metadata.phone_number_id", "bad_format"),
])
def test_an_envelope_we_cannot_walk_is_refused_whole_naming_the_field(mutate, field, reason):
    body = payload([message()])
    mutate(body)
    got = refused(body)
    assert (got.field, got.reason, got.status) == (field, reason, 422)


def test_items_over_the_batch_limit_across_changes_refuse_the_whole_notification():
    body = payload([message()] * 600)
    body["entry"].append(copy.deepcopy(body["entry"][0]))
    assert refused(body).reason == "too_many"


def test_non_objects_and_deep_nesting_are_refused_not_crashed():
    for body in (None, [], "x", 7, {"object": "whatsapp_business_account", "entry": [[[[[[[]]]]]]]}):
        assert refused(body).status == 422
    deep: dict = {}
    cursor = deep
    for _ in range(500):
        cursor["text"] = {}
        cursor = cursor["text"]
    got = parse_notification(payload([message(text=deep)]), NOW)
    assert got.messages == () and got.refused[0].field.endswith("messages[0].text.body")


M = "entry[0].changes[0].value.messages[0]"
S = "entry[0].changes[0].value.statuses[0]"


@pytest.mark.parametrize(("over", "field", "reason"), [
    ({"from": "+27821234567"}, f"{M}.from", "bad_format"),
    ({"from": "27 82 123 4567"}, f"{M}.from", "bad_format"),
    ({"from": "0821234567"}, f"{M}.from", "bad_format"),
    ({"from": "27821234567'; DROP TABLE users;--"}, f"{M}.from", "too_long"),
    ({"from": "٢٧٨٢١٢٣٤٥٦٧"}, f"{M}.from", "bad_format"),       # Arabic-Indic digits
    ({"from": 27821234567}, f"{M}.from", "wrong_type"),
    ({"from": None}, f"{M}.from", "missing_field"),
    ({"id": ""}, f"{M}.id", "empty"),
    ({"id": "w" * 256}, f"{M}.id", "too_long"),
    ({"id": "wamid <script>"}, f"{M}.id", "bad_format"),
    ({"id": ["wamid.1"]}, f"{M}.id", "wrong_type"),
    ({"timestamp": "NaN"}, f"{M}.timestamp", "bad_format"),
    ({"timestamp": "1e10"}, f"{M}.timestamp", "bad_format"),
    ({"timestamp": "-5"}, f"{M}.timestamp", "bad_format"),
    ({"timestamp": "1767225600.5"}, f"{M}.timestamp", "bad_format"),
    ({"timestamp": "9" * 40}, f"{M}.timestamp", "bad_format"),
    ({"timestamp": float("nan")}, f"{M}.timestamp", "wrong_type"),
    ({"timestamp": 1767225600.0}, f"{M}.timestamp", "wrong_type"),
    ({"timestamp": True}, f"{M}.timestamp", "wrong_type"),
    ({"timestamp": "0"}, f"{M}.timestamp", "stale_timestamp"),
    ({"timestamp": str(int(NOW) + 7200)}, f"{M}.timestamp", "future_timestamp"),
    ({"timestamp": 10**30}, f"{M}.timestamp", "future_timestamp"),
    ({"type": "TEXT"}, f"{M}.type", "bad_format"),
    ({"type": 1}, f"{M}.type", "wrong_type"),
    ({"text": None}, f"{M}.text", "missing_field"),
    ({"text": {"body": 42}}, f"{M}.text.body", "wrong_type"),
    ({"text": {"body": "x" * 4097}}, f"{M}.text.body", "too_long"),
    ({"context": "wamid.1"}, f"{M}.context", "wrong_type"),
    ({"type": "location", "location": {"latitude": float("nan"), "longitude": 0}}, f"{M}.location.latitude",
     "not_finite"),
    ({"type": "location", "location": {"latitude": 91, "longitude": 0}}, f"{M}.location.latitude", "out_of_range"),
    ({"type": "location", "location": {"latitude": True, "longitude": 0}}, f"{M}.location.latitude", "wrong_type"),
    ({"type": "interactive", "interactive": {"type": "Button-Reply"}}, f"{M}.interactive.type", "bad_format"),
    ({"type": "interactive", "interactive": {"type": "__class__"}}, f"{M}.interactive.__class__", "missing_field"),
    ({"type": "image", "image": {"id": "m", "caption": "c" * 1025}}, f"{M}.image.caption", "too_long"),
])
def test_a_bad_message_is_refused_by_name_and_the_rest_of_the_batch_is_kept(over, field, reason):
    good = message(id="wamid.GOOD")
    note = parse_notification(payload([message(**over), good]), NOW)
    assert [m.message_id for m in note.messages] == ["wamid.GOOD"]
    [got] = note.refused
    assert (got.field, got.reason) == (field, reason)


@pytest.mark.parametrize(("over", "field", "reason"), [
    ({"status": "deleted"}, f"{S}.status", "invalid_value"),
    ({"status": "READ"}, f"{S}.status", "invalid_value"),
    ({"status": None}, f"{S}.status", "invalid_value"),
    ({"status": ["read"]}, f"{S}.status", "invalid_value"),
    ({"recipient_id": "abc"}, f"{S}.recipient_id", "bad_format"),
    ({"recipient_id": None}, f"{S}.recipient_id", "missing_field"),
    ({"timestamp": "Infinity"}, f"{S}.timestamp", "bad_format"),
    ({"timestamp": {}}, f"{S}.timestamp", "wrong_type"),
    ({"biz_opaque_callback_data": "x" * 513}, f"{S}.biz_opaque_callback_data", "too_long"),
    ({"biz_opaque_callback_data": 7}, f"{S}.biz_opaque_callback_data", "wrong_type"),
    ({"errors": [{"code": 1}] * 11}, f"{S}.errors", "too_many"),
    ({"errors": {"code": 1}}, f"{S}.errors", "wrong_type"),
    ({"errors": [{"code": "131026"}]}, f"{S}.errors[0].code", "wrong_type"),
    ({"errors": [{"code": 1, "message": "m" * 2000}]}, f"{S}.errors[0].message", "too_long"),
    ({"errors": [{"error_data": []}]}, f"{S}.errors[0].error_data", "wrong_type"),
])
def test_a_bad_receipt_is_refused_by_name_and_the_others_are_kept(over, field, reason):
    note = parse_notification(payload(statuses=[status(**over), status(id="wamid.OUT2")]), NOW)
    assert [s.message_id for s in note.statuses] == ["wamid.OUT2"]
    [got] = note.refused
    assert (got.field, got.reason) == (field, reason)


def test_a_real_clock_accepts_a_fresh_timestamp():
    now = time.time()
    assert parse_notification(payload([message(timestamp=str(int(now)))]), now).messages
