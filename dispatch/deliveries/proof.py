"""Proof of delivery, the rules: which proofs a delivery needs, its PIN, and the images.

Pure: bytes and plain values in, plain values out (the SQL is ``proof_store``, the routes
``dispatch.api.proofs``). Three proofs exist, and a tenant requires any of them
(``ProofRequirements``) before a driver may report a delivery as delivered:

``pin``
    A 4-6 digit code the customer sees (the tracking page's snapshot carries it as
    ``delivery_pin``, and the customer's own proof view) and tells the driver at the door; the
    driver's app sends it (``POST /v1/drivers/deliveries/{id}/pin``). It proves that the
    driver met someone who holds the customer's link, not just that the driver pressed a
    button near the address. It is no secret from the vendor, who may make tracking links
    too (to send the customer); the vendor's proof view leaves it out all the same.

    *Not stored in clear.* The PIN is derived, never kept: ``HMAC-SHA256(tenant pin_key,
    delivery id || nonce)`` reduced to the digits. The delivery's row holds the 16-byte nonce,
    the tenant's settings row the 32-byte key; neither alone gives the PIN, so a copy of the
    deliveries and proofs (an export, a support read, a leaked table) shows no PIN, and a
    check recomputes it and compares in constant time. Hashing instead would not do: the
    customer must be shown the PIN again at every page load, and any hash of a 4-6 digit
    number is reversed by trying all of them. The key never rotates with a settings change
    (PINs already shown would change); a reset (``reset``) draws a new nonce for one delivery.
    With the database whole (key and nonce) the PIN can be recomputed, as it must be for the
    customer's page: what protects it then is the application role and RLS, as for the
    payment-callback secret.

    *Attempts.* ``MAX_PIN_ATTEMPTS`` (5) wrong entries lock the PIN: with 4 digits a guessing
    driver has a 1 in 2,000 chance. A locked PIN refuses every entry (409 ``pin_locked``)
    until the order's vendor resets it (a new PIN, which the customer's page shows on its next
    load; the count starts again) or the driver reports the delivery failed. A malformed
    entry (not 4-6 ASCII digits, or not as many digits as this PIN has) is refused before
    anything is counted; an entry once the PIN is verified changes nothing.

``photo`` and ``signature``
    Images the driver uploads (raw body, ``Content-Type`` ``image/jpeg`` or ``image/png`` for
    a photo, ``image/png`` for a signature). ``clean_image`` refuses anything that is not
    plainly what it says, in this order: the declared type (415), an empty body, the size
    (413), the magic bytes and the declared type agreeing, the dimensions read from the file's
    own header before any decoder runs (413 past ``max_pixels``: a decompression bomb is a few
    KB that decode to gigabytes), bytes after the image's end (a PNG after ``IEND``, a JPEG
    after its last ``EOI``: a polyglot carrying a ZIP, HTML or a script), then Pillow's
    ``verify`` and a full decode (truncated or corrupt data). What is stored is never the
    uploaded file: the decoded pixels are re-encoded (JPEG stays JPEG at quality 85, PNG
    stays PNG), turned upright first by their EXIF orientation, scaled down to at most
    ``max_side`` pixels a side, and saved with no metadata at all, so EXIF (camera, GPS
    position, time), XMP, ICC profiles and PNG text chunks never reach the database or the
    customer. Decoding costs CPU: the shell runs it off the event loop.

Which proofs apply to a delivery is fixed when it is created (``required`` on its row), less
any the tenant has dropped since (``effective_required``): a requirement added later never
applies to a delivery whose customer was not given a PIN, and an operator can relax a
requirement for deliveries already under way.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import re
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps

from dispatch.core.errors import (
    BAD_FORMAT,
    EMPTY,
    INVALID_IMAGE,
    INVALID_VALUE,
    PROOF_REQUIRED,
    TOO_LARGE,
    UNKNOWN_FIELD,
    UNSUPPORTED_MEDIA_TYPE,
    WRONG_TYPE,
    Refusal,
)
from dispatch.deliveries.state import TERMINAL_STATES

__all__ = [
    "DEFAULT_PIN_DIGITS", "IMAGE_KINDS", "IMAGE_RULES", "MAX_PIN_ATTEMPTS", "PIN_KEY_BYTES",
    "PIN_NONCE_BYTES", "PROOF_KINDS", "CleanImage", "ImageRule", "PinState", "PinVerdict",
    "ProofRequired", "ProofRequirements", "clean_image", "derive_pin", "effective_required",
    "judge_pin", "media_type", "missing_proofs", "new_pin_key", "new_pin_nonce", "parse_pin",
    "parse_requirements", "shown_pin",
]

PROOF_KINDS = ("pin", "photo", "signature")
IMAGE_KINDS = ("photo", "signature")
PIN_DIGITS_MIN, PIN_DIGITS_MAX, DEFAULT_PIN_DIGITS = 4, 6, 4
MAX_PIN_ATTEMPTS = 5
PIN_KEY_BYTES = 32
PIN_NONCE_BYTES = 16
_PIN_CONTEXT = b"wakala-delivery-pin\x00"
_PIN_RE = re.compile(f"[0-9]{{{PIN_DIGITS_MIN},{PIN_DIGITS_MAX}}}")


# -- requirements --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ProofRequirements:
    """What a tenant requires before delivered (all False: nothing, the default)."""

    pin: bool = False
    photo: bool = False
    signature: bool = False
    pin_digits: int = DEFAULT_PIN_DIGITS

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k in PROOF_KINDS if getattr(self, k))

    def as_dict(self) -> dict[str, Any]:
        return {"pin": self.pin, "photo": self.photo, "signature": self.signature,
                "pin_digits": self.pin_digits}


def parse_requirements(body: Any) -> ProofRequirements:
    """A PUT body ``{"pin": bool, "photo": bool, "signature": bool, "pin_digits": 4-6}``; a
    field left out takes its default (False; 4 digits). 422 naming the field otherwise."""
    if not isinstance(body, dict):
        raise Refusal(422, WRONG_TYPE, "the body must be a JSON object", "body")
    unknown = sorted(set(body) - {*PROOF_KINDS, "pin_digits"})
    if unknown:
        raise Refusal(422, UNKNOWN_FIELD, f"unknown field {unknown[0]!r}; the body takes pin, photo, "
                      "signature and pin_digits", unknown[0])
    flags = {}
    for kind in PROOF_KINDS:
        value = body.get(kind, False)
        if not isinstance(value, bool):
            raise Refusal(422, WRONG_TYPE, f"{kind} must be true or false", kind)
        flags[kind] = value
    digits = body.get("pin_digits", DEFAULT_PIN_DIGITS)
    if type(digits) is not int:
        raise Refusal(422, WRONG_TYPE, "pin_digits must be an integer", "pin_digits")
    if not PIN_DIGITS_MIN <= digits <= PIN_DIGITS_MAX:
        raise Refusal(422, INVALID_VALUE, f"pin_digits must be from {PIN_DIGITS_MIN} to {PIN_DIGITS_MAX}",
                      "pin_digits")
    return ProofRequirements(pin_digits=digits, **flags)


def effective_required(at_creation: Iterable[str], now: ProofRequirements | None) -> tuple[str, ...]:
    """The proofs a delivery needs: those required when it was created and still required."""
    current = set(now.kinds) if now is not None else set()
    created = set(at_creation)
    return tuple(k for k in PROOF_KINDS if k in created and k in current)


def missing_proofs(required: Iterable[str], *, pin_verified: bool, images: Iterable[str]) -> list[str]:
    """The required proofs not given yet, in ``PROOF_KINDS`` order."""
    have = set(images) | ({"pin"} if pin_verified else set())
    needed = set(required)
    return [k for k in PROOF_KINDS if k in needed and k not in have]


_WHY_MISSING = {"pin": "the customer's PIN was not entered", "photo": "no photo was uploaded",
                "signature": "no signature was uploaded"}
_HOW = {"pin": "POST /v1/drivers/deliveries/{id}/pin", "photo": "PUT /v1/drivers/deliveries/{id}/proof/photo",
        "signature": "PUT /v1/drivers/deliveries/{id}/proof/signature"}


class ProofRequired(Refusal):
    """``delivered`` refused (409 ``proof_required``, nothing written): a required proof is
    missing. ``field`` is the first missing one; ``errors`` lists each with how to give it."""

    def __init__(self, missing: list[str]) -> None:
        self.missing = missing
        super().__init__(409, PROOF_REQUIRED,
                         "delivered needs proof first: " + "; ".join(_WHY_MISSING[k] for k in missing),
                         missing[0], errors=[{"field": k, "reason": PROOF_REQUIRED,
                                              "message": f"{_WHY_MISSING[k]} ({_HOW[k]})"} for k in missing])


# -- the PIN -------------------------------------------------------------------------------------

def new_pin_key() -> bytes:
    """A tenant's PIN key: 256 random bits."""
    return secrets.token_bytes(PIN_KEY_BYTES)


