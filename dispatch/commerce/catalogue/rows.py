"""Catalogue rows as the API shows them (pure): money as exact strings, times as ISO 8601,
JSON columns decoded, ``cost`` only for the product's vendor.

Readers and writers answer with the same shapes, so a vendor's create or update returns what
the next read of the product will show.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any


def money(value: Decimal | None) -> str | None:
    """Money as a decimal string: exact, never a float."""
    return None if value is None else str(value)


def iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def json_column(value: str | None, default: Any) -> Any:
    """A JSONB column as asyncpg returns it (text), decoded; ``default`` for NULL."""
    return default if value is None else json.loads(value)


def listed(row: Mapping[str, Any]) -> dict[str, Any]:
    """A product as lists and search results show it."""
    return {
        "id": str(row["id"]),
        "vendor_id": str(row["vendor_id"]),
        "category_id": None if row["category_id"] is None else str(row["category_id"]),
        "sku": row["sku"],
        "name": row["name"],
        "description": row["description"],
        "price": money(row["price"]),
        "compare_at_price": money(row["compare_at_price"]),
        "currency": row["currency"],
        "unit": row["unit"],
        "images": json_column(row["images"], []),
    }


def product_row(row: Mapping[str, Any], *, with_cost: bool = False) -> dict[str, Any]:
    """A product as its page shows it; ``cost`` only for its vendor."""
    out = {
        **listed(row),
        "tags": list(row["tags"] or []),
        "status": row["status"],
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
    }
    if with_cost:
        out["cost"] = money(row["cost"])
    return out
