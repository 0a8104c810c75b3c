"""The tracking page in Chromium with its optional street basemap and the delivery PIN.

The page is served by the router the engine's settings build (``router.for_settings``) beside
a fake tracking socket (``tests.integration.tracking.test_tracking_page.FakeHub``); the tiles
come from a small tile server of the test's own on another port of 127.0.0.1, so the page's
Content-Security-Policy must allow exactly that origin for any tile to show.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi import FastAPI, Request, Response

from dispatch.core.settings import EngineSettings
from dispatch.tracking.pages.tracking import router
from tests.integration.engine_helpers import bound_socket, serving_app
from tests.integration.tracking.test_tracking_page import (  # noqa: F401
    TOKEN,
    VENDOR,
    FakeHub,
    browser,
    chromium,
    now,
    serving_page_and_fake_hub,
    snapshot,
)

pytestmark = pytest.mark.timeout(900)   # the first browser test of a fresh machine installs Chromium

CREDIT = "© Test Tiles & contributors"


def png(r: int, g: int, b: int) -> bytes:
    """A one-pixel PNG of one colour (the page stretches each tile to its square)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" + bytes((r, g, b)))) + chunk(b"IEND", b""))


def tile_of(lat: float, lng: float, z: int) -> tuple[int, int]:
    """The XYZ tile holding a point (the slippy-map formula)."""
    n = 2 ** z
    rad = math.radians(lat)
    return int((lng + 180) / 360 * n), int((1 - math.asinh(math.tan(rad)) / math.pi) / 2 * n)


class TileServer:
    """``/tiles/{z}/{x}/{y}.png``: every request remembered; ``fail`` answers 404 instead."""

    def __init__(self, fail: bool = False) -> None:
        self.requests: list[tuple[int, int, int]] = []
        self.referers: list[str | None] = []
        self.app = FastAPI()

        @self.app.get("/tiles/{z}/{x}/{y}.png")
        async def tile(z: int, x: int, y: int, request: Request) -> Response:
            self.requests.append((z, x, y))
            self.referers.append(request.headers.get("referer"))
            if fail:
                return Response(b"no", status_code=404)
            return Response(png(200, 220, 200 + (x + y) % 2 * 40), media_type="image/png")


@contextlib.asynccontextmanager
async def page_with_basemap(tile_url: str) -> AsyncIterator[tuple[str, FakeHub]]:
    engine = replace(EngineSettings(), basemap_tile_url=tile_url, basemap_attribution=CREDIT)
    async with serving_page_and_fake_hub(router.for_settings(engine)) as served:
        yield served


async def open_page(browser, addr: str, problems: list[str], allowed: str):  # noqa: F811
    page = await browser.new_page(viewport={"width": 360, "height": 760})
    page.set_default_timeout(10_000)
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
            if msg.type in ("error", "warning") else None)
    page.on("request", lambda req: None if req.url.startswith((f"http://{addr}/", f"ws://{addr}/", allowed))
            else problems.append(f"request elsewhere: {req.url}"))
    await page.goto(f"http://{addr}/t/{TOKEN}")
    return page


def first_snapshot(pin: object = None) -> dict:
    frame = snapshot("assigned", {"lat": -26.2530, "lng": 27.8480, "heading_deg": 45.0, "speed_mps": 7.5,
                                  "ts": now()}, 600, [{"status": "assigned", "at": now()}])
    if pin is not None:
        frame["delivery_pin"] = pin
    return frame


async def test_tiles_from_the_configured_server_are_drawn_under_the_h3_view_and_line_up(
        browser, tmp_path: Path) -> None:  # noqa: F811
    from playwright.async_api import expect

    tiles = TileServer()
    problems: list[str] = []
    async with serving_app(tiles.app) as tile_addr:
        template = f"http://{tile_addr}/tiles/{{z}}/{{x}}/{{y}}.png"
        async with page_with_basemap(template) as (addr, hub):
            page = await open_page(browser, addr, problems, f"http://{tile_addr}/tiles/")
            # The credit shows before anything else is known.
            await expect(page.locator("#attr")).to_be_visible()
            await expect(page.locator("#attr")).to_have_text(CREDIT)
            conn = await hub.next_connection()
            await conn.send(first_snapshot())
            await expect(page.locator("#conn")).to_have_text("live")
            images = page.locator("#tiles image")
            await expect(images.first).to_be_attached()
            hrefs = await images.evaluate_all("l => l.map(e => e.getAttribute('href'))")
            assert 1 <= len(hrefs) <= 64
            zooms = {int(m[1]) for m in (re.fullmatch(rf"http://{tile_addr}/tiles/(\d+)/\d+/\d+\.png", h) for h in hrefs)
                     if m}
            assert len(zooms) == 1 and len(hrefs) == len(set(hrefs)), hrefs
            z = zooms.pop()
            assert 13 <= z <= 18, z   # a few km of township on a phone: street level

            # Every tile was fetched, without the page's URL (it holds the token) as a referrer.
            await page.wait_for_function("() => [...document.querySelectorAll('#tiles image')]"
                                         ".every(i => i.getBBox().width > 0)")
            await asyncio.sleep(0.5)
            assert {f"http://{tile_addr}/tiles/{z}/{x}/{y}.png" for z, x, y in tiles.requests} == set(hrefs)
            assert set(tiles.referers) == {None}

            # Aligned: the tile that holds the shop on the map is the tile that holds it on Earth.
            x, y = tile_of(VENDOR["lat"], VENDOR["lng"], z)
            box = await page.eval_on_selector(f"#tiles image[href$='/{z}/{x}/{y}.png']",
                                              "e => ['x','y','width','height'].map(a => +e.getAttribute(a))")
            shop = await page.eval_on_selector(
                "#vendor", "e => { const m = e.transform.baseVal.consolidate().matrix; return [m.e, m.f]; }")
            assert box[0] <= shop[0] <= box[0] + box[2] and box[1] <= shop[1] <= box[1] + box[3], (box, shop)
            # Under the H3 view: the tiles come first in the SVG, the cells and markers over them.
            order = await page.eval_on_selector("#map", "m => [...m.children].map(c => c.id).filter(Boolean)")
            assert order.index("tiles") < order.index("cells") < order.index("driver")
            assert await page.locator("#cells").get_attribute("d")
            await page.screenshot(path=tmp_path / "basemap.png", full_page=True)
            await page.close()
    assert problems == []


