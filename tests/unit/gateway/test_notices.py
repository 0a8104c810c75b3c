"""Parsing the worker's notices: only well-formed ones become error frames."""

import json
import uuid

import pytest

from dispatch.gateway.notices import MAX_NOTICE_BYTES, DriverNotices, notice_frame

TENANT, DRIVER = str(uuid.uuid4()), str(uuid.uuid4())
GOOD = {"tenant_id": TENANT, "driver_id": DRIVER, "reason": "implausible_jump", "message": "not stored",
        "recorded_at": 1_767_000_000}


def test_a_well_formed_notice_becomes_an_error_frame():
    assert notice_frame(json.dumps(GOOD).encode()) == (TENANT, DRIVER, {
        "type": "error", "reason": "implausible_jump", "message": "not stored", "recorded_at": 1_767_000_000})


def test_ids_are_canonicalised_and_long_messages_cut():
    tenant, driver, frame = notice_frame(json.dumps({**GOOD, "driver_id": DRIVER.upper(), "message": "m" * 1000}))
    assert driver == DRIVER and len(frame["message"]) == 300


HOSTILE = [
    b"", b"not json", b"\xff\xfe", b"[]", b"null", b"1e999", b"[" * 10_000, b"x" * (MAX_NOTICE_BYTES + 1),
    json.dumps({**GOOD, "tenant_id": "not-a-uuid"}), json.dumps({**GOOD, "driver_id": 7}),
    json.dumps({**GOOD, "driver_id": "\ud800"}), json.dumps({k: v for k, v in GOOD.items() if k != "reason"}),
    json.dumps({**GOOD, "reason": "Implausible"}), json.dumps({**GOOD, "reason": "a" * 41}),
    json.dumps({**GOOD, "reason": "jump\u0000"}), json.dumps({**GOOD, "message": None}),
    json.dumps({**GOOD, "recorded_at": "now"}), json.dumps({**GOOD, "recorded_at": False}),
    json.dumps({**GOOD, "recorded_at": float("nan")}), json.dumps({**GOOD, "recorded_at": float("inf")}),
    json.dumps({**GOOD, "message": "x" * MAX_NOTICE_BYTES}), 42, None, {"tenant_id": TENANT},
    json.dumps({**GOOD, "recorded_at": 10 ** 400}),
]


@pytest.mark.parametrize("data", HOSTILE, ids=range(len(HOSTILE)))
def test_malformed_notices_are_ignored(data):
    assert notice_frame(data) is None


class Sink:
    def __init__(self, tenant_id, accept=True):
        self.tenant_id, self.accept, self.frames = tenant_id, accept, []

    def push(self, frame):
        if self.accept:
            self.frames.append(frame)
        return self.accept


def test_deliver_reaches_only_the_drivers_sockets_of_its_tenant():
    mine, impostor, full = Sink(TENANT), Sink(str(uuid.uuid4())), Sink(TENANT, accept=False)
    notices = DriverNotices(redis=None, sockets={DRIVER: {mine, impostor, full}})
    assert notices.deliver(json.dumps(GOOD).encode()) == 1
    assert len(mine.frames) == 1 and impostor.frames == [] and notices.forwarded == 1
    assert notices.deliver(b"junk") == 0 and notices.ignored == 1
    assert notices.deliver(json.dumps({**GOOD, "driver_id": str(uuid.uuid4())})) == 0
