"""The driver gateway against the real engine, Postgres, Redis and broker: hostile input first."""

import asyncio
import json
import math
import time
import uuid
from dataclasses import replace

import httpx
import pytest
import redis.asyncio as aioredis
import websockets
from aiokafka import AIOKafkaConsumer

from dispatch.core.metrics import PINGS_REJECTED
from dispatch.identity.auth import issue_driver_token, revoke_token
from dispatch.identity.drivers import InvalidDriver, NewDriver, create_driver
from schema.db import TenantDatabase
from schema.tenants import create_tenant
from streams.bundles import partition_of
from tests.integration.engine_helpers import running_engine
from tests.integration.shared_platform import shared_platform  # noqa: F401 - one platform for the module

pytestmark = pytest.mark.timeout(180)


SOWETO = (-26.2485, 27.8540)


def ping(driver_id, /, **overrides):
    body = {"driver_id": str(driver_id), "lat": SOWETO[0], "lng": SOWETO[1], "accuracy": 8.0,
            "speed": 6.5, "heading": 90.0, "timestamp": time.time(), "battery": 71}
    body.update(overrides)
    return body


@pytest.fixture
async def drivers(platform, redis_url):
    tenant = await create_tenant(platform, f"Gateway Spaza {uuid.uuid4().hex[:6]}")
    async with TenantDatabase(platform) as db:
        ids, tokens = [], []
        for i in range(2):
            did = await create_driver(db, tenant.id, NewDriver(
                "Sipho", f"Driver{i}", f"+2772000000{i}", f"LIC-{i}-{uuid.uuid4().hex[:6]}", "motorbike",
                f"GP {i}23-456"))
            ids.append(did)
            tokens.append(await issue_driver_token(db, tenant.id, did, ttl_s=3600))
    return tenant, ids, tokens


async def _topic_values(stream_settings, expect, wait_s=5.0, messages=None):
    """(partition, ping) pairs on the locations topic, bundles unpacked; ``messages`` collects
    each raw message's partition."""
    consumer = AIOKafkaConsumer(stream_settings.locations_topic, bootstrap_servers=stream_settings.kafka_bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False, group_id=None)
    await consumer.start()
    values = []
    try:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and len(values) < expect:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for r in records:
                    decoded = json.loads(r.value)
                    uploads = decoded["uploads"] if isinstance(decoded, dict) and "uploads" in decoded else [decoded]
                    for upload in uploads:
                        values.extend((r.partition, v) for v in (upload if isinstance(upload, list) else [upload]))
                    if messages is not None:
                        messages.append(r.partition)
    finally:
        await consumer.stop()
    return values


def rejected(channel, reason):
    return PINGS_REJECTED.labels(channel, reason)._value.get()


async def test_http_batch_is_produced_on_the_drivers_partition(platform, stream_settings, drivers):
    tenant, ids, tokens = drivers
    stream_settings = replace(stream_settings, locations_partitions=3)
    async with running_engine(platform, stream_settings) as addr, httpx.AsyncClient(base_url=f"http://{addr}") as http:
        resp = await http.post("/v1/drivers/locations", headers={"Authorization": f"Bearer {tokens[0].token}"},
                               json={"pings": [ping(ids[0]), ping(ids[0], lat=-26.2486)]})
        assert resp.status_code == 202, resp.text
        assert resp.json() == {"accepted": 2}
    messages = []
    values = await _topic_values(stream_settings, 2, messages=messages)
    # one bundle, on the partition the driver's key gives (ordering per driver)
    assert messages == [partition_of(str(ids[0]).encode(), 3)]
    assert [p for p, _ in values] == messages * 2
    consumer = AIOKafkaConsumer(bootstrap_servers=stream_settings.kafka_bootstrap)
    await consumer.start()
    try:  # the gateway created the topic with the configured partitions, not the broker's default
        assert stream_settings.locations_topic in await consumer.topics()
        assert consumer.partitions_for_topic(stream_settings.locations_topic) == {0, 1, 2}
    finally:
        await consumer.stop()
    first = values[0][1]
    assert first["tenant_id"] == str(tenant.id) and first["vehicle_type"] == "motorbike"
    assert first["lat"] == SOWETO[0] and first["v"] == 1 and first["received_at"] > 0


