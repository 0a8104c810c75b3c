"""The tracking page's optional basemap: the tile URL and attribution checks (pure), and what
the page and its Content-Security-Policy become with and without one (no service needed)."""

from __future__ import annotations

import html
import re
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI

from dispatch.core.settings import EngineSettings
from dispatch.tracking.pages.basemap import MAX_ATTRIBUTION, MAX_URL, Basemap, parse_basemap
from dispatch.tracking.pages.static_page import StaticPage
from dispatch.tracking.pages.tracking import PAGE, router
from schema.errors import ConfigError

OSM = "© OpenStreetMap contributors"
TOKEN = "wkt_" + "0123456789abcdef" * 2 + "_" + "Ab3-_" * 8 + "xyz"


# -- the checks ------------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "origin"), [
    ("https://tile.example.org/{z}/{x}/{y}.png", "https://tile.example.org"),
    ("https://TILES.Example.org:8443/osm/{z}/{x}/{y}.png?key=k1&style=a", "https://tiles.example.org:8443"),
    ("https://maps.example.org/wmts?x={x}&y={y}&z={z}", "https://maps.example.org"),
    ("http://localhost:8081/{z}/{x}/{y}.png", "http://localhost:8081"),
    ("http://127.0.0.1/{z}/{x}/{y}", "http://127.0.0.1"),
    ("https://10.1.2.3:0443/{z}/{x}/{y}.png", "https://10.1.2.3:443"),
    ("  https://xn--80ak6aa92e.example/{z}/{x}/{y}.png  ", "https://xn--80ak6aa92e.example"),
])
def test_a_good_tile_url_gives_the_origin_the_csp_allows(url: str, origin: str) -> None:
    basemap = parse_basemap(url, f"  {OSM} ")
    assert basemap == Basemap(url.strip(), origin, OSM)


@pytest.mark.parametrize("url", ["", "   ", None])
def test_no_tile_url_is_no_basemap_whatever_the_attribution(url: str | None) -> None:
    assert parse_basemap(url, OSM) is None
    assert parse_basemap(url, "") is None
    assert parse_basemap(url, "\x00 <script>") is None   # ignored: nothing shows it


