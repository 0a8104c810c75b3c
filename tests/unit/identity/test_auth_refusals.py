"""Token refusals as callers see them, and a principal's time to expiry: no services."""

from dispatch.identity.auth import AuthDriver, AuthThrottled, TokenRejected, expires_in
from dispatch.identity.users import AuthUser


def test_a_throttled_address_is_a_token_refusal_with_429_and_retry_after():
    refused = AuthThrottled(17)
    assert isinstance(refused, TokenRejected)   # every `except TokenRejected` already handles it
    assert (refused.status, refused.reason, refused.headers) == (429, "rate_limited", {"Retry-After": "17"})
    assert "17 s" in refused.message
    assert TokenRejected("unknown_token", "no").status == 401


def test_driver_and_user_principals_tell_how_long_they_have():
    driver = AuthDriver("t", "d", "car", False, "id", "hash", expires_at=1_000.0)
    user = AuthUser("t", "u", frozenset({"customer"}), None, "c", "id", "hash", expires_at=1_000.0)
    for principal in (driver, user):
        assert expires_in(principal, now=400.0) == 600.0
        assert expires_in(principal, now=1_001.0) == -1.0
