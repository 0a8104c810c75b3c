"""Fill a tenant with N realistic orders fast, for benchmarks and tests of moves and backups.

The REST API places about 150 orders/s, so 100,000 orders would take eleven minutes;
:func:`fill_tenant` writes them with set-based SQL (``INSERT ... SELECT`` over
``generate_series``) straight into the tenant's schema, as the owner, in batches of 20,000
orders, one transaction each: a failure keeps the batches already committed, and each of
them is whole (its orders, their rows elsewhere, and the counters and stock they change).
On this 2-core box 100,000 orders take about 21 s with two sessions, 39 s with one
(10,000: under 5 s); the database's own checks do most of the work (every foreign key is
checked row by row, no trigger or constraint is switched off).

The data is what the engine itself would have written:

* people: one customer per ~20 orders, a few vendors (each with a user), drivers; phone
  numbers ``+2774`` and a counter that continues from the tenant's highest one, so a tenant
  can be filled again;
* each vendor 40 products, each with one stock row;
* orders on the lifecycle's own paths (:data:`ORDER_PATHS`, checked against
  ``dispatch.commerce.orders.lifecycle.TRANSITIONS`` by the tests): one history row per
  status the order went through, so ``order_status_history`` has 1-7 rows per order
  (about 5 on average), not an invented count; cash orders are accepted while pending,
  card orders only once paid;
* 1-4 lines per order from its vendor's catalogue; subtotal, VAT and total computed as
  ``dispatch.commerce.pricing`` does (VAT per line and on the fee, inclusive or exclusive
  per ``PricingSettings``; the fee from the PostGIS distance vendor -> customer);
* a ``succeeded`` payment for card orders that were paid, a ``failed`` one for card orders
  whose payment failed, a refund (``payment_status = 'refund_pending'``) for paid orders
  cancelled or rejected; cash orders have no payment row, as with the engine;
* a delivery for every order that reached ``ready`` (status, driver and timestamps per the
  order's path); a tracking link for about a quarter of them;
* open orders (pending ... picked_up) are recent and hold their stock: active
  ``inventory_reservations`` (pending ones expire 15 minutes after placing) and
  ``inventory.reserved_quantity`` to match, so the engine can carry them on;
* the counters the engine keeps: customers' orders, spend and last order, vendors' orders,
  drivers' deliveries and earnings.

Not written, on purpose: the outbox tables (a relay would publish hundreds of thousands of
old events to the broker), sale movements of delivered orders (stock starts as an opening
balance), returns, promotions, categories.

Batches run on two sessions at once. Each session builds the same scratch tables (people
and products get ids derived from a per-fill random key, so every session names the same
rows), the first one writes people, shops and stock, then the sessions take batches in
turn. The counter and stock updates of a batch take a transaction-level advisory lock first,
so two batches never update the same rows in opposite orders (no deadlock); inserts only
take shared key locks on what they reference.

Every statement runs with ``search_path`` set to the tenant schema and
``app.current_tenant_id`` to the tenant, and every row names its ``tenant_id``: the owner is
a superuser on this machine, but a non-superuser owner under forced RLS passes too.
Randomness is ``hashint8extended(n, seed)``: a seed gives the same shape (counts per table,
statuses, amounts); ids are fresh every run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
import uuid
from collections.abc import Sequence

import asyncpg

from dispatch.commerce.pricing import PricingSettings
from schema.connect import connection
from schema.errors import UnknownTenant, WakalaError
from schema.migrate import shard_dsn
from schema.settings import PostgresSettings
from schema.tenants import Tenant, create_tenant, parse_tenant_id

__all__ = ["ORDER_PATHS", "TenantFillError", "fill_tenant", "main", "plan_people"]

MAX_ORDERS = 5_000_000
BATCH_ORDERS = 20_000
PRODUCTS_PER_VENDOR = 40
ORDERS_PER_CUSTOMER = 20
PHONE_PREFIX = "+2774"          # + a 7-digit counter; other generators use +2771/6/8/9
STEP_MINUTES = 7                # between two statuses of an order
OPEN = frozenset({"pending", "paid", "accepted", "ready", "dispatched", "picked_up"})
_DELIVERED = ("pending", "paid", "accepted", "ready", "dispatched", "picked_up", "delivered")
_CASH_DELIVERED = ("pending", "accepted", "ready", "dispatched", "picked_up", "delivered")

#: (weight per 1000, payment method, statuses in the order they were entered).
ORDER_PATHS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (410, "card", _DELIVERED),
    (190, "cash", _CASH_DELIVERED),
    (40, "card", ("pending", "cancelled")),                    # payment failed
    (30, "cash", ("pending", "cancelled")),                    # reservation expired
    (30, "card", ("pending", "paid", "cancelled")),            # cancelled after paying
    (20, "card", ("pending", "paid", "rejected")),
    (15, "cash", ("pending", "rejected")),
    (15, "cash", _CASH_DELIVERED[:5] + ("failed",)),           # failed after pick-up
    (10, "cash", _CASH_DELIVERED[:3] + ("cancelled",)),        # delivery cancelled
    (40, "card", _DELIVERED[:1]),                               # open orders from here
    (20, "cash", _DELIVERED[:1]),
    (30, "card", _DELIVERED[:2]),
    (30, "card", _DELIVERED[:3]),
    (40, "card", _DELIVERED[:4]),
    (40, "card", _DELIVERED[:5]),
    (40, "cash", _CASH_DELIVERED[:5]),
)


class TenantFillError(WakalaError):
    """fill_tenant was given arguments it cannot fill a tenant with."""


def payment_status(method: str, steps: Sequence[str]) -> str:
    """orders.payment_status at the end of a path (as dispatch.commerce.orders.payments sets it)."""
    if method != "card":
        return "pending"
    if "paid" in steps:
        return "refund_pending" if steps[-1] in ("cancelled", "rejected") else "paid"
    return "failed" if steps[-1] == "cancelled" else "pending"


def plan_people(orders: int) -> tuple[int, int, int]:
    """(customers, vendors, drivers) for *orders* orders."""
    customers = max(1, -(-orders // ORDERS_PER_CUSTOMER))
    vendors = min(20, 3 + orders // 20_000)
    drivers = min(300, max(5, orders // 1_000))
    return customers, vendors, drivers


def _check_int(name: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise TenantFillError(f"{name} must be an integer from {lo} to {hi}, got {value!r}")
    return value


PLACEMENT_SQL = """
SELECT m.schema_name, s.shard_id, s.host, s.port, s.database_name
FROM tenant_shard_mapping m JOIN shard_map s USING (shard_id) WHERE m.tenant_id = $1
"""
SCOPE_SQL = ("SELECT set_config('search_path', quote_ident($1) || ', public', false), "
             "set_config('app.current_tenant_id', $2, false)")
PHONE_BASE_SQL = """
SELECT coalesce(max(substr(phone_number, 6)::bigint), 0) FROM users
WHERE phone_number ~ '^\\+2774[0-9]{7}$'
"""
CONFIG_SQL = """
CREATE TEMP TABLE _fill_config AS SELECT $1::uuid AS tenant, $2::bigint AS seed,
    $3::int AS customers, $4::int AS vendors, $5::int AS drivers, $6::numeric AS vat,
    $7::bool AS incl, $8::numeric AS base_fee, $9::numeric AS per_km, $10::int AS stock,
    $11::bigint AS phone_base, $12::text AS run
