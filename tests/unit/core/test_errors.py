"""The one refusal type: what a client sees, and how other domain errors become refusals."""

from dispatch.core import errors
from dispatch.core.errors import NotFound, Refusal, as_refusal
from schema.errors import WakalaError
from schema.ids import InvalidId


def test_a_refusal_shows_only_what_is_set():
    assert Refusal(422, errors.MISSING_FIELD, "lat is required", "lat").as_dict() == {
        "reason": "missing_field", "message": "lat is required", "field": "lat"}
    assert Refusal(409, errors.ILLEGAL_TRANSITION, "no").as_dict() == {
        "reason": "illegal_transition", "message": "no"}
    batch = Refusal(422, errors.INVALID_REQUEST, "2 pings refused", errors=[{"index": 0}], index=None)
    assert batch.as_dict()["errors"] == [{"index": 0}]
    assert Refusal(422, errors.OUT_OF_RANGE, "lat", "lat", index=3).as_dict()["index"] == 3


def test_refusals_are_value_errors_and_wakala_errors():
    refusal = Refusal(400, errors.BAD_JSON, "not JSON")
    assert isinstance(refusal, ValueError) and isinstance(refusal, WakalaError)
    assert str(refusal) == "not JSON"


def test_not_found_is_a_404_with_the_shared_reason():
    missing = NotFound("no order 1", "order_id")
    assert (missing.status, missing.reason, missing.field) == (404, "not_found", "order_id")


def test_domain_errors_become_refusals_with_their_own_status_and_field():
    bad_id = as_refusal(InvalidId("driver_id", "x"))
    assert (bad_id.status, bad_id.reason, bad_id.field) == (422, "invalid_value", "driver_id")
    plain = as_refusal(WakalaError("something the user can fix"))
    assert (plain.status, plain.reason, plain.field, plain.message) == (
        400, "invalid_request", None, "something the user can fix")
    same = Refusal(429, errors.RATE_LIMITED, "slow down", headers={"Retry-After": "10"})
    assert as_refusal(same) is same


def test_the_vocabulary_is_lower_snake_case_and_has_no_duplicates():
    words = {name: value for name, value in vars(errors).items() if name.isupper() and isinstance(value, str)}
    assert len(set(words.values())) == len(words)
    assert all(value == name.lower() for name, value in words.items())
