"""The edge's limits on a running engine: bodies, request targets and headers, over raw sockets.

Raw sockets because the point is what a hostile or broken client sees: an answer within
seconds and a closed connection, not whatever a well-behaved client library would send.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.integration.engine_helpers import running_engine
from tests.integration.shared_platform import shared_platform  # noqa: F401 - one platform for the module

pytestmark = pytest.mark.timeout(120)


UPGRADE = ("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           "Sec-WebSocket-Version: 13\r\n")


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def head_answer(addr: str, head: bytes, wait_s: float = 3.0) -> tuple[bytes, float, bool]:
    """Send ``head``; (the answer's bytes, seconds to the first byte, whether the server closed)."""
    host, port = addr.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    started = time.monotonic()
    try:
        writer.write(head)
        with_answer = b""
        try:
            await writer.drain()
            first = await asyncio.wait_for(reader.read(65536), wait_s)
        except (ConnectionError, TimeoutError):
            return b"", time.monotonic() - started, False
        elapsed = time.monotonic() - started
        with_answer = first
        closed = False
        try:
            while True:
                more = await asyncio.wait_for(reader.read(65536), wait_s)
                if not more:
                    closed = True
                    break
                with_answer += more
        except TimeoutError:
            closed = False
        except ConnectionError:
            closed = True
        return with_answer, elapsed, closed
    finally:
        writer.close()


async def chunked_upload(addr: str, path: str, total: int, chunk: int = 256 * 1024) -> tuple[bytes, int]:
    """POST ``total`` bytes chunked, without a token, reading the answer while sending;
    (the answer's head, bytes the client managed to send)."""
    host, port = addr.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    sent = 0
    writer.write(f"POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n".encode())
    answer = asyncio.create_task(reader.readuntil(b"\r\n\r\n"))
    piece = f"{chunk:x}\r\n".encode() + b'{"action": "' + b"a" * (chunk - 12) + b"\r\n"
    try:
        while sent < total and not answer.done():
            writer.write(piece)
            try:
                await asyncio.wait_for(writer.drain(), 5)
            except (ConnectionError, TimeoutError):
                break
            sent += chunk
        head = await asyncio.wait_for(answer, 10)
    finally:
        answer.cancel()
        writer.close()
    return head, sent


@pytest.mark.parametrize("path", ["/v1/drivers/shift", "/v1/orders"])
async def test_a_50_mb_chunked_body_without_a_token_is_refused_413_without_being_buffered(
        platform, stream_settings, path):
    async with running_engine(platform, stream_settings) as addr:
        await head_answer(addr, f"GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n".encode())   # warm up
        before = rss_bytes()
        head, sent = await chunked_upload(addr, path, 50 << 20)
        grown = rss_bytes() - before
    assert head.startswith(b"HTTP/1.1 413"), head
    assert b"connection: close" in head.lower()
    # The limit is 256 KB: whatever the client pushed into socket buffers, the process held
    # at most a limit's worth of it (a route parsing the body would have held all 50 MB).
    assert grown < 20 << 20, f"RSS grew {grown >> 20} MB while the client sent {sent >> 20} MB"


async def test_a_declared_length_over_the_limit_is_refused_before_the_body(platform, stream_settings):
    async with running_engine(platform, stream_settings, max_body_bytes=4096) as addr:
        head = (f"POST /v1/drivers/shift HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n"
                "Content-Length: 100000000\r\n\r\n").encode()
        answer, elapsed, closed = await head_answer(addr, head)
    assert answer.startswith(b"HTTP/1.1 413") and closed, answer
    body = answer.split(b"\r\n\r\n", 1)[1]
    assert b'"reason":"too_large"' in body and b'"status"' not in body   # the gateway's envelope


@pytest.mark.parametrize("size", [10_000, 100_000])
@pytest.mark.parametrize("upgrade", [False, True])
async def test_an_oversized_request_target_is_answered_414_at_once_and_closed(
        platform, stream_settings, size, upgrade):
    async with running_engine(platform, stream_settings) as addr:
        path = "/v1/drivers/stream" if upgrade else "/v1/orders"
        head = (f"GET {path}?pad={'x' * size} HTTP/1.1\r\nHost: {addr}\r\n{UPGRADE if upgrade else ''}"
                "\r\n").encode()
        answer, elapsed, closed = await head_answer(addr, head)
    assert answer.startswith(b"HTTP/1.1 414"), answer[:200]
    assert elapsed < 2.5 and closed


async def test_oversized_headers_are_answered_431_and_closed(platform, stream_settings):
    async with running_engine(platform, stream_settings) as addr:
        for upgrade in (False, True):
            head = (f"GET /v1/drivers/stream HTTP/1.1\r\nHost: {addr}\r\n{UPGRADE if upgrade else ''}"
                    + "".join(f"X-Pad-{i}: {'y' * 1000}\r\n" for i in range(40)) + "\r\n").encode()
            answer, elapsed, closed = await head_answer(addr, head)
            assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
            assert elapsed < 2.5 and closed


async def test_an_upgrade_the_websocket_parser_refuses_is_answered_not_left_hanging(platform, stream_settings):
    # Within the engine's own limits, but over the websockets parser's 8 KB line: before, its
    # 414/431 stayed in a buffer nobody wrote and the client heard nothing for minutes.
    async with running_engine(platform, stream_settings, max_url_bytes=32_768) as addr:
        target = f"GET /v1/drivers/stream?pad={'x' * 10_000} HTTP/1.1\r\nHost: {addr}\r\n{UPGRADE}\r\n"
        answer, elapsed, closed = await head_answer(addr, target.encode())
        assert answer.startswith(b"HTTP/1.1 414") and elapsed < 2.5 and closed, answer[:200]
        line = f"GET /v1/drivers/stream HTTP/1.1\r\nHost: {addr}\r\n{UPGRADE}Cookie: {'c' * 9000}\r\n\r\n"
        answer, elapsed, closed = await head_answer(addr, line.encode())
        assert answer.startswith(b"HTTP/1.1 431") and elapsed < 2.5 and closed, answer[:200]


async def test_a_target_within_the_limits_still_works(platform, stream_settings):
    async with running_engine(platform, stream_settings) as addr:
        answer, _, _ = await head_answer(addr, f"GET /healthz?pad={'x' * 2000} HTTP/1.1\r\nHost: {addr}\r\n"
                                               "Connection: close\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


async def test_a_nul_in_a_query_parameter_is_refused_naming_it(platform, stream_settings):
    async with running_engine(platform, stream_settings) as addr:
        answer, _, _ = await head_answer(addr, f"GET /v1/catalogue/search?q=ma%00ize HTTP/1.1\r\nHost: {addr}\r\n"
                                               "Connection: close\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 422"), answer[:200]
    assert b'"reason":"invalid_text","field":"q"' in answer


async def test_a_request_head_that_never_completes_is_answered_408_and_closed(platform, stream_settings, monkeypatch):
    from dispatch.web.protocols import BoundedHttpTools

    monkeypatch.setattr(BoundedHttpTools, "head_timeout_s", 1.0)
    async with running_engine(platform, stream_settings) as addr:
        host, port = addr.split(":")
        # slowloris: a header line now and then, never the blank line that ends the head
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            started = time.monotonic()
            writer.write(f"GET /v1/orders HTTP/1.1\r\nHost: {addr}\r\n".encode())
            answer = b""
            for i in range(8):
                try:
                    writer.write(f"X-Drip-{i}: y\r\n".encode())
                    await writer.drain()
                except ConnectionError:
                    break
                try:
                    answer += await asyncio.wait_for(reader.read(65536), 0.5)
                except TimeoutError:
                    continue
                if answer:
                    break
            elapsed = time.monotonic() - started
            rest = await asyncio.wait_for(reader.read(65536), 3)
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.1 408") and b"too_slow" in answer + rest, answer[:200]
        assert elapsed < 3 and rest == b""   # closed after the answer
        # a client that connects and says nothing is let go the same way
        silent, _, closed = await head_answer(addr, b"", wait_s=3)
        assert silent.startswith(b"HTTP/1.1 408") and closed
        # a head sent at once is not timed out, on a fresh or a kept connection
        ok, elapsed, _ = await head_answer(addr, f"GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n".encode(), 0.5)
        assert ok.startswith(b"HTTP/1.1 200")