def new_pin_nonce() -> bytes:
    """A delivery's PIN nonce: 128 random bits (a new one is a new PIN)."""
    return secrets.token_bytes(PIN_NONCE_BYTES)


def derive_pin(key: bytes, delivery_id: str | uuid.UUID, nonce: bytes, digits: int) -> str:
    """The delivery's PIN: HMAC-SHA256 of the delivery id and nonce under the tenant's key,
    reduced to ``digits`` decimal digits (leading zeros kept). The bias of reducing 256 bits
    modulo 10**6 is below 2**-236."""
    if not PIN_DIGITS_MIN <= digits <= PIN_DIGITS_MAX:
        raise ValueError(f"a PIN has {PIN_DIGITS_MIN}-{PIN_DIGITS_MAX} digits, not {digits}")
    did = delivery_id if isinstance(delivery_id, uuid.UUID) else uuid.UUID(str(delivery_id))
    mac = hmac.new(bytes(key), _PIN_CONTEXT + did.bytes + bytes(nonce), hashlib.sha256).digest()
    return f"{int.from_bytes(mac, 'big') % 10 ** digits:0{digits}d}"


def shown_pin(delivery_id: str | uuid.UUID, status: str, key: bytes | None, nonce: bytes | None,
              digits: int | None, verified_at: object) -> str | None:
    """The PIN the customer is shown: while the delivery is under way and its PIN not yet
    entered; None otherwise (or when the delivery has no PIN)."""
    if key is None or nonce is None or digits is None or verified_at is not None or status in TERMINAL_STATES:
        return None
    return derive_pin(key, delivery_id, nonce, digits)


