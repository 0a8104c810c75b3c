"""The Cloud API request and the reading of its answers, hostile and malformed ones included."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from dispatch.messaging.graph import (
    BACKOFF_MAX_S,
    FAILED,
    RETRY,
    SENT,
    backoff,
    build_template_request,
    classify,
    parse_retry_after,
)
from loadtest.fake_graph import APPROVED, Invalid, check_send


def request(**kw):
    args = dict(to="27821234567", template="order_delivered", language="en",
                params=["WK-000042", "Mama Thoko Spaza"], tenant_id="tenant-1")
    args.update(kw)
    return build_template_request("https://graph.example/v21.0/", "1234567890", "tok", **args)


def test_the_request_is_the_cloud_api_template_send():
    r = request()
    assert r.url == "https://graph.example/v21.0/1234567890/messages"
    assert r.headers == {"Authorization": "Bearer tok", "Content-Type": "application/json"}
    assert json.loads(r.body) == r.json == {
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": "27821234567", "type": "template",
        "template": {"name": "order_delivered", "language": {"code": "en"}, "components": [
            {"type": "body", "parameters": [{"type": "text", "text": "WK-000042"},
                                            {"type": "text", "text": "Mama Thoko Spaza"}]}]},
        "biz_opaque_callback_data": "tenant-1"}


def test_the_request_passes_the_fake_meta_checks_and_non_ascii_stays_utf8():
    r = request(params=["WK-1", "Café Ñandú ☕"])
    assert "Café".encode() in r.body
    assert check_send(json.loads(r.body), APPROVED) == ("27821234567", "order_delivered")


@pytest.mark.parametrize(("change", "code"), [
    ({"to": "+27821234567"}, 131030),
    ({"type": "text"}, 131047),
    ({"extra": 1}, 100),
    ({"template": {"name": "nope", "language": {"code": "en"}, "components": []}}, 132001),
    ({"template": {"name": "order_delivered", "language": {"code": "en"}, "components": [
        {"type": "body", "parameters": [{"type": "text", "text": "a\nb"}, {"type": "text", "text": "x"}]}]}}, 132018),
    ({"template": {"name": "order_delivered", "language": {"code": "en"}, "components": [
        {"type": "body", "parameters": [{"type": "text", "text": "a"}]}]}}, 132000),
])
def test_the_fake_refuses_what_meta_refuses(change, code):
    body = {**request().json, **change}
    with pytest.raises(Invalid) as caught:
        check_send(body, APPROVED)
    assert caught.value.code == code


def test_a_2xx_with_a_message_id_is_sent():
    outcome = classify(200, json.dumps({"messaging_product": "whatsapp", "contacts": [],
                                        "messages": [{"id": "wamid.HBgLMjc4MjEyMzQ1NjcVAgARGBI="}]}).encode())
    assert (outcome.kind, outcome.wamid) == (SENT, "wamid.HBgLMjc4MjEyMzQ1NjcVAgARGBI=")


@pytest.mark.parametrize("body", [
    b"", b"<html>ok</html>", b"null", b"[]", b'{"messages": []}', b'{"messages": {"id": "x"}}',
    b'{"messages": [{"id": 5}]}', b'{"messages": [{"id": ""}]}', b'{"messages": [{"id": "wamid 1"}]}',
    b'{"messages": [{"id": "' + b"w" * 300 + b'"}]}', b'{"messages": [{"id": "a"}, {"id": "b"}]}',
    b'{"messages": [{"id": "wamid.\\u0000x"}]}', b"[" * 100_000, b"\xff\xfe\x00",
])
def test_a_2xx_without_a_usable_message_id_fails_without_retry(body):
    """Meta took it: sending again would most likely deliver it twice."""
    outcome = classify(200, body)
    assert outcome.kind == FAILED and outcome.error.startswith("bad_response") and outcome.wamid is None


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599])
def test_server_errors_are_retried(status):
    assert classify(status, b"oops").kind == RETRY


def test_429_is_retried_with_its_retry_after():
    outcome = classify(429, b'{"error": {"code": 130429, "message": "Rate limit hit"}}', {"Retry-After": "7"})
    assert (outcome.kind, outcome.retry_after_s, outcome.code) == (RETRY, 7.0, 130429)
    assert "130429" in outcome.error and "Rate limit hit" in outcome.error


@pytest.mark.parametrize("code", [4, 80007, 130429, 131048, 131056])
def test_a_400_that_is_a_throttle_is_retried(code):
    assert classify(400, json.dumps({"error": {"code": code, "message": "slow down"}}).encode()).kind == RETRY


def test_a_transient_4xx_is_retried():
    assert classify(400, b'{"error": {"code": 2, "message": "try later", "is_transient": true}}').kind == RETRY
    assert classify(400, b'{"error": {"code": 2, "message": "x", "is_transient": "true"}}').kind == FAILED


@pytest.mark.parametrize(("status", "body", "code"), [
    (400, b'{"error": {"code": 132001, "message": "Template name does not exist"}}', 132001),
    (400, b'{"error": {"code": 131026, "message": "Message undeliverable"}}', 131026),
    (401, b'{"error": {"code": 190, "message": "Invalid OAuth access token"}}', 190),
    (404, b"not found", None),
    (400, b'{"error": "just a string"}', None),
    (400, b'{"error": {"code": true, "message": ["x"]}}', None),
    (302, b"", None),
    (100, b"", None),
])
def test_other_answers_fail_permanently(status, body, code):
    outcome = classify(status, body)
    assert (outcome.kind, outcome.code, outcome.status) == (FAILED, code, status)


def test_meta_s_message_and_details_are_kept_short_and_clean():
    body = json.dumps({"error": {"code": 131008, "message": "Required parameter missing\r\n\x1b[2J" + "x" * 1000,
                                 "error_data": {"details": "param 2"}}}).encode()
    outcome = classify(400, body)
    assert len(outcome.error) <= 300 and "\n" not in outcome.error and "\x1b" not in outcome.error


def test_no_answer_is_retried():
    assert classify(None, timed_out=True).kind == RETRY
    outcome = classify(None, transport_error="ClientConnectorError: refused\nboom")
    assert outcome.kind == RETRY and "\n" not in outcome.error


@pytest.mark.parametrize(("value", "expected"), [
    ("7", 7.0), (" 2.5 ", 2.5), ("0", 0.0), ("-5", 0.0), ("999999", 3600.0), ("nan", None), ("inf", None),
    ("soon", None), ("", None), (None, None), ("1e400", None),
])
def test_retry_after_is_read_and_bounded(value, expected):
    assert parse_retry_after(value) == expected


def test_retry_after_as_an_http_date():
    now = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0.0


def test_backoff_doubles_with_jitter_and_a_cap():
    assert [backoff(n, 2.0, 1.0) for n in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 16.0]
    assert [backoff(n, 2.0, 0.0) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert backoff(50, 2.0, 0.999) <= BACKOFF_MAX_S and backoff(10_000, 2.0, 0.5) <= BACKOFF_MAX_S
    assert backoff(0, 2.0, 1.0) == 2.0 and backoff(3, 2.0, 7.0) == 8.0 and backoff(3, 2.0, -1) == 4.0
