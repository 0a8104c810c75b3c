"""The vendor's live order feed (``GET /vendor``): its HTTP answer, and the page in a real
headless Chromium, against the real engine (orders placed and moved through the REST API, the
frames coming from the hub over ``/v1/vendors/stream``) and against a fake feed the test drives
frame by frame (drops, reconnections, late duplicates).

Chromium and Playwright as in ``tests.test_tracking_page`` (Debian's ``chromium``, installed
when missing; Playwright's own browser download is never used).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import Request, WebSocket

from dispatch.api import sign
from dispatch.tracking.pages.vendor import PAGE, PAGE_GZIP, router
from tests.integration.api.test_api import SECRET, Shop, _pay, _tenant_with_admin, auth
from tests.integration.engine_helpers import running_app, serving_app
from tests.integration.tracking.test_hub import settings  # noqa: F401
from tests.integration.tracking.test_tracking_page import bare_app, browser, chromium, get_from  # noqa: F401

TOKEN = "wku_" + "0123456789abcdef" * 2 + "_" + "Ab3-_" * 8 + "xyz"


# -- the HTTP answer ---------------------------------------------------------------------------

async def get(path: str, **headers: str) -> httpx.Response:
    return await get_from(router, path, **headers)


async def test_the_page_is_static_small_and_served_with_strict_headers() -> None:
    response = await get("/vendor", **{"Accept-Encoding": "identity"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "content-encoding" not in response.headers and response.content == PAGE
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["vary"] == "Accept-Encoding"
    csp = dict(d.strip().split(" ", 1) for d in response.headers["content-security-policy"].split(";"))
    assert csp["default-src"] == "'none'" and csp["connect-src"] == "'self'"
    assert csp["form-action"] == "'none'" and csp["frame-ancestors"] == "'none'"
    assert "'sha256-" in csp["script-src"] and "'sha256-" in csp["style-src"]
    assert not re.search(r"https?:|//[a-z0-9]", response.headers["content-security-policy"])
    # Nothing from anywhere else: no URL, no external script, style, font or image.
    assert not re.search(rb"(?:https?:)?//[a-z0-9]", PAGE)
    assert b"<img" not in PAGE and b"@import" not in PAGE and b"@font-face" not in PAGE

    zipped = await get("/vendor", **{"Accept-Encoding": "gzip, br"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert int(zipped.headers["content-length"]) == len(PAGE_GZIP) and gzip.decompress(PAGE_GZIP) == PAGE
    assert zipped.headers["content-security-policy"] == response.headers["content-security-policy"]
    # A few KB: under 2 s of transfer on a 20 kbit/s GPRS link.
    assert len(PAGE) < 9_000, len(PAGE)
    assert len(PAGE_GZIP) < 4_500, len(PAGE_GZIP)


# -- the page in a browser ---------------------------------------------------------------------

class Watch:
    """What a page did that a test must see: console errors, requests, websockets."""

    def __init__(self, page, addr: str) -> None:
        self.problems: list[str] = []
        self.sockets: list[str] = []
        self.urls: list[str] = []
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("console", lambda msg: self.problems.append(f"console {msg.type}: {msg.text}")
                if msg.type in ("error", "warning") else None)
        page.on("request", self._request)
        page.on("websocket", lambda ws: self.sockets.append(ws.url))
        self.addr = addr

    def _request(self, req) -> None:
        self.urls.append(req.url)
        if not req.url.startswith(f"http://{self.addr}/"):
            self.problems.append(f"request elsewhere: {req.url}")

    def check(self, token: str) -> None:
        assert self.problems == []
        assert all(url == f"ws://{self.addr}/v1/vendors/stream" for url in self.sockets), self.sockets
        assert not any(token in url for url in self.urls + self.sockets)   # in no URL, ever


async def open_page(chrome, addr: str, fragment: str, width: int = 360):
    page = await chrome.new_page(viewport={"width": width, "height": 760})
    page.set_default_timeout(15_000)
    watch = Watch(page, addr)
    await page.goto(f"http://{addr}/vendor{fragment}")
    return page, watch


async def row_statuses(page) -> list[tuple[str, str]]:
    rows = await page.locator("#orders li").evaluate_all(
        "l => l.map(e => [e.querySelector('b').textContent, e.dataset.status])")
    return [tuple(r) for r in rows]


async def counts(page) -> dict[str, int]:
    return dict(await page.locator("#counts .c").evaluate_all("l => l.map(e => [e.dataset.s, +e.dataset.n])"))


@pytest.mark.timeout(900)   # the first browser test of a fresh machine installs Chromium
async def test_the_page_follows_the_vendors_orders_live_from_the_real_engine(
        browser, platform, settings, tmp_path: Path) -> None:  # noqa: F811
    from playwright.async_api import expect

    async with running_app(platform, settings, dispatcher=True, payment_webhook_secret=SECRET) as (addr, _state), \
            httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http:
        tenant, admin = await _tenant_with_admin(platform)
        shop = await Shop(http, tenant, admin).setup()
        page, watch = await open_page(browser, addr, f"#{shop.vendor}")
        await expect(page.locator("#conn")).to_have_text("live")
        # The token left the address bar (and so the history) as soon as the page read it.
        assert await page.evaluate("location.href") == f"http://{addr}/vendor"
        await expect(page.locator("#login")).to_be_hidden()
        await expect(page.locator("#empty")).to_be_visible()

        resp = await http.post("/v1/orders", json=shop.order_body(2), headers=auth(shop.customer))
        assert resp.status_code == 201, resp.text
        order = resp.json()
        row = page.locator(f"#orders li[data-id='{order['id']}']")
        await expect(row).to_have_attribute("data-status", "pending")
        await expect(row.locator("b")).to_have_text(order["order_number"])
        await expect(row.locator(".it")).to_have_text("2× Maize meal 10 kg")
        await expect(row.locator(".t")).to_have_text(f"{order['currency']} {order['total_amount']}")
        await expect(row.locator("time")).not_to_have_text("")
        await expect(page.locator("#empty")).to_be_hidden()

        raw = _pay(tenant, order, f"pay-{uuid.uuid4().hex}")
        resp = await http.post("/v1/payments/callback", content=raw, headers={
            "Content-Type": "application/json", "X-Wakala-Signature": sign(SECRET, raw)})
        assert resp.status_code == 200, resp.text
        await expect(row).to_have_attribute("data-status", "paid")
        resp = await http.post("/v1/vendor/orders/" + order["id"] + "/accept", headers=auth(shop.vendor))
        assert resp.status_code == 200, resp.text
        await expect(row).to_have_attribute("data-status", "accepted")
        await expect(row.locator(".c")).to_have_text("accepted")

        second = (await http.post("/v1/orders", json=shop.order_body(1), headers=auth(shop.customer))).json()
        await expect(page.locator("#orders li")).to_have_count(2)
        await page.wait_for_function("n => document.querySelector('#orders li b').textContent === n",
                                     arg=second["order_number"])
        assert await row_statuses(page) == [(second["order_number"], "pending"), (order["order_number"], "accepted")]
        await page.wait_for_function("() => document.querySelectorAll('#counts .c').length === 2")
        assert await counts(page) == {"pending": 1, "accepted": 1}
        await page.screenshot(path=tmp_path / "vendor-live.png", full_page=True)

        # A reload (the fragment is gone) keeps the feed: the token stayed in this tab's storage,
        # and the orders so far come back from the REST list.
        await page.reload()
        await expect(page.locator("#conn")).to_have_text("live")
        await expect(page.locator("#orders li")).to_have_count(2)
        assert await row_statuses(page) == [(second["order_number"], "pending"), (order["order_number"], "accepted")]
        await page.close()
        watch.check(shop.vendor)
        assert len(watch.sockets) == 2


@pytest.mark.timeout(300)
async def test_a_refused_token_shows_why_and_the_page_stops_trying(
        browser, platform, settings, tmp_path: Path) -> None:  # noqa: F811
    from playwright.async_api import expect

    async with running_app(platform, settings, dispatcher=False) as (addr, _state), \
            httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http:
        tenant, admin = await _tenant_with_admin(platform)
        shop = await Shop(http, tenant, admin).setup()
        unknown = f"wku_{tenant.id.hex}_{'x' * 43}"
        for case, (token, shown, message, sockets) in enumerate((
                (unknown, "token not valid", "This token is not valid", 1),       # 4401 unknown_token
                (shop.customer, "not a vendor", "This token is not a vendor's", 1),  # 4403 forbidden
                ("not-a-token", "token not valid", "That is not a vendor token", 0))):   # never sent
            page, watch = await open_page(browser, addr, f"#{token}", width=320)
            await expect(page.locator("#conn")).to_have_text(shown)
            await expect(page.locator("#msg")).to_contain_text(message)
            await expect(page.locator("#login")).to_be_visible()   # paste another one
            assert await page.evaluate("location.href") == f"http://{addr}/vendor"
            # A first retry would come within 0.5-1 s: 3 s without one is "never".
            await page.wait_for_timeout(3000)
            assert len(watch.sockets) == sockets
            await expect(page.locator("#conn")).to_have_text(shown)
            assert await page.evaluate("document.documentElement.scrollWidth") <= 320
            assert await page.evaluate("sessionStorage.length") == 0   # a refused token is not kept
            await page.screenshot(path=tmp_path / f"refused-{case}.png", full_page=True)

            # The form takes a good token and the feed starts.
            await page.fill("#tok", shop.vendor)
            await page.click("#login button")
            await expect(page.locator("#conn")).to_have_text("live")
            await expect(page.locator("#msg")).to_be_hidden()
            await page.close()
            watch.check(shop.vendor)


# -- against a fake feed -----------------------------------------------------------------------

class FakeFeed:
    """``/v1/vendors/stream`` and ``/v1/vendor/orders`` as the page sees them, driven by the test."""

    def __init__(self, listed: list[dict]) -> None:
        self.connections: asyncio.Queue[tuple[WebSocket, list[str]]] = asyncio.Queue()
        self.listed = listed
        self.list_auth: list[str] = []

    async def next_connection(self, within_s: float = 10) -> tuple[WebSocket, list[str]]:
        return await asyncio.wait_for(self.connections.get(), within_s)

    async def stream(self, ws: WebSocket) -> None:
        offered = list(ws.scope.get("subprotocols", ()))
        await ws.accept(subprotocol=offered[0] if offered else None)
        await self.connections.put((ws, offered))
        with contextlib.suppress(Exception):
            while True:   # the page sends nothing; this returns when it goes away
                await ws.receive_text()


@contextlib.asynccontextmanager
async def serving_page_and_fake_feed(listed: list[dict]) -> AsyncIterator[tuple[str, FakeFeed]]:
    feed = FakeFeed(listed)
    app = bare_app(router)
    app.add_api_websocket_route("/v1/vendors/stream", feed.stream)

    @app.get("/v1/vendor/orders")
    async def orders(request: Request) -> dict:
        feed.list_auth.append(request.headers.get("authorization", ""))
        return {"orders": feed.listed}

    async with serving_app(app) as addr:
        yield addr, feed


def view(number: int, status: str, created: datetime, updated: datetime | None = None, name: str = "Bread") -> dict:
    return {"id": str(uuid.UUID(int=number)), "order_number": f"WK-{number:06d}", "status": status,
            "vendor_id": "v", "lines": [{"name": name, "quantity": 1}], "total_amount": "25.00",
            "currency": "ZAR", "created_at": created.isoformat(),
            "updated_at": (updated or created).isoformat()}


@pytest.mark.timeout(300)
async def test_the_page_reconnects_after_a_drop_and_never_goes_back_to_an_older_state(
        browser, tmp_path: Path) -> None:  # noqa: F811
    from playwright.async_api import expect

    t0 = datetime.now(UTC) - timedelta(minutes=30)
    listed = [view(1, "delivered", t0), view(2, "ready", t0 + timedelta(minutes=5),
                                              name="A very long product name that would not fit " * 3)]
    async with serving_page_and_fake_feed(listed) as (addr, feed):
        page, watch = await open_page(browser, addr, "", width=320)
        await expect(page.locator("#login")).to_be_visible()   # no token: the form
        await expect(page.locator("#conn")).to_have_text("no token")
        await page.fill("#tok", TOKEN)
        await page.click("#login button")
        ws, offered = await feed.next_connection()
        assert offered == [f"bearer.{TOKEN}"]
        await ws.send_json({"type": "ready", "vendor_id": "v"})
        await expect(page.locator("#conn")).to_have_text("live")
        # The REST list fills the page, newest order first, with the token as a bearer header.
        await expect(page.locator("#orders li")).to_have_count(2)
        assert feed.list_auth == [f"Bearer {TOKEN}"]
        assert await row_statuses(page) == [("WK-000002", "ready"), ("WK-000001", "delivered")]
        assert await page.evaluate("document.documentElement.scrollWidth") <= 320

        now = datetime.now(UTC)
        await ws.send_json({"type": "order", "event": "place", "order": view(3, "pending", now)})
        await ws.send_json({"type": "order", "event": "pay", "order": view(3, "paid", now, now + timedelta(seconds=2))})
        await ws.send_json({"type": "heartbeat", "ts": 1.0})
        await expect(page.locator("#orders li").first).to_have_attribute("data-status", "paid")
        assert await counts(page) == {"paid": 1, "ready": 1, "delivered": 1}

        # The feed drops: "reconnecting…", then a new connection with the same token.
        await ws.close(1011)
        await expect(page.locator("#conn")).to_have_text("reconnecting…")
        ws, offered = await feed.next_connection(within_s=5)
        assert offered == [f"bearer.{TOKEN}"]
        feed.listed = [view(3, "accepted", now, now + timedelta(seconds=5)), *listed]   # moved while away
        await ws.send_json({"type": "ready", "vendor_id": "v"})
        await expect(page.locator("#conn")).to_have_text("live")
        await expect(page.locator("#orders li").first).to_have_attribute("data-status", "accepted")
        # A late duplicate of an earlier event changes nothing.
        await ws.send_json({"type": "order", "event": "pay", "order": view(3, "paid", now, now + timedelta(seconds=2))})
        await ws.send_json({"type": "order", "event": "mark_ready",
                            "order": view(3, "ready", now, now + timedelta(seconds=9))})
        await expect(page.locator("#orders li").first).to_have_attribute("data-status", "ready")
        assert await row_statuses(page) == [("WK-000003", "ready"), ("WK-000002", "ready"), ("WK-000001", "delivered")]
        assert await counts(page) == {"ready": 2, "delivered": 1}
        await page.screenshot(path=tmp_path / "vendor-fake.png", full_page=True)

        # Signing out forgets the token and closes the feed.
        await page.click("#out")
        await expect(page.locator("#conn")).to_have_text("signed out")
        await expect(page.locator("#orders li")).to_have_count(0)
        assert await page.evaluate("sessionStorage.length") == 0
        await page.close()
    watch.check(TOKEN)