HOSTILE = [
    ("not_finite", "lat", {"lat": float("nan")}),
    ("not_finite", "lng", {"lng": float("inf")}),
    ("out_of_range", "lat", {"lat": 91.0}),
    ("out_of_range", "lng", {"lng": -180.5}),
    ("out_of_range", "heading", {"heading": 361}),
    ("out_of_range", "speed", {"speed": -1}),
    ("null_island", "lat", {"lat": 0.0, "lng": 0.0}),
    ("wrong_type", "lat", {"lat": "-26.2"}),
    ("wrong_type", "speed", {"speed": True}),
    ("wrong_type", "driver_id", {"driver_id": "'; DROP TABLE drivers; --"}),
    ("future_timestamp", "timestamp", {"timestamp": time.time() + 3600}),
    ("stale_timestamp", "timestamp", {"timestamp": time.time() - 3600}),
    ("unknown_field", "tenant_id", {"tenant_id": str(uuid.uuid4())}),
]


@pytest.mark.parametrize("reason, field, overrides", HOSTILE, ids=[f"{r}-{f}" for r, f, _ in HOSTILE])
async def test_hostile_pings_are_refused_by_reason_and_nothing_is_produced(
        platform, stream_settings, drivers, reason, field, overrides):
    _, ids, tokens = drivers
    body = ping(ids[0], **overrides)
    if reason in ("future_timestamp", "stale_timestamp"):
        body["timestamp"] = time.time() + (3600 if reason == "future_timestamp" else -3600)
    before = rejected("http", reason)
    async with running_engine(platform, stream_settings) as addr, httpx.AsyncClient(base_url=f"http://{addr}") as http:
        raw = json.dumps({"pings": [ping(ids[0]), body]})  # NaN/Infinity as JSON literals
        resp = await http.post("/v1/drivers/locations", content=raw, headers={
            "Authorization": f"Bearer {tokens[0].token}", "Content-Type": "application/json"})
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["reason"] == reason and error["field"] == field
    assert error["errors"] == [{"index": 1, "reason": reason, "field": field, "message": error["errors"][0]["message"]}]
    assert rejected("http", reason) == before + 1
    assert await _topic_values(stream_settings, 1, wait_s=1.0) == []


async def test_missing_fields_bad_json_and_oversize_bodies(platform, stream_settings, drivers):
    _, ids, tokens = drivers
    auth = {"Authorization": f"Bearer {tokens[0].token}", "Content-Type": "application/json"}
    async with running_engine(platform, stream_settings, max_body_bytes=4096) as addr, \
            httpx.AsyncClient(base_url=f"http://{addr}") as http:
        body = ping(ids[0])
        del body["lng"]
        resp = await http.post("/v1/drivers/locations", json={"pings": [body]}, headers=auth)
        assert resp.status_code == 422 and resp.json()["error"]["field"] == "lng"
        assert resp.json()["error"]["reason"] == "missing_field"
        resp = await http.post("/v1/drivers/locations", content=b'{"pings": [', headers=auth)
        assert resp.status_code == 400 and resp.json()["error"]["reason"] == "bad_json"
        resp = await http.post("/v1/drivers/locations", content=b"\xff\xfe garbage", headers=auth)
        assert resp.status_code == 400
        resp = await http.post("/v1/drivers/locations", json=[ping(ids[0])], headers=auth)
        assert resp.status_code == 422 and resp.json()["error"]["field"] == "pings"
        resp = await http.post("/v1/drivers/locations", json={"pings": [ping(ids[0])] * 60}, headers=auth)
        assert resp.status_code == 413 and resp.json()["error"]["reason"] == "too_large"
        resp = await http.post("/v1/drivers/locations", json={"pings": []}, headers=auth)
        assert resp.status_code == 422
    assert await _topic_values(stream_settings, 1, wait_s=1.0) == []


@pytest.mark.parametrize("header", [None, "Bearer", "Basic dXNlcjpwYXNz", "Bearer wkd_nope",
                                    "Bearer wkd_" + "0" * 32 + "_" + "A" * 43, "Bearer " + "x" * 5000])
async def test_unknown_tokens_are_refused(platform, stream_settings, drivers, header):
    _, ids, _ = drivers
    async with running_engine(platform, stream_settings) as addr, httpx.AsyncClient(base_url=f"http://{addr}") as http:
        resp = await http.post("/v1/drivers/locations", json={"pings": [ping(ids[0])]},
                               headers={"Authorization": header} if header else {})
    assert resp.status_code == 401 and resp.json()["error"]["reason"] == "unknown_token"
    assert str(ids[0]) not in resp.text


