-- 0015: requests that never act twice, and the tenant's own payment-callback secret.
--
-- idempotency_keys: one row per (caller, Idempotency-Key) of the REST API
-- (dispatch/commerce/idempotency.py). caller is a users.id, or 'gateway' for payment
-- callbacks; request_hash the SHA-256 of method, path and body; status_code and response the
-- first answer, both NULL while the request is in progress (a claim). Order placement and
-- payment callbacks write their row in their own transaction; other routes claim first and
-- record after. Rows expire (expires_at, 24 h by default) and the reservation sweeper
-- deletes expired ones.
CREATE TABLE idempotency_keys (
    tenant_id UUID NOT NULL DEFAULT current_tenant_id(),
    caller VARCHAR(64) NOT NULL,
    key VARCHAR(255) NOT NULL,
    request_hash CHAR(64) NOT NULL,
    status_code SMALLINT CHECK (status_code BETWEEN 200 AND 299),
    response JSONB,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, caller, key),
    CHECK ((status_code IS NULL) = (response IS NULL))
);
-- What the sweeper deletes.
CREATE INDEX idx_idempotency_keys_expiry ON idempotency_keys (expires_at);

ALTER TABLE idempotency_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE idempotency_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON idempotency_keys FOR ALL
    USING (tenant_id = current_tenant_id()) WITH CHECK (tenant_id = current_tenant_id());

-- payment_settings: at most one row, the tenant's key for signing payment callbacks
-- (X-Wakala-Signature: t=<unix>,v1=<hmac>; dispatch/commerce/payment_signatures.py). An HMAC
-- needs the key itself, so it is kept as is (not hashed): only the application role reads it,
-- under RLS like every tenant table. While a tenant has no row, the platform-wide
-- WAKALA_PAYMENT_WEBHOOK_SECRET still signs its callbacks (the transition window).
CREATE TABLE payment_settings (
    tenant_id UUID PRIMARY KEY DEFAULT current_tenant_id(),
    webhook_secret TEXT NOT NULL CHECK (length(webhook_secret) BETWEEN 32 AND 256),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

ALTER TABLE payment_settings ENABLE ROW LEVEL SECURITY;
ALTER TABLE payment_settings FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON payment_settings FOR ALL
    USING (tenant_id = current_tenant_id()) WITH CHECK (tenant_id = current_tenant_id());

-- Grants to the application role, as in 0013.
DO $$
DECLARE
    app_role text := current_setting('wakala.app_role', true);
BEGIN
    IF app_role IS NULL OR app_role = '' THEN
        RAISE EXCEPTION 'wakala.app_role is not set'
            USING HINT = 'Run tenant migrations through the migration runner, which sets it to the application role.';
    END IF;

    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON idempotency_keys TO %I', app_role);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON payment_settings TO %I', app_role);
END
$$;
