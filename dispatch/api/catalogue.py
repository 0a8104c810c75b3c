"""Catalogue reads (``/v1/catalogue/...``, tag ``customers``): browse, one product, search.

Any authenticated user of the tenant may read its active catalogue (customers shop from it;
vendors and admins see what customers see). The answers come through the catalogue's cache.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from dispatch.api.common import call, caller, path_id
from dispatch.commerce.catalogue import reads as catalogue_reads

__all__ = ["router"]

router = APIRouter()


@router.get("/v1/catalogue/products", tags=["customers"], summary="Browse the catalogue (cached)")
async def browse(request: Request, category_id: str | None = None, vendor_id: str | None = None,
                 page: int = 1, page_size: int = 20) -> dict:
    user = await caller(request)
    state = request.app.state
    return await call(catalogue_reads.list_products(
        state.db, state.cache, user.tenant_id,
        category_id=None if category_id is None else path_id(category_id, "category_id"),
        vendor_id=None if vendor_id is None else path_id(vendor_id, "vendor_id"), page=page, page_size=page_size))


@router.get("/v1/catalogue/products/{product_id}", tags=["customers"])
async def product(request: Request, product_id: str) -> dict:
    user = await caller(request)
    state = request.app.state
    return await call(catalogue_reads.get_product(state.db, state.cache, user.tenant_id, path_id(product_id, "product_id")))


@router.get("/v1/catalogue/search", tags=["customers"], summary="Search names and descriptions (cached)")
async def search(request: Request, q: str, page: int = 1, page_size: int = 20) -> dict:
    user = await caller(request)
    state = request.app.state
    return await call(catalogue_reads.search_products(state.db, state.cache, user.tenant_id, q, page=page,
                                                page_size=page_size))
