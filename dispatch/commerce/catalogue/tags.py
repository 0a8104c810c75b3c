"""Which cache tags a catalogue change makes stale (pure; the table is in the package docstring).

The entries themselves are keyed by ``dispatch.core.cache`` (``product_key``,
``inventory_key``, ``product_list_key``, ``search_key``); the tags here say which writes
drop them. The tag names themselves are built in ``dispatch.core.cache`` (``product_tag``,
``inventory_tag``), which orders, payments and deliveries use when a reservation moves stock.
"""

from __future__ import annotations

from collections.abc import Iterable

from dispatch.commerce.catalogue.parse import PRODUCT_FIELDS
from dispatch.core.cache_keys import inventory_tag, product_tag

CATALOGUE_TAG = "catalogue"
# Which cached entries show each product field: the product entry all but cost; lists and
# search results these (search also matches on the description); the inventory entry the
# status (it decides who may see the stock).
_LISTED_FIELDS = frozenset({"sku", "name", "description", "price", "compare_at_price", "category_id",
                            "unit", "images", "status"})
_PAGE_FIELDS = frozenset(PRODUCT_FIELDS) - {"cost"}
_INVENTORY_FIELDS = frozenset({"status"})


def stock_tags(product_id: object) -> list[str]:
    """What a stock change of the product makes stale: its inventory entry only (the product
    entry holds no stock; get_product reads stock from the inventory entry)."""
    return [inventory_tag(product_id)]


def product_update_tags(product_id: object, changed: Iterable[str]) -> list[str]:
    """What changing these product fields makes stale; nothing when no view shows them."""
    changed = set(changed)
    tags = []
    if changed & _PAGE_FIELDS:
        tags.append(product_tag(product_id))
    if changed & _LISTED_FIELDS:
        tags.append(CATALOGUE_TAG)
    if changed & _INVENTORY_FIELDS:
        tags.extend(stock_tags(product_id))
    return tags