def parse_pin(value: Any, digits: int | None = None) -> str:
    """The entered PIN: a string of 4-6 ASCII digits (``digits`` of them when known). 422
    naming ``pin`` otherwise; such an entry is never counted as an attempt."""
    if not isinstance(value, str):
        raise Refusal(422, WRONG_TYPE, "pin must be a string of digits (\"0427\")", "pin")
    if _PIN_RE.fullmatch(value) is None:
        raise Refusal(422, BAD_FORMAT, f"pin must be {PIN_DIGITS_MIN}-{PIN_DIGITS_MAX} digits 0-9", "pin")
    if digits is not None and len(value) != digits:
        raise Refusal(422, BAD_FORMAT, f"this delivery's PIN has {digits} digits", "pin")
    return value


@dataclass(frozen=True, slots=True)
class PinState:
    """A delivery's PIN bookkeeping (no PIN in it)."""

    attempts: int = 0
    locked: bool = False
    verified: bool = False


@dataclass(frozen=True, slots=True)
class PinVerdict:
    """``outcome``: verified | wrong | locked (this entry or an earlier one locked it);
    ``state`` the bookkeeping after the entry; ``changed`` whether it must be written."""

    outcome: str
    state: PinState
    changed: bool

    @property
    def attempts_left(self) -> int:
        return max(0, MAX_PIN_ATTEMPTS - self.state.attempts)


