"""Text validation at the edge: lone surrogates and NUL refused naming the field; fast when clean."""

from __future__ import annotations

import json

import pytest

from dispatch.core.errors import Refusal
from dispatch.web.http import api_error_response, gateway_error_response, parse_json
from dispatch.web.text import bad_text_path, is_valid_text, may_hold_bad_text, printable


@pytest.mark.parametrize("raw, field", [
    (r'{"note": "\ud800"}', "note"),
    (r'{"lines": [{"quantity": 1}, {"note": "ok \u0000"}]}', "lines[1].note"),
    (r'{"lines": [{"\ud800": 1}]}', "lines[0].\\ud800"),
    (r'{"a": {"b": {"c": ["x", "\udfff"]}}}', "a.b.c[1]"),
    (r'"\ud800"', "body"),
    (r'{"\u0000": 1}', "\\x00"),
    (b'{"note": "\xed\xa0\x80"}', "note"),   # raw UTF-8-encoded surrogate: json decodes it with surrogatepass
])
def test_a_lone_surrogate_or_nul_is_refused_422_naming_the_field(raw, field):
    for given in (raw, raw.encode() if isinstance(raw, str) else raw):
        with pytest.raises(Refusal) as refused:
            parse_json(given, 100_000, "api", "body")
        assert (refused.value.status, refused.value.reason, refused.value.field) == (422, "invalid_text", field)


@pytest.mark.parametrize("raw", [
    r'{"name": "Thabo \u00e9 \ud83d\ude00"}',       # a valid surrogate pair is one character
    '{"name": "한국어 ☕ Ndiyabulela"}',             # 0xED lead bytes of valid Hangul
    r'{"path": "C:\\users"}',
])
def test_valid_text_passes(raw):
    assert parse_json(raw.encode(), 100_000, "api", "body") == json.loads(raw)


def test_only_input_with_an_escape_or_0xED_is_walked():
    assert not may_hold_bad_text(b'{"lat": -26.2, "lng": 27.9, "driver_id": "abc"}')
    assert may_hold_bad_text(rb'{"a": "\u00e9"}') and may_hold_bad_text(b'{"a": "\xed\x95\x9c"}')
    assert not may_hold_bad_text('{"a": "é"}') and may_hold_bad_text('{"a": "\ud800"}')


def test_helpers():
    assert is_valid_text("é") and not is_valid_text("\ud800") and not is_valid_text("a\x00")
    assert printable("a\ud800\x00") == "a\\ud800\\x00" and printable("ok") == "ok"
    assert bad_text_path({"a": [1, 2.5, None, True, "ok"]}) is None


def test_error_bodies_encode_whatever_text_a_refusal_quotes():
    refusal = Refusal(422, "invalid_value", "bad \ud800", "x.\udc80")
    for response in (api_error_response(refusal), gateway_error_response(refusal)):
        assert json.loads(response.body)["error"]["field"] == "x.\\udc80"


def test_a_clean_500_ping_batch_is_not_walked(monkeypatch):
    # The hot path pays two one-byte scans, never the walk (timed: ~2 us of ~550 us per batch).
    batch = json.dumps({"pings": [{"driver_id": "8d0f5c1e-0000-4000-8000-000000000000", "lat": -26.2485,
                                   "lng": 27.854, "accuracy": 8.0, "timestamp": 1767000000.0 + i}
                                  for i in range(500)]}).encode()

    def walked(*_args):
        raise AssertionError("a clean batch was walked")

    monkeypatch.setattr("dispatch.web.http.bad_text_path", walked)
    assert len(parse_json(batch, 1 << 20, "http", "body")["pings"]) == 500
    with pytest.raises(AssertionError):
        parse_json(batch.replace(b'"lat"', b'"l\\u0061t"', 1), 1 << 20, "http", "body")