"""
PATHS_SQL = """
CREATE TEMP TABLE _fill_paths (lo int, hi int, method text, pay_status text, steps text[], open bool)
"""
INSERT_PATH_SQL = "INSERT INTO _fill_paths VALUES ($1, $2, $3, $4, $5, $6)"
PEOPLE_SQL = """
CREATE TEMP TABLE _fill_people AS
SELECT n, role, k,
       overlay(overlay(md5(c.run || ':user:' || n) PLACING '4' FROM 13) PLACING '8' FROM 17)::uuid AS user_id,
       overlay(overlay(md5(c.run || ':entity:' || n) PLACING '4' FROM 13) PLACING '8' FROM 17)::uuid AS entity_id,
       (ARRAY['Thandi','Sipho','Lerato','Zanele','Mpho','Bongani','Naledi','Kagiso','Ayanda',
              'Lindiwe','Tshepo','Nomsa','Pieter','Anele','Karabo','Refilwe'])[1 + h % 16] AS first_name,
       (ARRAY['Dlamini','Nkosi','Mokoena','Naidoo','van der Merwe','Khumalo','Botha','Mahlangu',
              'Pillay','Sithole','Ndlovu','Mthembu','Molefe','Jacobs','Zulu','Smith'])[1 + (h >> 4) % 16] AS last_name,
       '+2774' || lpad((c.phone_base + n)::text, 7, '0') AS phone,
       -26.2041 + ((h >> 8) % 30001 - 15000) / 100000.0 AS lat,
       28.0473 + ((h >> 24) % 30001 - 15000) / 100000.0 AS lng, h
