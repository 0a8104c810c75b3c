"""The engine's stage metrics, read from a running engine's /metrics: API latency by route
template and status, orders placed, PostgreSQL pools in use, delivery transitions; and the
background stages: the location worker's lag as the engine samples it from the broker, the
backup age, the sales views' refresh age, the outbox relay's backlog and publications, and the
tracking hub's sockets and frames. (The location worker's own metrics, on its own port, are
tests/integration/streams/test_worker_metrics.py.)"""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from loadtest.orders import OrdersBench, populate_bench_tenant
from loadtest.orders_load import ApiConnection, order_body
from schema.connect import connection
from schema.db import TenantDatabase
from schema.tenants import create_tenant
from streams.topics import ensure_topics
from tests.integration.api.test_api import SECRET, Shop, _tenant_with_admin, auth
from tests.integration.engine_helpers import running_engine
from tests.integration.streams.harness import eventually
from tests.integration.tracking.test_hub import Socket

pytestmark = pytest.mark.timeout(120)


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one series in Prometheus text (0 when absent)."""
    found = present(text, name, **labels)
    return 0.0 if found is None else found


def present(text: str, name: str, **labels: str) -> float | None:
    """The value of one series in Prometheus text, None when absent."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_orders_and_requests_show_in_the_stage_metrics(platform, stream_settings) -> None:
    tenant = await create_tenant(platform, "Metrics Spaza")
    async with TenantDatabase(platform) as db:
        shop = await populate_bench_tenant(db, tenant, OrdersBench(customers=2, products=3))
    async with running_engine(platform, stream_settings, operator_token="op-secret") as addr, \
            httpx.AsyncClient(base_url=f"http://{addr}") as http:
        before = (await http.get("/metrics", headers={"Authorization": "Bearer op-secret"})).text
        conn = ApiConnection(int(addr.split(":")[1]))
        try:
            for i in range(3):
                answer = await conn.post("/v1/orders", orjson.dumps(order_body(shop, random.Random(i))),
                                         {"Authorization": f"Bearer {shop.tokens[0]}"})
                assert answer.status == 201, answer.json
            refused = await conn.post(f"/v1/orders/{'0' * 8}-0000-0000-0000-{'0' * 12}/cancel", b"{}",
                                      {"Authorization": "Bearer made-up"})
            assert refused.status == 401
        finally:
            conn.close()
        after = (await http.get("/metrics", headers={"Authorization": "Bearer op-secret"})).text
    placed = "wakala_orders_placed_total"
    assert sample(after, placed) - sample(before, placed) == 3
    count = "wakala_api_request_seconds_count"
    assert sample(after, count, method="POST", route="/v1/orders", status="201") \
        - sample(before, count, method="POST", route="/v1/orders", status="201") == 3
    # the route's template, not the path with its id
    assert sample(after, count, method="POST", route="/v1/orders/{order_id}/cancel", status="401") >= 1
    assert "0000-0000" not in "".join(line for line in after.splitlines() if line.startswith(count))
    shard = str(tenant.shard_id)
    assert sample(after, "wakala_db_pool_connections", shard=shard, pool="write", state="idle") \
        + sample(after, "wakala_db_pool_connections", shard=shard, pool="write", state="in_use") >= 1
    assert "wakala_delivery_transitions_total" in after and "wakala_matching_seconds" in after


async def test_lag_backups_views_outbox_and_hub_show_in_the_metrics(platform, stream_settings) -> None:
    # 7 pings waiting on the locations topic and no worker: the group's lag is 7. One record a
    # produce request: the bundled tansu reports a partition's end offset as one past the first
    # record of its last batch, so batched records would show a smaller lag.
    await ensure_topics(stream_settings.kafka_bootstrap, {stream_settings.locations_topic: 4})
    producer = AIOKafkaProducer(bootstrap_servers=stream_settings.kafka_bootstrap)
    await producer.start()
    try:
        for i in range(7):
            await producer.send_and_wait(stream_settings.locations_topic, key=b"d%d" % i, value=b"{}")
    finally:
        await producer.stop()
    tenant, admin = await _tenant_with_admin(platform)
    async with connection(platform.control) as conn:
        await conn.execute("INSERT INTO backup_log (tenant_id, backup_type, status, started_at, completed_at) "
                           "VALUES ($1, 'full', 'completed', $2, $2)", tenant.id,
                           datetime.now(UTC) - timedelta(hours=30))
    headers = {"Authorization": "Bearer op-secret"}
    async with running_engine(platform, stream_settings, operator_token="op-secret", dispatcher=True, ops_sample_s=1,
                              payment_webhook_secret=SECRET) as addr, \
            httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http:
        before = (await http.get("/metrics", headers=headers)).text
        shop = await Shop(http, tenant, admin).setup()
        async with Socket(f"ws://{addr}/v1/vendors/stream", additional_headers=auth(shop.vendor)) as screen:
            await screen.wait(lambda s: s.of("ready"))
            resp = await http.post("/v1/orders", json=shop.order_body(1), headers=auth(shop.customer))
            assert resp.status_code == 201, resp.text
            await screen.wait(lambda s: s.of("order"))
            during = (await http.get("/metrics", headers=headers)).text

            async def sampled() -> str | None:
                text = (await http.get("/metrics", headers=headers)).text
                ready = present(text, "wakala_location_lag_messages") is not None \
                    and present(text, "wakala_backup_age_seconds") is not None \
                    and present(text, "wakala_outbox_unpublished", outbox="order_events_outbox") is not None
                return text if ready else None

            after = await eventually(sampled, within=30, every=0.5)
    assert sample(during, "wakala_hub_clients", kind="vendor") - sample(before, "wakala_hub_clients", kind="vendor") == 1
    assert sample(during, "wakala_hub_frames_sent_total", kind="vendor") \
        - sample(before, "wakala_hub_frames_sent_total", kind="vendor") >= 1          # the order
    assert sample(during, "wakala_hub_frames_total", kind="order") > sample(before, "wakala_hub_frames_total", kind="order")
    assert present(after, "wakala_location_lag_messages") == 7
    assert 30 * 3600 - 60 < present(after, "wakala_backup_age_seconds") < 30 * 3600 + 600
    assert present(after, "wakala_backup_stale_tenants") == 1
    assert sample(after, "wakala_outbox_published_total", outbox="order_events_outbox") \
        > sample(before, "wakala_outbox_published_total", outbox="order_events_outbox")
    shard = str(tenant.shard_id)
    assert present(after, "wakala_outbox_unpublished", outbox="order_events_outbox", shard=shard) is not None
    assert present(after, "wakala_outbox_oldest_unpublished_seconds", outbox="delivery_events_outbox",
                   shard=shard) is not None
    assert 0 <= present(after, "wakala_view_refresh_age_seconds") < 600
