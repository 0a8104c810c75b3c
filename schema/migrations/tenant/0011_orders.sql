-- 0011: what the order and inventory domain of issue 5 owns (dispatch/orders.py and the
-- modules it uses). A new file because applied migrations are immutable.

-- Order numbers: WK-000123, one sequence per tenant schema. A sequence never hands out a
-- number twice, even when the transaction that took it rolls back (the gap stays a gap),
-- so an order number is never reused.
CREATE SEQUENCE order_number_seq AS bigint START 1;

-- The statuses of dispatch/order_state.py (OrderStatus): the order side writes pending,
-- paid, accepted, rejected, ready, cancelled and returned; the delivery side
-- (dispatch/deliveries.py, through dispatch.state.order_status_for) writes dispatched,
-- picked_up, delivered, failed and cancelled. The seed allowed any string. A row with any
-- other status makes this migration fail: correct it, then rerun `wakala migrate`.
ALTER TABLE orders
    ADD CONSTRAINT valid_order_status CHECK (status IN (
        'pending', 'paid', 'accepted', 'rejected', 'ready', 'dispatched', 'picked_up',
        'delivered', 'failed', 'cancelled', 'returned'
    ));

-- A payment gateway delivers its callbacks at least once. The idempotency key (one per
-- payment attempt, chosen by the gateway integration) makes a replayed callback find the
-- row the first one wrote instead of writing another.
ALTER TABLE payments
    ADD COLUMN idempotency_key VARCHAR(255),
    ADD CONSTRAINT payments_idempotency_key_key UNIQUE (idempotency_key);

-- Reservations: a closed status vocabulary (active -> released | expired | converted |
-- written_off), the time a reservation stopped holding stock, and the sweeper's index.
-- Paid and accepted orders keep their stock: their reservations get expires_at = 'infinity'.
ALTER TABLE inventory_reservations
    ALTER COLUMN status SET NOT NULL,
    ADD COLUMN settled_at TIMESTAMPTZ,
    ADD CONSTRAINT valid_reservation_status CHECK (status IN (
        'active', 'released', 'expired', 'converted', 'written_off'
    ));
-- What the reservation sweeper polls: active reservations by expiry.
CREATE INDEX idx_inventory_reservations_expiry
    ON inventory_reservations (expires_at) WHERE status = 'active';

-- Refunds: money the tenant owes a customer (an order cancelled or rejected after payment,
-- a payment that arrived for an order no longer wanted, a return). The seed has nowhere to
-- put a refund of a cancelled order (returns is for goods that came back). A refund is
-- 'pending' until the payment integration settles it.
CREATE TABLE refunds (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL DEFAULT current_tenant_id(),
    order_id UUID NOT NULL REFERENCES orders(id),
    payment_id UUID REFERENCES payments(id),
    return_id UUID REFERENCES returns(id),
    amount DECIMAL(10,2) NOT NULL,
    currency VARCHAR(3) NOT NULL DEFAULT 'ZAR',
    method VARCHAR(50),
    reason TEXT NOT NULL,
    status VARCHAR(20) NOT NULL DEFAULT 'pending',
    metadata JSONB NOT NULL DEFAULT '{}',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT positive_amount CHECK (amount > 0)
);
-- The foreign keys' indexes.
CREATE INDEX idx_refunds_order ON refunds (order_id);
CREATE INDEX idx_refunds_payment ON refunds (payment_id);
CREATE INDEX idx_refunds_return ON refunds (return_id);

-- Transactional outbox of order events, the twin of 0010's delivery_events_outbox: an
-- order transition inserts its event here in the transaction that changes the order; a
-- relay (dispatch/outbox.py) publishes unpublished rows to Kafka (order-events) in seq order
-- after commit and sets published_at. The UUID is the event's identity (consumers
-- deduplicate on it); seq orders events as they were written.
CREATE TABLE order_events_outbox (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    seq BIGSERIAL NOT NULL UNIQUE,
    tenant_id UUID NOT NULL DEFAULT current_tenant_id(),
    order_id UUID NOT NULL REFERENCES orders(id),
    event_type VARCHAR(50) NOT NULL,
    payload JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at TIMESTAMPTZ
);

-- What the relay polls: unpublished events in order; stays small once the relay keeps up.
CREATE INDEX idx_order_events_outbox_unpublished
    ON order_events_outbox (seq) WHERE published_at IS NULL;
-- An order's event history, and the foreign key's index.
CREATE INDEX idx_order_events_outbox_order ON order_events_outbox (order_id, seq);

ALTER TABLE order_events_outbox ENABLE ROW LEVEL SECURITY;
ALTER TABLE order_events_outbox FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON order_events_outbox FOR ALL
    USING (tenant_id = current_tenant_id()) WITH CHECK (tenant_id = current_tenant_id());

ALTER TABLE refunds ENABLE ROW LEVEL SECURITY;
ALTER TABLE refunds FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON refunds FOR ALL
    USING (tenant_id = current_tenant_id()) WITH CHECK (tenant_id = current_tenant_id());

-- Grants to the application role, as in 0009 and 0010 (whose grants covered only the
-- tables and sequences that existed then). nextval needs USAGE on the sequence.
DO $$
DECLARE
    app_role text := current_setting('wakala.app_role', true);
BEGIN
    IF app_role IS NULL OR app_role = '' THEN
        RAISE EXCEPTION 'wakala.app_role is not set'
            USING HINT = 'Run tenant migrations through the migration runner, which sets it to the application role.';
    END IF;

    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON order_events_outbox, refunds TO %I', app_role);
    EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE %s TO %I',
                   pg_get_serial_sequence('order_events_outbox', 'seq'), app_role);
    EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE order_number_seq TO %I', app_role);
END
$$;
