"""Proof of delivery, the pure rules: requirements, the PIN, and what an uploaded image must be.

Images are made by Pillow in the test (real JPEG and PNG files), then damaged, inflated,
mislabelled or stuffed with metadata; the stored form must carry none of it."""

from __future__ import annotations

import hashlib
import io
import random
import uuid
import zlib

import pytest
from PIL import Image, PngImagePlugin

from dispatch.core.errors import Refusal
from dispatch.deliveries.proof import (
    IMAGE_RULES,
    MAX_PIN_ATTEMPTS,
    PIN_KEY_BYTES,
    PIN_NONCE_BYTES,
    PinState,
    ProofRequired,
    ProofRequirements,
    clean_image,
    derive_pin,
    effective_required,
    judge_pin,
    media_type,
    missing_proofs,
    new_pin_key,
    new_pin_nonce,
    parse_pin,
    parse_requirements,
    shown_pin,
)

DELIVERY = "7d3c1c3e-8f2a-4c55-9a51-0e6f5b7f4d21"
KEY = bytes(range(32))
NONCE = bytes(range(16))


# -- requirements --------------------------------------------------------------------------------

def test_requirements_parse_with_defaults_for_what_is_left_out():
    assert parse_requirements({}) == ProofRequirements()
    assert parse_requirements({"pin": True, "photo": True, "pin_digits": 6}) == ProofRequirements(
        pin=True, photo=True, signature=False, pin_digits=6)
    assert ProofRequirements(pin=True, signature=True).kinds == ("pin", "signature")


@pytest.mark.parametrize(("body", "reason", "field"), [
    ([], "wrong_type", "body"),
    ("pin", "wrong_type", "body"),
    (None, "wrong_type", "body"),
    ({"pin": "true"}, "wrong_type", "pin"),
    ({"pin": 1}, "wrong_type", "pin"),
    ({"photo": None}, "wrong_type", "photo"),
    ({"signature": [True]}, "wrong_type", "signature"),
    ({"pin_digits": "4"}, "wrong_type", "pin_digits"),
    ({"pin_digits": 4.0}, "wrong_type", "pin_digits"),
    ({"pin_digits": True}, "wrong_type", "pin_digits"),
    ({"pin_digits": 3}, "invalid_value", "pin_digits"),
    ({"pin_digits": 7}, "invalid_value", "pin_digits"),
    ({"pin_digits": 10**40}, "invalid_value", "pin_digits"),
    ({"pins": True}, "unknown_field", "pins"),
    ({"pin": True, "gps": True}, "unknown_field", "gps"),
])
def test_hostile_requirements_are_refused_naming_the_field(body, reason, field):
    with pytest.raises(Refusal) as refused:
        parse_requirements(body)
    assert (refused.value.status, refused.value.reason, refused.value.field) == (422, reason, field)


def test_a_delivery_needs_what_was_required_at_creation_and_still_is():
    now = ProofRequirements(pin=True, photo=False, signature=True)
    assert effective_required(("pin", "photo"), now) == ("pin",)     # photo dropped since
    assert effective_required((), now) == ()                         # added since: not for this one
    assert effective_required(("pin", "photo", "signature"), None) == ()


def test_missing_proofs_are_named_in_order_and_refused_with_each_one():
    assert missing_proofs(("signature", "pin", "photo"), pin_verified=False, images={"photo"}) == ["pin", "signature"]
    assert missing_proofs(("pin",), pin_verified=True, images=()) == []
    refusal = ProofRequired(["pin", "signature"])
    assert (refusal.status, refusal.reason, refusal.field) == (409, "proof_required", "pin")
    assert [e["field"] for e in refusal.errors] == ["pin", "signature"]
    assert "PIN" in refusal.message and "signature" in refusal.message


# -- the PIN -------------------------------------------------------------------------------------

