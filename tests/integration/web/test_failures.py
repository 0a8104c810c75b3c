"""Outages answer 503 with Retry-After and nothing about the infrastructure; anything else
unhandled is a generic 500; both in the envelope of the route, never a reset connection."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import replace

import asyncpg
import httpx
import pytest
import redis.exceptions

from tests.integration.api.test_api import VENDOR, _tenant_with_admin, auth
from tests.integration.engine_helpers import running_app
from tests.integration.private_services import private_redis, spare_port

pytestmark = pytest.mark.timeout(120)


def assert_unavailable(resp: httpx.Response, *secrets: str) -> None:
    assert resp.status_code == 503, resp.text
    assert resp.headers["Retry-After"].isdigit()
    assert resp.json()["error"]["reason"] == "unavailable"
    for secret in ("127.0.0.1", "localhost", *secrets):
        assert secret not in resp.text, resp.text


async def test_an_unreachable_shard_is_503_without_its_host_port_or_name(platform, stream_settings):
    tenant, admin = await _tenant_with_admin(platform)
    dead_port = spare_port()   # nothing listens there
    control = await asyncpg.connect(platform.control.url())
    try:
        names = [r["database_name"] for r in await control.fetch("SELECT database_name FROM shard_map")]
        await control.execute("UPDATE shard_map SET port = $1", dead_port)
    finally:
        await control.close()
    async with running_app(platform, stream_settings) as (addr, _), \
            httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http:
        resp = await http.get("/v1/admin/orders", headers={**auth(admin), "X-Access-Purpose": "test"})
        assert_unavailable(resp, str(dead_port), *names)


async def test_terminated_database_sessions_are_503_never_500(platform, stream_settings):
    tenant, admin = await _tenant_with_admin(platform)
    databases = [platform.control.database, *platform.shard_databases]
    stop = asyncio.Event()

    async def terminate_sessions() -> None:   # as a failover or an operator would, over and over
        conn = await asyncpg.connect(platform.control.with_database("postgres").url())
        try:
            while not stop.is_set():
                await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                   "WHERE datname = ANY($1::text[]) AND pid <> pg_backend_pid()", databases)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.05)
        finally:
            await conn.close()

    async with running_app(platform, stream_settings) as (addr, _), \
            httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http:
        assert (await http.get("/v1/admin/orders", headers={**auth(admin), "X-Access-Purpose": "test"})).status_code == 200
        killer = asyncio.create_task(terminate_sessions())
        statuses = []
        try:
            for i in range(20):
                resp = await http.post("/v1/admin/vendors", headers=auth(admin),
                                       json=dict(VENDOR, business_name=f"Spaza {i}"))
                statuses.append(resp.status_code)
                if resp.status_code == 503:
                    assert_unavailable(resp, *databases)
        finally:
            stop.set()
            await killer
    assert set(statuses) <= {201, 503}, statuses


async def test_redis_down_is_503_with_retry_after_and_no_host(platform, stream_settings):
    tenant, admin = await _tenant_with_admin(platform)
    async with private_redis() as server, \
            running_app(platform, replace(stream_settings, redis_url=server.url)) as (addr, state), \
            httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http:
        port = server.port
        assert (await http.get("/v1/admin/orders", headers={**auth(admin), "X-Access-Purpose": "test"})).status_code == 200
        server.kill()
        resp = await http.get("/v1/catalogue/search", params={"q": "maize"}, headers=auth(admin))
        assert resp.status_code in (503, 200), resp.text   # a route may serve without Redis
        if resp.status_code == 503:
            assert_unavailable(resp, str(port))
        ready = await http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["redis"].startswith("down")
        assert str(port) not in ready.text


async def test_unhandled_errors_are_a_generic_500_and_outages_503_in_each_envelope(platform, stream_settings,
                                                                                   monkeypatch):
    async with running_app(platform, stream_settings) as (addr, state), \
            httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http:
        async def crash(*_a, **_k):
            raise RuntimeError("secret-host.internal:6543 exploded")

        async def outage(*_a, **_k):
            raise redis.exceptions.ConnectionError("Error 111 connecting to secret-host.internal:6379")

        token = f"wku_{uuid.uuid4().hex}_x"
        for failure, status in ((crash, 500), (outage, 503)):
            monkeypatch.setattr(state.users, "verify", failure)
            monkeypatch.setattr(state.ingest, "authenticate", failure)
            rest = await http.get("/v1/admin/orders", headers={**auth(token), "X-Access-Purpose": "test"})
            gateway = await http.post("/v1/drivers/locations", json={"pings": []}, headers=auth("wkd_x"))
            for resp in (rest, gateway):
                assert resp.status_code == status, resp.text
                assert "secret-host" not in resp.text and "exploded" not in resp.text
            assert set(rest.json()["error"]) == {"status", "reason", "field", "message"}
            assert "status" not in gateway.json()["error"]   # the gateway's envelope
            if status == 503:
                assert rest.headers["Retry-After"] and gateway.headers["Retry-After"]
