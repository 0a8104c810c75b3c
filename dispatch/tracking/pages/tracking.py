"""The customer's tracking page: ``GET /t/{token}``.

One static file (``dispatch/tracking/pages/static/track.html``: HTML, CSS and JavaScript, no external
resource of any kind), read once at import, gzip-compressed once. The page needs no database
and learns nothing from the request: its script reads the token from ``location.pathname``
and opens the tracking websocket ``/v1/track/{token}`` on the same host, which brings the
delivery (snapshot, positions, status changes, ETAs). So serving it costs no I/O, and a token
of the wrong shape gets a small 404 without any lookup.

The token is a credential in the URL: the headers (``dispatch.tracking.pages.static_page``) send no
referrer and allow no caching, and the HTML never echoes it.
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Request, Response

from dispatch.tracking.pages.static_page import COMMON_HEADERS, HTML, StaticPage, accepts_gzip

__all__ = ["PAGE", "PAGE_GZIP", "TOKEN_SHAPE", "accepts_gzip", "router"]

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

router = APIRouter()


@router.get("/t/{token}", include_in_schema=False)
async def tracking_page(token: str, request: Request) -> Response:
    if TOKEN_SHAPE.fullmatch(token) is None:
        return Response(NOT_FOUND_PAGE, status_code=404, media_type=HTML, headers=NOT_FOUND_HEADERS)
    return TRACK_PAGE.response(request)