def test_keys_and_nonces_are_random_and_of_their_length():
    assert len(new_pin_key()) == PIN_KEY_BYTES and len(new_pin_nonce()) == PIN_NONCE_BYTES
    assert len({new_pin_nonce() for _ in range(50)}) == 50


@pytest.mark.parametrize("digits", [4, 5, 6])
def test_a_pin_is_derived_stable_of_its_digits_and_changes_with_each_input(digits):
    pin = derive_pin(KEY, DELIVERY, NONCE, digits)
    assert pin == derive_pin(KEY, uuid.UUID(DELIVERY), NONCE, digits) and len(pin) == digits and pin.isascii()
    others = {derive_pin(KEY, DELIVERY, new_pin_nonce(), digits) for _ in range(30)}
    assert len(others) > 20   # a new nonce is a new PIN (collisions among 30 of 10**4 are rare)
    # another key or another delivery, same nonce: another PIN (fixed inputs, so this is stable)
    assert derive_pin(bytes(32), DELIVERY, NONCE, 6) != derive_pin(KEY, DELIVERY, NONCE, 6)
    assert derive_pin(KEY, "00000000-0000-4000-8000-000000000001", NONCE, 6) != derive_pin(KEY, DELIVERY, NONCE, 6)


def test_pins_keep_their_leading_zeros():
    pins = [derive_pin(KEY, DELIVERY, new_pin_nonce(), 4) for _ in range(300)]
    assert all(len(p) == 4 for p in pins)
    assert any(p.startswith("0") for p in pins)   # one in ten does; none in 300 is ~2e-14


def test_a_derived_pin_never_appears_in_what_is_stored():
    pin = derive_pin(KEY, DELIVERY, NONCE, 6)
    assert pin.encode() not in KEY + NONCE and pin not in KEY.hex() + NONCE.hex()


@pytest.mark.parametrize(("value", "reason"), [
    (1234, "wrong_type"), (None, "wrong_type"), (["1234"], "wrong_type"), (12.34, "wrong_type"),
    ("", "bad_format"), ("123", "bad_format"), ("1234567", "bad_format"), ("12a4", "bad_format"),
    (" 1234", "bad_format"), ("1234\n", "bad_format"), ("12 34", "bad_format"), ("+1234", "bad_format"),
    ("-123", "bad_format"), ("\u0661\u0662\u0663\u0664", "bad_format"),   # Arabic-Indic digits
    ("\uff11\uff12\uff13\uff14", "bad_format"),                           # full-width digits
    ("1234\x00", "bad_format"), ("9" * 10_000, "bad_format"),
])
def test_malformed_pins_are_refused_naming_pin(value, reason):
    with pytest.raises(Refusal) as refused:
        parse_pin(value)
    assert (refused.value.status, refused.value.reason, refused.value.field) == (422, reason, "pin")


def test_a_pin_of_the_wrong_length_for_this_delivery_is_malformed_not_wrong():
    assert parse_pin("0427") == "0427" and parse_pin("042712", 6) == "042712"
    with pytest.raises(Refusal) as refused:
        parse_pin("04271", 4)
    assert refused.value.reason == "bad_format"


def test_wrong_pins_count_and_the_fifth_locks():
    state = PinState()
    for n in range(1, MAX_PIN_ATTEMPTS):
        verdict = judge_pin(state, "1111", "2222")
        assert (verdict.outcome, verdict.changed, verdict.state.attempts) == ("wrong", True, n)
        assert verdict.attempts_left == MAX_PIN_ATTEMPTS - n
        state = verdict.state
    last = judge_pin(state, "1111", "2222")
    assert (last.outcome, last.state.locked, last.attempts_left) == ("locked", True, 0)
    # locked: even the right PIN is refused, and nothing changes
    again = judge_pin(last.state, "2222", "2222")
    assert (again.outcome, again.changed) == ("locked", False)


