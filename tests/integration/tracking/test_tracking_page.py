"""The customer's tracking page (``GET /t/{token}``): its HTTP answer, and the page itself in
a real headless Chromium following a delivery over the tracking websocket.

The browser tests serve the page's router beside a fake ``/v1/track/{token}`` websocket that
speaks the hub's protocol (snapshot, then position, status, arrived and heartbeat frames) and
that the test drives frame by frame. Chromium is Debian's ``chromium`` package (installed here
when missing); Playwright drives it (``executable_path``: Playwright's own browser download is
never used).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import h3
import httpx
import pytest
from fastapi import APIRouter, FastAPI, WebSocket

from dispatch.tracking.pages.tracking import PAGE, PAGE_GZIP, accepts_gzip, router
from tests.integration.engine_helpers import serving_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TOKEN = "wkt_" + "0123456789abcdef" * 2 + "_" + "Ab3-_" * 8 + "xyz"
VENDOR = {"name": "Mama Thandi's Spaza", "lat": -26.2485, "lng": 27.8540}
DROPOFF = {"lat": -26.2405, "lng": 27.8700}
REPO = Path(__file__).resolve().parents[3]

assert re.fullmatch(r"wkt_[0-9a-f]{32}_[A-Za-z0-9_-]{43}", TOKEN)


def bare_app(page_router: APIRouter = router) -> FastAPI:
    """An app with only the page's router (shared with the vendor page's tests)."""
    app = FastAPI()
    app.include_router(page_router)
    return app


# -- the HTTP answer ---------------------------------------------------------------------------

async def get_from(page_router: APIRouter, path: str, **headers: str) -> httpx.Response:
    # A bare app with no database, Redis or lifespan: the page must need none of them.
    transport = httpx.ASGITransport(app=bare_app(page_router))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get(path, headers=headers)


async def get(path: str, **headers: str) -> httpx.Response:
    return await get_from(router, path, **headers)


@pytest.mark.parametrize("path", ["/t/not-a-token", f"/t/{TOKEN}x", f"/t/{TOKEN[:-1]}",
                                  "/t/wkt_" + "0123456789ABCDEF" * 2 + "_" + "A" * 43,
                                  "/t/%3Cscript%3Ealert(1)%3C"])
async def test_a_token_of_the_wrong_shape_gets_a_small_404_without_any_lookup(path: str) -> None:
    response = await get(path)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert "not valid" in response.text and "<script" not in response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-security-policy"] == "default-src 'none'"


async def test_the_page_is_static_with_strict_headers_and_never_echoes_the_token() -> None:
    response = await get(f"/t/{TOKEN}", **{"Accept-Encoding": "identity"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "content-encoding" not in response.headers
    assert response.content == PAGE
    assert TOKEN not in response.text and "wkt_" not in response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["vary"] == "Accept-Encoding"
    csp = dict(d.strip().split(" ", 1) for d in response.headers["content-security-policy"].split(";"))
    assert csp["default-src"] == "'none'" and csp["connect-src"] == "'self'"
    assert "'sha256-" in csp["script-src"] and "'sha256-" in csp["style-src"]
    # Nothing from anywhere else: no URL, no external script, style, font or image.
    assert not re.search(rb"(?:https?:)?//[a-z0-9]", PAGE.replace(b"http://www.w3.org/2000/svg", b""))
    assert b"<img" not in PAGE and b"@import" not in PAGE and b"@font-face" not in PAGE


async def test_the_page_is_served_gzip_compressed_to_clients_that_accept_it() -> None:
    response = await get(f"/t/{TOKEN}", **{"Accept-Encoding": "gzip, deflate, br"})
    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"
    assert int(response.headers["content-length"]) == len(PAGE_GZIP)
    assert response.content == PAGE   # httpx decoded it
    assert gzip.decompress(PAGE_GZIP) == PAGE


def test_accept_encoding_is_read_with_its_weights() -> None:
    assert accepts_gzip("gzip") and accepts_gzip("deflate, GZIP;q=0.5") and accepts_gzip("*")
    assert not accepts_gzip("") and not accepts_gzip("identity") and not accepts_gzip("br")
    assert not accepts_gzip("gzip;q=0") and not accepts_gzip("gzip; q=0.0, br")


def test_the_page_is_light_enough_for_a_cheap_phone_on_2g() -> None:
    assert len(PAGE) < 16_000, len(PAGE)
    assert len(PAGE_GZIP) < 6_000, len(PAGE_GZIP)
    # README, "Tracking page", states both sizes: they must be these.
    stated = f"**{len(PAGE):,} bytes raw, {len(PAGE_GZIP):,} bytes gzip-compressed**"
    assert stated in (REPO / "README.md").read_text(), f"README should say {stated}"


# -- the page in a browser ---------------------------------------------------------------------

@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium, installed with apt-get once when missing (we run as root in CI)."""
    if not os.path.exists(CHROMIUM):
        if shutil.which("apt-get") is None or os.geteuid() != 0:
            pytest.skip(f"{CHROMIUM} is missing and apt-get cannot install it here "
                        "(not Debian, or not root): run `apt-get install -y chromium`")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                pytest.skip(f"`{' '.join(command)}` failed, so there is no Chromium for the browser "
                            f"tests: {done.stderr.strip()[-400:]}")
    return CHROMIUM