def judge_pin(state: PinState, entered: str, expected: str) -> PinVerdict:
    """One entry of the PIN. Verified stays verified (nothing counted); a locked PIN refuses
    without comparing; a right one verifies; a wrong one counts, and the
    ``MAX_PIN_ATTEMPTS``-th wrong one locks."""
    if state.verified:
        return PinVerdict("verified", state, False)
    if state.locked:
        return PinVerdict("locked", state, False)
    if hmac.compare_digest(entered.encode("ascii"), expected.encode("ascii")):
        return PinVerdict("verified", PinState(state.attempts, False, True), True)
    attempts = state.attempts + 1
    locked = attempts >= MAX_PIN_ATTEMPTS
    return PinVerdict("locked" if locked else "wrong", PinState(attempts, locked, False), True)


# -- images --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ImageRule:
    formats: tuple[str, ...]     # Pillow format names accepted
    max_bytes: int               # of the upload (the shell also caps it at the engine's body limit)
    max_pixels: int              # width x height, read from the header before decoding
    max_side: int                # the stored image is scaled down to this many pixels a side


IMAGE_RULES = {
    # A phone photo scaled to 2048 px is plenty to show a parcel at a door, and small to store.
    "photo": ImageRule(("JPEG", "PNG"), 2 << 20, 24_000_000, 2048),
    # A signature pad's drawing: PNG (lines and transparency; JPEG smears them).
    "signature": ImageRule(("PNG",), 256 << 10, 4_000_000, 1024),
}
MEDIA_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png"}
_FORMAT_OF = {v: k for k, v in MEDIA_TYPES.items()}
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
# JPEG start-of-frame markers (C4 DHT, C8 JPG and CC DAC are not frames).
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


@dataclass(frozen=True, slots=True)
class CleanImage:
    """An image as stored: re-encoded bytes without metadata, their type, size and digest."""

    data: bytes
    content_type: str
    width: int
    height: int
    sha256: str

    @property
    def size_bytes(self) -> int:
        return len(self.data)


def media_type(header: str | None) -> str | None:
    """The ``type/subtype`` of a Content-Type value, lower case, parameters dropped."""
    if not header:
        return None
    return header.split(";", 1)[0].strip().lower() or None


def _invalid(kind: str, message: str) -> Refusal:
    return Refusal(422, INVALID_IMAGE, message, kind)


def _png_layout(data: bytes, kind: str) -> tuple[int, int]:
    """(width, height) from IHDR; refuses a missing IHDR, a chunk running past the end, and
    anything after IEND."""
    pos, first = len(_PNG_MAGIC), True
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        ctype = data[pos + 4:pos + 8]
        end = pos + 12 + length
        if end > len(data):
            break
        if first:
            if ctype != b"IHDR" or length != 13:
                raise _invalid(kind, "the PNG does not start with its header chunk")
            size = int.from_bytes(data[pos + 8:pos + 12], "big"), int.from_bytes(data[pos + 12:pos + 16], "big")
            first = False
        if ctype == b"IEND":
            if end != len(data):
                raise _invalid(kind, "the PNG has data after its end (another file appended to it)")
            return size
        pos = end
    raise _invalid(kind, "the PNG is truncated (no end chunk)")


def _jpeg_layout(data: bytes, kind: str) -> tuple[int, int]:
    """(width, height) from the first start-of-frame segment; refuses bytes after the last EOI
    (zero padding aside)."""
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise _invalid(kind, "the JPEG does not end where a JPEG ends (truncated, or another file appended)")
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:          # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:   # markers without a length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if length < 2 or pos + 2 + length > n:
            break
        if marker in _SOF:
            if length < 7:
                break
            height = int.from_bytes(data[pos + 5:pos + 7], "big")
            width = int.from_bytes(data[pos + 7:pos + 9], "big")
            return width, height
        if marker == 0xDA:          # scan data before any frame header
            break
        pos += 2 + length
    raise _invalid(kind, "the JPEG has no readable frame header")


