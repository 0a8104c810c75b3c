"""The idempotency fingerprint, pure: what counts as the same request."""

from dispatch.commerce.idempotency import fingerprint


def test_the_same_json_in_another_spelling_is_the_same_request():
    a = fingerprint("POST", "/v1/orders", b'{"a": 1, "b": [1, 2]}')
    assert a == fingerprint("post", "/v1/orders", b'{"b":[1,2],"a":1}')


def test_another_body_path_or_method_is_another_request():
    a = fingerprint("POST", "/v1/orders", b'{"a": 1}')
    assert a != fingerprint("POST", "/v1/orders", b'{"a": 2}')
    assert a != fingerprint("POST", "/v1/orders/x/cancel", b'{"a": 1}')
    assert a != fingerprint("PATCH", "/v1/orders", b'{"a": 1}')


def test_bodies_that_are_not_json_count_byte_for_byte():
    assert fingerprint("POST", "/p", b"\xff\xfe") == fingerprint("POST", "/p", b"\xff\xfe")
    assert fingerprint("POST", "/p", b"") != fingerprint("POST", "/p", b" x")
    assert fingerprint("POST", "/p", b"[" * 100_000) == fingerprint("POST", "/p", b"[" * 100_000)
