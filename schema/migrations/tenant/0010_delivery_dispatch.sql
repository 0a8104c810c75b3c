-- 0010: the columns the delivery state machine (dispatch/state.py) owns, and the outbox
-- its transitions write to (dispatch/deliveries.py). A new file because applied
-- migrations are immutable.

-- Durations are kept in seconds (what the state machine and the ETA model use). The
-- seed's *_duration_minutes columns stay and are written alongside, rounded, so readers
-- of the seed's columns keep working.
ALTER TABLE deliveries
    ADD COLUMN offer_attempts INTEGER NOT NULL DEFAULT 0
        CONSTRAINT non_negative_offer_attempts CHECK (offer_attempts >= 0),
    ADD COLUMN failure_reason TEXT,
    ADD COLUMN estimated_duration_s INTEGER
        CONSTRAINT non_negative_estimated_duration CHECK (estimated_duration_s >= 0),
    ADD COLUMN actual_duration_s INTEGER
        CONSTRAINT non_negative_actual_duration CHECK (actual_duration_s >= 0),
    ADD COLUMN cancelled_at TIMESTAMPTZ,
    ADD COLUMN failed_at TIMESTAMPTZ,
    -- the values of DeliveryState; a row with any other status makes this migration fail,
    -- so such rows must be corrected before it is applied
    ADD CONSTRAINT valid_delivery_status CHECK (status IN (
        'pending', 'offered', 'assigned', 'at_pickup', 'picked_up',
        'delivered', 'failed', 'cancelled', 'unassigned'
    ));

-- Backfill seconds from the seed's minutes for rows written before this migration.
-- RLS is forced, so the runner (the owner) sees no rows until it declares this schema's
-- tenant; set_config(..., true) lasts only for this migration's transaction.
SELECT set_config('app.current_tenant_id', schema_tenant_id()::text, true);
UPDATE deliveries
SET estimated_duration_s = estimated_duration_minutes * 60
WHERE estimated_duration_s IS NULL AND estimated_duration_minutes >= 0;
UPDATE deliveries
SET actual_duration_s = actual_duration_minutes * 60
WHERE actual_duration_s IS NULL AND actual_duration_minutes >= 0;

-- Transactional outbox: a transition inserts its event here in the transaction that
-- changes the delivery; a relay publishes unpublished rows to Kafka (delivery-events) in
-- seq order after commit and sets published_at. The UUID is the event's identity
-- (consumers deduplicate on it); seq orders events as they were written.
CREATE TABLE delivery_events_outbox (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    seq BIGSERIAL NOT NULL UNIQUE,
    tenant_id UUID NOT NULL DEFAULT current_tenant_id(),
    delivery_id UUID NOT NULL REFERENCES deliveries(id),
    event_type VARCHAR(50) NOT NULL,
    payload JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at TIMESTAMPTZ
);

-- What the relay polls: unpublished events in order; stays small once the relay keeps up.
CREATE INDEX idx_delivery_events_outbox_unpublished
    ON delivery_events_outbox (seq) WHERE published_at IS NULL;
-- A delivery's event history, and the foreign key's index.
CREATE INDEX idx_delivery_events_outbox_delivery ON delivery_events_outbox (delivery_id, seq);

ALTER TABLE delivery_events_outbox ENABLE ROW LEVEL SECURITY;
ALTER TABLE delivery_events_outbox FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON delivery_events_outbox FOR ALL
    USING (tenant_id = current_tenant_id()) WITH CHECK (tenant_id = current_tenant_id());

-- Grants to the application role, as in 0009 (whose grants covered only the tables that
-- existed then).
DO $$
DECLARE
    app_role text := current_setting('wakala.app_role', true);
BEGIN
    IF app_role IS NULL OR app_role = '' THEN
        RAISE EXCEPTION 'wakala.app_role is not set'
            USING HINT = 'Run tenant migrations through the migration runner, which sets it to the application role.';
    END IF;

    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON delivery_events_outbox TO %I', app_role);
    EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE %s TO %I',
                   pg_get_serial_sequence('delivery_events_outbox', 'seq'), app_role);
END
$$;
