-- 0017: proof of delivery. The rules are dispatch/deliveries/proof.py, the SQL beside them
-- dispatch/deliveries/proof_store.py.
--
-- proof_settings: at most one row, which proofs the tenant requires before a driver may
-- report a delivery as delivered (a delivery PIN, a photo, a signature) and how many digits
-- its PINs have. No row: nothing required. pin_key (256 random bits, made with the row and
-- never rotated by a settings change, or every PIN shown to a customer would change under
-- them) is the HMAC key PINs are derived from; it is read by the application role only,
-- under RLS, like payment_settings.webhook_secret.
CREATE TABLE proof_settings (
    tenant_id UUID PRIMARY KEY DEFAULT current_tenant_id(),
    require_pin BOOLEAN NOT NULL DEFAULT false,
    require_photo BOOLEAN NOT NULL DEFAULT false,
    require_signature BOOLEAN NOT NULL DEFAULT false,
    pin_digits SMALLINT NOT NULL DEFAULT 4 CHECK (pin_digits BETWEEN 4 AND 6),
    pin_key BYTEA NOT NULL CHECK (octet_length(pin_key) = 32),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_by VARCHAR(64)
);

-- delivery_proofs: one row per delivery created while the tenant required some proof
-- (written in the transaction that creates the delivery). required is what the tenant
-- required then; a requirement dropped since no longer applies, one added since does not
-- apply to it. The PIN is not stored: it is HMAC(pin_key, delivery id, pin_nonce), shown to
-- the customer (tracking snapshot, their own proof view) and recomputed to check the
-- driver's entry. A reset draws a new nonce, hence a new PIN. pin_attempts counts wrong
-- entries; at the limit pin_locked_at is set and entries are refused until a reset.
CREATE TABLE delivery_proofs (
    delivery_id UUID PRIMARY KEY REFERENCES deliveries(id) ON DELETE CASCADE,
    tenant_id UUID NOT NULL DEFAULT current_tenant_id(),
    required TEXT[] NOT NULL CHECK (required <@ ARRAY['pin', 'photo', 'signature']::text[]),
    pin_nonce BYTEA CHECK (octet_length(pin_nonce) = 16),
    pin_digits SMALLINT CHECK (pin_digits BETWEEN 4 AND 6),
    pin_attempts SMALLINT NOT NULL DEFAULT 0 CHECK (pin_attempts >= 0),
    pin_locked_at TIMESTAMPTZ,
    pin_verified_at TIMESTAMPTZ,
    pin_resets INTEGER NOT NULL DEFAULT 0 CHECK (pin_resets >= 0),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((pin_nonce IS NULL) = (pin_digits IS NULL))
);

-- delivery_proof_images: the photo and the signature of a delivery, at most one of each (a
-- new upload replaces the old one while the delivery is under way). image holds the bytes as
-- the engine re-encoded them (metadata stripped), never the bytes the driver sent; sha256
-- and size_bytes are of image. Deleted with the delivery (ON DELETE CASCADE: the retention
-- of closed orders deletes deliveries).
CREATE TABLE delivery_proof_images (
    id UUID NOT NULL UNIQUE DEFAULT gen_random_uuid(),   -- rows of a data subject's export are named by id
    delivery_id UUID NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,
    kind VARCHAR(10) NOT NULL CHECK (kind IN ('photo', 'signature')),
    tenant_id UUID NOT NULL DEFAULT current_tenant_id(),
    image BYTEA NOT NULL,
    content_type VARCHAR(20) NOT NULL CHECK (content_type IN ('image/jpeg', 'image/png')),
    sha256 CHAR(64) NOT NULL,
    size_bytes INTEGER NOT NULL CHECK (size_bytes = octet_length(image)),
    width INTEGER NOT NULL CHECK (width > 0),
    height INTEGER NOT NULL CHECK (height > 0),
    uploaded_by UUID NOT NULL REFERENCES drivers(id),
    uploaded_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (delivery_id, kind)
);

ALTER TABLE proof_settings ENABLE ROW LEVEL SECURITY;
ALTER TABLE proof_settings FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON proof_settings FOR ALL
    USING (tenant_id = current_tenant_id()) WITH CHECK (tenant_id = current_tenant_id());

ALTER TABLE delivery_proofs ENABLE ROW LEVEL SECURITY;
ALTER TABLE delivery_proofs FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON delivery_proofs FOR ALL
    USING (tenant_id = current_tenant_id()) WITH CHECK (tenant_id = current_tenant_id());

ALTER TABLE delivery_proof_images ENABLE ROW LEVEL SECURITY;
ALTER TABLE delivery_proof_images FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON delivery_proof_images FOR ALL
    USING (tenant_id = current_tenant_id()) WITH CHECK (tenant_id = current_tenant_id());

-- Grants to the application role, as in 0015.
DO $$
DECLARE
    app_role text := current_setting('wakala.app_role', true);
BEGIN
    IF app_role IS NULL OR app_role = '' THEN
        RAISE EXCEPTION 'wakala.app_role is not set'
            USING HINT = 'Run tenant migrations through the migration runner, which sets it to the application role.';
    END IF;

    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON proof_settings TO %I', app_role);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON delivery_proofs TO %I', app_role);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON delivery_proof_images TO %I', app_role);
END
$$;
