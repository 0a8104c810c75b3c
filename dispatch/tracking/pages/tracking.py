"""The customer's tracking page: ``GET /t/{token}``.

One static file (``dispatch/tracking/pages/static/track.html``: HTML, CSS and JavaScript, no external
resource of any kind), read once at import, gzip-compressed once. The page needs no database
and learns nothing from the request: its script reads the token from ``location.pathname``
and opens the tracking websocket ``/v1/track/{token}`` on the same host, which brings the
delivery (snapshot, positions, status changes, ETAs). So serving it costs no I/O, and a token
of the wrong shape gets a small 404 without any lookup.

The token is a credential in the URL: the headers (``dispatch.tracking.pages.static_page``) send no
referrer and allow no caching, and the HTML never echoes it.

The optional street basemap (``WAKALA_BASEMAP_TILE_URL`` / ``WAKALA_BASEMAP_ATTRIBUTION``,
checked by ``dispatch.tracking.pages.basemap``) is a variant of the same page, built once at
start by ``router.for_settings(engine)``: two ``<meta>`` elements tell the script the tile
template and the credit, and the CSP's ``img-src`` adds the tile server's origin, nothing else.
The script draws the XYZ tiles itself as SVG images under the H3 view (web-mercator, which
the map's projection is anyway); a tile that fails to load is dropped and the H3 view stays.
Tile requests carry no referrer (the page's ``Referrer-Policy``), so a tile server never sees
the token. Without a basemap the page is byte for byte the static file.
"""

from __future__ import annotations

import html
import re
from typing import Any

from fastapi import APIRouter, Request, Response

from dispatch.tracking.pages.basemap import Basemap, parse_basemap
from dispatch.tracking.pages.static_page import COMMON_HEADERS, HTML, StaticPage, accepts_gzip

__all__ = ["PAGE", "PAGE_GZIP", "TOKEN_SHAPE", "TrackingPageRouter", "accepts_gzip", "basemap_page", "router"]

TOKEN_SHAPE = re.compile(r"wkt_[0-9a-f]{32}_[A-Za-z0-9_-]{43}")
TRACK_PAGE = StaticPage("track.html")
PAGE, PAGE_GZIP = TRACK_PAGE.raw, TRACK_PAGE.gzip
NOT_FOUND_PAGE = (
    b'<!doctype html><html lang="en"><head><meta charset="utf-8">'
    b'<meta name="viewport" content="width=device-width,initial-scale=1">'
    b"<title>Link not found</title></head><body><h1>This tracking link is not valid</h1>"
    b"<p>Check the link in your message, or ask the shop for a new one.</p></body></html>"
)
NOT_FOUND_HEADERS = {**COMMON_HEADERS, "Content-Security-Policy": "default-src 'none'"}



def basemap_page(basemap: Basemap) -> StaticPage:
    """The tracking page with a street basemap under its H3 view."""
    head = (f'<meta name="wakala-tiles" content="{html.escape(basemap.tile_url, quote=True)}">'
            f'<meta name="wakala-attribution" content="{html.escape(basemap.attribution, quote=True)}">')
    return StaticPage("track.html", head=head, img_origin=basemap.origin)


class TrackingPageRouter(APIRouter):
    """``GET /t/{token}`` serving one build of the page (``router``: the plain one)."""

    def __init__(self, page: StaticPage) -> None:
        super().__init__()
        self.page = page

        async def tracking_page(token: str, request: Request) -> Response:
            if TOKEN_SHAPE.fullmatch(token) is None:
                return Response(NOT_FOUND_PAGE, status_code=404, media_type=HTML, headers=NOT_FOUND_HEADERS)
            return page.response(request)

        self.add_api_route("/t/{token}", tracking_page, methods=["GET"], include_in_schema=False)

    def for_settings(self, engine: Any) -> TrackingPageRouter:
        """The router the engine's settings ask for (``basemap_tile_url``, ``basemap_attribution``):
        this one without a basemap. A bad value is a ``ConfigError`` naming its variable, so the
        engine refuses to start rather than serve a page whose map half works."""
        basemap = parse_basemap(engine.basemap_tile_url, engine.basemap_attribution)
        return self if basemap is None else TrackingPageRouter(basemap_page(basemap))


router = TrackingPageRouter(TRACK_PAGE)
