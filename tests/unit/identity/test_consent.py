"""Consent rules: reading a change, what a history means now, who may be messaged."""

from datetime import UTC, datetime, timedelta

import pytest

from dispatch.core.errors import Refusal
from dispatch.identity.consent import WORDING, current_state, may_send, parse_change, parse_purpose

NOW = datetime(2026, 12, 5, 12, tzinfo=UTC)


def rec(given: bool, minutes_ago: int, purpose: str = "marketing", n: int = 0, **extra) -> dict:
    return {"id": f"{n:04d}", "purpose": purpose, "consent_given": given, "given_at": NOW - timedelta(minutes=minutes_ago),
            "withdrawn_at": None, "expires_at": None, "version": "2026-12" if given else None, "channel": "app", **extra}


def test_a_consent_records_the_wording_of_its_version():
    change = parse_change("marketing", {"given": True, "version": "2026-12", "channel": "whatsapp"})
    assert change.text == WORDING[("marketing", "2026-12")] and change.channel == "whatsapp"
    assert parse_change("marketing", {"given": False, "channel": "sms"}).text is None


@pytest.mark.parametrize("body, field", [
    (None, "body"), ("given", "body"), ({"channel": "app"}, "given"), ({"given": 1, "channel": "app"}, "given"),
    ({"given": True, "channel": "app"}, "version"), ({"given": True, "version": 2026, "channel": "app"}, "version"),
    ({"given": False, "version": "nope", "channel": "app"}, "version"),
    ({"given": True, "version": "2026-12", "channel": ["app"]}, "channel"),
    ({"given": True, "version": "2026-12", "channel": "app", "ip": "1.2.3.4"}, "ip"),
])
def test_bad_changes_name_the_field(body, field):
    with pytest.raises(Refusal) as caught:
        parse_change("marketing", body)
    assert caught.value.status == 422 and caught.value.field == field


def test_purposes_belong_to_kinds_of_people():
    assert parse_purpose("location_tracking", "driver") == "location_tracking"
    for value, kind in (("marketing", "driver"), ("location_tracking", "customer"), (None, "customer"),
                        ("MARKETING", "customer")):
        with pytest.raises(Refusal):
            parse_purpose(value, kind)


def test_no_record_means_the_purposes_default():
    assert current_state("marketing", [], NOW).given is False
    tracking = current_state("location_tracking", [], NOW)
    assert tracking.given is True and tracking.recorded is False


def test_the_newest_record_decides():
    history = [rec(True, 60, n=1), rec(False, 30, n=2), rec(True, 10, n=3)]
    assert current_state("marketing", history, NOW).given is True
    history.append(rec(False, 5, n=4))
    state = current_state("marketing", history, NOW)
    assert state.given is False and state.withdrawn_at == NOW - timedelta(minutes=5)
    # another purpose's records do not count
    assert current_state("marketing", [rec(False, 1, "location_tracking")], NOW).recorded is False


def test_a_consent_that_expired_or_was_stamped_withdrawn_is_not_given():
    assert current_state("marketing", [rec(True, 10, expires_at=NOW - timedelta(seconds=1))], NOW).given is False
    assert current_state("marketing", [rec(True, 10, withdrawn_at=NOW)], NOW).given is False


def test_marketing_needs_consent_and_no_restriction_transactional_does_not():
    given = current_state("marketing", [rec(True, 1)], NOW)
    assert may_send("marketing", given, restricted=False)
    assert not may_send("marketing", given, restricted=True)
    assert not may_send("marketing", None, restricted=False)
    assert not may_send("marketing", current_state("marketing", [], NOW), restricted=False)
    assert may_send("transactional", None, restricted=True)
    with pytest.raises(ValueError):
        may_send("spam", given, restricted=False)