@pytest.mark.parametrize("server", ["failing", "unreachable"])
async def test_when_tiles_do_not_load_the_h3_view_still_works(browser, tmp_path: Path, server: str) -> None:  # noqa: F811
    from playwright.async_api import expect

    tiles = TileServer(fail=True)
    problems: list[str] = []
    async with contextlib.AsyncExitStack() as stack:
        if server == "failing":
            tile_addr = await stack.enter_async_context(serving_app(tiles.app))
        else:
            with bound_socket() as sock:   # a port nobody listens on once this closes
                tile_addr = f"127.0.0.1:{sock.getsockname()[1]}"
        addr, hub = await stack.enter_async_context(
            page_with_basemap(f"http://{tile_addr}/tiles/{{z}}/{{x}}/{{y}}.png"))
        page = await open_page(browser, addr, problems, f"http://{tile_addr}/tiles/")
        conn = await hub.next_connection()
        await conn.send(first_snapshot())
        await expect(page.locator("#conn")).to_have_text("live")
        # Each failed tile is dropped; the cells, the shop, the address and the driver stay.
        await expect(page.locator("#tiles image")).to_have_count(0)
        assert await page.locator("#cells").get_attribute("d")
        for marker in ("#vendor", "#drop", "#driver"):
            await expect(page.locator(marker)).to_be_visible()
        await expect(page.locator("#attr")).to_have_text(CREDIT)
        await conn.send({"type": "status", "status": "picked_up", "at": now()})
        await expect(page.locator("#status")).to_have_text("On the way to you")
        await page.screenshot(path=tmp_path / f"basemap-{server}.png", full_page=True)
        await page.close()
    if server == "failing":
        assert tiles.requests
    # Only the failed loads themselves may complain.
    assert [p for p in problems if "Failed to load resource" not in p] == []


async def test_without_a_basemap_no_tile_is_drawn_and_no_credit_shown(browser) -> None:  # noqa: F811
    from playwright.async_api import expect

    problems: list[str] = []
    async with serving_page_and_fake_hub() as (addr, hub):
        page = await open_page(browser, addr, problems, f"http://{addr}/")
        conn = await hub.next_connection()
        await conn.send(first_snapshot())
        await expect(page.locator("#conn")).to_have_text("live")
        await expect(page.locator("#attr")).to_be_hidden()
        assert await page.locator("#tiles image").count() == 0
        await page.close()
    assert problems == []


async def test_the_delivery_pin_shows_when_the_snapshot_has_one_as_text_until_the_delivery_ends(
        browser, tmp_path: Path) -> None:  # noqa: F811
    from playwright.async_api import expect

    problems: list[str] = []
    async with serving_page_and_fake_hub() as (addr, hub):
        page = await open_page(browser, addr, problems, f"http://{addr}/")
        pin = page.locator("#pin")
        conn = await hub.next_connection()
        await conn.send(first_snapshot())   # no delivery_pin: nothing shown
        await expect(page.locator("#conn")).to_have_text("live")
        await expect(pin).to_be_hidden()

        await conn.close(1011)   # a reconnection brings a snapshot with the PIN
        conn = await hub.next_connection(within_s=5)
        await conn.send(first_snapshot("4821"))
        await expect(pin).to_be_visible()
        await expect(pin).to_have_text("Your delivery PIN: 4821 — give it to the driver at the door")
        await page.screenshot(path=tmp_path / "pin.png", full_page=True)
        await conn.send({"type": "status", "status": "picked_up", "at": now()})
        await expect(page.locator("#status")).to_have_text("On the way to you")
        await expect(pin).to_be_visible()

        # Text, never markup; a value of the wrong type or size is not shown.
        for hostile, shown in (("<img src=x onerror=alert(1)>", None), ("<b>12</b>", "<b>12</b>"),
                               ({"pin": 1}, None), (True, None), (7351, "7351")):
            await conn.close(1011)
            conn = await hub.next_connection(within_s=5)
            await conn.send(first_snapshot(hostile))
            await expect(page.locator("#conn")).to_have_text("live")
            if shown is None:
                await expect(pin).to_be_hidden()
            else:
                await expect(page.locator("#pv")).to_have_text(shown)
                await expect(pin).to_be_visible()
            assert await page.locator("#pin b").count() == 1 and await page.locator("#pv *").count() == 0

        # Delivered: the PIN is spent.
        await conn.send({"type": "status", "status": "delivered", "at": now()})
        await expect(page.locator("#status")).to_have_text("Delivered")
        await expect(pin).to_be_hidden()
        await page.close()
    assert problems == []
