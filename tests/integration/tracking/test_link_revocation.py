"""Revoking an order's tracking links over REST (``POST /v1/orders/{id}/tracking-link/revoke``
for its customer, ``POST /v1/vendor/orders/{id}/tracking-link/revoke`` for its vendor): the
running engine against the real services, the watchers on the real tracking socket, and the
tracking page in Chromium (as in ``tests.integration.tracking.test_tracking_page``)."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from dispatch.identity.auth import hash_token
from dispatch.tracking.links import CLOSE_INVALID
from schema.db import TenantDatabase
from tests.integration.api.test_api import SECRET, Shop, _tenant_with_admin, auth
from tests.integration.engine_helpers import running_app
from tests.integration.tracking.test_hub import (  # noqa: F401
    Socket,
    link,
    ready_order,
    refused,
    settings,
)
from tests.integration.tracking.test_tracking_page import browser, chromium  # noqa: F401

pytestmark = pytest.mark.timeout(300)


def customer_path(order_id: str) -> str:
    return f"/v1/orders/{order_id}/tracking-link/revoke"


def vendor_path(order_id: str) -> str:
    return f"/v1/vendor/orders/{order_id}/tracking-link/revoke"


async def link_rows(db: TenantDatabase, tenant) -> dict[str, object]:
    """token hash -> revoked_at of every tracking link of the tenant."""
    async with db.tenant_transaction(tenant.id, readonly=True) as tx:
        return {r["token_hash"]: r["revoked_at"] for r in await tx.fetch("SELECT token_hash, revoked_at FROM tracking_links")}


async def snapshot_of(addr: str, token: str) -> Socket:
    watcher = await Socket(f"ws://{addr}/v1/track/{token}").__aenter__()
    await watcher.wait(lambda s: s.of("snapshot"))
    return watcher


async def test_only_the_orders_customer_or_vendor_revokes_and_open_pages_close_at_once(platform, settings):  # noqa: F811
    async with running_app(platform, settings, dispatcher=True, payment_webhook_secret=SECRET) as (addr, _state), \
            httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http, TenantDatabase(platform) as db:
        tenant, admin = await _tenant_with_admin(platform)
        tenant_b, admin_b = await _tenant_with_admin(platform)
        shop, other_shop = await Shop(http, tenant, admin).setup(), await Shop(http, tenant, admin).setup()
        shop_b = await Shop(http, tenant_b, admin_b).setup()
        order = await ready_order(http, tenant, shop)
        order_b = await ready_order(http, tenant_b, shop_b)
        by_customer = await link(http, order, shop.customer)
        by_vendor = await link(http, order, shop.vendor, who="vendor")
        other_tenants = await link(http, order_b, shop_b.customer)
        watchers = [await snapshot_of(addr, t) for t in (by_customer, by_vendor, other_tenants)]

        # Anyone but the order's own customer and vendor: 404 (403 for the wrong role), as for
        # a missing order, and nothing is revoked. Hostile ids are a 404 too, never a 500.
        hostile = ["not-a-uuid", "' OR 1=1 --", "..%2F..%2Fadmin", "%00", "%0d%0aX-Injected:%201",
                   "0" * 5000, str(uuid.uuid4()), order_b["id"], order["id"].upper() + "0", "%F0%9F%92%A3"]
        attempts = [(customer_path(order["id"]), other_shop.customer), (vendor_path(order["id"]), other_shop.vendor),
                    (customer_path(order["id"]), shop_b.customer), (vendor_path(order["id"]), shop_b.vendor),
                    (customer_path(order["id"]), shop.vendor), (vendor_path(order["id"]), shop.customer),
                    (customer_path(order["id"]), admin)]
        attempts += [(customer_path(bad), shop.customer) for bad in hostile]
        attempts += [(vendor_path(bad), shop.vendor) for bad in hostile]
        for path, who in attempts:
            resp = await http.post(path, headers=auth(who))
            # 422 invalid_text for the NUL, 414 past the target limit; a path that no longer
            # reaches the route ("..%2F") gets the router's plain 404.
            assert resp.status_code in (403, 404, 414, 422), (path, resp.status_code, resp.text)
            error = resp.json().get("error", {"reason": "not_found"})
            assert error["reason"] in ("forbidden", "not_found", "uri_too_long", "invalid_text"), resp.text
            assert order["delivery_id"] not in resp.text
        resp = await http.post(customer_path(order["id"]))
        assert resp.status_code == 401 and resp.json()["error"]["field"] == "authorization"
        resp = await http.post(customer_path(order["id"]), headers={**auth(shop.customer), "Idempotency-Key": "k" * 256})
        assert resp.status_code == 422 and resp.json()["error"]["field"] == "Idempotency-Key"
        rows = await link_rows(db, tenant)
        assert set(rows) == {hash_token(by_customer), hash_token(by_vendor)} and set(rows.values()) == {None}
        assert all(w.close is None for w in watchers)

        # The customer revokes: both links of the order (whoever made them) end, their open
        # pages are closed at once, and the tokens are refused from then on.
        resp = await http.post(customer_path(order["id"]), headers={**auth(shop.customer), "Idempotency-Key": "rv-1"})
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"order_id": order["id"], "revoked": 2}
        for watcher in watchers[:2]:
            assert await watcher.closed(within=5) == (CLOSE_INVALID, "revoked_token")
        for token in (by_customer, by_vendor):
            assert await refused(addr, token) == (CLOSE_INVALID, "invalid_token", [])
        assert None not in (await link_rows(db, tenant)).values()
        # Another tenant's link of another order is untouched.
        assert watchers[2].close is None
        async with Socket(f"ws://{addr}/v1/track/{other_tenants}") as again:
            await again.wait(lambda s: s.of("snapshot"))

        # Idempotent: the same key replays the answer; a new revoke finds nothing live.
        resp = await http.post(customer_path(order["id"]), headers={**auth(shop.customer), "Idempotency-Key": "rv-1"})
        assert resp.status_code == 200 and resp.headers["idempotent-replayed"] == "true"
        assert resp.json() == {"order_id": order["id"], "revoked": 2}
        for path, who in ((customer_path(order["id"]), shop.customer), (vendor_path(order["id"]), shop.vendor)):
            resp = await http.post(path, headers=auth(who))
            assert resp.status_code == 200 and resp.json() == {"order_id": order["id"], "revoked": 0}, resp.text

        # A fresh link works; the vendor revokes it (ids in any case the parser accepts).
        fresh = await link(http, order, shop.customer)
        watcher = await snapshot_of(addr, fresh)
        resp = await http.post(vendor_path(order["id"].upper()), headers=auth(shop.vendor))
        assert resp.status_code == 200 and resp.json() == {"order_id": order["id"], "revoked": 1}, resp.text
        assert await watcher.closed(within=5) == (CLOSE_INVALID, "revoked_token")
        assert await refused(addr, fresh) == (CLOSE_INVALID, "invalid_token", [])

        # An order of the caller with no link (no delivery yet): nothing to revoke, not an error.
        resp = await http.post("/v1/orders", json=shop.order_body(1), headers=auth(shop.customer))
        early = resp.json()
        resp = await http.post(customer_path(early["id"]), headers=auth(shop.customer))
        assert resp.status_code == 200 and resp.json() == {"order_id": early["id"], "revoked": 0}
        for w in watchers + [watcher]:
            await w.__aexit__(None, None, None)


@pytest.mark.timeout(900)   # the first browser test of a fresh machine installs Chromium
async def test_a_tracking_page_open_in_a_browser_stops_when_its_link_is_revoked(
        browser, platform, settings, tmp_path: Path) -> None:  # noqa: F811
    from playwright.async_api import expect

    async with running_app(platform, settings, dispatcher=True, payment_webhook_secret=SECRET) as (addr, _state), \
            httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http:
        tenant, admin = await _tenant_with_admin(platform)
        shop = await Shop(http, tenant, admin).setup()
        order = await ready_order(http, tenant, shop)
        token = await link(http, order, shop.vendor, who="vendor")
        page = await browser.new_page(viewport={"width": 360, "height": 760})
        page.set_default_timeout(15_000)
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        await page.goto(f"http://{addr}/t/{token}")
        await expect(page.locator("#conn")).to_have_text("live")

        resp = await http.post(customer_path(order["id"]), headers=auth(shop.customer))
        assert resp.status_code == 200 and resp.json()["revoked"] == 1
        await expect(page.locator("#conn")).to_have_text("link not valid")
        await expect(page.locator("#msg")).to_contain_text("This tracking link is not valid")
        await page.wait_for_timeout(2500)   # no retry: a revoked link never comes back
        assert len(sockets) == 1
        await page.screenshot(path=tmp_path / "revoked.png", full_page=True)

        # Opened again later (a reload): refused at once.
        await page.reload()
        await expect(page.locator("#conn")).to_have_text("link not valid")
        await page.close()
