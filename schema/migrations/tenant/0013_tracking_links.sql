-- 0013: tracking links (issue 6). A customer's link to watch one delivery, sent by the
-- customer's app or by the shop (WhatsApp). The token is shown once, when the link is made;
-- only its SHA-256 is kept here (dispatch/tracking_links.py). A link is valid while its
-- delivery is not terminal and for WAKALA_TRACKING_LINK_GRACE_S after it became terminal
-- (deliveries.delivered_at / cancelled_at / failed_at): no expiry column, the delivery's own
-- timestamps decide. revoked_at ends a link early.
CREATE TABLE tracking_links (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL DEFAULT current_tenant_id(),
    delivery_id UUID NOT NULL REFERENCES deliveries(id),
    token_hash CHAR(64) NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at TIMESTAMPTZ
);

-- The foreign key's index (a delivery's links).
CREATE INDEX idx_tracking_links_delivery ON tracking_links (delivery_id);

ALTER TABLE tracking_links ENABLE ROW LEVEL SECURITY;
ALTER TABLE tracking_links FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tracking_links FOR ALL
    USING (tenant_id = current_tenant_id()) WITH CHECK (tenant_id = current_tenant_id());

-- Grants to the application role, as in 0009-0011 (their grants covered only the tables
-- that existed then). No DELETE: a link is revoked, not forgotten.
DO $$
DECLARE
    app_role text := current_setting('wakala.app_role', true);
BEGIN
    IF app_role IS NULL OR app_role = '' THEN
        RAISE EXCEPTION 'wakala.app_role is not set'
            USING HINT = 'Run tenant migrations through the migration runner, which sets it to the application role.';
    END IF;

    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON tracking_links TO %I', app_role);
END
$$;
