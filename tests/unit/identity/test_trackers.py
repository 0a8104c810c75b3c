"""Tracker keys are told apart from every other token by their prefix alone."""

import uuid

import pytest

from dispatch.identity.auth import TOKEN_PREFIX, TokenRejected, parse_token
from dispatch.identity.trackers import parse_tracker_key

TENANT = uuid.uuid4()
SECRET = "b" * 43


def test_a_tracker_key_names_its_tenant():
    assert parse_tracker_key(f"wkg_{TENANT.hex}_{SECRET}") == TENANT


@pytest.mark.parametrize("other", ["wkt", "wkd", "wku"])   # a tracking link, a driver's app token, a user's token
def test_other_tokens_are_not_tracker_keys(other):
    with pytest.raises(TokenRejected):
        parse_tracker_key(f"{other}_{TENANT.hex}_{SECRET}")


def test_no_two_kinds_share_a_prefix():
    assert len(set(TOKEN_PREFIX.values())) == len(TOKEN_PREFIX) and "wkt" not in TOKEN_PREFIX.values()
    with pytest.raises(TokenRejected):
        parse_token(f"wkg_{TENANT.hex}_{SECRET}")
