"""The tracking page in Chromium against the REAL engine and hub: a real order, a real link,
real driver pings landing through the tracker, real transitions by the driver's app."""

import time
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from dispatch.tracking.tracker import Tracker
from geo import destination
from schema.db import TenantDatabase
from streams.location_store import LocationStore
from tests.integration.api.test_api import SECRET, Shop, _tenant_with_admin
from tests.integration.engine_helpers import running_app
from tests.integration.streams.test_streams import driver_ping
from tests.integration.tracking.test_hub import (  # noqa: F401
    SHOP_AT,
    accept_offer,
    land,
    link,
    new_driver,
    ready_order,
    settings,
)
from tests.integration.tracking.test_tracking_page import browser, chromium, marker_xy  # noqa: F401


@pytest.mark.timeout(900)   # the first browser test of a fresh machine installs Chromium
async def test_the_page_follows_a_real_delivery(browser, platform, settings, tmp_path: Path):  # noqa: F811
    from playwright.async_api import expect

    async with running_app(platform, settings, dispatcher=True, payment_webhook_secret=SECRET,
                           offer_timeout_s=30) as (addr, _state), \
            httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http, TenantDatabase(platform) as db:
        redis = aioredis.from_url(settings.redis_url)
        store = LocationStore(redis, settings)
        tracker = Tracker(redis, None, db=None)   # what the location worker runs on each landed batch
        try:
            tenant, admin = await _tenant_with_admin(platform)
            shop = await Shop(http, tenant, admin).setup()
            sim = await new_driver(db, tenant, addr)
            async with sim:
                await land(store, sim, tenant, destination(*SHOP_AT, 0.0, 400))
                order = await ready_order(http, tenant, shop)
                await accept_offer(sim, order["delivery_id"])
                token = await link(http, order, shop.customer)

                page = await browser.new_page(viewport={"width": 360, "height": 760})
                page.set_default_timeout(15_000)
                await page.goto(f"http://{addr}/t/{token}")
                await expect(page.locator("#conn")).to_have_text("live")
                await expect(page.locator("#status")).to_have_attribute("data-status", "assigned")

                first, second = destination(*SHOP_AT, 0.0, 900), destination(*SHOP_AT, 0.0, 300)
                await tracker.on_pings([driver_ping(sim.driver_id, str(tenant.id), *first, time.time())])
                await expect(page.locator("#eta")).to_be_visible()
                await page.wait_for_timeout(600)   # the marker's short CSS transition
                before = await marker_xy(page)
                await tracker.on_pings([driver_ping(sim.driver_id, str(tenant.id), *second, time.time() + 1)])
                await page.wait_for_function(
                    "([x, y]) => { const t = document.querySelector('#driver').style.transform;"
                    " return t && t !== `translate(${x}px, ${y}px)`; }", arg=list(before))
                await page.wait_for_timeout(600)
                after = await marker_xy(page)
                assert after[1] > before[1]   # south, towards the shop: further down the map

                reply = await sim.send({"type": "delivery_update", "delivery_id": order["delivery_id"],
                                        "event": "pick_up"})
                assert reply["status"] == "picked_up"
                await expect(page.locator("#status")).to_have_attribute("data-status", "picked_up")
                await page.screenshot(path=str(tmp_path / "tracking-live.png"))
                await page.close()
        finally:
            await redis.aclose()