@pytest.mark.parametrize(("url", "says"), [
    ("javascript:alert(1)//{z}/{x}/{y}", "absolute tile URL"),
    ("javascript://tile.example.org/%0a{z}{x}{y}", "must use https"),
    ("data:image/png;base64,{z}{x}{y}", "absolute tile URL"),
    ("file:///etc/{z}/{x}/{y}", "no valid host"),
    ("ftp://tile.example.org/{z}/{x}/{y}.png", "must use https"),
    ("http://tile.example.org/{z}/{x}/{y}.png", "http only for localhost"),
    ("http://localhost.evil.example/{z}/{x}/{y}.png", "http only for localhost"),
    ("//tile.example.org/{z}/{x}/{y}.png", "absolute tile URL"),
    ("tile.example.org/{z}/{x}/{y}.png", "absolute tile URL"),
    ("https://tile.example.org/tiles.png", "{z} is missing"),
    ("https://tile.example.org/{z}/{x}.png", "{y} is missing"),
    ("https://tile.example.org/{z}/{x}/{y}/{y}.png", "{y} is repeated"),
    ("https://tile.example.org/{z}/{x}/{y}.png?k={apikey}", "no placeholder but"),
    ("https://tile.example.org/{z}/{x}/{y}{r}.png", "no placeholder but"),
    ("https://{s}.tile.example.org/{z}/{x}/{y}.png", "no placeholder such as {s}"),
    ("https://user:pw@tile.example.org/{z}/{x}/{y}.png", "user or password"),
    ("https://tile.example.org@evil.example/{z}/{x}/{y}.png", "user or password"),
    ("https://tile.example.org/{z}/{x}/{y}.png\r\nSet-Cookie: a=b", "printable ASCII"),
    ("https://tile.example.org/{z}/{x}/{y}.png#frag", "without a #fragment"),
    ("https://tile.example.org/{z}/{x}/{y}.png'; script-src *", "printable ASCII"),
    ('https://tile.example.org/"><script>alert(1)</script>/{z}/{x}/{y}', "printable ASCII"),
    ("https://tile.example.org/a b/{z}/{x}/{y}.png", "printable ASCII"),
    ("https://tile.example.org\\@evil/{z}/{x}/{y}", "printable ASCII"),
    ("https://tilé.example.org/{z}/{x}/{y}.png", "printable ASCII"),
    ("https://tile.example.org;img-src=*/{z}/{x}/{y}", "no valid host"),
    ("https://tile.example.org,evil.example/{z}/{x}/{y}", "no valid host"),
    ("https://*.example.org/{z}/{x}/{y}.png", "no valid host"),
    ("https://-bad.example.org/{z}/{x}/{y}.png", "no valid host"),
    ("https://tile.example.org./{z}/{x}/{y}.png", "no valid host"),
    ("https:///{z}/{x}/{y}.png", "no valid host"),
    ("https://[::1]/{z}/{x}/{y}.png", "no valid host"),
    ("https://tile.example.org:99999/{z}/{x}/{y}.png", "port"),
    ("https://tile.example.org:/{z}/{x}/{y}.png", "port"),
    ("https://tile.example.org:80a/{z}/{x}/{y}.png", "port"),
    ("https://tile.example.org/" + "a" * MAX_URL + "/{z}/{x}/{y}.png", f"at most {MAX_URL}"),
    ("https://" + "a" * 64 + ".example.org/{z}/{x}/{y}.png", "no valid host"),
])
def test_a_hostile_or_broken_tile_url_is_refused_naming_the_variable(url: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_basemap(url, OSM)
    message = str(caught.value)
    assert message.startswith("WAKALA_BASEMAP_TILE_URL "), message
    assert says in message, message
    assert "\r" not in message and "\n" not in message


def test_a_trailing_line_break_is_trimmed_not_carried_into_the_header() -> None:
    basemap = parse_basemap("https://tile.example.org/{z}/{x}/{y}.png\r\n", OSM)
    assert basemap is not None and basemap.tile_url == "https://tile.example.org/{z}/{x}/{y}.png"


@pytest.mark.parametrize(("attribution", "says"), [
    ("", "must be set"),
    ("   ", "must be set"),
    (None, "must be set"),
    ("x" * (MAX_ATTRIBUTION + 1), f"at most {MAX_ATTRIBUTION}"),
    ("© OSM\r\nX-Injected: 1", "control characters"),
    ("© OSM\x00", "control characters"),
    ("© OSM\u202e", "control characters"),   # a bidi override would flip the credit shown
])
def test_a_missing_or_hostile_attribution_is_refused_naming_its_variable(attribution: str | None, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_basemap("https://tile.example.org/{z}/{x}/{y}.png", attribution)
    assert str(caught.value).startswith("WAKALA_BASEMAP_ATTRIBUTION ") and says in str(caught.value)


def test_the_page_refuses_an_origin_that_is_not_one() -> None:
    for bad in ("https://a.example; script-src *", "https://a.example\r\nX: y", "javascript:x"):
        with pytest.raises(ValueError):
            StaticPage("track.html", img_origin=bad)


# -- the page with and without a basemap ------------------------------------------------------

def settings(url: str = "", attribution: str = "") -> EngineSettings:
    from dataclasses import replace
    return replace(EngineSettings(), basemap_tile_url=url, basemap_attribution=attribution)


async def fetch(page_router, path: str = f"/t/{TOKEN}") -> httpx.Response:
    app = FastAPI()
    app.include_router(page_router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        return await client.get(path, headers={"Accept-Encoding": "identity"})


def csp_of(response: httpx.Response) -> dict[str, str]:
    return dict(d.strip().split(" ", 1) for d in response.headers["content-security-policy"].split(";"))


async def test_without_a_basemap_the_page_is_the_static_file_and_images_are_data_only() -> None:
    assert router.for_settings(settings()) is router
    assert router.for_settings(SimpleNamespace(basemap_tile_url="", basemap_attribution="ignored")) is router
    response = await fetch(router.for_settings(settings()))
    assert response.status_code == 200 and response.content == PAGE
    assert csp_of(response)["img-src"] == "data:"
    assert b"wakala-tiles" not in PAGE


async def test_with_a_basemap_img_src_adds_exactly_the_tile_origin_and_the_page_learns_the_template() -> None:
    url = "https://tiles.example.org:8443/osm/{z}/{x}/{y}.png?key=a&s=1"
    page_router = router.for_settings(settings(url, 'Maps © "OSM" <contributors> & co'))
    response = await fetch(page_router)
    assert response.status_code == 200
    csp = csp_of(response)
    assert csp["img-src"] == "data: https://tiles.example.org:8443"
    plain = csp_of(await fetch(router))
    assert {k: v for k, v in csp.items() if k != "img-src"} == {k: v for k, v in plain.items() if k != "img-src"}
    assert csp["connect-src"] == "'self'" and csp["default-src"] == "'none'"
    body = response.text
    assert f'<meta name="wakala-tiles" content="{html.escape(url, quote=True)}">' in body
    assert '<meta name="wakala-attribution" content="Maps © &quot;OSM&quot; &lt;contributors&gt; &amp; co">' in body
    assert "<contributors>" not in body
    # The script and style are the static file's: their hashes in the CSP still hold.
    assert re.findall(r"<script>.*?</script>", body, re.S) == re.findall(r"<script>.*?</script>", PAGE.decode(), re.S)
    assert csp["script-src"] == plain["script-src"] and csp["style-src"] == plain["style-src"]
    # The not-found answer stays as strict as ever.
    missing = await fetch(page_router, "/t/not-a-token")
    assert missing.status_code == 404 and missing.headers["content-security-policy"] == "default-src 'none'"


def test_a_bad_basemap_setting_stops_the_engine_at_start() -> None:
    from dispatch.app import create_app

    with pytest.raises(ConfigError, match="WAKALA_BASEMAP_TILE_URL"):
        create_app(settings("javascript:alert(1)//{z}/{x}/{y}", OSM))
    with pytest.raises(ConfigError, match="WAKALA_BASEMAP_ATTRIBUTION"):
        create_app(settings("https://tile.example.org/{z}/{x}/{y}.png", ""))