def test_the_right_pin_verifies_once_and_verified_stays():
    verdict = judge_pin(PinState(attempts=3), "2222", "2222")
    assert (verdict.outcome, verdict.changed, verdict.state) == ("verified", True, PinState(3, False, True))
    later = judge_pin(verdict.state, "0000", "2222")
    assert (later.outcome, later.changed) == ("verified", False)


def test_the_customer_is_shown_the_pin_only_while_it_is_to_be_entered():
    pin = derive_pin(KEY, DELIVERY, NONCE, 4)
    assert shown_pin(DELIVERY, "picked_up", KEY, NONCE, 4, None) == pin
    assert shown_pin(DELIVERY, "assigned", KEY, NONCE, 4, None) == pin
    assert shown_pin(DELIVERY, "picked_up", KEY, NONCE, 4, "2025-01-01T00:00:00Z") is None
    for ended in ("delivered", "failed", "cancelled"):
        assert shown_pin(DELIVERY, ended, KEY, NONCE, 4, None) is None
    assert shown_pin(DELIVERY, "picked_up", None, NONCE, 4, None) is None
    assert shown_pin(DELIVERY, "picked_up", KEY, None, None, None) is None


# -- images --------------------------------------------------------------------------------------

GPS_EXIF = 0x8825


def _exif(orientation: int = 1) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "CanonLeaky"          # Make
    exif[0x0131] = "SecretCam 1.0"       # Software
    exif[0x0112] = orientation
    exif[GPS_EXIF] = {1: "S", 2: (26.0, 14.0, 9.5), 3: "E", 4: (27.0, 54.0, 3.25)}
    return exif.tobytes()


def jpeg(size=(64, 48), color=(200, 30, 30), **save) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "JPEG", **save)
    return out.getvalue()


def png(size=(40, 20), mode="RGBA", color=(0, 0, 0, 0), **save) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, "PNG", **save)
    return out.getvalue()


def refusal(kind: str, body: bytes, content_type: str | None, max_bytes: int | None = None) -> Refusal:
    with pytest.raises(Refusal) as refused:
        clean_image(kind, body, content_type, max_bytes)
    return refused.value


def test_a_jpeg_photo_is_stored_reencoded_upright_and_without_exif_or_gps():
    raw = jpeg(size=(64, 48), exif=_exif(orientation=6))
    assert b"CanonLeaky" in raw
    clean = clean_image("photo", raw, "image/jpeg")
    assert clean.content_type == "image/jpeg" and (clean.width, clean.height) == (48, 64)   # rotated upright
    assert clean.sha256 == hashlib.sha256(clean.data).hexdigest() and clean.size_bytes == len(clean.data)
    assert b"CanonLeaky" not in clean.data and b"SecretCam" not in clean.data and b"Exif" not in clean.data
    stored = Image.open(io.BytesIO(clean.data))
    assert stored.format == "JPEG" and stored.size == (48, 64)
    assert dict(stored.getexif()) == {} and stored.getexif().get_ifd(GPS_EXIF) == {}
    assert "exif" not in stored.info and "icc_profile" not in stored.info


def test_a_png_photo_loses_text_chunks_exif_and_icc():
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "door code 1984")
    info.add_text("Location", "-26.2361,27.9093", zip=True)
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta>GPSLatitude</x:xmpmeta>")
    icc = b"\x00" * 128 + b"fake icc"
    raw = png(size=(30, 30), mode="RGB", color=(10, 200, 10), pnginfo=info, exif=_exif(), icc_profile=icc)
    assert b"door code" in raw
    clean = clean_image("photo", raw, "image/png")
    for leak in (b"door code", b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"iCCP", b"CanonLeaky", b"GPSLatitude"):
        assert leak not in clean.data, leak
    stored = Image.open(io.BytesIO(clean.data))
    assert stored.format == "PNG" and stored.info == {} and stored.getpixel((5, 5)) == (10, 200, 10)