@pytest.fixture(scope="module")
async def browser(chromium: str) -> AsyncIterator[object]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


class TrackSocket:
    """One page's connection to the fake hub, driven by the test."""

    def __init__(self, ws: WebSocket, token: str) -> None:
        self.ws, self.token = ws, token
        self.closed = asyncio.Event()

    async def send(self, frame: dict) -> None:
        await self.ws.send_json(frame)

    async def close(self, code: int) -> None:
        await self.ws.close(code)


class FakeHub:
    """``/v1/track/{token}`` as the page sees it: every connection is handed to the test."""

    def __init__(self) -> None:
        self.connections: asyncio.Queue[TrackSocket] = asyncio.Queue()

    async def next_connection(self, within_s: float = 10) -> TrackSocket:
        return await asyncio.wait_for(self.connections.get(), within_s)

    async def endpoint(self, ws: WebSocket, token: str) -> None:
        await ws.accept()
        conn = TrackSocket(ws, token)
        await self.connections.put(conn)
        try:
            while True:   # the page sends nothing; this returns when it goes away
                await ws.receive_text()
        except Exception:
            pass
        finally:
            conn.closed.set()


@contextlib.asynccontextmanager
async def serving_page_and_fake_hub(page_router: APIRouter = router) -> AsyncIterator[tuple[str, FakeHub]]:
    hub = FakeHub()
    app = bare_app(page_router)
    app.add_api_websocket_route("/v1/track/{token}", hub.endpoint)
    async with serving_app(app) as addr:
        yield addr, hub


def now() -> str:
    return datetime.now(UTC).isoformat()


def route_cells() -> list[list[list[float]]]:
    """H3 boundaries (res 9) along the vendor-dropoff line and one ring around it."""
    line = h3.grid_path_cells(h3.latlng_to_cell(VENDOR["lat"], VENDOR["lng"], 9),
                              h3.latlng_to_cell(DROPOFF["lat"], DROPOFF["lng"], 9))
    cells = sorted({c for cell in line for c in h3.grid_disk(cell, 1)})
    return [[[lat, lng] for lat, lng in h3.cell_to_boundary(c)] for c in cells]


def snapshot(status: str, driver: dict | None, eta_dropoff_s: int | None, timeline: list[dict]) -> dict:
    return {"type": "snapshot", "delivery_id": "7d0f4c1e-2f6a-4b9e-9a51-3c1f0e4b8a11",
            "order_number": "WK-000123", "status": status, "vendor": VENDOR, "dropoff": DROPOFF,
            "timeline": timeline, "driver": driver, "eta_pickup_s": None,
            "eta_dropoff_s": eta_dropoff_s, "updated_at": now(), "cells": route_cells()}


def position(lat: float, lng: float, heading: float, eta_dropoff_s: int, eta_pickup_s: int | None = None) -> dict:
    return {"type": "position", "lat": lat, "lng": lng, "heading_deg": heading, "speed_mps": 8.0,
            "ts": now(), "eta_pickup_s": eta_pickup_s, "eta_dropoff_s": eta_dropoff_s}


