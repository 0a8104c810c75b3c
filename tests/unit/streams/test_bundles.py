"""Bundles of many drivers' uploads in one message: framing, partitions, decoding."""

from __future__ import annotations

import json
import uuid

import pytest
from aiokafka.partitioner import DefaultPartitioner

from streams import bundles, codec
from streams.decode import MAX_MESSAGE_BYTES, decode_message, decode_pings

TENANT = "7e6d5c4b-3a29-4817-a6b5-c4d3e2f1a0b9"


def fix(driver: str, ts: float, **extra) -> dict:
    return {"v": 1, "driver_id": driver, "tenant_id": TENANT, "lat": -26.2, "lng": 28.04,
            "accuracy_m": 5.0, "speed_mps": 3.0, "heading_deg": 90.0, "ts": ts,
            "received_at": ts + 1, "vehicle_type": "motorbike", **extra}


def upload(driver: str, n: int = 3, **extra) -> list[dict]:
    return [fix(driver, 1_700_000_000 + i, **extra) for i in range(n)]


def test_partition_of_is_kafkas_default_partitioner():
    default = DefaultPartitioner()
    for _ in range(500):
        key = str(uuid.uuid4()).encode()
        for n in (1, 3, 4, 12):
            assert bundles.partition_of(key, n) == default(key, list(range(n)), list(range(n)))


def test_a_bundle_decodes_to_every_upload_in_order():
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    raw = bundles.frame([codec.dumps(upload(a)), codec.dumps(upload(b, 2))])
    pings, rejected = decode_message(raw)
    assert rejected == []
    assert [(p.driver_id, p.ts) for p in pings] == [(a, 1_700_000_000 + i) for i in range(3)] + [
        (b, 1_700_000_000 + i) for i in range(2)]


def test_one_bad_upload_of_a_bundle_is_rejected_alone():
    a, b, c = (str(uuid.uuid4()) for _ in range(3))
    bad = upload(b, lat=123)
    raw = bundles.frame([codec.dumps(upload(a)), codec.dumps(bad), codec.dumps(upload(c)), b'"nope"', b"[]"])
    pings, rejected = decode_message(raw)
    assert {p.driver_id for p in pings} == {a, c} and len(pings) == 6
    assert [(exc.reason, part) for exc, part in rejected] == [
        ("out_of_range:lat", bad), ("bad_json", "nope"), ("empty_batch", [])]


@pytest.mark.parametrize("raw, reason", [
    (b'{"v":2,"uploads":[]}', "bad_bundle"),
    (b'{"v":true,"uploads":[]}', "bad_bundle"),
    (b'{"uploads":[]}', "bad_bundle"),
    (b'{"v":1,"uploads":{"a":1}}', "bad_bundle"),
    (b'{"v":1,"uploads":[' + b'[1],' * 600_000 + b'[1]]}', "too_large"),
    (b"[" + b" " * MAX_MESSAGE_BYTES + b"]", "too_large"),
    (b'{"v":1,"uploads":[NaN]', "bad_json"),
    (None, "bad_json"),
])
def test_a_bad_bundle_is_rejected_whole(raw, reason):
    pings, rejected = decode_message(raw)
    assert pings == [] and [(exc.reason, part) for exc, part in rejected] == [(reason, None)]


def test_plain_messages_decode_as_before():
    d = str(uuid.uuid4())
    body = upload(d)
    assert decode_message(json.dumps(body).encode())[0] == decode_pings(json.dumps(body).encode())
    assert decode_message(json.dumps(body[0]).encode())[0] == decode_pings(json.dumps(body[0]).encode())
    pings, rejected = decode_message(json.dumps([body[0], {**body[1], "driver_id": str(uuid.uuid4())}]).encode())
    assert pings == [] and [exc.reason for exc, _ in rejected] == ["mixed_drivers"]
    # the standard library's precise reasons survive the fast parser: NaN is not_finite, not bad_json
    pings, rejected = decode_message(json.dumps({**body[0], "lat": float("nan")}).encode())
    assert [exc.reason for exc, _ in rejected] == ["not_finite:lat"]


def test_split_respects_bytes_and_counts_and_keeps_order():
    assert bundles.split([]) == []
    assert bundles.split([10] * 5, max_bytes=10_000, max_uploads=2) == [(0, 2), (2, 4), (4, 5)]
    ranges = bundles.split([100] * 50, max_bytes=1_000)
    assert ranges[0][0] == 0 and ranges[-1][1] == 50
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    for start, end in ranges:
        assert len(bundles.frame([b"x" * 100] * (end - start))) <= 1_000
    assert bundles.split([5_000, 10], max_bytes=1_000) == [(0, 1), (1, 2)]   # an oversized upload alone


def test_codec_loads_falls_back_to_the_standard_librarys_answers():
    assert codec.loads(b'{"a": NaN}')["a"] != codec.loads(b'{"a": NaN}')["a"]   # NaN, as json.loads
    huge = json.dumps({**fix(str(uuid.uuid4()), 1_700_000_000), "lat": 10 ** 30}).encode()
    assert [exc.reason for exc, _ in decode_message(huge)[1]] == ["out_of_range:lat"]
    with pytest.raises(ValueError):
        codec.loads(b"[1,")
    with pytest.raises(RecursionError):
        codec.loads(b"[" * 100_000 + b"]" * 100_000)
    assert codec.loads(memoryview(b'{"a":[1]}')) == {"a": [1]}


@pytest.mark.parametrize("field, value, reason", [
    ("driver_id", ["not", "hashable"], "wrong_type:driver_id"),
    ("tenant_id", {"a": 1}, "wrong_type:tenant_id"),
    ("vehicle_type", ["car"], "wrong_type:vehicle_type"),
    ("driver_id", "3F1C2A9E-8D7B-4C6A-9E5F-1A2B3C4D5E6F", None),   # accepted, canonicalised
    ("lat", True, "wrong_type:lat"),
    ("lat", 2 ** 60, "out_of_range:lat"),
    ("ts", 2 ** 53 + 1, "out_of_range:ts"),
    ("battery", True, "wrong_type:battery"),
    ("battery", 100.5, "out_of_range:battery"),
    ("v", True, "schema_version"),
    ("v", 1.0, "schema_version"),
    ("ts", 1_700_000_100.0, "future_timestamp:ts"),
])
def test_the_fast_path_for_known_drivers_refuses_what_the_checked_path_refuses(field, value, reason):
    driver = str(uuid.uuid4())
    good = fix(driver, 1_700_000_000)
    assert decode_message(codec.dumps([good]))[0]      # the driver, tenant and vehicle are known now
    pings, rejected = decode_message(json.dumps([{**good, field: value}]).encode(), max_future_s=10)
    if reason is None:
        assert pings[0].driver_id == value.lower() and rejected == []
    else:
        assert pings == [] and [exc.reason for exc, _ in rejected] == [reason]
