"""The engine's stage metrics, read from a running engine's /metrics: API latency by route
template and status, orders placed, PostgreSQL pools in use, delivery transitions."""

from __future__ import annotations

import random
import re

import httpx
import orjson
import pytest

from loadtest.orders import OrdersBench, populate_bench_tenant
from loadtest.orders_load import ApiConnection, order_body
from schema.db import TenantDatabase
from schema.tenants import create_tenant
from tests.integration.engine_helpers import running_engine

pytestmark = pytest.mark.timeout(120)


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one series in Prometheus text (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


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
