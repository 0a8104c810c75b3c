"""The replay's HTTP calls retry like an app's, against a real server on a real socket."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from loadtest.provision import ApiFailed
from loadtest.reconnect import RetryingApi
from tests.integration.engine_helpers import bound_socket, serving


def _flaky_app(failures: list[int]) -> tuple[Starlette, list[str | None]]:
    """Answers each POST with the next status in ``failures`` (then 201), noting its key."""
    keys: list[str | None] = []

    async def orders(request: Request) -> JSONResponse:
        keys.append(request.headers.get("idempotency-key"))
        if failures:
            status = failures.pop(0)
            return JSONResponse({"error": {"reason": "unavailable"}}, status_code=status,
                                headers={"Retry-After": "0"} if status in (409, 429, 503) else None)
        return JSONResponse({"id": "o-1"}, status_code=201)

    return Starlette(routes=[Route("/v1/orders", orders, methods=["POST", "GET"])]), keys


async def _serve(app, sock):
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="off"))
    server.config.loop = "asyncio"
    return serving(server, sockets=[sock])


async def test_unsafe_calls_retry_5xx_429_and_in_progress_409_with_one_idempotency_key():
    app, keys = _flaky_app([503, 429, 502, 409])
    counted: Counter[str] = Counter()
    with bound_socket() as sock:
        async with await _serve(app, sock), httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{sock.getsockname()[1]}") as http:
            api = RetryingApi(http, count=lambda name: counted.update([name]),
                              backoff_base_s=0.05, backoff_cap_s=0.2)
            assert await api("POST", "/v1/orders", "t", {"x": 1}) == {"id": "o-1"}
    assert len(keys) == 5 and len(set(keys)) == 1 and keys[0]
    assert counted["api_retries"] == 4


async def test_refusals_are_answers_not_retried_and_each_action_has_its_own_key():
    app, keys = _flaky_app([422])
    with bound_socket() as sock:
        async with await _serve(app, sock), httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{sock.getsockname()[1]}") as http:
            api = RetryingApi(http, backoff_base_s=0.05, backoff_cap_s=0.2)
            with pytest.raises(ApiFailed) as refused:
                await api("POST", "/v1/orders", "t", {})
            assert refused.value.status == 422
            await api("POST", "/v1/orders", "t", {})
            await api("POST", "/v1/orders", "t", {}, idempotency_key="mine")
            await api("GET", "/v1/orders", "t")
    assert len(keys) == 4 and keys[0] != keys[1] and keys[2] == "mine" and keys[3] is None


async def test_a_server_that_is_down_is_waited_for_and_one_that_stays_down_given_up():
    app, keys = _flaky_app([])
    counted: Counter[str] = Counter()
    with bound_socket() as sock:
        port = sock.getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            api = RetryingApi(http, count=lambda name: counted.update([name]), backoff_base_s=0.05,
                              backoff_cap_s=0.3, patience_s=30)
            # bound, not listening: every connection is refused until the server starts
            call = asyncio.create_task(api("POST", "/v1/orders", "t", {}))
            await asyncio.sleep(1.0)
            assert not call.done() and counted["api_retries"] >= 2
            async with await _serve(app, sock):
                assert await asyncio.wait_for(call, 30) == {"id": "o-1"}
    assert counted["api_retry:POST /v1/orders:ConnectError"] == counted["api_retries"] and len(keys) == 1
    impatient = RetryingApi(httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}"),
                            backoff_base_s=0.05, backoff_cap_s=0.1, patience_s=0.5)
    with pytest.raises(httpx.ConnectError):   # nothing listens any more: refused, retried, given up
        await impatient("POST", "/v1/orders", "t", {})
    await impatient.http.aclose()