def test_a_signature_keeps_its_transparency_and_a_big_photo_is_scaled_down():
    sig = clean_image("signature", png(size=(300, 100), color=(0, 0, 0, 0)), "image/png")
    assert sig.content_type == "image/png" and Image.open(io.BytesIO(sig.data)).mode == "RGBA"
    rule = IMAGE_RULES["photo"]
    big = clean_image("photo", jpeg(size=(4000, 3000), quality=30), "image/jpeg")
    assert max(big.width, big.height) <= rule.max_side and big.width > big.height


def test_content_type_parameters_and_case_are_accepted():
    assert media_type("Image/PNG; charset=binary") == "image/png"
    assert clean_image("photo", png(), "IMAGE/PNG ; q=1").content_type == "image/png"


def test_a_cmyk_or_grey_jpeg_is_stored_as_rgb():
    out = io.BytesIO()
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(out, "JPEG")
    assert Image.open(io.BytesIO(clean_image("photo", out.getvalue(), "image/jpeg").data)).mode == "RGB"
    out = io.BytesIO()
    Image.new("L", (20, 20), 128).save(out, "JPEG")
    assert Image.open(io.BytesIO(clean_image("photo", out.getvalue(), "image/jpeg").data)).mode == "RGB"


@pytest.mark.parametrize(("kind", "content_type"), [
    ("photo", None), ("photo", ""), ("photo", "text/html"), ("photo", "image/gif"), ("photo", "image/svg+xml"),
    ("photo", "application/octet-stream"), ("photo", "multipart/form-data; boundary=x"), ("photo", "image/jpg"),
    ("signature", "image/jpeg"),
])
def test_a_content_type_the_route_does_not_take_is_415(kind, content_type):
    body = png() if kind == "signature" else jpeg()
    err = refusal(kind, body, content_type)
    assert (err.status, err.reason, err.field) == (415, "unsupported_media_type", "content-type")


def test_empty_and_oversized_bodies_are_refused_before_decoding():
    err = refusal("photo", b"", "image/jpeg")
    assert (err.status, err.reason, err.field) == (422, "empty", "photo")
    body = jpeg(size=(300, 300))
    err = refusal("photo", body, "image/jpeg", max_bytes=len(body) - 1)
    assert (err.status, err.reason, err.field) == (413, "too_large", "photo")
    err = refusal("signature", b"\x89PNG\r\n\x1a\n" + b"\x00" * (IMAGE_RULES["signature"].max_bytes), "image/png")
    assert (err.status, err.reason) == (413, "too_large")


