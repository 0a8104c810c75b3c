"""Catalogue input parsing: pure, no services. Every refusal names its field and reason."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from dispatch.commerce.catalogue.parse import (
    parse_money,
    parse_new_product,
    parse_page,
    parse_product_update,
    parse_search_query,
    path_id,
    uuid_field,
)
from dispatch.core.errors import NotFound, Refusal

MAIZE = {"sku": "MM-5KG", "name": "Maize meal 5kg", "description": "White maize meal, super fine",
         "price": "65.99", "images": ["https://cdn.example.com/mm.jpg"], "tags": ["staples"]}


def test_money_is_cents_from_strings_and_numbers_and_refuses_the_rest():
    assert parse_money("12.5") == Decimal("12.50")
    assert parse_money(12) == Decimal("12.00")
    assert parse_money(0.1 + 0.2) == Decimal("0.30")
    assert parse_money("0.005") == Decimal("0.01")          # half up
    assert str(parse_money("-0")) == "0.00"
    assert parse_money("999999.99") == Decimal("999999.99")
    cases = [
        ("-0.01", "out_of_range"), (-1, "out_of_range"), ("1000000", "out_of_range"),
        ("999999.995", "out_of_range"), (10**400, "out_of_range"), (1e300, "out_of_range"),
        (float("nan"), "not_finite"), (float("inf"), "not_finite"), ("NaN", "not_finite"),
        ("-Infinity", "not_finite"), (True, "wrong_type"), (None, "wrong_type"), ([1], "wrong_type"),
        ("1e3", "bad_format"), ("12,50", "bad_format"), ("R12", "bad_format"), ("1_000", "bad_format"),
        ("1" * 5000, "bad_format"), ("", "bad_format"),
    ]
    for value, reason in cases:
        with pytest.raises(Refusal) as info:
            parse_money(value, "price")
        assert (info.value.status, info.value.reason, info.value.field) == (422, reason, "price"), value


def test_a_product_body_is_checked_field_by_field():
    product = parse_new_product({**MAIZE, "initial_stock": 3})
    assert product.price == Decimal("65.99") and product.images == ("https://cdn.example.com/mm.jpg",)
    assert product.initial_stock == 3 and product.status == "active"
    bad = {
        "extra key": ({**MAIZE, "is_admin": True}, "unknown_field", "is_admin"),
        "no price": ({k: v for k, v in MAIZE.items() if k != "price"}, "missing_field", "price"),
        "long name": ({**MAIZE, "name": "x" * 256}, "too_long", "name"),
        "blank name": ({**MAIZE, "name": "   "}, "empty", "name"),
        "sqlish name": ({**MAIZE, "name": "Bread'; DROP TABLE products; --"}, "bad_format", "name"),
        "control": ({**MAIZE, "name": "Bread\x00"}, "bad_format", "name"),
        "bad sku": ({**MAIZE, "sku": "x' OR '1'='1"}, "bad_format", "sku"),
        "sku type": ({**MAIZE, "sku": 12}, "wrong_type", "sku"),
        "11 images": ({**MAIZE, "images": ["https://a.example/x.jpg"] * 11}, "too_many", "images"),
        "not a url": ({**MAIZE, "images": ["javascript:alert(1)"]}, "bad_format", "images[0]"),
        "21 tags": ({**MAIZE, "tags": [f"t{i}" for i in range(21)]}, "too_many", "tags"),
        "status": ({**MAIZE, "status": "deleted"}, "bad_format", "status"),
        "category": ({**MAIZE, "category_id": "1 OR 1=1"}, "bad_format", "category_id"),
        "stock bool": ({**MAIZE, "initial_stock": True}, "wrong_type", "initial_stock"),
        "stock float": ({**MAIZE, "initial_stock": 2.0}, "wrong_type", "initial_stock"),
        "negative stock": ({**MAIZE, "initial_stock": -1}, "out_of_range", "initial_stock"),
        "not an object": (["sku"], "wrong_type", None),
    }
    for label, (body, reason, field) in bad.items():
        with pytest.raises(Refusal) as info:
            parse_new_product(body)
        assert (info.value.reason, info.value.field) == (reason, field), label
    with pytest.raises(Refusal, match="nothing to change"):
        parse_product_update({})


def test_pages_and_queries_are_bounded():
    assert parse_page(1, 100) == (1, 100) and parse_page("3", "20") == (3, 20)
    for page, size in ((0, 20), (101, 20), (1, 0), (1, 101), (True, 20), ("1; --", 20), (1.0, 20)):
        with pytest.raises(Refusal):
            parse_page(page, size)
    assert parse_search_query("  maize   meal ") == "maize meal"
    for q in ("", "   ", "x" * 201, None, 5, "a\x00b"):
        with pytest.raises(Refusal) as info:
            parse_search_query(q)
        assert info.value.field == "q"


def test_a_reference_in_a_body_is_a_uuid_or_a_named_refusal():
    pid = uuid.uuid4()
    assert uuid_field(str(pid), "category_id") == pid == uuid_field(str(pid).upper(), "category_id")
    for value, reason in ((7, "wrong_type"), (None, "wrong_type"), ("not-a-uuid", "bad_format")):
        with pytest.raises(Refusal) as info:
            uuid_field(value, "category_id")
        assert (info.value.status, info.value.reason, info.value.field) == (422, reason, "category_id")


def test_a_malformed_path_id_is_simply_not_found():
    pid = uuid.uuid4()
    assert path_id(str(pid), "product") == pid == path_id(pid, "product")
    for value in ("not-a-uuid", "1 OR 1=1", 42, None, b"\x00" * 16):
        with pytest.raises(NotFound) as info:
            path_id(value, "product")
        assert (info.value.status, info.value.reason, info.value.message, info.value.field) == (
            404, "not_found", "no such product", None)
        assert info.value.as_dict() == {"reason": "not_found", "message": "no such product"}