async def test_a_driver_cannot_report_another_drivers_position(platform, stream_settings, drivers):
    _, ids, tokens = drivers
    async with running_engine(platform, stream_settings) as addr, httpx.AsyncClient(base_url=f"http://{addr}") as http:
        resp = await http.post("/v1/drivers/locations", json={"pings": [ping(ids[1])]},
                               headers={"Authorization": f"Bearer {tokens[0].token}"})
    assert resp.status_code == 403 and resp.json()["error"]["reason"] == "wrong_driver"
    assert await _topic_values(stream_settings, 1, wait_s=1.0) == []


async def test_a_token_from_another_tenant_cannot_report_for_this_tenants_driver(platform, stream_settings, drivers):
    _, ids, _ = drivers
    other = await create_tenant(platform, f"Other Tenant {uuid.uuid4().hex[:6]}")
    async with TenantDatabase(platform) as db:
        stranger = await create_driver(db, other.id, NewDriver("Thabo", "Other", "+27730000001", "LIC-X-1",
                                                               "car", "GP 999-111"))
        token = await issue_driver_token(db, other.id, stranger, ttl_s=3600)
    async with running_engine(platform, stream_settings) as addr, httpx.AsyncClient(base_url=f"http://{addr}") as http:
        resp = await http.post("/v1/drivers/locations", json={"pings": [ping(ids[0])]},
                               headers={"Authorization": f"Bearer {token.token}"})
    assert resp.status_code == 403


async def test_revoked_and_expired_tokens(platform, stream_settings, drivers, redis_url):
    tenant, ids, tokens = drivers
    async with running_engine(platform, stream_settings) as addr, httpx.AsyncClient(base_url=f"http://{addr}") as http:
        auth = {"Authorization": f"Bearer {tokens[0].token}"}
        assert (await http.post("/v1/drivers/locations", json={"pings": [ping(ids[0])]}, headers=auth)).status_code == 202
        async with websockets.connect(f"ws://{addr}/v1/drivers/stream",
                                      additional_headers={"Authorization": f"Bearer {tokens[0].token}"}) as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            redis = aioredis.from_url(redis_url)
            async with TenantDatabase(platform) as db:
                assert await revoke_token(db, redis, tenant.id, tokens[0].token_id)
            await redis.aclose()
            with pytest.raises(websockets.ConnectionClosed) as closed:
                for _ in range(50):
                    await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd.code == 4401
        await asyncio.sleep(0.1)
        resp = await http.post("/v1/drivers/locations", json={"pings": [ping(ids[0])]}, headers=auth)
        assert resp.status_code == 401 and resp.json()["error"]["reason"] == "revoked_token"
    async with TenantDatabase(platform) as db, db.tenant_transaction(tenant.id) as tx:
        await tx.execute("UPDATE auth_tokens SET expires_at = now() - interval '1 second' WHERE id = $1",
                         tokens[1].token_id)
    async with running_engine(platform, stream_settings) as addr, httpx.AsyncClient(base_url=f"http://{addr}") as http:
        resp = await http.post("/v1/drivers/locations", json={"pings": [ping(ids[1])]},
                               headers={"Authorization": f"Bearer {tokens[1].token}"})
        assert resp.status_code == 401 and resp.json()["error"]["reason"] == "expired_token"


async def test_websocket_survives_bad_pings_and_acks_good_ones(platform, stream_settings, drivers):
    _, ids, tokens = drivers
    async with running_engine(platform, stream_settings, max_message_bytes=2048) as addr:
        async with websockets.connect(f"ws://{addr}/v1/drivers/stream") as ws:
            await ws.send(json.dumps({"type": "auth", "token": tokens[0].token}))
            assert json.loads(await ws.recv())["type"] == "ready"
            frames = [
                ("not json", "bad_json"),
                (json.dumps({"type": "ping", "seq": 1, **ping(ids[0], lat=math.nan)}), "not_finite"),
                (json.dumps({"type": "ping", "seq": 2, **ping(ids[0], lat=0, lng=0)}), "null_island"),
                (json.dumps({"type": "ping", "seq": 3, **ping(ids[1])}), "wrong_driver"),
                ("x" * 4096, "too_large"),
            ]
            for frame, reason in frames:
                await ws.send(frame)
                reply = json.loads(await ws.recv())
                assert reply["type"] == "error" and reply["reason"] == reason, reply
            await ws.send(json.dumps({"type": "ping", "seq": 9, **ping(ids[0])}))
            assert json.loads(await ws.recv()) == {"type": "ack", "seq": 9, "accepted": 1}
    values = await _topic_values(stream_settings, 1)
    assert len(values) == 1 and values[0][1]["driver_id"] == str(ids[0])