def _chunk(ctype: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + ctype + data + zlib.crc32(ctype + data).to_bytes(4, "big")


def _png_claiming(width: int, height: int) -> bytes:
    """A small, well-formed PNG whose header claims ``width`` x ``height`` (1-bit grey)."""
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _jpeg_claiming(width: int, height: int) -> bytes:
    raw = bytearray(jpeg(size=(16, 16)))
    sof = raw.index(b"\xff\xc0")
    raw[sof + 5:sof + 7] = height.to_bytes(2, "big")
    raw[sof + 7:sof + 9] = width.to_bytes(2, "big")
    return bytes(raw)


def _real_bomb(size: int) -> bytes:
    out = io.BytesIO()
    Image.new("1", (size, size), 0).save(out, "PNG", optimize=True)
    return out.getvalue()


def test_huge_dimensions_and_decompression_bombs_are_refused_from_the_header():
    for kind, body in (("photo", _png_claiming(100_000, 100_000)), ("signature", _png_claiming(5000, 5000)),
                       ("photo", _jpeg_claiming(65_000, 65_000)), ("photo", _jpeg_claiming(6000, 4001))):
        err = refusal(kind, body, "image/png" if body.startswith(b"\x89PNG") else "image/jpeg")
        assert (err.status, err.reason, err.field) == (413, "too_large", kind), err.message
    bomb = _real_bomb(6000)          # 36 megapixels in a few KB
    assert len(bomb) < 20_000
    err = refusal("photo", bomb, "image/png")
    assert (err.status, err.reason) == (413, "too_large") and "6000x6000" in err.message


def test_garbage_polyglots_and_mislabelled_images_are_invalid():
    html = b"<html><script>alert(1)</script></html>"
    zip_tail = b"PK\x03\x04" + b"\x00" * 26 + b"evil.js" + b"PK\x05\x06" + b"\x00" * 18
    gif = io.BytesIO()
    Image.new("RGB", (4, 4)).save(gif, "GIF")
    cases = [
        ("photo", b"definitely not an image", "image/jpeg"),
        ("photo", html, "image/png"),
        ("photo", b"\x89PNG\r\n\x1a\n" + html, "image/png"),                    # PNG magic, HTML body
        ("photo", b"\xff\xd8\xff" + html + b"\xff\xd9", "image/jpeg"),          # JPEG magic, HTML body
        ("photo", png() + zip_tail, "image/png"),                              # a PNG+ZIP polyglot
        ("photo", png() + html, "image/png"),
        ("photo", jpeg() + zip_tail, "image/jpeg"),                            # a JPEG+ZIP polyglot
        ("photo", jpeg() + html, "image/jpeg"),
        ("photo", jpeg(), "image/png"),                                        # declared PNG, bytes JPEG
        ("photo", png(), "image/jpeg"),
        ("photo", gif.getvalue(), "image/png"),
        ("photo", b'<svg xmlns="http://www.w3.org/2000/svg"/>', "image/png"),
        ("signature", b"\x00" * 64, "image/png"),
    ]
    for kind, body, content_type in cases:
        err = refusal(kind, body, content_type)
        assert (err.status, err.reason, err.field) == (422, "invalid_image", kind), (body[:20], err.message)


def test_truncated_and_corrupt_images_are_invalid():
    whole_png = png(size=(200, 200), mode="RGB", color=(1, 2, 3))
    whole_jpeg = jpeg(size=(200, 200))
    corrupt = bytearray(png(size=(64, 64), mode="RGB", color=(9, 9, 9)))
    idat = corrupt.index(b"IDAT")
    corrupt[idat + 10:idat + 14] = b"\xde\xad\xbe\xef"   # CRC no longer matches
    no_ihdr = b"\x89PNG\r\n\x1a\n" + _chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + _chunk(b"IEND", b"")
    for kind, body, content_type in [
        ("photo", whole_png[: len(whole_png) // 2], "image/png"),
        ("photo", whole_png[:-12], "image/png"),                        # no IEND
        ("photo", whole_jpeg[: len(whole_jpeg) // 2], "image/jpeg"),
        ("photo", bytes(corrupt), "image/png"),
        ("photo", no_ihdr, "image/png"),
        ("photo", b"\xff\xd8\xff\xd9", "image/jpeg"),                  # no frame at all
        ("photo", _png_claiming(0, 10), "image/png"),
        ("signature", png()[:40], "image/png"),
    ]:
        err = refusal(kind, body, content_type)
        assert (err.status, err.reason, err.field) == (422, "invalid_image", kind), (body[:12], err.message)


@pytest.mark.filterwarnings("ignore:.*(Tag data|EXIF|Truncated).*:UserWarning")   # Pillow on the damaged EXIF
def test_randomly_damaged_images_are_refused_or_cleaned_never_crash():
    rng = random.Random(20240611)
    for base, content_type in ((png(size=(32, 32), mode="RGB", color=(5, 6, 7)), "image/png"),
                               (jpeg(size=(32, 32), exif=_exif()), "image/jpeg")):
        for _ in range(200):
            data = bytearray(base)
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            try:
                clean = clean_image("photo", bytes(data), content_type)
            except Refusal as err:
                assert (err.status, err.field) in ((413, "photo"), (422, "photo")), err.message
            else:
                stored = Image.open(io.BytesIO(clean.data))
                assert stored.format in ("JPEG", "PNG") and b"CanonLeaky" not in clean.data
