"""Which errors are outages (503, retry) and what readiness reports; no services."""

from __future__ import annotations

import asyncio

import asyncpg
import redis.exceptions
from aiokafka.errors import KafkaConnectionError

from dispatch.api.common import refusal_of, validation_refusal
from dispatch.web.operators import docs_urls, readiness
from dispatch.web.outages import is_outage
from schema.errors import DatabaseUnavailable, UnknownTenant
from streams.producer import BrokerUnavailable


def test_outages_are_told_from_request_errors():
    for exc in (DatabaseUnavailable("PostgreSQL at db:5432/x does not answer"), BrokerUnavailable("b"),
                redis.exceptions.ConnectionError(), redis.exceptions.TimeoutError(), KafkaConnectionError(),
                asyncpg.exceptions.AdminShutdownError(), asyncpg.exceptions.CannotConnectNowError(),
                asyncpg.exceptions.ConnectionDoesNotExistError(), ConnectionRefusedError(), TimeoutError()):
        assert is_outage(exc), exc
    for exc in (ValueError("x"), KeyError("k"), UnknownTenant("t"), asyncpg.exceptions.UniqueViolationError()):
        assert not is_outage(exc), exc
    try:
        try:
            raise asyncpg.exceptions.ConnectionDoesNotExistError("gone")
        except Exception as inner:
            raise RuntimeError("commit failed") from inner
    except RuntimeError as outer:
        assert is_outage(outer)


def test_a_database_outage_is_a_503_without_its_text_not_a_400_naming_the_host():
    refusal = refusal_of(DatabaseUnavailable("PostgreSQL at db-3.internal:5432/wakala_shard_2 does not answer"))
    assert (refusal.status, refusal.reason) == (503, "unavailable") and refusal.headers["Retry-After"]
    assert "db-3" not in refusal.message and "wakala_shard" not in refusal.message


def test_validation_errors_quoting_invalid_text_are_invalid_text_and_printable():
    refusal = validation_refusal([{"loc": ("body", "action"), "msg": "bad", "input": "\ud800"}])
    assert (refusal.status, refusal.reason, refusal.field) == (422, "invalid_text", "action")
    refusal = validation_refusal([{"loc": ("body", "tags", "\udc80"), "msg": "m", "input": 1}])
    assert (refusal.reason, refusal.field) == ("invalid_text", "tags.\\udc80")
    refusal = validation_refusal([{"loc": ("query", "limit"), "msg": "found `\ud800`", "input": "x"}])
    assert (refusal.reason, refusal.field, refusal.message) == ("invalid_value", "limit", "found `\\ud800`")


async def test_readiness_bounds_each_probe_and_names_no_detail():
    async def ok():
        return 1

    async def slow():
        await asyncio.sleep(10)

    async def broken():
        raise ConnectionRefusedError("db-3.internal:5432 refused")

    ready, checks = await readiness({"a": ok, "b": slow, "c": broken}, timeout_s=0.2)
    assert not ready and checks == {"a": "ok", "b": "down: timeout", "c": "down: ConnectionRefusedError"}
    assert (await readiness({"a": ok}))[0]


def test_documents_are_off_unless_asked_for():
    assert set(docs_urls(False).values()) == {None}
    assert docs_urls(True)["openapi_url"] == "/openapi.json"


async def test_readyz_runs_one_round_of_probes_for_a_burst():
    from fastapi import FastAPI
    from httpx import ASGITransport, AsyncClient

    from dispatch.web.operators import install_operator_routes

    calls = []

    async def probe():
        calls.append(1)
        await asyncio.sleep(0.05)

    app = FastAPI()
    install_operator_routes(app, lambda: {"postgres": probe}, "")
    async with AsyncClient(transport=ASGITransport(app), base_url="http://t") as http:
        answers = await asyncio.gather(*(http.get("/readyz") for _ in range(20)))
    assert {a.status_code for a in answers} == {200} and len(calls) == 1
