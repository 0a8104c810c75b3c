-- 0008: query indexes and the order summary view (design doc sections 7.1 and 7.2).

-- Partial indexes for common queries
-- Seed: NOT IN ('completed', 'cancelled'); orders end as delivered, cancelled, failed or returned.
CREATE INDEX idx_orders_active ON orders(created_at DESC)
WHERE status NOT IN ('delivered', 'cancelled', 'failed', 'returned');

-- Seed also filtered on inventory_quantity > 0, a column products does not have
-- (stock lives in inventory).
CREATE INDEX idx_products_available ON products(vendor_id, category_id)
WHERE status = 'active';

CREATE INDEX idx_drivers_available_location ON drivers USING GIST(current_location)
WHERE is_available = true AND status = 'active';

-- Composite indexes for complex queries
CREATE INDEX idx_order_customer_status ON orders(customer_id, status, created_at DESC);
-- As in the seed. Note: @@ is not leakproof, so under row-level security only roles that
-- bypass it can use this index; the application role scans the tenant's products.
CREATE INDEX idx_product_search ON products USING GIN(
    to_tsvector('english', name || ' ' || COALESCE(description, ''))
);

-- Function-based indexes
-- Seed: indexes on the expressions DATE(created_at) and regexp_replace(phone_number, ...).
-- Under row-level security the planner will not use an index on an expression built
-- from functions that are not leakproof (date(), AT TIME ZONE, regexp_replace), so the
-- application role could never use them. The expressions become stored generated
-- columns, whose plain = and range comparisons are leakproof, and the indexes are on those.
-- The day is taken in UTC: DATE() of a TIMESTAMPTZ is not immutable.
ALTER TABLE orders
    ADD COLUMN created_date DATE GENERATED ALWAYS AS ((created_at AT TIME ZONE 'UTC')::date) STORED;
CREATE INDEX idx_orders_date ON orders(created_date);
ALTER TABLE users
    ADD COLUMN phone_normalized TEXT GENERATED ALWAYS AS (regexp_replace(phone_number, '[^0-9]', '', 'g')) STORED;
CREATE INDEX idx_users_phone_normalized ON users(phone_normalized);

-- Order summary. security_invoker (not in the seed) makes the view read the tables with
-- the caller's rights, so their row-level security applies.
CREATE VIEW v_order_summary WITH (security_invoker = true) AS
SELECT
    o.id,
    o.order_number,
    o.status,
    o.total_amount,
    o.created_at,
    -- seed: first_name || ' ' || last_name, NULL when either part is missing
    NULLIF(concat_ws(' ', c.first_name, c.last_name), '') AS customer_name,
    -- seed: c.phone_number; customers have none, their user has
    u.phone_number AS customer_phone,
    v.business_name AS vendor_name,
    -- seed: COUNT(oi.id) over a join with deliveries, one row per delivery of the order
    (SELECT count(*) FROM order_items oi WHERE oi.order_id = o.id) AS item_count,
    -- seed: every delivery of the order; the latest one is the order's delivery status
    d.status AS delivery_status,
    -- seed: d.estimated_delivery_time; deliveries have none, orders have
    o.estimated_delivery_time
FROM orders o
JOIN customers c ON c.id = o.customer_id
LEFT JOIN users u ON u.id = c.user_id
JOIN vendors v ON v.id = o.vendor_id
LEFT JOIN LATERAL (
    SELECT status
    FROM deliveries
    WHERE deliveries.order_id = o.id
    ORDER BY created_at DESC NULLS LAST
    LIMIT 1
) d ON true;