def clean_image(kind: str, body: bytes, content_type: str | None, max_bytes: int | None = None) -> CleanImage:
    """Check an uploaded ``photo`` or ``signature`` and re-encode it without metadata (see the
    module docstring for the checks, in order). Refusals name ``kind`` (the content type:
    ``content-type``); nothing is decoded before the cheap checks pass."""
    rule = IMAGE_RULES[kind]
    limit = min(rule.max_bytes, max_bytes) if max_bytes else rule.max_bytes
    declared = media_type(content_type)
    allowed = [MEDIA_TYPES[f] for f in rule.formats]
    if declared not in allowed:
        raise Refusal(415, UNSUPPORTED_MEDIA_TYPE, f"a {kind} is sent as {' or '.join(allowed)} "
                      f"(Content-Type), not {declared or 'nothing'}", "content-type")
    if not body:
        raise Refusal(422, EMPTY, f"the {kind} is empty", kind)
    if len(body) > limit:
        raise Refusal(413, TOO_LARGE, f"the {kind} is over {limit} bytes", kind)
    fmt = _FORMAT_OF[declared]
    sniffed = "PNG" if body.startswith(_PNG_MAGIC) else "JPEG" if body.startswith(_JPEG_MAGIC) else None
    if sniffed is None:
        raise _invalid(kind, f"the {kind} is not a JPEG or PNG image")
    if sniffed != fmt:
        raise _invalid(kind, f"the {kind} is declared {declared} but its bytes are a {sniffed}")
    width, height = _png_layout(body, kind) if fmt == "PNG" else _jpeg_layout(body, kind)
    if width <= 0 or height <= 0:
        raise _invalid(kind, f"the {kind} has no pixels ({width}x{height})")
    if width * height > rule.max_pixels:
        raise Refusal(413, TOO_LARGE, f"the {kind} is {width}x{height} pixels; at most "
                      f"{rule.max_pixels // 1_000_000} megapixels", kind)
    try:
        with Image.open(io.BytesIO(body), formats=[fmt]) as probe:
            if probe.format != fmt or probe.size != (width, height):
                raise _invalid(kind, f"the {kind} does not decode as the {fmt} it says it is")
            probe.verify()
        with Image.open(io.BytesIO(body), formats=[fmt]) as im:
            if fmt == "JPEG":   # decode at a reduced scale when the result is scaled down anyway
                im.draft(None, (rule.max_side, rule.max_side))
            im.load()
            return _reencode(im, fmt, rule)
    except Refusal:
        raise
    except Exception:
        # Decoders raise OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error,
        # DecompressionBombError... on hostile bytes; whichever it is, bytes that do not decode
        # cleanly are refused as the caller's input, never answered with a 500.
        raise _invalid(kind, f"the {kind} is not a whole, readable {fmt} image") from None


def _reencode(im: Image.Image, fmt: str, rule: ImageRule) -> CleanImage:
    try:
        upright = ImageOps.exif_transpose(im)   # before the EXIF goes: keep the photo the right way up
    except Exception:   # malformed EXIF: no orientation to apply (and the EXIF is dropped anyway)
        upright = im
    alpha = upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info
    mode = "RGBA" if alpha and fmt == "PNG" else "RGB"
    pixels = upright.convert(mode)
    pixels.thumbnail((rule.max_side, rule.max_side), Image.Resampling.LANCZOS)
    pixels.info = {}                            # nothing of the upload's metadata travels on
    out = io.BytesIO()
    if fmt == "JPEG":
        pixels.save(out, "JPEG", quality=85, optimize=True)
    else:
        pixels.save(out, "PNG", optimize=True)
    data = out.getvalue()
    return CleanImage(data, MEDIA_TYPES[fmt], pixels.width, pixels.height, hashlib.sha256(data).hexdigest())
