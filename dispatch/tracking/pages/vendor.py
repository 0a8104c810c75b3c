"""The vendor's live order feed: ``GET /vendor``.

One static file (``dispatch/tracking/pages/static/vendor.html``: HTML, CSS and JavaScript, no external
resource of any kind), read once at import, gzip-compressed once, like the customer's tracking
page (``dispatch.tracking_page``). The page takes the vendor's user token (``wku_...``) from
the URL's fragment (``/vendor#wku_...``), which browsers never send to a server nor put in a
Referer, then removes it from the address bar; without one it asks for it in a form. It opens
the vendor websocket ``/v1/vendors/stream`` on the same host with the token as a
``bearer.<token>`` subprotocol (a browser cannot set headers on a websocket), fills the list
with the latest orders from ``GET /v1/vendor/orders`` once the socket is ready (what happened
before, or while it was disconnected), then follows the ``order`` frames. So serving it costs
no I/O and the request carries no credential.

The headers are the tracking page's (``dispatch.tracking.pages.static_page``): no caching, no referrer, a
Content-Security-Policy that allows only the page's own inline script and style and
connections to its own origin.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from dispatch.tracking.pages.static_page import StaticPage

__all__ = ["PAGE", "PAGE_GZIP", "router"]

VENDOR_PAGE = StaticPage("vendor.html")
PAGE, PAGE_GZIP = VENDOR_PAGE.raw, VENDOR_PAGE.gzip

router = APIRouter()


@router.get("/vendor", include_in_schema=False)
async def vendor_page(request: Request) -> Response:
    return VENDOR_PAGE.response(request)
