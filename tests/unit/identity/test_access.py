"""The rules of a logged look: a stated purpose, and which people a list of orders shows."""

import pytest

from dispatch.core.errors import Refusal
from dispatch.identity.access import PURPOSE_HEADER, order_subjects, parse_access_purpose


def test_a_purpose_is_trimmed_text():
    assert parse_access_purpose("  ticket 4411 ") == "ticket 4411"


@pytest.mark.parametrize("value, reason", [
    (None, "missing_field"), ("", "missing_field"), ("ab", "missing_field"), ("   x  ", "missing_field"),
    ("x" * 256, "too_long"), ("why\x00not", "invalid_text"), ("line\nbreak", "invalid_text"),
])
def test_a_missing_or_bad_purpose_names_the_header(value, reason):
    with pytest.raises(Refusal) as caught:
        parse_access_purpose(value)
    assert (caught.value.status, caught.value.reason, caught.value.field) == (422, reason, PURPOSE_HEADER)


def test_each_order_seen_is_one_look_at_its_customer():
    views = [{"id": "o1", "customer_id": "c1"}, {"id": "o2", "customer_id": "c1"}, {"id": "o3", "customer_id": "c2"}]
    assert order_subjects(views) == [("c1", "orders", "o1"), ("c1", "orders", "o2"), ("c2", "orders", "o3")]
    assert order_subjects([]) == []
