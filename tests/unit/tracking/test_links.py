"""``dispatch.tracking.links``: the tracking token's shape and a link's expiry. Pure rules, no
service needed (issuing, checking and revoking links is tested in
tests/integration/tracking/test_hub.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from dispatch.tracking.links import (
    CLOSE_INVALID,
    LinkRefused,
    link_expires_at,
    parse_tracking_token,
)


def test_tokens_and_expiry_rules():
    tenant = uuid.uuid4()
    assert parse_tracking_token(f"wkt_{tenant.hex}_{'a' * 43}") == tenant
    for bad in (None, 42, "", "wkt_", f"wkt_{tenant.hex}_{'a' * 42}", f"wkd_{tenant.hex}_{'a' * 43}",
                f"wkt_{tenant.hex}_{'a' * 43}/x", f"wkt_{tenant.hex.upper()}_{'a' * 43}"):
        with pytest.raises(LinkRefused) as refused:
            parse_tracking_token(bad)
        assert (refused.value.code, refused.value.reason) == (CLOSE_INVALID, "invalid_token")
    ended = datetime(2026, 1, 1, tzinfo=UTC)
    assert link_expires_at(None, 3600) is None
    assert link_expires_at(ended, 3600) == ended.timestamp() + 3600
