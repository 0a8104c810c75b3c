-- 0012: the materialized views of issue 5 (design doc sections 3.3 and 7.2), the function
-- that refreshes them, and the catalogue's full-text search function.
--
-- Row-level security does not apply to materialized views, and the application role has
-- USAGE on every tenant schema of its shard, so a view it could read directly would be
-- readable from any tenant's transaction by naming the schema. The views are therefore
-- owned by the migration role and never granted to the application role; it reads them
-- through v_popular_products and v_daily_sales_summary, which return rows only when the
-- transaction declared this schema's tenant (as the policies of 0009 do for tables).

-- Build the views with this schema's tenant declared: a runner subject to the forced RLS
-- (not a superuser) would otherwise build them empty. Lasts for this transaction only.
SELECT set_config('app.current_tenant_id', schema_tenant_id()::text, true);

-- Seed: joined a reviews table that does not exist (AVG(r.rating)), counted the items of
-- every order whatever its status, the reviews join multiplied SUM(oi.quantity), ORDER BY
-- (lost at the next REFRESH), and no unique index, so REFRESH ... CONCURRENTLY failed.
-- Here: no rating; sales are the items of delivered orders, aggregated per product before
-- the join; the ordering is the reader's (idx_mv_popular_rank).
CREATE MATERIALIZED VIEW mv_popular_products AS
SELECT
    p.id,
    p.tenant_id,
    p.vendor_id,
    p.category_id,
    p.name,
    p.price,
    p.images,
    COALESCE(s.order_count, 0) AS order_count,
    COALESCE(s.total_sold, 0) AS total_sold
FROM products p
LEFT JOIN (
    SELECT oi.product_id, count(DISTINCT oi.order_id) AS order_count, sum(oi.quantity) AS total_sold
    FROM order_items oi
    JOIN orders o ON o.id = oi.order_id
    WHERE o.status = 'delivered'
    GROUP BY oi.product_id
) s ON s.product_id = p.id
WHERE p.status = 'active'
WITH DATA;

CREATE UNIQUE INDEX idx_mv_popular_products_id ON mv_popular_products (id);
CREATE INDEX idx_mv_popular_vendor ON mv_popular_products (vendor_id);
CREATE INDEX idx_mv_popular_rank ON mv_popular_products (order_count DESC, total_sold DESC, id);

-- Seed: DATE(o.created_at) (the day in the refreshing session's time zone), status
-- 'completed' (our orders end as 'delivered'), and SUM/AVG(o.total_amount) over the join
-- with order_items, which counted each order once per item line. Here: the UTC day of
-- 0008's created_date, delivered orders, and the item count of each order summed in a
-- LATERAL subquery, so every order is one row before the day's sums.
CREATE MATERIALIZED VIEW mv_daily_sales_summary AS
SELECT
    o.created_date AS sale_date,
    o.vendor_id,
    o.tenant_id,
    count(*) AS order_count,
    count(DISTINCT o.customer_id) AS unique_customers,
    sum(o.total_amount) AS total_revenue,
    round(avg(o.total_amount), 2) AS avg_order_value,
    COALESCE(sum(i.items_sold), 0)::bigint AS items_sold
FROM orders o
LEFT JOIN LATERAL (
    SELECT sum(oi.quantity) AS items_sold FROM order_items oi WHERE oi.order_id = o.id
) i ON true
WHERE o.status = 'delivered'
GROUP BY o.created_date, o.vendor_id, o.tenant_id
WITH DATA;

-- tenant_id is the same on every row of a schema, so (sale_date, vendor_id) stays unique.
CREATE UNIQUE INDEX idx_mv_daily_sales ON mv_daily_sales_summary (sale_date, vendor_id);

-- What the application role reads. Owner's rights views (not security_invoker: the
-- application role has no privilege on the materialized views), filtered like the RLS
-- policies: nothing unless the transaction declared this schema's tenant.
-- security_barrier keeps a caller's own conditions from being evaluated before the filter.
CREATE VIEW v_popular_products WITH (security_barrier = true) AS
SELECT id, vendor_id, category_id, name, price, images, order_count, total_sold
FROM mv_popular_products
WHERE tenant_id = current_tenant_id();

