"""The customer's tracking page: ``GET /t/{token}``.

One static file (``dispatch/static/track.html``: HTML, CSS and JavaScript, no external
resource of any kind), read once at import, gzip-compressed once. The page needs no database
and learns nothing from the request: its script reads the token from ``location.pathname``
and opens the tracking websocket ``/v1/track/{token}`` on the same host, which brings the
delivery (snapshot, positions, status changes, ETAs). So serving it costs no I/O, and a token
of the wrong shape gets a small 404 without any lookup.

The token is a credential in the URL, hence ``Referrer-Policy: no-referrer`` (the page links
nowhere, but a browser extension or a future link must not leak it), ``Cache-Control:
no-store`` and no echo of it in the HTML. The Content-Security-Policy allows the page's own
inline script and style by their SHA-256 (``'unsafe-inline'`` is there only as the fallback of
CSP 1 browsers; browsers that know hashes ignore it) and websocket connections to the page's
own origin only.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import re
from importlib import resources

from fastapi import APIRouter, Request, Response

__all__ = ["PAGE", "PAGE_GZIP", "TOKEN_SHAPE", "accepts_gzip", "router"]

TOKEN_SHAPE = re.compile(r"wkt_[0-9a-f]{32}_[A-Za-z0-9_-]{43}")

PAGE: bytes = resources.files("dispatch").joinpath("static/track.html").read_bytes()
PAGE_GZIP: bytes = gzip.compress(PAGE, compresslevel=9, mtime=0)

NOT_FOUND_PAGE = (
    b'<!doctype html><html lang="en"><head><meta charset="utf-8">'
    b'<meta name="viewport" content="width=device-width,initial-scale=1">'
    b"<title>Link not found</title></head><body><h1>This tracking link is not valid</h1>"
    b"<p>Check the link in your message, or ask the shop for a new one.</p></body></html>"
)


def _inline_hash(tag: str) -> str:
    bodies = re.findall(rf"<{tag}>(.*?)</{tag}>".encode(), PAGE, flags=re.DOTALL)
    if len(bodies) != 1:
        raise RuntimeError(f"track.html must hold exactly one inline <{tag}>, found {len(bodies)}")
    return "'sha256-" + base64.b64encode(hashlib.sha256(bodies[0]).digest()).decode() + "'"


CONTENT_SECURITY_POLICY = (
    "default-src 'none'; "
    f"script-src {_inline_hash('script')} 'unsafe-inline'; "
    f"style-src {_inline_hash('style')} 'unsafe-inline'; "
    "connect-src 'self'; img-src data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_COMMON_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Robots-Tag": "noindex",
}
PAGE_HEADERS = {**_COMMON_HEADERS, "Content-Security-Policy": CONTENT_SECURITY_POLICY,
                "Vary": "Accept-Encoding"}
NOT_FOUND_HEADERS = {**_COMMON_HEADERS, "Content-Security-Policy": "default-src 'none'"}

HTML = "text/html; charset=utf-8"

router = APIRouter()


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` value admits gzip (``gzip`` or ``*``, not at ``q=0``)."""
    for item in accept_encoding.split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        if coding.lower() not in ("gzip", "x-gzip", "*"):
            continue
        q = next((p[2:] for p in params if p.lower().startswith("q=")), "1")
        try:
            return float(q) > 0
        except ValueError:
            return False
    return False


@router.get("/t/{token}", include_in_schema=False)
async def tracking_page(token: str, request: Request) -> Response:
    if TOKEN_SHAPE.fullmatch(token) is None:
        return Response(NOT_FOUND_PAGE, status_code=404, media_type=HTML, headers=NOT_FOUND_HEADERS)
    if accepts_gzip(request.headers.get("accept-encoding", "")):
        return Response(PAGE_GZIP, media_type=HTML, headers={**PAGE_HEADERS, "Content-Encoding": "gzip"})
    return Response(PAGE, media_type=HTML, headers=PAGE_HEADERS)
