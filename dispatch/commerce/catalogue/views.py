"""The sales views' refresher and the popular-products cache warmer.

The materialized views of migration 0012 (``mv_popular_products``,
``mv_daily_sales_summary``) are refreshed CONCURRENTLY by ``refresh_sales_views()``, which
runs as the schema's owner: the application role may neither read the views directly nor
refresh them (it reads them through ``v_popular_products`` and ``v_daily_sales_summary``).
One process refreshes a tenant at a time, across engine processes (a transaction-scoped
advisory lock per tenant); the others skip that tenant for the round.

After a refresh, the most ordered products are put in the cache as the very entries
``get_product`` reads, so the busiest product pages are answered from the cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable

from dispatch.commerce.catalogue.parse import bounded_int
from dispatch.commerce.catalogue.reads import cache_tenant, cached_inventory, cached_product
from dispatch.core.cache import Cache
from dispatch.core.metrics import VIEW_REFRESH_FAILURES, record_sample
from schema.db import TenantDatabase
from schema.tenants import parse_tenant_id

log = logging.getLogger(__name__)

POPULAR_SQL = """
SELECT id FROM v_popular_products
WHERE order_count > 0
ORDER BY order_count DESC, total_sold DESC, id
LIMIT $1
"""
VIEW_AGE = "wakala_view_refresh_age_seconds"
_NEVER_STARTED = [True]   # the age counts from this process's first refresher, not each restart of it
REFRESH_SQL = "SELECT refresh_sales_views()"
# One refresher per tenant at a time across engine processes; the others skip the tenant.
REFRESH_LOCK_SQL = "SELECT pg_try_advisory_xact_lock(hashtext('wakala.refresh_sales_views'), hashtext($1))"


async def refresh_views(db: TenantDatabase, tenant_id: object) -> bool:
    """Refresh the tenant's mv_popular_products and mv_daily_sales_summary, CONCURRENTLY (reads
    go on meanwhile), through 0012's refresh_sales_views(). False when another process is
    refreshing this tenant right now (it was skipped)."""
    tid = parse_tenant_id(tenant_id)
    async with db.tenant_transaction(tid) as tx:
        if not await tx.fetchval(REFRESH_LOCK_SQL, str(tid)):
            return False
        await tx.execute(REFRESH_SQL)
    return True


async def warm_popular(db: TenantDatabase, cache: Cache, tenant_id: object, limit: int = 50) -> int:
    """Put the ``limit`` most ordered products (from the last refresh of mv_popular_products)
    in the cache, as the cache-aside entries ``get_product`` reads: the product entry (30 min)
    and, while it lasts (60 s), the inventory entry. Each is read fresh from the tables, not
    from the view, so it is as current as any other read. Returns how many products."""
    tid, tenant = await cache_tenant(db, tenant_id)
    count = bounded_int(limit, "limit", 1, 1000)
    async with db.tenant_transaction(tid, readonly=True) as tx:
        ids = [r["id"] for r in await tx.fetch(POPULAR_SQL, count)]
    for pid in ids:
        await cached_product(db, cache, tid, tenant, pid)
        await cached_inventory(db, cache, tid, tenant, pid)
    return len(ids)


async def run_view_refresher(db: TenantDatabase, cache: Cache,
                             tenant_ids_provider: Callable[[], Awaitable[Iterable[object]]],
                             interval_s: float = 900) -> None:
    """Every ``interval_s``: for each tenant the provider names, refresh its views and warm its
    popular products. A failing tenant (or provider) is logged and the loop goes on; it ends
    only when cancelled.

    ``wakala_view_refresh_age_seconds`` counts from the start of the last round in which every
    tenant was refreshed (by this process, or skipped because another process was refreshing
    it at that moment), and from the refresher's own start until such a round: a round with a
    failure, or tenants that cannot be listed, lets it grow. A failing tenant adds to
    ``wakala_view_refresh_failures_total``. Engine processes each report their own; the
    freshest of them (``min``) is the views' age."""
    if _NEVER_STARTED[0]:
        _NEVER_STARTED[0] = False
        record_sample(VIEW_AGE, 0.0, ageing=True)
    while True:
        started = time.monotonic()
        complete = True
        try:
            tenants = list(await tenant_ids_provider())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("view refresher: could not list tenants")
            tenants, complete = [], False
        for tenant_id in tenants:
            try:
                refreshed = await refresh_views(db, tenant_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                complete = False
                VIEW_REFRESH_FAILURES.inc()
                log.exception("view refresher: tenant %s failed; next round in %.0f s", tenant_id, interval_s)
                continue
            try:
                if refreshed:
                    await warm_popular(db, cache, tenant_id)
            except asyncio.CancelledError:
                raise
            except Exception:   # the views are fresh; the cache fills on demand
                log.exception("view refresher: warming tenant %s's popular products failed", tenant_id)
        if complete:
            record_sample(VIEW_AGE, time.monotonic() - started, ageing=True)
        await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - started)))


def active_tenant_ids(db: TenantDatabase) -> Callable[[], Awaitable[list[uuid.UUID]]]:
    """A ``tenant_ids_provider`` for ``run_view_refresher``: the active tenants, read from the
    control plane at each round (so tenants provisioned meanwhile are included), as the
    application role."""
    return db.active_tenant_ids
