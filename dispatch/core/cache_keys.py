"""Keys and tags of the read cache (``dispatch.core.cache``): pure builders, one per key.

Every key carries the tenant. Tags name what a write makes stale (``product:{id}``,
``inventory:{product_id}``, ``catalogue``, ``order:{id}``); ``tag_key`` is the Redis set that
lists the entries filed under a tag and ``gen_key`` its invalidation counter.
"""

from __future__ import annotations

import hashlib
import json

__all__ = ["gen_key", "inventory_key", "inventory_tag", "order_key", "product_key",
           "product_list_key", "product_tag", "search_key", "tag_key"]


def product_key(tenant: str, product_id: str) -> str:
    return f"product:{tenant}:{product_id}"


def product_list_key(tenant: str, category_id: str | None, vendor_id: str | None, page: int, size: int) -> str:
    return f"products:{tenant}:{category_id or 'all'}:{vendor_id or 'all'}:page:{page}:{size}"


def inventory_key(tenant: str, product_id: str) -> str:
    return f"inventory:{tenant}:{product_id}"


def order_key(tenant: str, order_id: str) -> str:
    return f"order:{tenant}:{order_id}"


def search_key(tenant: str, query: str, *extra: object) -> str:
    normalised = " ".join(query.lower().split())
    digest = hashlib.sha256(json.dumps([normalised, *map(str, extra)]).encode()).hexdigest()[:32]
    return f"search:{tenant}:{digest}"


def product_tag(product_id: object) -> str:
    """The tag of a product's own entry (its page: the product and its variants, no stock)."""
    return f"product:{product_id}"


def inventory_tag(product_id: object) -> str:
    """The tag of a product's stock entry: what every stock movement makes stale (catalogue
    adjustments, reservations, sales, releases, write-offs, returns)."""
    return f"inventory:{product_id}"


def tag_key(tenant: str, tag: str) -> str:
    return f"cache:tag:{tenant}:{tag}"


def gen_key(tenant: str, tag: str) -> str:
    return f"cache:gen:{tenant}:{tag}"
