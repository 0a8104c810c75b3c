"""Order posts through the running engine when something around them fails: the cache's Redis
is gone after the commit (the order stands), the database drops the transaction (503, nothing
written); and the pending cap as the engine applies it."""

import asyncio
import contextlib
import socket

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from dispatch.core.cache import Cache
from tests.integration.api.test_api import SECRET, Shop, _counts, _tenant_with_admin, auth
from tests.integration.engine_helpers import running_app

pytestmark = pytest.mark.timeout(180)


@contextlib.asynccontextmanager
async def engine_with_shop(platform, stream_settings, **overrides):
    async with running_app(platform, stream_settings, payment_webhook_secret=SECRET, **overrides) as (addr, state):
        async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http:
            tenant, admin = await _tenant_with_admin(platform)
            yield http, state, await Shop(http, tenant, admin).setup(stock=20)


def _dead_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]   # closed again: nothing listens there


async def test_an_order_placed_while_the_cache_is_unreachable_answers_success_once(platform, stream_settings):
    async with engine_with_shop(platform, stream_settings) as (http, state, shop):
        dead = aioredis.from_url(f"redis://127.0.0.1:{_dead_port()}/0")
        healthy, state.cache = state.cache, Cache(dead, timeout_s=1)
        try:
            resp = await http.post("/v1/orders", json=shop.order_body(2), headers=auth(shop.customer))
            assert resp.status_code == 201, resp.text
            assert state.cache.invalidation_failures == 1
        finally:
            state.cache = healthy
            await dead.aclose()
        counts = await _counts(platform, shop.tenant)
        assert counts["orders"] == 1 and counts["inventory_reservations"] == 1
        mine = await http.get(f"/v1/orders/{resp.json()['id']}", headers=auth(shop.customer))
        assert mine.status_code == 200 and mine.json()["status"] == "pending"


async def test_an_order_whose_database_session_is_terminated_answers_503_and_writes_nothing(
        platform, stream_settings, pg_base):
    async with engine_with_shop(platform, stream_settings) as (http, _state, shop):
        before = await _counts(platform, shop.tenant)
        database = platform.shard_databases[shop.tenant.shard_id]
        admin = await asyncpg.connect(pg_base.url())
        blocker = await asyncpg.connect(pg_base.with_database(database).url())
        try:
            hold = blocker.transaction()   # holds the stock table: the placing transaction waits inside
            await hold.start()
            await blocker.execute(f'LOCK TABLE "{shop.tenant.schema_name}".inventory IN ACCESS EXCLUSIVE MODE')
            post = asyncio.create_task(http.post("/v1/orders", json=shop.order_body(1), headers=auth(shop.customer)))
            victims: list = []
            for _ in range(200):
                victims = await admin.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE datname = ANY($1::text[]) AND wait_event_type = 'Lock' "
                    "AND pid <> pg_backend_pid()", [database])
                if victims or post.done():
                    break
                await asyncio.sleep(0.05)
            assert victims, "the order post never waited on the held lock"
            for row in victims:
                await admin.execute("SELECT pg_terminate_backend($1)", row["pid"])
            resp = await post
        finally:
            await blocker.close()
            await admin.close()
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"]["reason"] == "unavailable" and "Retry-After" in resp.headers
        assert await _counts(platform, shop.tenant) == before
        again = await http.post("/v1/orders", json=shop.order_body(1), headers=auth(shop.customer))
        assert again.status_code == 201, again.text   # the pool recovers on its own


async def test_the_engine_caps_a_customers_pending_orders(platform, stream_settings):
    async with engine_with_shop(platform, stream_settings, max_pending_orders=2) as (http, _state, shop):
        answers = await asyncio.gather(*(http.post("/v1/orders", json=shop.order_body(1), headers=auth(shop.customer))
                                         for _ in range(5)))
        codes = sorted(r.status_code for r in answers)
        assert codes == [201, 201, 409, 409, 409], [r.text for r in answers]
        refused = [r.json()["error"] for r in answers if r.status_code == 409]
        assert {e["reason"] for e in refused} == {"too_many_pending"}
        assert (await _counts(platform, shop.tenant))["orders"] == 2
