"""The one id parser: canonical text for keys, UUIDs for SQL, hostile values refused by name."""

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schema.ids import InvalidId, canonical_uuid, optional_uuid, parse_uuid

U = uuid.UUID("3f2b8c1e-9a4d-4c1b-8e2f-0a1b2c3d4e5f")


@pytest.mark.parametrize("spelling", [str(U), str(U).upper(), U.hex, "{" + str(U) + "}",
                                      "urn:uuid:" + str(U), U])
def test_every_spelling_uuid_reads_gives_the_canonical_text(spelling):
    assert canonical_uuid(spelling, "driver_id") == str(U)
    assert parse_uuid(spelling, "driver_id") == U


@pytest.mark.parametrize("hostile", [None, "", " ", "not-a-uuid", str(U) + "x", "x" * 10_000,
                                     "\ud800", "\x00" * 36, 12345, 1.5, True, b"bytes",
                                     U.bytes, [str(U)], {"id": str(U)}, "urn:uuid:" + str(U) + " " * 100])
def test_hostile_values_are_refused_naming_the_field(hostile):
    for parse in (canonical_uuid, parse_uuid):
        with pytest.raises(InvalidId) as caught:
            parse(hostile, "delivery_id")
        assert caught.value.field == "delivery_id"
        assert caught.value.status == 422 and caught.value.reason == "invalid_value"
        assert caught.value.message.startswith("delivery_id must be a UUID")
        assert len(caught.value.message) < 120   # a 10,000-character value is not echoed back


def test_invalid_id_is_a_value_error_and_a_wakala_error():
    from schema.errors import WakalaError

    assert issubclass(InvalidId, ValueError) and issubclass(InvalidId, WakalaError)


def test_optional_lets_none_through_only():
    assert optional_uuid(None) is None
    assert optional_uuid(str(U)) == U
    with pytest.raises(InvalidId):
        optional_uuid("")


@given(st.uuids())
def test_canonical_text_round_trips(value):
    text = canonical_uuid(value)
    assert text == str(value) and canonical_uuid(text.upper()) == text
    assert parse_uuid(text) == value


@given(st.text(max_size=60))
def test_arbitrary_text_either_parses_to_canonical_or_is_refused(text):
    try:
        out = canonical_uuid(text)
    except InvalidId:
        return
    assert out == str(uuid.UUID(text))
