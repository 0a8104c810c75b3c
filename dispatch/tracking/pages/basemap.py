"""The tracking page's optional street basemap: the tile URL and attribution checked, pure.

``WAKALA_BASEMAP_TILE_URL`` is an XYZ (web-mercator, "slippy map") tile template such as
``https://tile.example.org/{z}/{x}/{y}.png``; ``WAKALA_BASEMAP_ATTRIBUTION`` the credit its
licence asks for (``© OpenStreetMap contributors``). Both empty: no basemap, the page draws its
H3 view alone (the default, and what the page falls back to when tiles do not load).

The URL ends up in two places a bad value could break: the page's Content-Security-Policy
(``img-src`` gains the tile origin, and only it) and an attribute of the page's HTML. So it is
checked at start and refused with a ``ConfigError`` naming the variable, rather than escaped
into something that half works:

* ``https``, or ``http`` only for ``localhost`` / ``127.0.0.1`` (a tile server beside the
  engine on a laptop); no other scheme (``javascript:``, ``data:``, ``file:``...).
* A plain host: a DNS name or an IPv4 address, an optional port; no user or password
  (``user@host`` hides the real host from a reader), no placeholder in the host (``{s}``
  subdomains would need a wildcard in the CSP: list one host instead).
* Each of ``{z}``, ``{x}``, ``{y}`` exactly once, in the path or the query, and no other brace.
* Printable ASCII without spaces, quotes, angle brackets or backslashes (no CR/LF to split a
  header), no fragment, at most ``MAX_URL`` characters. A host with non-ASCII letters is given
  in its ``xn--`` form.

The attribution must be set with a URL (tile licences require it, and the page shows it under
the map), at most ``MAX_ATTRIBUTION`` characters of text without control characters; it is
shown as text, never as HTML. An attribution without a URL is ignored.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from schema.errors import ConfigError

__all__ = ["ATTRIBUTION_VAR", "MAX_ATTRIBUTION", "MAX_URL", "URL_VAR", "Basemap", "parse_basemap"]

URL_VAR = "WAKALA_BASEMAP_TILE_URL"
ATTRIBUTION_VAR = "WAKALA_BASEMAP_ATTRIBUTION"
MAX_URL = 512
MAX_ATTRIBUTION = 200
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1"})
PLACEHOLDERS = ("{z}", "{x}", "{y}")

# scheme://host[:port]/rest, the rest starting with "/" or "?" (checked piece by piece below).
URL_SHAPE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#]*)(?P<rest>[/?][^#]*)?")
LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
IPV4 = re.compile(r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}")
FORBIDDEN_CHARS = set(" \"'<>\\`^|")


@dataclass(frozen=True, slots=True)
class Basemap:
    """A checked basemap: the tile template, the origin the CSP allows, the credit shown."""

    tile_url: str
    origin: str          # scheme://host[:port], lower case: the CSP's img-src source
    attribution: str


def parse_basemap(tile_url: str | None, attribution: str | None) -> Basemap | None:
    """The basemap the settings ask for, None when ``tile_url`` is empty; ``ConfigError``
    naming the variable for anything else."""
    url = (tile_url or "").strip()
    if not url:
        return None
    origin = _origin(url)
    return Basemap(url, origin, _attribution(attribution))


def _bad(message: str, var: str = URL_VAR) -> ConfigError:
    return ConfigError(f"{var} {message}")


def _origin(url: str) -> str:
    if len(url) > MAX_URL:
        raise _bad(f"must be at most {MAX_URL} characters, got {len(url)}")
    if any(not " " < c <= "~" or c in FORBIDDEN_CHARS for c in url):
        raise _bad("must be printable ASCII without spaces, quotes, angle brackets, backslashes or "
                   "line breaks (give a non-ASCII host in its xn-- form)")
    match = URL_SHAPE.fullmatch(url)
    if match is None:
        raise _bad("must be an absolute tile URL like https://tile.example.org/{z}/{x}/{y}.png, "
                   "without a #fragment")
    scheme, authority, rest = match["scheme"].lower(), match["authority"], match["rest"] or ""
    if "@" in authority:
        raise _bad("must not carry a user or password (user@host)")
    if "{" in authority or "}" in authority:
        raise _bad("must name one tile host: no placeholder such as {s} in the host")
    host, _, port = authority.partition(":") if authority.count(":") <= 1 else (authority, "", "")
    host = host.lower()
    if not (IPV4.fullmatch(host) or (host and all(LABEL.fullmatch(label) for label in host.split(".")))):
        raise _bad(f"has no valid host name (a DNS name or an IPv4 address): {authority!r}")
    if ":" in authority and not (port.isdigit() and 1 <= int(port) <= 65535 and len(port) <= 5):
        raise _bad("has a port that is not a number from 1 to 65535")
    if scheme != "https" and not (scheme == "http" and host in LOCAL_HOSTS):
        raise _bad("must use https (http only for localhost or 127.0.0.1)")
    for placeholder in PLACEHOLDERS:
        if rest.count(placeholder) != 1:
            raise _bad(f"must hold each of {{z}}, {{x}} and {{y}} exactly once, {placeholder} "
                       f"{'is missing' if placeholder not in rest else 'is repeated'}")
    leftover = rest
    for placeholder in PLACEHOLDERS:
        leftover = leftover.replace(placeholder, "")
    if "{" in leftover or "}" in leftover:
        raise _bad("may hold no placeholder but {z}, {x} and {y} (no {s}, {r}, {apikey}...)")
    return f"{scheme}://{host}" + (f":{int(port)}" if port else "")


def _attribution(value: str | None) -> str:
    text = (value or "").strip()
    if not text:
        raise _bad("must be set when WAKALA_BASEMAP_TILE_URL is (the tiles' licence asks for a credit, "
                   "e.g. '© OpenStreetMap contributors')", ATTRIBUTION_VAR)
    if len(text) > MAX_ATTRIBUTION:
        raise _bad(f"must be at most {MAX_ATTRIBUTION} characters, got {len(text)}", ATTRIBUTION_VAR)
    if any(unicodedata.category(c) in ("Cc", "Cs", "Cf") for c in text):
        raise _bad("must be text without control characters", ATTRIBUTION_VAR)
    return text
