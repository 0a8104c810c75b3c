"""The HTTP helpers: bearer tokens, JSON limits and the two error envelopes; no service needed."""

from __future__ import annotations

import json

import pytest

from dispatch.core.errors import Refusal
from dispatch.web.http import (
    api_error_response,
    bearer,
    gateway_error,
    gateway_error_response,
    parse_json,
)


@pytest.mark.parametrize("value, token", [
    ("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("BEARER x", "x"), ("Bearer", None), ("Basic abc", None),
    (None, None), ("", None),
])
def test_bearer_takes_the_token_of_a_bearer_header_only(value, token):
    assert bearer(value) == token


def test_parse_json_refuses_oversize_and_malformed_input():
    assert parse_json(b'{"a": 1}', 100, "api", "body") == {"a": 1}
    with pytest.raises(Refusal) as big:
        parse_json(b"x" * 101, 100, "api", "body")
    assert (big.value.status, big.value.reason, big.value.message) == (413, "too_large", "body over 100 bytes")
    for raw in (b'{"a": ', b"\xff\xfe", b"[" * 50_000):
        with pytest.raises(Refusal) as bad:
            parse_json(raw, 100_000, "ws", "message")
        assert (bad.value.status, bad.value.reason) == (400, "bad_json")
    with pytest.raises(Refusal):
        parse_json(None, 100, "ws", "message")


def test_the_api_envelope_always_carries_status_reason_field_and_message():
    response = api_error_response(Refusal(429, "rate_limited", "slow down", headers={"Retry-After": "60"}))
    assert response.status_code == 429 and response.headers["retry-after"] == "60"
    assert json.loads(response.body) == {"error": {"status": 429, "reason": "rate_limited", "field": None,
                                                   "message": "slow down"}}
    assert list(json.loads(response.body)["error"]) == ["status", "reason", "field", "message"]


def test_the_gateway_envelope_carries_field_and_errors_only_when_set():
    assert gateway_error(Refusal(401, "unknown_token", "no")) == {"reason": "unknown_token", "message": "no"}
    items = [{"reason": "not_finite", "field": "lat", "message": "m", "index": 1}]
    refusal = Refusal(422, "not_finite", "1 ping(s) refused", "lat", errors=items, index=4)
    assert gateway_error(refusal) == {"reason": "not_finite", "message": "1 ping(s) refused", "field": "lat",
                                      "errors": items}
    response = gateway_error_response(refusal)
    assert response.status_code == 422 and json.loads(response.body) == {"error": gateway_error(refusal)}


def test_a_refusal_answers_in_the_envelope_of_its_route():
    from dispatch.web.http import error_response

    refusal = Refusal(413, "too_large", "body over 10 bytes")
    assert json.loads(error_response("/v1/drivers/shift", refusal).body) == {
        "error": {"reason": "too_large", "message": "body over 10 bytes"}}
    assert json.loads(error_response("/v1/orders", refusal).body)["error"]["status"] == 413