async def test_websocket_without_a_valid_token_is_closed(platform, stream_settings, drivers):
    async with running_engine(platform, stream_settings, auth_timeout_s=1) as addr:
        async with websockets.connect(f"ws://{addr}/v1/drivers/stream",
                                      additional_headers={"Authorization": "Bearer wkd_bad"}) as ws:
            reply = json.loads(await ws.recv())
            assert reply["reason"] == "unknown_token"
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd.code == 4401
        async with websockets.connect(f"ws://{addr}/v1/drivers/stream") as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd.code == 4408


async def test_a_burst_over_the_rate_limit_is_refused(platform, stream_settings, drivers):
    _, ids, tokens = drivers
    async with running_engine(platform, stream_settings, ping_rate_limit=5, ping_rate_window_s=30) as addr, \
            httpx.AsyncClient(base_url=f"http://{addr}") as http:
        auth = {"Authorization": f"Bearer {tokens[1].token}"}
        statuses = []
        for _ in range(4):
            resp = await http.post("/v1/drivers/locations", json={"pings": [ping(ids[1]), ping(ids[1])]},
                                   headers=auth)
            statuses.append(resp.status_code)
        assert statuses == [202, 202, 429, 429]
        assert resp.json()["error"]["reason"] == "rate_limited" and resp.headers["Retry-After"] == "30"
    assert len(await _topic_values(stream_settings, 4)) == 4


async def test_a_socket_burst_over_the_rate_limit_is_refused_and_the_socket_stays_open(
        platform, stream_settings, drivers):
    _, ids, tokens = drivers
    async with running_engine(platform, stream_settings, ping_rate_limit=5, ping_rate_window_s=30) as addr, \
            websockets.connect(f"ws://{addr}/v1/drivers/stream",
                               additional_headers={"Authorization": f"Bearer {tokens[1].token}"}) as ws:
        assert json.loads(await ws.recv())["type"] == "ready"
        replies = []
        for seq in range(4):
            await ws.send(json.dumps({"type": "pings", "seq": seq, "pings": [ping(ids[1]), ping(ids[1])]}))
            replies.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
        assert [(r["type"], r["seq"]) for r in replies] == [("ack", 0), ("ack", 1), ("error", 2), ("error", 3)]
        assert replies[2]["reason"] == "rate_limited" and replies[0]["accepted"] == 2
        assert rejected("ws", "rate_limited") >= 4
    assert len(await _topic_values(stream_settings, 4)) == 4   # only the allowed pings were produced


async def test_openapi_document_describes_the_ingest_endpoints(platform, stream_settings):
    async with running_engine(platform, stream_settings, api_docs=True, operator_token="op-secret") as addr, \
            httpx.AsyncClient(base_url=f"http://{addr}") as http:
        doc = (await http.get("/openapi.json")).json()
        assert "/v1/drivers/locations" in doc["paths"]
        shift = doc["paths"]["/v1/drivers/shift"]["post"]
        assert shift["requestBody"]["content"]["application/json"]["schema"]["properties"]["action"]["enum"] == [
            "start", "end"]
        assert {"401", "422", "429", "503"} <= set(shift["responses"])
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        assert (await http.get("/readyz")).status_code == 200
        metrics = await http.get("/metrics", headers={"Authorization": "Bearer op-secret"})
        assert "wakala_pings_rejected_total" in metrics.text


@pytest.mark.parametrize("field, value", [("phone_number", "0821234567"), ("vehicle_type", "rocket"),
                                          ("first_name", "Robert'); DROP TABLE drivers;--"),
                                          ("vehicle_registration", "<script>")])
async def test_invalid_driver_records_are_refused(platform, field, value):
    tenant = await create_tenant(platform, f"Driver Validation {uuid.uuid4().hex[:6]}")
    fields = dict(first_name="Lerato", last_name="M", phone_number="+27820000000", license_number="LIC-1",
                  vehicle_type="car", vehicle_registration="GP 123-456")
    fields[field] = value
    async with TenantDatabase(platform) as db:
        with pytest.raises(InvalidDriver, match=field):
            await create_driver(db, tenant.id, NewDriver(**fields))
        async with db.tenant_transaction(tenant.id) as tx:
            assert await tx.fetchval("SELECT count(*) FROM drivers") == 0