FROM _fill_config c, generate_series(1, c.customers + c.vendors + c.drivers) AS n,
     LATERAL (SELECT hashint8extended(n, c.seed) & 9223372036854775807 AS h,
                     CASE WHEN n <= c.customers THEN 'customer'
                          WHEN n <= c.customers + c.vendors THEN 'vendor' ELSE 'driver' END AS role,
                     CASE WHEN n <= c.customers THEN n - 1
                          WHEN n <= c.customers + c.vendors THEN n - c.customers - 1
                          ELSE n - c.customers - c.vendors - 1 END AS k) AS x;
CREATE UNIQUE INDEX ON _fill_people (role, k);
ANALYZE _fill_people;
"""
# The products of this fill (deterministic ids, like the people's: every session builds the same).
PRODUCTS_SQL = (
    """CREATE TEMP TABLE _fill_products AS
    SELECT v.k AS vendor_k, p.k,
           overlay(overlay(md5(c.run || ':product:' || v.k || ':' || p.k) PLACING '4' FROM 13)
                   PLACING '8' FROM 17)::uuid AS id,
           overlay(overlay(md5(c.run || ':stock:' || v.k || ':' || p.k) PLACING '4' FROM 13)
                   PLACING '8' FROM 17)::uuid AS inventory_id,
           v.entity_id AS vendor_id,
           (ARRAY['Maize meal 5kg','White bread','Full cream milk 2L','Eggs x18','Rooibos tea',
                  'Boerewors 1kg','Chakalaka','Rice 2kg','Cooking oil 2L','Sugar 2.5kg'])[1 + p.k % 10]
             || ' #' || p.k AS name,
           round((1500 + (hashint8extended(v.k * 1000 + p.k, c.seed) & 65535) % 23500) / 100.0, 2) AS price
    FROM _fill_people v, _fill_config c, generate_series(0, 39) AS p(k) WHERE v.role = 'vendor'""",
    "CREATE UNIQUE INDEX ON _fill_products (vendor_k, k)",
    "ANALYZE _fill_products",
)
# The people, shops and stock, written once (the sessions of the batches only read them).
SETUP_SQL = (
    """INSERT INTO users (id, tenant_id, phone_number, name, role, whatsapp_verified, metadata)
    SELECT user_id, c.tenant, phone, first_name || ' ' || last_name, role, h % 3 > 0,
           '{"source": "loadtest.tenant_data"}' FROM _fill_people, _fill_config c""",
    """INSERT INTO customers (id, tenant_id, user_id, first_name, last_name, preferred_language)
    SELECT entity_id, c.tenant, user_id, first_name, last_name, (ARRAY['en','zu','af','xh'])[1 + h % 4]
    FROM _fill_people, _fill_config c WHERE role = 'customer'""",
    """INSERT INTO vendors (id, tenant_id, user_id, business_name, business_type, address, location,
                         delivery_radius, minimum_order_value, payment_methods)
    SELECT entity_id, c.tenant, user_id, last_name || ' ' || (ARRAY['Spaza','Butchery','Bakery','Pharmacy',
           'Grocer'])[1 + k % 5] || ' ' || k, 'retail',
           jsonb_build_object('street', (h % 300 + 1) || ' Main Road', 'city', 'Johannesburg', 'country', 'ZA'),
           ST_SetSRID(ST_MakePoint(lng, lat), 4326)::geography, 15000, 0, '["cash", "card"]'
    FROM _fill_people, _fill_config c WHERE role = 'vendor'""",
    """INSERT INTO products (id, tenant_id, vendor_id, sku, name, price, cost, unit, tags, metadata)
    SELECT id, c.tenant, vendor_id, 'FILL-' || lpad(k::text, 3, '0'), name, price, round(price * 0.7, 2),
           'each', ARRAY['staples'], '{"source": "loadtest.tenant_data"}' FROM _fill_products, _fill_config c""",
    """INSERT INTO inventory (id, tenant_id, product_id, quantity, reserved_quantity, last_restock_date)
    SELECT inventory_id, c.tenant, id, c.stock, 0, now() - interval '200 days'
    FROM _fill_products, _fill_config c""",
    """INSERT INTO drivers (id, tenant_id, user_id, first_name, last_name, license_number, vehicle_type,
                         vehicle_registration, has_cold_storage, is_available, status)
    SELECT entity_id, c.tenant, user_id, first_name, last_name, 'FILL' || substr(phone, 2),
           (ARRAY['bicycle','motorbike','car','bakkie','van'])[1 + h % 5],
           'GP ' || lpad(k::text, 5, '0'), h % 10 = 0, false, 'active'
    FROM _fill_people, _fill_config c WHERE role = 'driver'""",
)
# Per batch ($1..$2 the order numbers of the batch); ON COMMIT DROP scratch tables.
BATCH_SQL = (
    """CREATE TEMP TABLE _fill_batch ON COMMIT DROP AS
    SELECT g, gen_random_uuid() AS id, h1, h2, h3, cu.entity_id AS customer_id, cu.user_id AS customer_user,
           v.k AS vendor_k, v.entity_id AS vendor_id, v.user_id AS vendor_user,
           ST_SetSRID(ST_MakePoint(v.lng, v.lat), 4326)::geography AS vendor_point,
           v.lat + ((h2 >> 8) % 4001 - 2000) / 100000.0 AS lat,
           v.lng + ((h2 >> 20) % 4001 - 2000) / 100000.0 AS lng,
           p.method, p.pay_status, p.steps, p.open, p.steps[cardinality(p.steps)] AS final,
           1 + (h2 % 4)::int AS item_count,
           jsonb_build_object('street', (h2 % 400 + 1) || ' Jan Smuts Avenue', 'city', 'Johannesburg',
                              'country', 'ZA') AS address,
           now() - CASE WHEN p.open
                        THEN make_interval(mins => 7 * (cardinality(p.steps) - 1), secs => (h3 % 600)::float8)
                        ELSE make_interval(hours => 2, secs => ((h3 >> 10) % 15552000)::float8) END AS created_at
    FROM _fill_config c, generate_series($1::bigint, $2::bigint) AS g,
         LATERAL (SELECT hashint8extended(g, c.seed) & 9223372036854775807 AS h1,
                         hashint8extended(g, c.seed + 1) & 9223372036854775807 AS h2,
                         hashint8extended(g, c.seed + 2) & 9223372036854775807 AS h3) AS h,
         _fill_paths p, _fill_people cu, _fill_people v
    WHERE h1 % 1000 >= p.lo AND h1 % 1000 < p.hi
      AND cu.role = 'customer' AND cu.k = (h1 >> 10) % c.customers
      AND v.role = 'vendor' AND v.k = (h1 >> 40) % c.vendors""",
    "ANALYZE _fill_batch",
    """CREATE TEMP TABLE _fill_items ON COMMIT DROP AS
    SELECT b.id AS order_id, b.created_at, l.line, pr.id AS product_id, pr.inventory_id, pr.name,
           pr.price AS unit_price, q.quantity, pr.price * q.quantity AS total_price,
           CASE WHEN c.incl THEN round(pr.price * q.quantity * c.vat / (1 + c.vat), 2)
                ELSE round(pr.price * q.quantity * c.vat, 2) END AS tax
    FROM _fill_config c, _fill_batch b, generate_series(0, b.item_count - 1) AS l(line),
         LATERAL (SELECT 1 + ((b.h3 >> (30 + 2 * l.line)) % 3)::int AS quantity) AS q, _fill_products pr
    WHERE pr.vendor_k = b.vendor_k AND pr.k = (b.g * 7 + l.line * 11) % 40""",
    "ANALYZE _fill_items",
    """CREATE TEMP TABLE _fill_orders ON COMMIT DROP AS
    SELECT o.*, 'WK-' || lpad(o.num::text, greatest(6, length(o.num::text)), '0') AS order_number,
           o.subtotal + o.fee + CASE WHEN c.incl THEN 0 ELSE o.tax END AS total
    FROM _fill_config c, (
        SELECT b.*, nextval('order_number_seq') AS num, t.subtotal, d.metres, d.fee,
               t.tax + CASE WHEN c.incl THEN round(d.fee * c.vat / (1 + c.vat), 2)
                            ELSE round(d.fee * c.vat, 2) END AS tax
        FROM _fill_config c, _fill_batch b
        JOIN (SELECT order_id, sum(total_price) AS subtotal, sum(tax) AS tax FROM _fill_items
              GROUP BY order_id) t ON t.order_id = b.id,
        LATERAL (SELECT m AS metres, round(c.base_fee + c.per_km * m / 1000, 2) AS fee
                 FROM round(ST_Distance(b.vendor_point,
                      ST_SetSRID(ST_MakePoint(b.lng, b.lat), 4326)::geography)::numeric) AS m) AS d
        ORDER BY b.g) AS o""",
    "ANALYZE _fill_orders",
    """INSERT INTO orders (id, tenant_id, order_number, customer_id, vendor_id, status, subtotal,
        tax_amount, delivery_fee, discount_amount, total_amount, currency, payment_method,
        payment_status, delivery_address, delivery_location, estimated_delivery_time,
        actual_delivery_time, metadata, created_at, updated_at)
    SELECT o.id, c.tenant, o.order_number, o.customer_id, o.vendor_id, o.final, o.subtotal, o.tax,
           o.fee, 0, o.total, 'ZAR', o.method, o.pay_status, o.address,
           ST_SetSRID(ST_MakePoint(o.lng, o.lat), 4326)::geography, o.created_at + interval '50 minutes',
           CASE WHEN o.final = 'delivered' THEN o.created_at + (cardinality(o.steps) - 1) * interval '7 minutes' END,
           '{"source": "loadtest.tenant_data"}', o.created_at,
           o.created_at + (cardinality(o.steps) - 1) * interval '7 minutes'
    FROM _fill_orders o, _fill_config c""",
    """INSERT INTO order_items (tenant_id, order_id, product_id, quantity, unit_price, total_price,
                             discount_amount, tax_amount, metadata, created_at)
    SELECT c.tenant, order_id, product_id, quantity, unit_price, total_price, 0, tax,
           jsonb_build_object('line', line, 'name', name), created_at FROM _fill_items, _fill_config c""",
    """INSERT INTO order_status_history (tenant_id, order_id, from_status, to_status, changed_by, metadata, created_at)
    SELECT c.tenant, o.id, o.steps[s.i::int - 1], s.status,
           CASE WHEN s.i = 1 THEN o.customer_user
                WHEN s.status IN ('accepted', 'rejected', 'ready') THEN o.vendor_user END,
           '{"source": "loadtest.tenant_data"}', o.created_at + (s.i - 1) * interval '7 minutes'
    FROM _fill_orders o, _fill_config c, unnest(o.steps) WITH ORDINALITY AS s(status, i)""",
    """INSERT INTO payments (tenant_id, order_id, transaction_id, idempotency_key, gateway,
                          gateway_reference, method, amount, status, processed_at, created_at, updated_at)
    SELECT c.tenant, o.id, 'fill_' || o.id, 'fill:' || o.id, 'payfast', 'pf_' || o.num, 'card', o.total,
           CASE WHEN o.pay_status = 'failed' THEN 'failed' ELSE 'succeeded' END,
           o.created_at + interval '7 minutes', o.created_at + interval '7 minutes',
           o.created_at + interval '7 minutes'
    FROM _fill_orders o, _fill_config c WHERE o.method = 'card' AND o.pay_status <> 'pending'""",
    """INSERT INTO refunds (tenant_id, order_id, payment_id, amount, method, reason, created_at, updated_at)
    SELECT c.tenant, o.id, p.id, o.total, 'card', 'order ' || o.final,
           o.created_at + interval '14 minutes', o.created_at + interval '14 minutes'
    FROM _fill_orders o JOIN payments p ON p.order_id = o.id, _fill_config c
    WHERE o.pay_status = 'refund_pending'""",
    """CREATE TEMP TABLE _fill_deliveries ON COMMIT DROP AS
    SELECT gen_random_uuid() AS id, o.id AS order_id, o.h3, o.vendor_id, o.vendor_point, o.lat, o.lng,
           o.address, o.metres, o.fee, x.status,
           CASE WHEN x.status IN ('assigned', 'picked_up', 'delivered', 'failed') THEN dr.entity_id END AS driver_id,
           o.created_at + (array_position(o.steps, 'ready') - 1) * interval '7 minutes' AS ready_at,
           o.created_at + (array_position(o.steps, 'dispatched') - 1) * interval '7 minutes' AS assigned_at,
           o.created_at + (array_position(o.steps, 'picked_up') - 1) * interval '7 minutes' AS picked_up_at,
           o.created_at + (cardinality(o.steps) - 1) * interval '7 minutes' AS last_at
    FROM _fill_orders o
    JOIN _fill_people dr ON dr.role = 'driver' AND dr.k = (o.h3 >> 40) % (SELECT drivers FROM _fill_config),
         LATERAL (SELECT CASE o.final WHEN 'ready' THEN 'pending' WHEN 'dispatched' THEN 'assigned'
                                      ELSE o.final END AS status) AS x
    WHERE 'ready' = ANY(o.steps)""",
    "ANALYZE _fill_deliveries",
    """INSERT INTO deliveries (id, tenant_id, order_id, driver_id, status, pickup_location, pickup_address,
        dropoff_location, dropoff_address, distance_meters, estimated_duration_minutes,
        estimated_duration_s, actual_duration_s, actual_duration_minutes, customer_rating,
        offer_attempts, assigned_at, picked_up_at, delivered_at, failed_at, cancelled_at,
        failure_reason, metadata, created_at, updated_at)
    SELECT d.id, c.tenant, d.order_id, d.driver_id, d.status, d.vendor_point, v.address,
           ST_SetSRID(ST_MakePoint(d.lng, d.lat), 4326)::geography, d.address, d.metres::int,
           round(d.metres / 360.0)::int, round(d.metres / 6.0)::int,
           CASE WHEN d.status = 'delivered' THEN 420 END, CASE WHEN d.status = 'delivered' THEN 7 END,
           CASE WHEN d.status = 'delivered' AND d.h3 % 2 = 0 THEN 1 + (d.h3 >> 50) % 5 END,
           CASE WHEN d.driver_id IS NULL THEN 0 ELSE 1 END, d.assigned_at, d.picked_up_at,
           CASE WHEN d.status = 'delivered' THEN d.last_at END,
           CASE WHEN d.status = 'failed' THEN d.last_at END,
           CASE WHEN d.status = 'cancelled' THEN d.last_at END,
           CASE WHEN d.status = 'failed' THEN 'customer not reachable' END,
           '{"source": "loadtest.tenant_data"}', d.ready_at, d.last_at
    FROM _fill_deliveries d JOIN vendors v ON v.id = d.vendor_id, _fill_config c""",
    """INSERT INTO tracking_links (tenant_id, delivery_id, token_hash, created_at)
    SELECT c.tenant, d.id, encode(sha256(convert_to('fill:' || d.id || ':' || c.seed, 'UTF8')), 'hex'),
           d.ready_at
    FROM _fill_deliveries d, _fill_config c WHERE (d.h3 >> 20) % 4 = 0""",
    """INSERT INTO inventory_reservations (tenant_id, inventory_id, order_id, quantity, expires_at,
                                        status, created_at)
    SELECT c.tenant, i.inventory_id, i.order_id, i.quantity,
           CASE WHEN o.final = 'pending' THEN o.created_at + interval '15 minutes' ELSE 'infinity' END,
           'active', o.created_at
    FROM _fill_items i JOIN _fill_orders o ON o.id = i.order_id, _fill_config c WHERE o.open""",
    # Counters are shared by concurrent batches: one at a time, taken just before commit.
    "SELECT pg_advisory_xact_lock(hashtextextended('loadtest.tenant_data:' || tenant, 0)) FROM _fill_config",
    """UPDATE inventory inv SET reserved_quantity = inv.reserved_quantity + s.held, updated_at = now()
    FROM (SELECT i.inventory_id, sum(i.quantity) AS held FROM _fill_items i
          JOIN _fill_orders o ON o.id = i.order_id WHERE o.open GROUP BY i.inventory_id) AS s
    WHERE inv.id = s.inventory_id""",
    """UPDATE customers cu SET total_orders = cu.total_orders + s.n,
        lifetime_value = cu.lifetime_value + s.spent,
        last_order_date = greatest(cu.last_order_date, s.last), updated_at = now()
    FROM (SELECT customer_id, count(*) AS n, max(created_at) AS last,
                 coalesce(sum(total) FILTER (WHERE final = 'delivered'), 0) AS spent
          FROM _fill_orders GROUP BY customer_id) AS s WHERE cu.id = s.customer_id""",
    """UPDATE vendors v SET total_orders = v.total_orders + s.n, updated_at = now()
    FROM (SELECT vendor_id, count(*) AS n FROM _fill_orders GROUP BY vendor_id) AS s
    WHERE v.id = s.vendor_id""",
    """UPDATE drivers dr SET total_deliveries = dr.total_deliveries + s.n,
        total_earnings = dr.total_earnings + s.earned, updated_at = now()
    FROM (SELECT driver_id, count(*) AS n, sum(fee) AS earned FROM _fill_deliveries
          WHERE status = 'delivered' GROUP BY driver_id) AS s WHERE dr.id = s.driver_id""",
)
COUNTED = ("users", "customers", "vendors", "products", "inventory", "drivers", "orders",
           "order_items", "order_status_history", "payments", "refunds", "deliveries",
           "tracking_links", "inventory_reservations")


def _inserted(status: str) -> int:
    """Rows an ``INSERT`` wrote, from its command tag (``INSERT 0 <n>``)."""
    return int(status.rsplit(" ", 1)[-1]) if status.startswith("INSERT") else 0


def _table_of(sql: str) -> str | None:
    words = sql.split()
    return words[2] if words[:2] == ["INSERT", "INTO"] else None


async def _run_all(conn: asyncpg.Connection, statements: Sequence[str], counts: dict[str, int],
                   *args: object) -> None:
    for sql in statements:
        status = await conn.execute(sql, *args) if "$1" in sql else await conn.execute(sql)
        table = _table_of(sql)
        if table in counts:
            counts[table] += _inserted(status)


async def _prepare_session(conn: asyncpg.Connection, schema_name: str, config: Sequence[object]) -> None:
    """Scope the session to the tenant and build this fill's scratch tables (same in every session)."""
    await conn.execute(SCOPE_SQL, schema_name, str(config[0]))
    async with conn.transaction():
        await conn.execute(CONFIG_SQL, *config)
        await conn.execute(PATHS_SQL)
        lo = 0
        for weight, method, steps in ORDER_PATHS:
            await conn.execute(INSERT_PATH_SQL, lo, lo + weight, method,
                               payment_status(method, steps), list(steps), steps[-1] in OPEN)
            lo += weight
        await conn.execute("ANALYZE _fill_paths")
        await conn.execute(PEOPLE_SQL)
        await _run_all(conn, PRODUCTS_SQL, {})


