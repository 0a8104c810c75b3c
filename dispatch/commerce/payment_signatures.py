"""Payment-callback signatures, pure: parse the header, sign, verify. No I/O.

The gateway signs each callback Stripe-style: ``X-Wakala-Signature: t=<unix seconds>,v1=<hex
HMAC-SHA256(secret, "<t>.<raw body>")>``. The timestamp is inside the signed text, so a
captured callback cannot be replayed later with a new time: a signature whose ``t`` is more
than ``tolerance_s`` old (or ahead: a wrong clock) is refused as stale. A replay inside the
window is harmless: the callback's own ``idempotency_key`` makes it change nothing. Several
``v1=`` entries may be sent (a gateway rotating keys signs with both); one match is enough.

The secret is the tenant's own (``payment_secrets``). During the transition window, while a
tenant has no secret of its own, the platform-wide ``WAKALA_PAYMENT_WEBHOOK_SECRET`` signs for
it, in either form: the timestamped one, or the old ``sha256=<hex HMAC(secret, body)>`` with no
timestamp (accepted, logged as deprecated). Once the tenant has its own secret, only the
timestamped form with that secret is accepted. All comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

from dispatch.core.errors import BAD_SIGNATURE, Refusal

__all__ = ["HEADER", "Signature", "parse_signature", "sign_legacy", "sign_v1", "verify"]

HEADER = "X-Wakala-Signature"
LEGACY_PREFIX = "sha256="
MAX_HEADER = 1024
MAX_DIGESTS = 4
_HEX64 = re.compile(r"[0-9a-f]{64}")
_UNIX = re.compile(r"[0-9]{1,12}")


@dataclass(frozen=True)
class Signature:
    """A parsed header: ``timestamp`` None for the old (untimestamped) form."""

    timestamp: int | None
    digests: tuple[str, ...]

    @property
    def legacy(self) -> bool:
        return self.timestamp is None


def refused(message: str) -> Refusal:
    """401 ``bad_signature`` naming the header."""
    return Refusal(401, BAD_SIGNATURE, message, HEADER)


def parse_signature(value: str | None) -> Signature:
    """The header's timestamp and digests; 401 ``bad_signature`` if missing or garbled."""
    if not value:
        raise refused(f"the callback carries no {HEADER} header")
    value = value.strip()
    if len(value) > MAX_HEADER:
        raise refused(f"{HEADER} is over {MAX_HEADER} characters")
    if value.startswith(LEGACY_PREFIX):
        digest = value[len(LEGACY_PREFIX):].lower()
        if not _HEX64.fullmatch(digest):
            raise refused(f"{HEADER} is not sha256=<64 hex digits>")
        return Signature(None, (digest,))
    timestamp, digests = None, []
    for part in value.split(","):
        name, sep, item = part.strip().partition("=")
        if not sep:
            raise refused(f"{HEADER} must be t=<unix seconds>,v1=<hex>")
        if name == "t":
            if timestamp is not None or not _UNIX.fullmatch(item):
                raise refused(f"{HEADER}: t must appear once, in unix seconds")
            timestamp = int(item)
        elif name == "v1":
            if not _HEX64.fullmatch(item.lower()):
                raise refused(f"{HEADER}: v1 must be 64 hex digits")
            digests.append(item.lower())
        # other schemes (v0, a future v2) are ignored, as Stripe does
    if timestamp is None or not digests or len(digests) > MAX_DIGESTS:
        raise refused(f"{HEADER} must be t=<unix seconds>,v1=<hex> (at most {MAX_DIGESTS} v1)")
    return Signature(timestamp, tuple(digests))


def _hmac(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign_v1(secret: str, raw: bytes, timestamp: int) -> str:
    """The header value the gateway sends for ``raw`` at ``timestamp`` (tests, the demo)."""
    return f"t={timestamp},v1={_hmac(secret, str(timestamp).encode() + b'.' + raw)}"


def sign_legacy(secret: str, raw: bytes) -> str:
    """The old, untimestamped header value (accepted only in the transition window)."""
    return LEGACY_PREFIX + _hmac(secret, raw)


def verify(signature: Signature, raw: bytes, secret: str, *, now: float, tolerance_s: int) -> None:
    """Refuse (401 ``bad_signature``) unless one digest is ``raw``'s under ``secret`` and a
    timestamped signature is within ``tolerance_s`` of ``now``. The old form is checked by
    digest only: whether it is still allowed is the caller's decision."""
    signed = raw if signature.legacy else str(signature.timestamp).encode() + b"." + raw
    expected = _hmac(secret, signed).encode()
    if not any(hmac.compare_digest(expected, d.encode()) for d in signature.digests):
        raise refused("the callback signature does not match")
    if signature.timestamp is not None:
        age = now - signature.timestamp
        if age > tolerance_s:
            raise refused(f"the signature is stale: signed {int(age)} s ago, at most {tolerance_s} s allowed")
        if -age > tolerance_s:
            raise refused(f"the signature's timestamp is {int(-age)} s in the future, at most "
                          f"{tolerance_s} s allowed (check the gateway's clock)")
