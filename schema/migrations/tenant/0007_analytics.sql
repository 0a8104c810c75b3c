-- 0007: analytics events, daily metrics and user activities (design doc section 2.5).

-- Event tracking, partitioned by month.
CREATE TABLE analytics_events (
    id UUID NOT NULL DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL DEFAULT current_tenant_id(),
    event_type VARCHAR(100) NOT NULL,
    user_id UUID REFERENCES users(id),
    session_id UUID,
    properties JSONB DEFAULT '{}',
    context JSONB DEFAULT '{}',
    -- NOT NULL (seed: nullable): it is the partition key and part of the primary key
    "timestamp" TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- seed: PRIMARY KEY (id), which a partitioned table refuses: the key must include "timestamp"
    PRIMARY KEY (id, "timestamp")
) PARTITION BY RANGE ("timestamp");

-- Not in the seed: catches events outside every monthly partition (clock skew, late
-- backfills) instead of rejecting them.
CREATE TABLE analytics_events_default PARTITION OF analytics_events DEFAULT;
ALTER TABLE analytics_events_default ENABLE ROW LEVEL SECURITY;
ALTER TABLE analytics_events_default FORCE ROW LEVEL SECURITY;

-- Not in the seed: index on the foreign-key column.
CREATE INDEX idx_analytics_events_user ON analytics_events(user_id);

-- Aggregated metrics
CREATE TABLE daily_metrics (
    tenant_id UUID NOT NULL DEFAULT current_tenant_id(),
    date DATE NOT NULL,
    metric_type VARCHAR(100) NOT NULL,
    dimensions JSONB NOT NULL DEFAULT '{}',
    values JSONB NOT NULL DEFAULT '{}',
    created_at TIMESTAMPTZ DEFAULT now(),
    PRIMARY KEY (date, metric_type, dimensions)
);

-- User behavior tracking
CREATE TABLE user_activities (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL DEFAULT current_tenant_id(),
    user_id UUID REFERENCES users(id),
    activity_type VARCHAR(100) NOT NULL,
    entity_type VARCHAR(50),
    entity_id UUID,
    metadata JSONB DEFAULT '{}',
    created_at TIMESTAMPTZ DEFAULT now()
);

-- Not in the seed: index on the foreign-key column.
CREATE INDEX idx_user_activities_user ON user_activities(user_id, created_at);

-- ensure_analytics_partitions(months_ahead): creates the monthly partitions
-- analytics_events_yYYYYmMM (UTC months) from the current month through months_ahead
-- months ahead where they are missing, with row-level security enabled and forced, and
-- returns how many it created. It acts on the analytics_events that search_path finds:
-- call it with search_path set to the tenant schema.
-- Replaces the seed's single hand-written partition (analytics_events_y2024m01).
CREATE FUNCTION ensure_analytics_partitions(months_ahead integer DEFAULT 3)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    parent regclass := to_regclass('analytics_events');
    parent_schema name;
    this_month date := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
    month_start date;
    partition_name text;
    lower_bound text;
    upper_bound text;
    bounds text;
    created integer := 0;
BEGIN
    IF parent IS NULL THEN
        RAISE EXCEPTION 'analytics_events is not on the search_path (%)', current_setting('search_path')
            USING HINT = 'Set search_path to the tenant schema before calling ensure_analytics_partitions().';
    END IF;
    IF months_ahead IS NULL OR months_ahead < 0 THEN
        RAISE EXCEPTION 'months_ahead must be 0 or more, got %', months_ahead;
    END IF;

    SELECT n.nspname INTO parent_schema
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = parent;

    FOR i IN 0..months_ahead LOOP
        month_start := (this_month + make_interval(months => i))::date;
        partition_name := 'analytics_events_' || to_char(month_start, '"y"YYYY"m"MM');
        CONTINUE WHEN to_regclass(format('%I.%I', parent_schema, partition_name)) IS NOT NULL;

        -- Bounds are UTC midnights, whatever the session's TimeZone and DateStyle.
        lower_bound := to_char(month_start, 'YYYY-MM-DD') || ' 00:00:00+00';
        upper_bound := to_char(month_start + interval '1 month', 'YYYY-MM-DD') || ' 00:00:00+00';
        bounds := format('FOR VALUES FROM (%L) TO (%L)', lower_bound, upper_bound);
        BEGIN
            EXECUTE format('CREATE TABLE %I.%I PARTITION OF %s %s',
                           parent_schema, partition_name, parent, bounds);
        EXCEPTION WHEN check_violation THEN
            -- The default partition already holds events of this month (stamped ahead of
            -- time). Move them into the new month's table, then attach it. The owner must
            -- lift FORCE for a moment to see the default partition's rows.
            EXECUTE format('ALTER TABLE %I.analytics_events_default NO FORCE ROW LEVEL SECURITY', parent_schema);
            EXECUTE format('CREATE TABLE %I.%I (LIKE %s INCLUDING DEFAULTS)',
                           parent_schema, partition_name, parent);
            EXECUTE format('WITH moved AS ('
                           '    DELETE FROM %I.analytics_events_default'
                           '    WHERE "timestamp" >= %L AND "timestamp" < %L RETURNING *'
                           ') INSERT INTO %I.%I SELECT * FROM moved',
                           parent_schema, lower_bound, upper_bound, parent_schema, partition_name);
            EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I.%I %s',
                           parent, parent_schema, partition_name, bounds);
            EXECUTE format('ALTER TABLE %I.analytics_events_default FORCE ROW LEVEL SECURITY', parent_schema);
        END;

        EXECUTE format('ALTER TABLE %I.%I ENABLE ROW LEVEL SECURITY', parent_schema, partition_name);
        EXECUTE format('ALTER TABLE %I.%I FORCE ROW LEVEL SECURITY', parent_schema, partition_name);
        created := created + 1;
    END LOOP;

    RETURN created;
END
$$;

SELECT ensure_analytics_partitions(3);
