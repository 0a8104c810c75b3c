"""The catalogue: categories, products, variants and their stock, for vendors and customers.

Three layers, as elsewhere in the engine, one module each:

* ``parse``: pure functions turn an API body (a decoded JSON object) into typed inputs, or
  raise ``dispatch.core.errors.Refusal`` naming the field and a reason from a fixed vocabulary;
* ``writes``: each runs in one ``TenantDatabase.tenant_transaction`` (RLS forced) and, after
  it commits, invalidates exactly the cache tags (``tags``) its change makes stale;
* ``reads``: cache-aside through ``dispatch.core.cache`` with the tenant in every key;

plus ``rows`` (rows shaped as the API shows them) and ``views`` (the sales views' refresher
and the popular-products cache warmer).

What each cached view shows decides what a write invalidates:

==========================  ==============================================  ====================
cached entry                shows                                           tags
==========================  ==============================================  ====================
product (30 min)            the product and its variants, no stock          ``product:{id}``
inventory (60 s)            every stock row of the product, its status      ``inventory:{id}``
product list (5 min)        name, price, images, unit… (no stock)           ``catalogue``
search (10 min)             as a list, plus the rank                        ``catalogue``
==========================  ==============================================  ====================

``get_product`` joins the product entry with the inventory entry, so the long-lived product
entry never holds stock, which every order changes. A change of any product field but
``cost`` invalidates ``product:{id}``; of any but ``tags`` and ``cost`` also ``catalogue``;
of ``status`` also ``inventory:{id}`` (``product_update_tags``). A stock change invalidates
only ``inventory:{id}`` (``stock_tags``; the same tag orders, payments and deliveries
invalidate when reservations move stock); a new product or category ``catalogue``; a new
variant ``catalogue``, its product's entry and its inventory. A change of ``cost`` alone,
which no view shows, invalidates nothing.

A vendor only ever touches its own products: another vendor's product, another tenant's, or a
malformed id all raise the same ``NotFound`` (404 ``not_found``) and reveal nothing.

Full-text search goes through ``search_product_ids()`` (migration 0012), which runs as the
schema's owner so that ``idx_product_search`` can be used (RLS would forbid it to the
application role). The materialized views of 0012 are refreshed by ``refresh_views`` and
warm the product cache through ``warm_popular``; ``run_view_refresher`` loops both.

Callers import from the module that defines a name (``writes.create_product``,
``reads.get_product``); this package re-exports nothing.
"""
