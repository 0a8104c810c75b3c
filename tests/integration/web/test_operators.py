"""Operator endpoints: /metrics behind the operator token or on the loopback operator port, the
API documents only when asked for, and a readiness check that really asks each service."""

from __future__ import annotations

import contextlib
import socket

import asyncpg
import httpx
import pytest

from dispatch.web import operators
from tests.integration.engine_helpers import running_app, running_engine

pytestmark = pytest.mark.timeout(120)


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_metrics_and_documents_are_not_public_by_default(platform, stream_settings):
    async with running_engine(platform, stream_settings) as addr, \
            httpx.AsyncClient(base_url=f"http://{addr}") as http:
        for path in ("/metrics", "/openapi.json", "/docs", "/redoc"):
            assert (await http.get(path)).status_code == 404, path
        assert (await http.get("/metrics", headers={"Authorization": "Bearer guess"})).status_code == 404


async def test_metrics_need_the_operator_token_and_documents_the_flag(platform, stream_settings):
    token = "op-" + "s" * 40
    async with running_engine(platform, stream_settings, operator_token=token, api_docs=True) as addr, \
            httpx.AsyncClient(base_url=f"http://{addr}") as http:
        assert (await http.get("/metrics")).status_code == 404
        assert (await http.get("/metrics", headers={"Authorization": "Bearer wrong"})).status_code == 404
        resp = await http.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 200 and "wakala_pings_rejected_total" in resp.text
        assert "/v1/drivers/locations" in (await http.get("/openapi.json")).json()["paths"]
        assert (await http.get("/docs")).status_code == 200


async def test_the_operator_port_serves_metrics_on_loopback_only(platform, stream_settings):
    port = free_port()
    async with running_engine(platform, stream_settings, metrics_port=port) as addr, \
            httpx.AsyncClient() as http:
        resp = await http.get(f"http://127.0.0.1:{port}/metrics")
        assert resp.status_code == 200 and "wakala_pings_rejected_total" in resp.text
        assert (await http.get(f"http://{addr}/metrics")).status_code == 404
        bound = [c for c in _listening(port)]
        assert bound == ["127.0.0.1"], bound
    with pytest.raises(httpx.ConnectError):   # stopped with the app
        async with httpx.AsyncClient() as http:
            await http.get(f"http://127.0.0.1:{port}/metrics")


def _listening(port: int) -> list[str]:
    """Local addresses listening on ``port`` (from /proc/net/tcp{,6})."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as rows:
            for row in list(rows)[1:]:
                local, state = row.split()[1], row.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:
                    found.append(socket.inet_ntoa(bytes.fromhex(address)[::-1]) if len(address) == 8 else address)
    return found


async def test_readyz_asks_postgres_redis_and_the_broker(platform, stream_settings, monkeypatch):
    monkeypatch.setattr(operators, "READY_CACHE_S", 0.0)   # every request asks
    async with running_app(platform, stream_settings) as (addr, state), \
            httpx.AsyncClient(base_url=f"http://{addr}") as http:
        resp = await http.get("/readyz")
        assert resp.status_code == 200 and resp.json() == {"postgres": "ok", "redis": "ok", "broker": "ok"}
        # The control database refuses new sessions and ours are terminated: the pool cannot
        # answer ``select 1`` any more, and readiness says so (it used to report "ok" unasked).
        admin = await asyncpg.connect(platform.control.with_database("postgres").url())
        database = platform.control.database
        ident = await admin.fetchval("SELECT quote_ident($1)", database)
        try:
            await admin.execute(f"ALTER DATABASE {ident} ALLOW_CONNECTIONS false")
            await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                                database)
            resp = await http.get("/readyz")
            assert resp.status_code == 503 and resp.json()["postgres"].startswith("down"), resp.text
            assert resp.json()["redis"] == "ok" and database not in resp.text and "5432" not in resp.text
        finally:
            await admin.execute(f"ALTER DATABASE {ident} ALLOW_CONNECTIONS true")
            await admin.close()