CREATE VIEW v_daily_sales_summary WITH (security_barrier = true) AS
SELECT sale_date, vendor_id, order_count, unique_customers, total_revenue, avg_order_value, items_sold
FROM mv_daily_sales_summary
WHERE tenant_id = current_tenant_id();

-- Seed: refresh_cache_views() / refresh_materialized_views(), scheduled by pg_cron. Only
-- the owner may REFRESH; the application role owns nothing. This function runs as its
-- owner (the owner of the views), refreshes these two views and nothing else, and refuses
-- unless the caller declared this schema's tenant, so one tenant's transaction cannot
-- refresh (or, under forced RLS, empty) another tenant's views.
CREATE FUNCTION refresh_sales_views() RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
AS $$
BEGIN
    IF current_tenant_id() IS NULL THEN
        RAISE EXCEPTION 'refresh_sales_views: this schema''s tenant is not declared'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Call it inside a tenant transaction of this schema''s tenant.';
    END IF;
    REFRESH MATERIALIZED VIEW CONCURRENTLY mv_popular_products;
    REFRESH MATERIALIZED VIEW CONCURRENTLY mv_daily_sales_summary;
END
$$;

-- Full-text search over active products through idx_product_search (0008). The @@
-- operator is not leakproof, so for the application role, which RLS binds, the planner
-- never uses that index (see docs/schema.md, "Non-leakproof operators under RLS"). This
-- function runs as its owner: when the owner bypasses RLS (the migration role is a
-- superuser, as PostGIS requires) the index is usable, and the tenant filter the policy
-- would add is written out instead. When the owner does not bypass RLS, the policy applies
-- as well and the search is a scan, with the same results. Returns ids and ranks only;
-- the caller reads the rows themselves under its own RLS.
-- $1 the query, $2 how many rows, $3 how many to skip; name matches rank above description.
CREATE FUNCTION search_product_ids(tsquery, integer, integer)
    RETURNS TABLE (product_id uuid, rank real, total bigint)
    LANGUAGE sql STABLE SECURITY DEFINER ROWS 20
AS $$
SELECT p.id,
       ts_rank(setweight(to_tsvector('english', p.name), 'A')
               || setweight(to_tsvector('english', COALESCE(p.description, '')), 'B'), $1),
       count(*) OVER ()
FROM products p
WHERE p.tenant_id = current_tenant_id()
  AND p.status = 'active'
  AND to_tsvector('english', p.name || ' ' || COALESCE(p.description, '')) @@ $1
ORDER BY 2 DESC, p.id
LIMIT least(greatest($2, 0), 100) OFFSET greatest($3, 0)
$$;

DO $$
DECLARE
    app_role text := current_setting('wakala.app_role', true);
BEGIN
    IF app_role IS NULL OR app_role = '' THEN
        RAISE EXCEPTION 'wakala.app_role is not set'
            USING HINT = 'Run tenant migrations through the migration runner, which sets it to the application role.';
    END IF;

    -- SECURITY DEFINER functions name their schema, and search pg_temp last, so a caller's
    -- temporary objects cannot stand in for ours.
    EXECUTE format('ALTER FUNCTION refresh_sales_views() SET search_path = %I, public, pg_temp',
                   current_schema());
    EXECUTE format('ALTER FUNCTION search_product_ids(tsquery, integer, integer) '
                   'SET search_path = %I, public, pg_temp', current_schema());

    -- New functions are executable by PUBLIC; these two only by the application role.
    REVOKE ALL ON FUNCTION refresh_sales_views() FROM PUBLIC;
    REVOKE ALL ON FUNCTION search_product_ids(tsquery, integer, integer) FROM PUBLIC;
    EXECUTE format('GRANT EXECUTE ON FUNCTION refresh_sales_views() TO %I', app_role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION search_product_ids(tsquery, integer, integer) TO %I',
                   app_role);

    -- The filtered views only; no privilege on mv_popular_products or mv_daily_sales_summary.
    EXECUTE format('GRANT SELECT ON v_popular_products, v_daily_sales_summary TO %I', app_role);
END
$$;
