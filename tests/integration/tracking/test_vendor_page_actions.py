"""The vendor page's accept / reject / mark-ready buttons, in Chromium: against the real engine
(the buttons call the vendor's own REST routes with the page's token; the rows follow the
hub's frames), and against a fake API that refuses, to see the refusal shown in the row.

Chromium and Playwright as in ``tests.integration.tracking.test_tracking_page``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from fastapi import Request, Response, WebSocket

from dispatch.api import sign
from dispatch.tracking.pages.vendor import router
from tests.integration.api.test_api import SECRET, Shop, _pay, _tenant_with_admin, auth
from tests.integration.engine_helpers import running_app, serving_app
from tests.integration.tracking.test_hub import settings  # noqa: F401
from tests.integration.tracking.test_tracking_page import bare_app, browser, chromium  # noqa: F401
from tests.integration.tracking.test_vendor_page import TOKEN, open_page, view

pytestmark = pytest.mark.timeout(900)   # the first browser test of a fresh machine installs Chromium


async def buttons(row) -> list[str]:
    return await row.locator(".b button").evaluate_all("l => l.map(e => e.textContent)")


async def pay(http: httpx.AsyncClient, tenant, order: dict) -> None:
    raw = _pay(tenant, order, f"pay-{uuid.uuid4().hex}")
    resp = await http.post("/v1/payments/callback", content=raw, headers={
        "Content-Type": "application/json", "X-Wakala-Signature": sign(SECRET, raw)})
    assert resp.status_code == 200, resp.text


async def test_the_buttons_move_real_orders_and_show_the_apis_refusals(
        browser, platform, settings, tmp_path: Path) -> None:  # noqa: F811
    from playwright.async_api import expect

    async with running_app(platform, settings, dispatcher=True, payment_webhook_secret=SECRET) as (addr, _state), \
            httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http:
        tenant, admin = await _tenant_with_admin(platform)
        shop = await Shop(http, tenant, admin).setup()
        page, watch = await open_page(browser, addr, f"#{shop.vendor}")
        await expect(page.locator("#conn")).to_have_text("live")

        async def status_of(order: dict) -> str:
            resp = await http.get(f"/v1/vendor/orders/{order['id']}", headers=auth(shop.vendor))
            return resp.json()["status"]

        # A card order before payment: it can only be rejected; paid, accepted or rejected.
        order = (await http.post("/v1/orders", json=shop.order_body(1), headers=auth(shop.customer))).json()
        row = page.locator(f"#orders li[data-id='{order['id']}']")
        await expect(row).to_have_attribute("data-status", "pending")
        assert await buttons(row) == ["Reject"]
        await pay(http, tenant, order)
        await expect(row).to_have_attribute("data-status", "paid")
        assert await buttons(row) == ["Accept", "Reject"]

        # Accept: the order is accepted in the engine, the row says so and offers "Mark ready".
        await row.get_by_role("button", name="Accept").click()
        await expect(row).to_have_attribute("data-status", "accepted")
        await expect(row.locator(".c")).to_have_text("accepted")
        assert await status_of(order) == "accepted"
        await expect(row.locator(".b button")).to_have_text(["Mark ready"])
        await row.get_by_role("button", name="Mark ready").click()
        await expect(row).to_have_attribute("data-status", "ready")
        await expect(row.locator(".b button")).to_have_count(0)
        assert await status_of(order) in ("ready", "dispatched")
        await page.screenshot(path=tmp_path / "ready.png", full_page=True)

        # Reject asks why; an empty reason is the API's 422, shown in the row, nothing changed.
        second = (await http.post("/v1/orders", json=shop.order_body(1), headers=auth(shop.customer))).json()
        await pay(http, tenant, second)
        row2 = page.locator(f"#orders li[data-id='{second['id']}']")
        await expect(row2).to_have_attribute("data-status", "paid")
        await row2.get_by_role("button", name="Reject").click()
        reason = row2.locator("input")
        await expect(reason).to_be_focused()
        await row2.get_by_role("button", name="Send").click()
        await expect(row2.locator(".e")).to_have_text("Reject failed: reason (1-500 characters) is required")
        await expect(row2.get_by_role("alert")).to_be_visible()
        assert await status_of(second) == "paid"
        await expect(row2.get_by_role("button", name="Send")).to_be_enabled()   # it can be tried again
        await page.screenshot(path=tmp_path / "refused.png", full_page=True)
        await reason.fill("out of bread")
        await reason.press("Enter")
        await expect(row2).to_have_attribute("data-status", "rejected")
        await expect(row2.locator(".b button")).to_have_count(0)
        await expect(row2.locator(".e")).to_have_count(0)
        assert await status_of(second) == "rejected"

        # The customer cancels a paid order while it is on screen: the row drops its buttons.
        third = (await http.post("/v1/orders", json=shop.order_body(1), headers=auth(shop.customer))).json()
        await pay(http, tenant, third)
        row3 = page.locator(f"#orders li[data-id='{third['id']}']")
        await expect(row3.locator(".b button")).to_have_count(2)
        resp = await http.post(f"/v1/orders/{third['id']}/cancel", json={"reason": "ordered twice"},
                               headers=auth(shop.customer))
        assert resp.status_code == 200, resp.text
        await expect(row3).to_have_attribute("data-status", "cancelled")
        await expect(row3.locator(".b button")).to_have_count(0)
        await page.close()
        # The browser logs the refused request (422) itself; nothing else may complain.
        watch.problems = [p for p in watch.problems if "status of 422" not in p]
        watch.check(shop.vendor)   # only this origin, the token in no URL


class FakeApi:
    """The vendor feed and a vendor API that refuses, as the page sees them."""

    def __init__(self, listed: list[dict], answer: tuple[int, bytes, str]) -> None:
        self.listed, self.answer = listed, answer
        self.posts: list[tuple[str, str, bytes]] = []

    async def stream(self, ws: WebSocket) -> None:
        offered = list(ws.scope.get("subprotocols", ()))
        await ws.accept(subprotocol=offered[0] if offered else None)
        await ws.send_json({"type": "ready", "vendor_id": "v"})
        with contextlib.suppress(Exception):
            while True:
                await ws.receive_text()


@contextlib.asynccontextmanager
async def serving_fake_api(api: FakeApi) -> AsyncIterator[str]:
    app = bare_app(router)
    app.add_api_websocket_route("/v1/vendors/stream", api.stream)

    @app.get("/v1/vendor/orders")
    async def orders() -> dict:
        return {"orders": api.listed}

    @app.post("/v1/vendor/orders/{order_id}/{action}")
    async def act(order_id: str, action: str, request: Request) -> Response:
        api.posts.append((f"{order_id}/{action}", request.headers.get("authorization", ""), await request.body()))
        status, body, media = api.answer
        return Response(body, status_code=status, media_type=media)

    async with serving_app(app) as addr:
        yield addr


@pytest.mark.parametrize(("answer", "shown"), [
    ((409, b'{"error":{"status":409,"reason":"illegal_transition","message":'
           b'"cannot accept an order that is cancelled <b>now</b>"}}', "application/json"),
     "Accept failed: cannot accept an order that is cancelled <b>now</b>"),
    ((502, b"<html>bad gateway</html>", "text/html"), "Accept failed: no answer"),
    ((503, b'{"error":{"status":503,"reason":"unavailable"}}', "application/json"), "Accept failed: 503"),
], ids=["refused", "not-json", "no-message"])
async def test_a_refusal_is_shown_in_the_row_as_text_and_the_row_keeps_its_state(
        browser, tmp_path: Path, answer: tuple, shown: str) -> None:  # noqa: F811
    from playwright.async_api import expect

    paid = view(7, "paid", datetime.now(UTC))
    api = FakeApi([paid], answer)
    async with serving_fake_api(api) as addr:
        page, watch = await open_page(browser, addr, f"#{TOKEN}", width=320)
        await expect(page.locator("#conn")).to_have_text("live")
        row = page.locator(f"#orders li[data-id='{paid['id']}']")
        await row.get_by_role("button", name="Accept").click()
        await expect(row.locator(".e")).to_have_text(shown)
        assert await row.locator(".e *").count() == 0   # text, never markup
        await expect(row).to_have_attribute("data-status", "paid")
        await expect(row.get_by_role("button", name="Accept")).to_be_enabled()
        assert api.posts == [(f"{paid['id']}/accept", f"Bearer {TOKEN}", b"")]
        assert await page.evaluate("document.documentElement.scrollWidth") <= 320
        await page.screenshot(path=tmp_path / "fake-refused.png", full_page=True)
        # Tried again: one error shown, not two.
        await row.get_by_role("button", name="Accept").click()
        for _ in range(100):
            if len(api.posts) == 2:
                break
            await asyncio.sleep(0.05)
        assert len(api.posts) == 2
        await expect(row.get_by_role("button", name="Accept")).to_be_enabled()   # after the answer is shown
        await expect(row.locator(".e")).to_have_count(1)
        await expect(row.locator(".e")).to_have_text(shown)
        await page.close()
    problems = [p for p in watch.problems if "Failed to load resource" not in p]
    assert problems == []