async def tenant_on_shard(settings: PostgresSettings, shard_id: int, name: str) -> Tenant:
    """A new tenant placed on ``shard_id`` (placement is by hash: tenants are created, with
    unique names, until one lands there; the others stay, empty)."""
    for _ in range(64):
        tenant = await create_tenant(settings, f"{name} {uuid.uuid4().hex[:6]}")
        if tenant.shard_id == shard_id:
            return tenant
    raise RuntimeError(f"64 new tenants and none placed on shard {shard_id}")


async def fill_tenant(
    settings: PostgresSettings, tenant_id: uuid.UUID, orders: int, *, seed: int = 1,
    batch: int = BATCH_ORDERS, sessions: int = 2, pricing: PricingSettings | None = None,
) -> dict[str, int]:
    """Write *orders* orders and everything they need into the tenant; rows inserted per table.

    The batches run on *sessions* connections at once (two keep both cores of a small server
    busy). Raises :class:`TenantFillError` for arguments out of range, ``UnknownTenant`` when
    the control plane has no such tenant. Batches already committed stay when a later one fails.
    """
    tenant_id = parse_tenant_id(tenant_id)
    orders = _check_int("orders", orders, 1, MAX_ORDERS)
    seed = _check_int("seed", seed, 0, 2**31 - 1)
    batch = _check_int("batch", batch, 1, 1_000_000)
    sessions = _check_int("sessions", sessions, 1, 16)
    pricing = pricing or PricingSettings.from_env()
    customers, vendors, drivers = plan_people(orders)
    async with connection(settings.control) as control:
        row = await control.fetchrow(PLACEMENT_SQL, tenant_id)
    if row is None:
        raise UnknownTenant(f"no tenant {tenant_id} is registered; see `wakala tenant list`")
    shard, schema_name = shard_dsn(settings, row), row["schema_name"]
    counts = dict.fromkeys(COUNTED, 0)
    async with contextlib.AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(connection(shard))
                 for _ in range(min(sessions, -(-orders // batch)))]
        await conns[0].execute(SCOPE_SQL, schema_name, str(tenant_id))
        phone_base = await conns[0].fetchval(PHONE_BASE_SQL)
        if phone_base + customers + vendors + drivers > 9_999_999:
            raise TenantFillError(f"the tenant has no {PHONE_PREFIX} phone numbers left for "
                                  f"{customers + vendors + drivers} more people")
        config = (tenant_id, seed, customers, vendors, drivers, pricing.vat_rate,
                  pricing.prices_include_vat, pricing.delivery_base_fee,
                  pricing.delivery_fee_per_km,
                  1_000 + orders * 10 // (vendors * PRODUCTS_PER_VENDOR),
                  phone_base, uuid.uuid4().hex)
        async with asyncio.TaskGroup() as group:
            for conn in conns:
                group.create_task(_prepare_session(conn, schema_name, config))
        async with conns[0].transaction():
            await _run_all(conns[0], SETUP_SQL, counts)
        ranges = [(first, min(first + batch - 1, orders)) for first in range(1, orders + 1, batch)]

        async def worker(conn: asyncpg.Connection) -> None:
            while ranges:
                first, last = ranges.pop(0)
                async with conn.transaction():
                    await _run_all(conn, BATCH_SQL, counts, first, last)

        async with asyncio.TaskGroup() as group:   # a failing batch cancels the others
            for conn in conns:
                group.create_task(worker(conn))
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m loadtest.tenant_data TENANT_ID ORDERS [--seed N] [--sessions N]``: fill, print
    the rows per table and the time as JSON. Exit status 2 on arguments it refuses."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.tenant_data", description=__doc__.split("\n")[0])
    parser.add_argument("tenant_id", help="the tenant's UUID (wakala tenant list)")
    parser.add_argument("orders", type=int, help=f"orders to write (1-{MAX_ORDERS})")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sessions", type=int, default=2, help="connections writing batches at once")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        counts = asyncio.run(fill_tenant(PostgresSettings.from_env(), args.tenant_id, args.orders,
                                         seed=args.seed, sessions=args.sessions))
    except WakalaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"seconds": round(time.perf_counter() - started, 2), "rows": counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
