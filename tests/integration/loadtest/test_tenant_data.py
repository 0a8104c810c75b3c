"""``fill_tenant``: many orders written set-based, consistent with the engine's own rules.

Against a real platform (the ``platform`` fixture): the rows are counted, every foreign key
and every money and lifecycle rule the engine keeps is checked in SQL, and the engine's
application role reads them through ``tenant_transaction`` (row-level security passes only
when each row carries the tenant's id). The order paths are checked against the lifecycle
table itself, and hostile arguments are refused before anything is written.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from decimal import Decimal

import pytest

from dispatch.commerce.orders.lifecycle import CASH, TRANSITIONS, OrderAction, OrderStatus
from dispatch.commerce.pricing import PricingSettings
from loadtest.tenant_data import (
    ORDER_PATHS,
    PRODUCTS_PER_VENDOR,
    TenantFillError,
    fill_tenant,
    main,
    payment_status,
    plan_people,
)
from schema.connect import connection
from schema.db import TenantDatabase
from schema.errors import InvalidTenantId, UnknownTenant
from schema.migrate import shard_dsn
from schema.settings import PostgresSettings
from schema.tenants import create_tenant

pytestmark = pytest.mark.timeout(180)
PRICING = PricingSettings()   # inclusive VAT 15 %, fee 10 + 4/km, whatever the environment says
TENANT_TABLES = ("users", "customers", "vendors", "products", "inventory", "drivers", "orders",
                 "order_items", "order_status_history", "payments", "refunds", "deliveries",
                 "tracking_links", "inventory_reservations")

# Each query returns the rows breaking one rule: all must come back empty.
VIOLATIONS = {
    "order totals": """
        SELECT o.id FROM orders o JOIN (
            SELECT order_id, sum(total_price) AS sub, sum(tax_amount) AS tax, count(*) AS n,
                   bool_and(total_price = unit_price * quantity) AS lines_ok
            FROM order_items GROUP BY order_id) i ON i.order_id = o.id
        WHERE o.subtotal <> i.sub OR o.total_amount <> o.subtotal + o.delivery_fee
           OR o.tax_amount <> i.tax + round(o.delivery_fee * 0.15 / 1.15, 2)
           OR NOT i.lines_ok OR i.n NOT BETWEEN 1 AND 4 OR o.discount_amount <> 0""",
    "orders without items": "SELECT id FROM orders o WHERE NOT EXISTS "
                            "(SELECT 1 FROM order_items i WHERE i.order_id = o.id)",
    "items of another vendor": """
        SELECT i.id FROM order_items i JOIN orders o ON o.id = i.order_id
        JOIN products p ON p.id = i.product_id WHERE p.vendor_id <> o.vendor_id""",
    "history chain": """
        SELECT o.id FROM orders o JOIN LATERAL (
            SELECT array_agg(h.to_status ORDER BY h.created_at) AS tos,
                   array_agg(h.from_status ORDER BY h.created_at) AS froms
            FROM order_status_history h WHERE h.order_id = o.id) h ON true
        WHERE h.tos[1] <> 'pending' OR h.froms[1] IS NOT NULL
           OR h.tos[cardinality(h.tos)] <> o.status
           OR h.froms[2:] IS DISTINCT FROM h.tos[:cardinality(h.tos) - 1]""",
    "deliveries iff ready": """
        SELECT o.id FROM orders o
        WHERE EXISTS (SELECT 1 FROM order_status_history h WHERE h.order_id = o.id AND h.to_status = 'ready')
              <> EXISTS (SELECT 1 FROM deliveries d WHERE d.order_id = o.id)""",
    "delivery status": """
        SELECT d.id FROM deliveries d JOIN orders o ON o.id = d.order_id
        WHERE d.status <> CASE o.status WHEN 'ready' THEN 'pending' WHEN 'dispatched' THEN 'assigned'
                                        ELSE o.status END
           OR (d.driver_id IS NULL) <> (d.status IN ('pending', 'cancelled'))
           OR (d.status = 'delivered') <> (d.delivered_at IS NOT NULL)
           OR d.picked_up_at < d.assigned_at OR d.delivered_at < d.picked_up_at""",
    "payments": """
        SELECT o.id FROM orders o LEFT JOIN payments p ON p.order_id = o.id
        WHERE CASE o.payment_status
                WHEN 'paid' THEN p.status IS DISTINCT FROM 'succeeded' OR p.amount <> o.total_amount
                WHEN 'refund_pending' THEN p.status IS DISTINCT FROM 'succeeded'
                  OR NOT EXISTS (SELECT 1 FROM refunds r WHERE r.order_id = o.id
                                 AND r.payment_id = p.id AND r.amount = p.amount)
                WHEN 'failed' THEN p.status IS DISTINCT FROM 'failed'
                ELSE p.id IS NOT NULL END
           OR (o.payment_method = 'cash' AND o.payment_status <> 'pending')""",
    "stock held": """
        SELECT inv.id FROM inventory inv LEFT JOIN (
            SELECT inventory_id, sum(quantity) AS held FROM inventory_reservations
            WHERE status = 'active' GROUP BY inventory_id) r ON r.inventory_id = inv.id
        WHERE inv.reserved_quantity <> coalesce(r.held, 0) OR inv.reserved_quantity > inv.quantity""",
    "reservations of closed orders": """
        SELECT r.id FROM inventory_reservations r JOIN orders o ON o.id = r.order_id
        WHERE o.status NOT IN ('pending', 'paid', 'accepted', 'ready', 'dispatched', 'picked_up')
           OR (o.status = 'pending') <> (r.expires_at <> 'infinity')""",
    "customer counters": """
        SELECT c.id FROM customers c LEFT JOIN (SELECT customer_id, count(*) AS n FROM orders
                                                 GROUP BY customer_id) o ON o.customer_id = c.id
        WHERE c.total_orders <> coalesce(o.n, 0)""",
    "future timestamps": "SELECT id FROM order_status_history WHERE created_at > now()",
}


async def _owner(settings: PostgresSettings, tenant):
    async with connection(settings.control) as control:
        row = await control.fetchrow(
            "SELECT s.* FROM shard_map s JOIN tenant_shard_mapping m USING (shard_id) "
            "WHERE m.tenant_id = $1", tenant.id)
    return shard_dsn(settings, row)


# One row broken per rule, in a transaction rolled back: each rule's query must notice it.
BREAKAGES = {
    "order totals": "UPDATE orders SET total_amount = total_amount + 1 WHERE id = "
                    "(SELECT id FROM orders LIMIT 1)",
    "history chain": "DELETE FROM order_status_history WHERE id = (SELECT id FROM order_status_history "
                     "WHERE from_status = 'paid' LIMIT 1)",
    "deliveries iff ready": "UPDATE order_status_history SET to_status = 'accepted' WHERE id = (SELECT id "
                            "FROM order_status_history WHERE to_status = 'ready' LIMIT 1)",
    "payments": "UPDATE payments SET amount = amount - 1 WHERE id = (SELECT id FROM payments "
                "WHERE status = 'succeeded' AND NOT EXISTS (SELECT 1 FROM refunds r "
                "WHERE r.payment_id = payments.id) LIMIT 1)",
    "stock held": "UPDATE inventory_reservations SET quantity = quantity + 1 WHERE id = "
                  "(SELECT id FROM inventory_reservations LIMIT 1)",
    "delivery status": "UPDATE deliveries SET driver_id = NULL WHERE id = (SELECT id FROM deliveries "
                       "WHERE status = 'delivered' LIMIT 1)",
}


async def _rules_catch_breakage(conn) -> None:
    for rule, breakage in BREAKAGES.items():
        tx = conn.transaction()
        await tx.start()
        try:
            assert (await conn.execute(breakage)).endswith(" 1"), rule
            assert await conn.fetch(VIOLATIONS[rule] + " LIMIT 5") != [], rule
        finally:
            await tx.rollback()


async def test_filled_orders_are_consistent_and_readable_by_the_app_role(platform) -> None:
    tenant = await create_tenant(platform, "Fill Tenant")
    other = await create_tenant(platform, "Bystander Tenant")
    counts = await fill_tenant(platform, tenant.id, 500, seed=7, batch=150, pricing=PRICING)

    customers, vendors, drivers = plan_people(500)
    assert (customers, vendors, drivers) == (25, 3, 5)
    assert counts["orders"] == 500 and counts["customers"] == customers
    assert counts["vendors"] == vendors and counts["drivers"] == drivers
    assert counts["users"] == customers + vendors + drivers
    assert counts["products"] == counts["inventory"] == vendors * PRODUCTS_PER_VENDOR
    assert 500 <= counts["order_items"] <= 2000
    assert 500 < counts["order_status_history"] <= 7 * 500
    assert 0 < counts["payments"] < 500 and 0 < counts["deliveries"] < 500
    assert 0 < counts["tracking_links"] < counts["deliveries"]
    assert counts["inventory_reservations"] > 0 and counts["refunds"] > 0

    async with connection(await _owner(platform, tenant)) as conn:
        await conn.execute(f"SET search_path = {tenant.schema_name}, public")
        for table in TENANT_TABLES:
            n, foreign = await conn.fetchrow(
                f"SELECT count(*), count(*) FILTER (WHERE tenant_id <> $1) FROM {table}",  # noqa: S608 - constant names
                tenant.id)
            assert (n, foreign) == (counts[table], 0), table
        for rule, sql in VIOLATIONS.items():
            assert await conn.fetch(sql + " LIMIT 5") == [], rule
        await _rules_catch_breakage(conn)
        numbers = [r[0] for r in await conn.fetch("SELECT order_number FROM orders ORDER BY 1")]
        assert numbers == [f"WK-{n:06d}" for n in range(1, 501)]
        statuses = Counter(dict(await conn.fetch("SELECT status, count(*) FROM orders GROUP BY 1")))
        assert statuses["delivered"] > 250 and len(statuses) >= 8
        pairs = await conn.fetch(
            "SELECT DISTINCT h.from_status, h.to_status, o.payment_method FROM order_status_history h "
            "JOIN orders o ON o.id = h.order_id WHERE h.from_status IS NOT NULL")
    legal = {(s.value, t.value) for (s, _a), t in TRANSITIONS.items()}
    for from_status, to_status, method in pairs:
        assert (from_status, to_status) in legal, (from_status, to_status)
        if (from_status, to_status) == ("pending", "accepted"):
            assert method == CASH

    async with TenantDatabase(platform) as db:
        async with db.tenant_transaction(tenant.id, readonly=True) as tx:
            assert await tx.fetchval("SELECT count(*) FROM orders") == 500
            assert await tx.fetchval("SELECT count(*) FROM v_order_summary") == 500
            assert await tx.fetchval("SELECT count(*) FROM order_items") == counts["order_items"]
            assert await tx.fetchval(
                "SELECT count(*) FROM deliveries d JOIN drivers r ON r.id = d.driver_id"
            ) == await tx.fetchval("SELECT count(*) FROM deliveries WHERE driver_id IS NOT NULL")
            total = await tx.fetchval("SELECT sum(total_amount) FROM orders")
            assert isinstance(total, Decimal) and total > 0
        async with db.tenant_transaction(other.id, readonly=True) as tx:
            assert await tx.fetchval("SELECT count(*) FROM orders") == 0


async def test_a_seed_gives_the_same_shape_and_a_tenant_can_be_filled_again(platform) -> None:
    tenant = await create_tenant(platform, "Refill Tenant")
    first = await fill_tenant(platform, tenant.id, 120, seed=3, pricing=PRICING)
    again = await fill_tenant(platform, tenant.id, 120, seed=3, batch=50, pricing=PRICING)
    assert first == again
    other = await fill_tenant(platform, tenant.id, 120, seed=4, pricing=PRICING)
    assert other["orders"] == 120 and other != first
    async with TenantDatabase(platform) as db:
        async with db.tenant_transaction(tenant.id, readonly=True) as tx:
            assert await tx.fetchval("SELECT count(*) FROM orders") == 360
            assert await tx.fetchval("SELECT count(DISTINCT phone_number) FROM users") == \
                3 * first["users"]
            assert await tx.fetchval("SELECT max(order_number) FROM orders") == "WK-000360"


async def test_a_single_order_is_a_whole_tenant(platform) -> None:
    tenant = await create_tenant(platform, "Tiny Tenant")
    counts = await fill_tenant(platform, tenant.id, 1, sessions=4, pricing=PRICING)
    assert counts["orders"] == 1 and counts["customers"] == 1 and 1 <= counts["order_items"] <= 4


async def test_an_unknown_tenant_is_named(platform) -> None:
    missing = uuid.uuid4()
    with pytest.raises(UnknownTenant, match=str(missing)):
        await fill_tenant(platform, missing, 10)


@pytest.mark.parametrize("orders", [0, -5, True, 1.5, "10", None, 5_000_001])
async def test_hostile_order_counts_are_refused(orders: object) -> None:
    with pytest.raises(TenantFillError, match="orders must be an integer"):
        await fill_tenant(PostgresSettings.from_env(), uuid.uuid4(), orders)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [-1, 2**31, "1", False, 0.5])
async def test_hostile_seeds_are_refused(seed: object) -> None:
    with pytest.raises(TenantFillError, match="seed must be an integer"):
        await fill_tenant(PostgresSettings.from_env(), uuid.uuid4(), 10, seed=seed)  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "value"), [
    ("sessions", 0), ("sessions", 17), ("sessions", True), ("batch", 0), ("batch", "20000"),
])
async def test_hostile_batch_settings_are_refused(name: str, value: object) -> None:
    with pytest.raises(TenantFillError, match=f"{name} must be an integer"):
        await fill_tenant(PostgresSettings.from_env(), uuid.uuid4(), 10, **{name: value})


@pytest.mark.parametrize("tenant_id", ["not-a-uuid", "'; DROP SCHEMA public CASCADE; --", "", None, 42])
async def test_hostile_tenant_ids_are_refused(tenant_id: object) -> None:
    with pytest.raises(InvalidTenantId):
        await fill_tenant(PostgresSettings.from_env(), tenant_id, 10)  # type: ignore[arg-type]


@pytest.mark.parametrize("argv", [["not-a-uuid", "10"], [str(uuid.uuid4()), "0"],
                                  [str(uuid.uuid4()), "10", "--seed", "-3"],
                                  [str(uuid.uuid4()), "10", "--sessions", "99"]])
def test_the_command_line_refuses_hostile_arguments(argv: list[str], capsys) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("error: ")


@pytest.mark.parametrize("argv", [["x"], [str(uuid.uuid4()), "ten"], [str(uuid.uuid4()), "1", "--seed", "x"]])
def test_the_command_line_rejects_malformed_numbers(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2


def test_every_path_is_a_walk_through_the_lifecycle() -> None:
    assert sum(weight for weight, _m, _s in ORDER_PATHS) == 1000
    action_of = {(s.value, t.value): a for (s, a), t in TRANSITIONS.items()}
    seen_finals = set()
    for _weight, method, steps in ORDER_PATHS:
        assert steps[0] == OrderStatus.PENDING
        for before, after in zip(steps, steps[1:], strict=False):
            assert (before, after) in action_of, (method, steps)
            if action_of[(before, after)] is OrderAction.ACCEPT and before == "pending":
                assert method == CASH, steps
        seen_finals.add(steps[-1])
        assert payment_status(method, steps) in ("pending", "paid", "failed", "refund_pending")
    assert {"pending", "paid", "accepted", "ready", "dispatched", "picked_up", "delivered",
            "failed", "cancelled", "rejected"} <= seen_finals


def test_people_grow_with_orders_within_bounds() -> None:
    assert plan_people(1) == (1, 3, 5)
    assert plan_people(100_000) == (5_000, 8, 100)
    customers, vendors, drivers = plan_people(5_000_000)
    assert customers == 250_000 and vendors == 20 and drivers == 300
    assert all(re.fullmatch(r"[a-z_]+", m) for _w, m, _s in ORDER_PATHS)
