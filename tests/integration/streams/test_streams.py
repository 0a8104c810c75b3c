"""Location ingest: decoding (pure), the Redis contract, and the faust worker end to end.

Everything after the decoding tests runs against the real Redis and the real Kafka-protocol
broker. Topics and the consumer group are unique per run; Redis keys are fixed by the
contract, so every test uses fresh driver and tenant UUIDs and deletes what it created.
Workers run inside the test process and are always stopped from outside, with bounded waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from geo import distance_m
from schema.db import TenantDatabase
from schema.settings import DSN, PostgresSettings
from schema.tenants import create_tenant
from streams.decode import MAX_PING_BYTES, UndecodablePing, decode_ping, decode_pings
from streams.keys import (
    INGEST_COUNTS_KEY,
    INGEST_LATENCY_KEY,
    available_key,
    location_key,
    state_key,
)
from streams.location_store import InvalidStatus, LocationStore, UnknownDriverState
from streams.pg_writer import PgLocationWriter
from streams.records import DriverPing
from streams.settings import StreamSettings
from tests.integration.streams.harness import (
    CAPE_TOWN,
    JOBURG,
    SOWETO,
    eventually,
    new_ids,
    ping,
    raw,
)
from tests.integration.streams.harness import running_worker as harness_worker

RUN = uuid.uuid4().hex[:8]
BASE = StreamSettings.from_env()


# -- decoding: pure ---------------------------------------------------------------------------

DRIVER, TENANT = "3f1c2a9e-8d7b-4c6a-9e5f-1a2b3c4d5e6f", "7e6d5c4b-3a29-4817-a6b5-c4d3e2f1a0b9"


def test_decode_accepts_the_gateway_wire_format():
    body = ping(DRIVER, TENANT, *JOBURG, 1_700_000_000.5, battery=77)
    decoded = decode_ping(raw(body))
    assert isinstance(decoded, DriverPing)
    assert (decoded.driver_id, decoded.tenant_id) == (DRIVER, TENANT)
    assert (decoded.lat, decoded.lng, decoded.ts, decoded.battery) == (*JOBURG, 1_700_000_000.5, 77.0)
    assert decoded.vehicle_type == "motorbike" and decoded.battery.__class__ is float


def test_decode_normalises_uuids_and_ignores_unknown_fields():
    body = ping(DRIVER.upper(), "{" + TENANT + "}", *JOBURG, 1_700_000_000, future_field=1)
    decoded = decode_ping(raw(body))
    assert (decoded.driver_id, decoded.tenant_id) == (DRIVER, TENANT)
    assert decoded.battery is None


def _with(**changes: Any) -> bytes:
    body = ping(DRIVER, TENANT, *JOBURG, 1_700_000_000)
    body["received_at"] = 1_700_000_001
    for key, value in changes.items():
        if value is _DROP:
            del body[key]
        else:
            body[key] = value
    return raw(body)


_DROP = object()
HOSTILE: list[tuple[str, bytes, str]] = [
    ("empty", b"", "bad_json"),
    ("truncated", b'{"v": 1, "lat": ', "bad_json"),
    ("not utf-8", b"\xff\xfe{}", "bad_json"),
    ("array", b"[1, 2]", "bad_json"),
    ("null", b"null", "bad_json"),
    ("string", b'"ping"', "bad_json"),
    ("deep nesting", b"[" * 2000 + b"]" * 2000, "bad_json"),
    ("too large", b'{"pad": "' + b"x" * MAX_PING_BYTES + b'"}', "too_large"),
    ("NaN lat", _with(lat=math.nan), "not_finite:lat"),
    ("Infinity lng", _with(lng=math.inf), "not_finite:lng"),
    ("1e400 ts", _with(ts=1).replace(b'"ts": 1', b'"ts": 1e400'), "not_finite:ts"),
    ("400-digit lat", _with(lat=10**400), "out_of_range:lat"),
    ("lat 91", _with(lat=91.0), "out_of_range:lat"),
    ("lng -180.5", _with(lng=-180.5), "out_of_range:lng"),
    ("negative speed", _with(speed_mps=-1), "out_of_range:speed_mps"),
    ("heading 361", _with(heading_deg=361), "out_of_range:heading_deg"),
    ("negative accuracy", _with(accuracy_m=-3), "out_of_range:accuracy_m"),
    ("battery 101", _with(battery=101), "out_of_range:battery"),
    ("lat as text", _with(lat="-26.2"), "wrong_type:lat"),
    ("lat as bool", _with(lat=True), "wrong_type:lat"),
    ("lat as list", _with(lat=[1]), "wrong_type:lat"),
    ("lat null", _with(lat=None), "missing_field:lat"),
    ("no lng", _with(lng=_DROP), "missing_field:lng"),
    ("no ts", _with(ts=_DROP), "missing_field:ts"),
    ("no received_at", _with(received_at=_DROP), "missing_field:received_at"),
    ("no vehicle", _with(vehicle_type=_DROP), "missing_field:vehicle_type"),
    ("vehicle as number", _with(vehicle_type=3), "wrong_type:vehicle_type"),
    ("vehicle too long", _with(vehicle_type="x" * 51), "out_of_range:vehicle_type"),
    ("vehicle with control chars", _with(vehicle_type="bike\u0000\ud800"), "out_of_range:vehicle_type"),
    ("driver not a uuid", _with(driver_id="driver-7"), "bad_uuid:driver_id"),
    ("driver uuid as int", _with(driver_id=12345), "wrong_type:driver_id"),
    ("tenant huge text", _with(tenant_id="a" * 2000), "bad_uuid:tenant_id"),
    ("no tenant", _with(tenant_id=_DROP), "missing_field:tenant_id"),
    ("schema v2", _with(v=2), "schema_version"),
    ("schema v as text", _with(v="1"), "schema_version"),
    ("schema v true", _with(v=True), "schema_version"),
    ("no schema v", _with(v=_DROP), "missing_field:v"),
    ("fix from the future", _with(ts=1_700_000_001 + 3600), "future_timestamp:ts"),
]


@pytest.mark.parametrize(("value", "reason"), [(v, r) for _, v, r in HOSTILE],
                         ids=[name for name, _, _ in HOSTILE])
def test_decode_refuses_hostile_input_with_a_reason(value: bytes, reason: str):
    with pytest.raises(UndecodablePing) as refused:
        decode_ping(value)
    assert refused.value.reason == reason


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_decode_of_arbitrary_bytes_never_raises_anything_else(value: bytes):
    with contextlib.suppress(UndecodablePing):
        decode_ping(value)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional={
    k: _json_values for k in ("v", "driver_id", "tenant_id", "lat", "lng", "accuracy_m",
                              "speed_mps", "heading_deg", "ts", "received_at", "vehicle_type",
                              "battery")}))
def test_decode_of_arbitrary_json_objects_yields_a_valid_ping_or_a_reason(body: dict[str, Any]):
    try:
        decoded = decode_ping(json.dumps(body).encode())
    except UndecodablePing as exc:
        assert exc.reason
        return
    assert -90 <= decoded.lat <= 90 and -180 <= decoded.lng <= 180
    assert all(math.isfinite(x) for x in (decoded.ts, decoded.speed_mps, decoded.heading_deg))


# -- the Redis contract, through LocationStore ------------------------------------------------

@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(BASE.redis_url)
    try:
        await client.ping()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"Redis at {BASE.redis_url} does not answer ({exc}); run `wakala services up`")
    yield client
    await client.aclose()


@pytest.fixture
async def forget(redis: Redis) -> AsyncIterator[Callable[..., None]]:
    """Register driver and tenant ids whose keys are deleted after the test."""
    drivers: set[str] = set()
    tenants: set[str] = set()

    def register(*, drivers_: tuple[str, ...] = (), tenants_: tuple[str, ...] = ()) -> None:
        drivers.update(drivers_)
        tenants.update(tenants_)

    yield register
    keys = [k for d in drivers for k in (location_key(d), state_key(d))]
    for tenant in tenants:
        keys += [k async for k in redis.scan_iter(match=f"drivers:available:{tenant}:*", count=1000)]
    for i in range(0, len(keys), 500):
        await redis.delete(*keys[i:i + 500])


def driver_ping(driver: str, tenant: str, lat: float, lng: float, ts: float, **extra: Any) -> DriverPing:
    return decode_ping(raw(ping(driver, tenant, lat, lng, ts, **extra)))


async def test_store_writes_every_contract_field_with_a_ttl(redis, forget):
    store = LocationStore(redis, BASE)
    driver, tenant = new_ids()
    forget(drivers_=(driver,), tenants_=(tenant,))
    now = time.time()
    outcome = await store.write_batch([driver_ping(driver, tenant, *JOBURG, now, battery=64)])
    assert outcome.counts == {"accepted": 1, "out_of_order": 0, "implausible_jump": 0}
    got = await store.get(driver)
    assert got is not None
    assert got["lat"] == JOBURG[0] and got["lng"] == JOBURG[1] and got["ts"] == now
    assert (got["speed"], got["heading"], got["accuracy"], got["battery"]) == (8.0, 90.0, 5.0, 64.0)
    assert (got["tenant"], got["vehicle"], got["status"]) == (tenant, "motorbike", "offline")
    assert got["cell"] == store.cell_of(*JOBURG)
    assert abs(got["seen_ms"] - outcome.redis_now_ms) == 0
    assert 0 < await redis.pttl(location_key(driver)) <= BASE.location_ttl_s * 1000
    # a ping never creates a status, and an offline driver is not indexed
    assert await redis.exists(state_key(driver)) == 0
    assert await store.available_in_cells(tenant, [got["cell"]]) == []


async def test_replayed_and_older_pings_change_nothing(redis, forget):
    store = LocationStore(redis, BASE)
    driver, tenant = new_ids()
    forget(drivers_=(driver,), tenants_=(tenant,))
    now = time.time()
    first = driver_ping(driver, tenant, *JOBURG, now)
    await store.write_batch([first])
    before = await store.get(driver)
    outcome = await store.write_batch([first, driver_ping(driver, tenant, *SOWETO, now - 1)])
    assert outcome.outcomes == ["out_of_order", "out_of_order"]
    assert await store.get(driver) == before


async def test_an_expired_driver_leaves_the_index_without_anyone_deleting_it(redis, forget):
    store = LocationStore(redis, replace(BASE, location_ttl_s=1.5))
    driver, tenant = new_ids()
    forget(drivers_=(driver,), tenants_=(tenant,))
    cell = store.cell_of(*JOBURG)
    await store.start_shift(tenant, driver, "motorbike")
    await store.write_batch([driver_ping(driver, tenant, *JOBURG, time.time())])
    assert [d[0] for d in await store.available_in_cells(tenant, [cell])] == [driver]

    async def gone() -> bool:
        return not await redis.exists(location_key(driver))

    await eventually(gone, within=3.0)
    assert await store.available_in_cells(tenant, [cell]) == []
    assert await redis.zscore(available_key(tenant, cell), driver) is None   # trimmed by the read
    assert await store.status(driver) == "available"   # status survives a silent driver


async def test_status_changes_drive_the_availability_index(redis, forget):
    store = LocationStore(redis, BASE)
    driver, tenant = new_ids()
    forget(drivers_=(driver,), tenants_=(tenant,))
    cell = store.cell_of(*JOBURG)
    assert await store.status(driver) == "offline"
    with pytest.raises(UnknownDriverState):
        await store.set_status(driver, "available")
    with pytest.raises(InvalidStatus):
        await store.set_status(driver, "asleep")
    assert await store.start_shift(tenant, driver, "bakkie") is False   # no location yet
    await store.write_batch([driver_ping(driver, tenant, *JOBURG, time.time())])
    [(found, lat, lng, vehicle, seen_ms)] = await store.available_in_cells(tenant, [cell])
    assert (found, lat, lng, vehicle) == (driver, *JOBURG, "motorbike")

    assert await store.set_status(driver, "busy", expect="available") is True
    assert await store.set_status(driver, "busy", expect="available") is False   # assigned once
    assert await store.available_in_cells(tenant, [cell]) == []
    assert (await store.get(driver))["status"] == "busy"

    assert await store.set_status(driver, "available") is True
    assert [d[0] for d in await store.available_in_cells(tenant, [cell])] == [driver]
    await store.end_shift(driver)
    assert await store.status(driver) == "offline"
    assert await store.available_in_cells(tenant, [cell]) == []
    assert await redis.zscore(available_key(tenant, cell), driver) is None
    # another tenant never sees the driver
    assert await store.start_shift(tenant, driver, "bakkie") is True
    assert await store.available_in_cells(str(uuid.uuid4()), [cell]) == []


async def test_moving_cells_leaves_exactly_one_cell(redis, forget):
    store = LocationStore(redis, BASE)
    driver, tenant = new_ids()
    forget(drivers_=(driver,), tenants_=(tenant,))
    await store.start_shift(tenant, driver, "motorbike")
    now = time.time()
    a = store.cell_of(*JOBURG)
    b = store.cell_of(JOBURG[0] + 0.01, JOBURG[1])    # ~1.1 km north: another res-9 cell
    assert a != b
    await store.write_batch([driver_ping(driver, tenant, *JOBURG, now - 60),
                             driver_ping(driver, tenant, JOBURG[0] + 0.01, JOBURG[1], now)])
    assert await redis.zscore(available_key(tenant, a), driver) is None
    assert await redis.zscore(available_key(tenant, b), driver) is not None
    assert [d[0] for d in await store.available_in_cells(tenant, [a, b])] == [driver]


# -- the worker, end to end through the broker ------------------------------------------------

async def _broker_answers(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await asyncio.wait_for(admin.start(), 10)
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"no Kafka broker answers at {bootstrap} ({exc}); run `wakala services up`")
    await admin.close()


CREATED_TOPICS: list[str] = []


async def create_topics(settings: StreamSettings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([
            NewTopic(settings.locations_topic, settings.locations_partitions, 1),
            NewTopic(settings.dead_letters_topic, settings.locations_partitions, 1),
        ])
    finally:
        await admin.close()
    forget_topics(settings)


def forget_topics(settings: StreamSettings) -> None:
    CREATED_TOPICS.extend([settings.locations_topic, settings.dead_letters_topic,
                           f"{settings.app_id}-__assignor-__leader"])


@pytest.fixture(scope="module", autouse=True)
async def _delete_created_topics() -> AsyncIterator[None]:
    """The bundled broker keeps topics in memory: give back what this module created."""
    yield
    if not CREATED_TOPICS:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=BASE.kafka_bootstrap)
    try:
        await asyncio.wait_for(admin.start(), 10)
        existing = set(await admin.list_topics())
        doomed = [t for t in CREATED_TOPICS if t in existing]
        if doomed:
            await admin.delete_topics(doomed)
    except Exception:  # noqa: BLE001 - best effort: a leftover topic is not a test failure
        pass
    finally:
        await admin.close()
        CREATED_TOPICS.clear()


def unique_settings(name: str, **changes: Any) -> StreamSettings:
    suffix = f"{RUN}-{name}"
    return replace(BASE, locations_topic=f"driver-locations-{suffix}",
                   dead_letters_topic=f"dead-letters-{suffix}", app_id=f"wakala-test-{suffix}",
                   **changes)


def running_worker(settings: StreamSettings, pg=None, **options: Any):
    """The harness's worker, with this module's 20 s for taking every partition."""
    return harness_worker(settings, pg, assigned_within=20, **options)


@pytest.fixture(scope="module")
async def producer() -> AsyncIterator[AIOKafkaProducer]:
    await _broker_answers(BASE.kafka_bootstrap)
    prod = AIOKafkaProducer(bootstrap_servers=BASE.kafka_bootstrap, linger_ms=2)
    await prod.start()
    yield prod
    await prod.stop()


@pytest.fixture(scope="module")
async def worker(producer) -> AsyncIterator[tuple[faust.App, StreamSettings]]:
    """One worker shared by the end-to-end tests (default TTL, no Postgres).

    It creates its own topics, with locations_partitions (3, not the broker's default).
    """
    settings = unique_settings("main", locations_partitions=3)
    forget_topics(settings)
    async with running_worker(settings) as app:
        for topic in (settings.locations_topic, settings.dead_letters_topic):
            assert await producer.partitions_for(topic) == {0, 1, 2}
        client = Redis.from_url(settings.redis_url)
        driver, tenant = new_ids()    # a first ping proves the whole path is up
        await producer.send_and_wait(settings.locations_topic, raw(ping(driver, tenant, *JOBURG, time.time())),
                                     key=driver.encode())

        async def landed() -> bool:
            return bool(await client.exists(location_key(driver)))

        await eventually(landed, within=15)
        await client.delete(location_key(driver))
        await client.aclose()
        yield app, settings


async def send(producer: AIOKafkaProducer, topic: str, driver: str, value: bytes | dict) -> None:
    if isinstance(value, dict):
        value = raw(value)
    await producer.send_and_wait(topic, value, key=driver.encode())


async def test_a_ping_on_the_topic_is_in_redis_within_a_second(worker, producer, redis, forget):
    app, settings = worker
    store = LocationStore(redis, settings)
    driver, tenant = new_ids()
    forget(drivers_=(driver,), tenants_=(tenant,))
    now = time.time()
    started = time.monotonic()
    await send(producer, settings.locations_topic, driver,
               ping(driver, tenant, *JOBURG, now, battery=51.5, speed_mps=12.5, heading_deg=270))
    got = await eventually(lambda: store.get(driver), within=1.0, every=0.005)
    assert time.monotonic() - started < 1.0
    assert got == {
        "lat": JOBURG[0], "lng": JOBURG[1], "speed": 12.5, "heading": 270.0, "accuracy": 5.0,
        "ts": now, "seen_ms": got["seen_ms"], "tenant": tenant, "vehicle": "motorbike",
        "status": "offline", "cell": store.cell_of(*JOBURG), "battery": 51.5,
    }
    assert abs(got["seen_ms"] / 1000 - time.time()) < 5
    assert int(await redis.hget(INGEST_COUNTS_KEY, "accepted") or 0) >= 1


async def test_out_of_order_pings_do_not_move_the_driver(worker, producer, redis, forget):
    app, settings = worker
    store = LocationStore(redis, settings)
    driver, tenant = new_ids()
    forget(drivers_=(driver,), tenants_=(tenant,))
    now = time.time()
    before = app.ingest_stats["out_of_order"]
    await send(producer, settings.locations_topic, driver, ping(driver, tenant, *JOBURG, now))
    await send(producer, settings.locations_topic, driver, ping(driver, tenant, *SOWETO, now - 30))
    await send(producer, settings.locations_topic, driver, ping(driver, tenant, *SOWETO, now))

    async def counted() -> bool:
        return app.ingest_stats["out_of_order"] - before == 2

    await eventually(counted)
    got = await store.get(driver)
    assert (got["lat"], got["lng"], got["ts"]) == (*JOBURG, now)


async def test_an_implausible_jump_is_rejected_and_counted(worker, producer, redis, forget):
    app, settings = worker
    store = LocationStore(redis, settings)
    driver, tenant = new_ids()
    forget(drivers_=(driver,), tenants_=(tenant,))
    now = time.time()
    assert distance_m(*JOBURG, *CAPE_TOWN) / 60 * 3.6 > settings.max_speed_kmh
    before = app.ingest_stats["implausible_jump"]
    await send(producer, settings.locations_topic, driver, ping(driver, tenant, *JOBURG, now - 1300))
    await send(producer, settings.locations_topic, driver, ping(driver, tenant, *CAPE_TOWN, now - 1240))

    async def counted() -> bool:
        return app.ingest_stats["implausible_jump"] - before == 1

    await eventually(counted)
    got = await store.get(driver)
    assert (got["lat"], got["lng"], got["ts"]) == (*JOBURG, now - 1300)
    # 20 km in 20 minutes is a motorbike, not a jump
    await send(producer, settings.locations_topic, driver, ping(driver, tenant, *SOWETO, now - 60))

    async def moved() -> bool:
        return (await store.get(driver))["lat"] == SOWETO[0]

    await eventually(moved)


async def test_undecodable_messages_become_dead_letters_and_ingest_goes_on(worker, producer, redis, forget):
    app, settings = worker
    store = LocationStore(redis, settings)
    driver, tenant = new_ids()
    forget(drivers_=(driver,), tenants_=(tenant,))
    now = time.time()
    good = ping(driver, tenant, *JOBURG, now)
    bad = {
        "bad_json": b'{"v": 1, "driver_id": ',
        "not_finite:lat": raw(good).replace(f'"lat": {JOBURG[0]}'.encode(), b'"lat": NaN'),
        "missing_field:lng": raw({k: v for k, v in good.items() if k != "lng"}),
        "wrong_type:ts": raw({**good, "ts": "yesterday"}),
        "too_large": b'{"pad": "' + b"x" * 100_000 + b'"}',
        "out_of_range:lat": raw({**good, "lat": 1e300}),
    }
    for value in bad.values():
        await producer.send(settings.locations_topic, value, key=driver.encode())
    await send(producer, settings.locations_topic, driver, good)
    await eventually(lambda: store.get(driver))

    consumer = AIOKafkaConsumer(settings.dead_letters_topic, bootstrap_servers=settings.kafka_bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    letters: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 10
        while len(letters) < len(bad) and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                letters += [json.loads(r.value) for r in records if r.key == driver.encode()]
    finally:
        await consumer.stop()
    assert sorted(letter["reason"] for letter in letters) == sorted(bad)
    for letter in letters:
        assert letter["topic"] == settings.locations_topic and letter["key"] == driver
        assert letter["offset"] >= 0 and 0 <= letter["partition"] < settings.locations_partitions
        assert len(letter["value_preview"]) <= 512
    assert app.ingest_stats["dead_letter"] >= len(bad)


async def test_status_changes_and_pings_keep_the_index_right(worker, producer, redis, forget):
    app, settings = worker
    store = LocationStore(redis, settings)
    driver, tenant = new_ids()
    forget(drivers_=(driver,), tenants_=(tenant,))
    here = store.cell_of(*JOBURG)
    north = (JOBURG[0] + 0.01, JOBURG[1])
    there = store.cell_of(*north)
    now = time.time()
    await store.start_shift(tenant, driver, "motorbike")
    await send(producer, settings.locations_topic, driver, ping(driver, tenant, *JOBURG, now - 120))

    async def available_here() -> bool:
        return [d[0] for d in await store.available_in_cells(tenant, [here])] == [driver]

    await eventually(available_here)
    await send(producer, settings.locations_topic, driver, ping(driver, tenant, *north, now - 60))

    async def moved() -> bool:
        return [d[0] for d in await store.available_in_cells(tenant, [there])] == [driver]

    await eventually(moved)
    assert await redis.zscore(available_key(tenant, here), driver) is None
    assert await store.available_in_cells(tenant, [here]) == []

    await store.set_status(driver, "busy")
    await send(producer, settings.locations_topic, driver, ping(driver, tenant, *JOBURG, now))

    async def back_here() -> bool:
        return (await store.get(driver))["cell"] == here

    await eventually(back_here)
    assert await store.available_in_cells(tenant, [here, there]) == []   # busy: never indexed
    await store.end_shift(driver)
    assert await store.status(driver) == "offline"
    assert (await store.get(driver))["status"] == "offline"


# -- Postgres: the throttled current_location writer ------------------------------------------

INSERT_DRIVER = """
INSERT INTO drivers (first_name, last_name, license_number, vehicle_type, vehicle_registration)
VALUES ('Thabo', 'Nkosi', $1, 'motorbike', 'GP 123-456') RETURNING id
"""
CURRENT_LOCATION = """
SELECT ST_Y(current_location::geometry) AS lat, ST_X(current_location::geometry) AS lng
FROM drivers WHERE id = $1
"""


async def test_current_location_is_written_to_postgres_at_most_once_per_interval(platform, producer, redis, forget):
    tenant = await create_tenant(platform, "Spaza Movers")
    async with TenantDatabase(platform) as db:
        async with db.tenant_transaction(tenant.id) as tx:
            driver = str(await tx.fetchval(INSERT_DRIVER, f"L-{uuid.uuid4().hex[:10]}"))
        ghost = str(uuid.uuid4())    # pings for a driver the tenant does not have: 0 rows
        forget(drivers_=(driver, ghost), tenants_=(str(tenant.id),))

        async def position() -> tuple[float, float] | None:
            async with db.tenant_transaction(tenant.id, readonly=True) as tx:
                row = await tx.fetchrow(CURRENT_LOCATION, uuid.UUID(driver))
            return None if row["lat"] is None else (round(row["lat"], 6), round(row["lng"], 6))

        interval = 3.0
        settings = unique_settings("pg", pg_write_interval_s=interval)
        await create_topics(settings)
        async with running_worker(settings, platform, latency_samples=True) as app:
            stats = app.ingest_stats
            topic = settings.locations_topic
            now = time.time()
            await send(producer, topic, driver, ping(driver, str(tenant.id), *JOBURG, now - 1000))
            await send(producer, topic, ghost, ping(ghost, str(tenant.id), *SOWETO, now - 1000))
            first = await eventually(position, within=5)
            written_at = time.monotonic()
            assert first == JOBURG
            # the benchmark's latency samples: gateway accept to Redis write, in ms
            newest = float(await redis.lindex(INGEST_LATENCY_KEY, 0))
            assert 0 <= newest < 5000
            await eventually(lambda: _value(stats["pg_written"] >= 1))
            # 20 km in 950 s: plausible
            await send(producer, topic, driver, ping(driver, str(tenant.id), *SOWETO, now - 50))
            await eventually(lambda: _value(stats["accepted"] >= 3))
            await asyncio.sleep(max(0.0, written_at + interval - 1.0 - time.monotonic()))
            assert await position() == JOBURG          # throttled: not yet
            assert stats["pg_written"] == 1            # the ghost updated no row

            async def second() -> bool:
                return await position() == SOWETO

            await eventually(second, within=interval + 3)
            assert time.monotonic() - written_at >= interval - 0.2
            assert stats["pg_written"] == 2 and stats["pg_failed"] == 0


async def _value(x: Any) -> Any:
    return x


async def test_a_postgres_outage_is_counted_and_retried_an_interval_later():
    nowhere = replace(PostgresSettings.from_env(), control=DSN("127.0.0.1", 1, "postgres", "nowhere"),
                      connect_timeout_s=1)
    db = TenantDatabase(nowhere)
    clock = [1000.0]
    writer = PgLocationWriter(db, interval_s=10, clock=lambda: clock[0])
    writer.note([driver_ping(str(uuid.uuid4()), str(uuid.uuid4()), *JOBURG, time.time())])
    try:
        assert await writer.flush() == (0, 1)         # failed, counted, kept
        assert writer.pending == 1
        clock[0] += 5
        assert await writer.flush() == (0, 0)         # not before the interval
        clock[0] += 5
        assert await writer.flush() == (0, 1)         # retried an interval later
    finally:
        await db.close()


# -- at-least-once: restarts and failures lose nothing ----------------------------------------

async def _committed(settings: StreamSettings) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=settings.app_id,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(settings.locations_topic, p))
                for p in range(settings.locations_partitions)}
    finally:
        await consumer.stop()


async def test_a_restarted_worker_resumes_and_loses_nothing(producer, redis, forget):
    settings = unique_settings("restart", batch_size=200)
    await create_topics(settings)
    tenant = str(uuid.uuid4())
    drivers = [str(uuid.uuid4()) for _ in range(1000)]
    forget(drivers_=tuple(drivers), tenants_=(tenant,))
    now = time.time()
    rounds = 10
    sent = []
    for k in range(rounds):
        for i, driver in enumerate(drivers):
            body = ping(driver, tenant, JOBURG[0] + i * 1e-4, JOBURG[1] + k * 1e-5, now - 100 + k)
            sent.append(await producer.send(settings.locations_topic, raw(body), key=driver.encode()))
    await asyncio.gather(*sent)
    total = rounds * len(drivers)

    async with running_worker(settings) as first:
        await eventually(lambda: _value(first.ingest_stats["accepted"] >= total // 4), within=30)
    first_seen = first.ingest_stats["accepted"]
    committed = await _committed(settings)
    assert sum(o or 0 for o in committed.values()) > 0, "the first worker committed nothing"

    async with running_worker(settings) as second:
        async def all_latest() -> bool:
            stats = second.ingest_stats
            return stats["accepted"] + stats["out_of_order"] >= total - sum(o or 0 for o in committed.values())

        await eventually(all_latest, within=60)
        replayed = second.ingest_stats["accepted"] + second.ingest_stats["out_of_order"]
    assert replayed < total                           # it resumed; it did not start over
    assert first_seen + replayed >= total
    pipe = redis.pipeline(transaction=False)
    for driver in drivers:
        pipe.hget(location_key(driver), "ts")
    assert {float(ts) for ts in await pipe.execute()} == {now - 100 + rounds - 1}


async def test_a_failing_batch_is_not_acknowledged(producer, redis, forget):
    settings = unique_settings("crash")
    await create_topics(settings)
    tenant = str(uuid.uuid4())
    drivers = [str(uuid.uuid4()) for _ in range(50)]
    forget(drivers_=tuple(drivers), tenants_=(tenant,))
    now = time.time()
    await asyncio.gather(*[
        await producer.send(settings.locations_topic, raw(ping(d, tenant, *JOBURG, now)), key=d.encode())
        for d in drivers
    ])
    failures = []

    def break_redis_writes(app: faust.App) -> None:
        async def failing_write(store, pings):
            failures.append(len(pings))
            raise RuntimeError("a bug in the middle of a batch")
        app.ingest._write = failing_write

    async with running_worker(settings, prepare=break_redis_writes) as broken:
        await eventually(lambda: _value(bool(failures)), within=15)
        await eventually(lambda: _value(broken._crashed.is_set()), within=5)
    assert all(o in (None, 0) for o in (await _committed(settings)).values())
    assert not await redis.exists(*[location_key(d) for d in drivers])

    async with running_worker(settings) as fixed:
        await eventually(lambda: _value(fixed.ingest_stats["accepted"] == len(drivers)), within=15)
    assert await redis.exists(*[location_key(d) for d in drivers]) == len(drivers)


# -- throughput (opt-in: WAKALA_STREAMS_BENCH=1 pytest tests/test_streams.py -k throughput -s) --

@pytest.mark.skipif(os.environ.get("WAKALA_STREAMS_BENCH") != "1", reason="benchmark; set WAKALA_STREAMS_BENCH=1")
async def test_throughput_of_the_agent_alone(producer, redis, forget):
    n = int(os.environ.get("WAKALA_STREAMS_BENCH_PINGS", "200000"))
    n_drivers = 20_000
    settings = unique_settings(f"bench-{uuid.uuid4().hex[:4]}")
    await create_topics(settings)
    tenants = [str(uuid.uuid4()) for _ in range(10)]
    drivers = [(str(uuid.uuid4()), tenants[i % 10]) for i in range(n_drivers)]
    forget(drivers_=tuple(d for d, _ in drivers), tenants_=tuple(tenants))
    bulk = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=20, max_batch_size=1 << 20)
    await bulk.start()
    now = time.time()
    started = time.perf_counter()
    futures = []
    for k in range(n // n_drivers):
        for i, (driver, tenant) in enumerate(drivers):
            body = ping(driver, tenant, JOBURG[0] + (i % 100) * 1e-3 + k * 1e-5,
                        JOBURG[1] + (i // 100) * 1e-3, now - 100 + k, battery=80.0)
            futures.append(await bulk.send(settings.locations_topic, raw(body), key=driver.encode()))
    await asyncio.gather(*futures)
    await bulk.stop()
    produced_s = time.perf_counter() - started
    async with running_worker(settings) as app:
        stats = app.ingest_stats

        async def first() -> bool:
            return stats["accepted"] > 0

        await eventually(first, within=30, every=0.005)
        t0, n0 = time.perf_counter(), stats["accepted"]
        await eventually(lambda: _value(stats["accepted"] >= n), within=300, every=0.01)
        elapsed = time.perf_counter() - t0
    rate = (n - n0) / elapsed
    print(f"\nproduced {n} pings in {produced_s:.1f} s; the agent landed them at {rate:,.0f} pings/s "
          f"({stats['batches']} batches)")


# -- uploads: one message holding one driver's batch of pings -----------------------------------


def test_an_upload_array_decodes_to_every_ping_in_order():
    body = [ping(DRIVER, TENANT, JOBURG[0] + i * 1e-4, JOBURG[1], 1_700_000_000 + i) for i in range(5)]
    decoded = decode_pings(raw(body))
    assert [p.ts for p in decoded] == [1_700_000_000 + i for i in range(5)]
    assert decode_pings(raw(body[0]))[0].ts == 1_700_000_000


@pytest.mark.parametrize("mutate, reason", [
    (lambda b: [], "empty_batch"),
    (lambda b: b * 200, "too_large"),
    (lambda b: [b[0], {**b[1], "driver_id": TENANT}], "mixed_drivers"),
    (lambda b: [b[0], {**b[1], "tenant_id": DRIVER}], "mixed_drivers"),
    (lambda b: [b[0], {**b[1], "lat": 123}], "out_of_range:lat"),
    (lambda b: [b[0], "not a ping"], "bad_json"),
    (lambda b: [b], "bad_json"),
])
def test_a_bad_upload_is_refused_whole_with_a_reason(mutate, reason):
    body = [ping(DRIVER, TENANT, *JOBURG, 1_700_000_000 + i) for i in range(3)]
    with pytest.raises(UndecodablePing) as info:
        decode_pings(raw(mutate(body)))
    assert info.value.reason == reason