async def marker_xy(page) -> tuple[float, float]:
    transform = await page.eval_on_selector("#driver", "e => e.style.transform")
    match = re.fullmatch(r"translate\(([-\d.]+)px, ([-\d.]+)px\)", transform)
    assert match, transform
    return float(match[1]), float(match[2])


async def open_page(browser, addr: str, problems: list[str], width: int = 360):
    page = await browser.new_page(viewport={"width": width, "height": 760})
    page.set_default_timeout(10_000)
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
            if msg.type in ("error", "warning") else None)
    page.on("request", lambda req: None if req.url.startswith((f"http://{addr}/", f"ws://{addr}/"))
            else problems.append(f"request elsewhere: {req.url}"))
    await page.goto(f"http://{addr}/t/{TOKEN}")
    return page


@pytest.mark.timeout(900)   # the first browser test may install Chromium
async def test_the_page_follows_a_delivery_live_and_reconnects(browser, tmp_path: Path) -> None:
    from playwright.async_api import expect

    problems: list[str] = []
    async with serving_page_and_fake_hub() as (addr, hub):
        page = await open_page(browser, addr, problems)
        conn = await hub.next_connection()
        assert conn.token == TOKEN   # read from location.pathname
        t0 = now()
        await conn.send(snapshot("assigned", {"lat": -26.2530, "lng": 27.8480, "heading_deg": 45.0,
                                              "speed_mps": 7.5, "ts": t0}, 600,
                                 [{"status": "pending", "at": t0}, {"status": "offered", "at": t0},
                                  {"status": "assigned", "at": t0}]))
        await expect(page.locator("#conn")).to_have_text("live")
        await expect(page.locator("#order")).to_have_text("WK-000123")
        await expect(page.locator("#status")).to_have_attribute("data-status", "assigned")
        await expect(page.locator("#status")).to_have_text("Driver on the way to the shop")
        await expect(page.locator("#vn")).to_have_text(VENDOR["name"])
        assert await page.locator("#cells").get_attribute("d") != ""
        await expect(page.locator("#driver")).to_be_visible()

        # The ETA shows, and counts down by itself between frames.
        eta = page.locator("#eta")
        await expect(eta).to_be_visible()
        await expect(eta).to_have_text(re.compile(r"^(10 min 00|9 min \d\d) s$"))
        first = int(await eta.get_attribute("data-s"))
        await page.wait_for_function(f"() => +document.getElementById('eta').dataset.s <= {first - 2}")

        # Two real position frames: the marker moves, east and north as the driver did.
        start = await marker_xy(page)
        await conn.send(position(-26.2500, 27.8530, 20.0, eta_dropoff_s=480, eta_pickup_s=60))
        await page.wait_for_function("s => document.getElementById('driver').style.transform !== s",
                                     arg=f"translate({start[0]}px, {start[1]}px)")
        moved = await marker_xy(page)
        assert moved[0] > start[0] + 5 and moved[1] < start[1] - 5, (start, moved)
        await expect(eta).to_have_text(re.compile(r"^(8 min 00|7 min 5\d) s$"))   # re-based
        assert await page.locator("#hd").get_attribute("transform") == "rotate(20)"
        await page.wait_for_timeout(1100)   # the marker glides for 1 s
        await page.screenshot(path=tmp_path / "1-assigned.png", full_page=True)

        # Transitions: the status text and the timeline follow.
        await conn.send({"type": "status", "status": "at_pickup", "at": now()})
        await conn.send({"type": "status", "status": "picked_up", "at": now()})
        await expect(page.locator("#status")).to_have_attribute("data-status", "picked_up")
        await expect(page.locator("#status")).to_have_text("On the way to you")
        await conn.send(position(-26.2440, 27.8640, 60.0, eta_dropoff_s=25))
        await page.wait_for_function("s => document.getElementById('driver').style.transform !== s",
                                     arg=f"translate({moved[0]}px, {moved[1]}px)")
        onward = await marker_xy(page)
        assert onward[0] > moved[0] + 5 and onward[1] < moved[1] - 5, (moved, onward)
        await expect(eta).to_have_text("arriving")
        steps = page.locator("#timeline li")
        assert await steps.evaluate_all("l => l.map(e => e.dataset.status)") == [
            "pending", "offered", "assigned", "at_pickup", "picked_up"]
        await expect(page.locator("#timeline li.cur")).to_have_attribute("data-status", "picked_up")
        await page.wait_for_timeout(1200)   # let the marker's transition finish for the picture
        await page.screenshot(path=tmp_path / "2-picked-up.png", full_page=True)
        if os.environ.get("WAKALA_DOCS_SCREENSHOT"):
            shutil.copy(tmp_path / "2-picked-up.png", REPO / "docs" / "tracking-page.png")

        # The server drops the connection: "reconnecting…", then a new connection and snapshot.
        await conn.close(1011)
        await expect(page.locator("#conn")).to_have_text("reconnecting…")
        conn = await hub.next_connection(within_s=5)
        assert conn.token == TOKEN
        await conn.send(snapshot("picked_up", {"lat": -26.2420, "lng": 27.8680, "heading_deg": 60.0,
                                               "speed_mps": 6.0, "ts": now()}, 40,
                                 [{"status": s, "at": t0} for s in
                                  ("pending", "offered", "assigned", "at_pickup", "picked_up")]))
        await expect(page.locator("#conn")).to_have_text("live")
        await page.wait_for_function("s => document.getElementById('driver').style.transform !== s",
                                     arg=f"translate({onward[0]}px, {onward[1]}px)")
        await conn.send({"type": "heartbeat", "ts": now()})
        await conn.send({"type": "arrived", "at": "dropoff"})
        await expect(eta).to_have_text("your driver is here")

        await conn.send({"type": "status", "status": "delivered", "at": now()})
        await expect(page.locator("#status")).to_have_attribute("data-status", "delivered")
        await expect(page.locator("#status")).to_have_text("Delivered")
        await expect(page.locator("#eb")).to_be_hidden()
        await expect(page.locator("#driver")).to_be_hidden()
        await expect(page.locator("#timeline li.cur")).to_have_attribute("data-status", "delivered")
        await page.screenshot(path=tmp_path / "3-delivered.png", full_page=True)
        await page.close()
    assert problems == []


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("code", "shown", "message", "reconnects"), [
    (4410, "link expired", "This tracking link has expired", False),
    (4401, "link not valid", "This tracking link is not valid", False),
    (4408, "reconnecting…", None, True),    # too_slow: the hub shed a lagging page; it comes back
], ids=["expired_token", "invalid_token", "too_slow"])
async def test_close_codes_decide_whether_the_page_reconnects(
        browser, tmp_path: Path, code: int, shown: str, message: str | None, reconnects: bool) -> None:
    from playwright.async_api import expect

    problems: list[str] = []
    async with serving_page_and_fake_hub() as (addr, hub):
        page = await open_page(browser, addr, problems, width=320)
        conn = await hub.next_connection()
        await conn.send(snapshot("assigned", None, None, [{"status": "assigned", "at": now()}]))
        await expect(page.locator("#conn")).to_have_text("live")
        # The narrowest phones: nothing wider than the screen, nothing to scroll sideways.
        assert await page.evaluate("document.documentElement.scrollWidth") <= 320
        await expect(page.locator("#driver")).to_be_hidden()   # no position yet
        await expect(page.locator("#eb")).to_be_hidden()       # no ETA yet
        await conn.close(code)
        await expect(page.locator("#conn")).to_have_text(shown)
        if message:
            await expect(page.locator("#msg")).to_contain_text(message)
        else:
            await expect(page.locator("#msg")).to_be_hidden()
        # After a snapshot the first retry comes within 0.5-1 s: 2.5 s without one is "never".
        if reconnects:
            await hub.next_connection(within_s=2.5)
        else:
            with pytest.raises(TimeoutError):
                await hub.next_connection(within_s=2.5)
            await expect(page.locator("#conn")).to_have_text(shown)
        await page.screenshot(path=tmp_path / f"closed-{code}.png", full_page=True)
        await page.close()
    assert problems == []
