"""Self-contained pages served from ``dispatch/tracking/pages/static/``: read once, gzip-compressed once.

The customer's tracking page and the vendor's order feed are single HTML files with one inline
``<script>`` and one inline ``<style>`` and no external resource of any kind. Both carry a
credential in their URL (path or fragment), hence ``Referrer-Policy: no-referrer`` and
``Cache-Control: no-store``. The Content-Security-Policy allows the page's own inline script
and style by their SHA-256 (``'unsafe-inline'`` is there only as the fallback of CSP 1
browsers; browsers that know hashes ignore it) and connections to the page's own origin only.
Images come from ``data:`` URLs only, unless a page is built with ``img_origin``: the tracking
page's optional basemap adds exactly its tile server's origin (``dispatch.tracking.pages.
basemap``), and ``head`` (already escaped HTML, outside the script and the style, so their
hashes hold) tells the page's script where the tiles are.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import re
from importlib import resources

from fastapi import Request, Response

__all__ = ["COMMON_HEADERS", "HTML", "StaticPage", "accepts_gzip"]

HTML = "text/html; charset=utf-8"
ORIGIN = re.compile(r"https?://[a-z0-9.-]+(?::[0-9]{1,5})?")
COMMON_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Robots-Tag": "noindex",
}


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


class StaticPage:
    def __init__(self, name: str, *, head: str = "", img_origin: str = "") -> None:
        self.name = name
        if img_origin and ORIGIN.fullmatch(img_origin) is None:   # it goes into a header
            raise ValueError(f"not an origin: {img_origin!r}")
        raw = resources.files("dispatch.tracking.pages").joinpath(f"static/{name}").read_bytes()
        if head:
            if raw.count(b"</head>") != 1:
                raise RuntimeError(f"{name} must hold exactly one </head>")
            raw = raw.replace(b"</head>", head.encode() + b"</head>")
        self.raw: bytes = raw
        self.gzip: bytes = gzip.compress(self.raw, compresslevel=9, mtime=0)
        self.content_security_policy = (
            "default-src 'none'; "
            f"script-src {self._inline_hash('script')} 'unsafe-inline'; "
            f"style-src {self._inline_hash('style')} 'unsafe-inline'; "
            f"connect-src 'self'; img-src data:{' ' + img_origin if img_origin else ''}; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
        self.headers = {**COMMON_HEADERS, "Content-Security-Policy": self.content_security_policy,
                        "Vary": "Accept-Encoding"}

    def _inline_hash(self, tag: str) -> str:
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>".encode(), self.raw, flags=re.DOTALL)
        if len(bodies) != 1:
            raise RuntimeError(f"{self.name} must hold exactly one inline <{tag}>, found {len(bodies)}")
        return "'sha256-" + base64.b64encode(hashlib.sha256(bodies[0]).digest()).decode() + "'"

    def response(self, request: Request) -> Response:
        if accepts_gzip(request.headers.get("accept-encoding", "")):
            return Response(self.gzip, media_type=HTML, headers={**self.headers, "Content-Encoding": "gzip"})
        return Response(self.raw, media_type=HTML, headers=self.headers)
