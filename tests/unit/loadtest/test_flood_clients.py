"""The flood's pure parts: tokens the engine would parse, request and frame bytes, outcomes."""

from __future__ import annotations

import asyncio
import os
import random
import uuid

import pytest

from dispatch.identity.auth import parse_token
from dispatch.identity.users import parse_user_token
from loadtest.flood import FloodBench, _token_requests, read_rss_mb
from loadtest.flood_clients import http_request, masked_frame, outcome, random_token, read_response


def test_random_tokens_are_well_formed_driver_and_user_tokens():
    rng = random.Random(3)
    tenant = uuid.uuid4()
    assert parse_token(random_token("wkd", rng, tenant.hex)) == tenant
    assert parse_user_token(random_token("wku", rng, tenant.hex)) == tenant
    made = {random_token("wkd", rng) for _ in range(1000)}
    assert len(made) == 1000 and len({parse_token(t) for t in made}) == 1000   # random tenant parts


@pytest.mark.parametrize("n", [0, 5, 125, 126, 65_535, 65_536, 70_000])
def test_masked_frames_unmask_to_their_payload_at_every_length_encoding(n):
    payload = os.urandom(n)
    frame = masked_frame(payload)
    assert frame[0] == 0x81 and frame[1] & 0x80
    size, at = frame[1] & 0x7F, 2
    if size == 126:
        size, at = int.from_bytes(frame[2:4], "big"), 4
    elif size == 127:
        size, at = int.from_bytes(frame[2:10], "big"), 10
    mask, body = frame[at:at + 4], frame[at + 4:]
    assert size == n == len(body)
    assert bytes(b ^ mask[i % 4] for i, b in enumerate(body)) == payload


@pytest.mark.parametrize("status, code, answered, kind", [
    (401, None, True, "401"), (413, None, True, "413"), (429, None, True, "429"), (431, None, True, "431"),
    (414, None, True, "414"), (None, None, True, "closed"), (None, 4401, True, "401"), (None, 1009, True, "413"), (None, 1013, True, "429"),
    (None, 1011, True, "ws_close_1011"), (202, None, True, "accepted"), (500, None, True, "500"),
    (None, None, False, "no_answer"),
])
def test_outcomes_read_statuses_and_close_codes_as_refusal_kinds(status, code, answered, kind):
    assert outcome(status, code, answered=answered) == kind


def test_a_request_declares_its_body_and_keeps_the_connection_unless_told():
    raw = http_request("POST", "/v1/orders", {"Authorization": "Bearer x"}, b"{}")
    head, body = raw.split(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/orders HTTP/1.1\r\n") and b"Content-Length: 2" in head and body == b"{}"
    assert b"Content-Length" not in http_request("GET", "/")
    assert b"Connection: close" in http_request("GET", "/", keep_alive=False)


async def _read(data: bytes):
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return await read_response(reader)


async def test_responses_are_read_by_length_by_chunks_and_to_the_end():
    sized = await _read(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 3\r\n\r\nabcHTTP/1.1 200 OK")
    assert (sized.status, sized.body, sized.closes) == (401, b"abc", False)
    chunked = await _read(b"HTTP/1.1 413 X\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert (chunked.status, chunked.body) == (413, b"abcde")
    to_end = await _read(b"HTTP/1.1 400 Bad\r\nConnection: close\r\n\r\nbye")
    assert (to_end.status, to_end.body, to_end.closes) == (400, b"bye", True)
    with pytest.raises(asyncio.IncompleteReadError):
        await _read(b"HTTP/1.1 401 X\r\n")


def test_the_token_mix_follows_the_shares_it_is_given():
    tenant = uuid.uuid4().hex
    stream = _token_requests(FloodBench(ws_share=0.1, real_tenant_share=0.5), tenant)
    kinds = [next(stream) for _ in range(4000)]
    ws = [k for k, _ in kinds if k.startswith("driver_ws/")]
    assert 300 < len(ws) < 500
    assert {k for k, _ in kinds} == {f"{route}/{tenant_part}" for tenant_part in ("real", "random") for route in (
        "driver_ws", "driver_locations", "driver_shift", "rest_get", "rest_post")}
    http = [(k, data) for k, data in kinds if not k.startswith("driver_ws/")]
    real = [k for k, data in http if tenant.encode() in data]
    assert 0.4 < len(real) / len(http) < 0.6 and all(k.endswith("/real") for k in real)
    for kind, data in http:   # the token's kind fits its route: wkd_ for drivers, wku_ for users
        assert (b"Bearer wkd_" in data) == kind.startswith("driver_")


def test_rss_is_read_from_proc_and_a_gone_process_counts_nothing():
    assert read_rss_mb([os.getpid()]) > 1
    assert read_rss_mb([os.getpid()], "VmHWM") >= read_rss_mb([os.getpid()]) - 1
    assert read_rss_mb([2 ** 22 + 7]) == 0


def test_a_profile_is_read_back_as_self_and_total_shares():
    from loadtest.flood_profile import top_frames

    collapsed = "main;loop;verify 6\nmain;loop;select 3\nmain;verify 1\n\nnot a line\n"
    samples, top = top_frames(collapsed)
    assert samples == 10
    assert top[0] == ("verify", 70.0, 70.0) and top[1] == ("select", 30.0, 30.0)
    assert top_frames("") == (0, [])
    _, mine = top_frames("run (dispatch/app.py:1);verify (dispatch/auth.py:3);execute (asyncpg/c.py:9) 4\n"
                         "run (dispatch/app.py:1);select (selectors.py:2) 6\n", only=("(dispatch/",))
    assert mine == [("run (dispatch/app.py:1)", 60.0, 100.0), ("verify (dispatch/auth.py:3)", 40.0, 40.0)]


@pytest.mark.parametrize("name, value", [
    ("tokens", 0), ("tokens", -5), ("concurrency", 0), ("source_ips", 251), ("ws_share", 1.5),
    ("real_tenant_share", float("nan")), ("body_mb", 0), ("body_mb", float("inf")), ("slow_clients", -1),
    ("baseline_s", 0), ("workers", 0), ("auth_failure_limit", 0), ("tokens", "many"),
])
def test_a_bench_it_cannot_run_is_refused_naming_the_setting(name, value):
    from loadtest.flood import FloodSettingError

    with pytest.raises(FloodSettingError, match=name):
        FloodBench(**{name: value})


def test_open_descriptors_are_counted_from_proc():
    from loadtest.flood import open_fds

    before = open_fds([os.getpid()])
    with open(os.devnull) as _:
        assert open_fds([os.getpid()]) == before + 1
    assert open_fds([2 ** 22 + 7]) == 0
