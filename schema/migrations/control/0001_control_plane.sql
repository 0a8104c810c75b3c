-- Control plane: which shards exist, which tenant lives where, who belongs to which tenant.
-- Departures from the seed (section 1.1) are listed in docs/schema.md.

CREATE TABLE shard_map (
    shard_id            INTEGER PRIMARY KEY CHECK (shard_id >= 0),
    shard_name          VARCHAR(50) NOT NULL UNIQUE,
    host                VARCHAR(255) NOT NULL,
    port                INTEGER NOT NULL DEFAULT 5432 CHECK (port BETWEEN 1 AND 65535),
    database_name       VARCHAR(100) NOT NULL,
    status              VARCHAR(20) NOT NULL DEFAULT 'active'
                        CHECK (status IN ('active', 'draining', 'readonly', 'retired')),
    -- Relative placement weight (rendezvous hashing); the seed's capacity_percentage kept as a reading.
    weight              NUMERIC(6,2) NOT NULL DEFAULT 1.00 CHECK (weight > 0),
    capacity_percentage NUMERIC(5,2) NOT NULL DEFAULT 0.00,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (host, port, database_name)
);

CREATE TABLE tenants (
    id          UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name        VARCHAR(100) NOT NULL,
    slug        VARCHAR(63) NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    status      VARCHAR(20) NOT NULL DEFAULT 'provisioning'
                CHECK (status IN ('provisioning', 'active', 'suspended', 'deleted')),
    metadata    JSONB NOT NULL DEFAULT '{}',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The source of truth for placement: a tenant stays on the shard recorded here until it is
-- moved explicitly (tenant_migrations), whatever the hash would say today.
CREATE TABLE tenant_shard_mapping (
    tenant_id    UUID PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
    shard_id     INTEGER NOT NULL REFERENCES shard_map(shard_id),
    schema_name  VARCHAR(63) NOT NULL UNIQUE CHECK (schema_name ~ '^tenant_[0-9a-f]{12}$'),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (shard_id, schema_name)
);
CREATE INDEX idx_tenant_shard_mapping_shard ON tenant_shard_mapping(shard_id);

-- The seed's RLS policies joined a tenant_users table it never created. Tenant isolation is
-- now a tenant_id column on every tenant table; this directory answers "which tenants does
-- this phone number / user belong to" (login, WhatsApp routing) without scanning shards.
CREATE TABLE tenant_users (
    tenant_id    UUID NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    user_id      UUID NOT NULL,
    phone_number VARCHAR(20),
    role         VARCHAR(50) NOT NULL DEFAULT 'customer',
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX idx_tenant_users_user ON tenant_users(user_id);
CREATE INDEX idx_tenant_users_phone ON tenant_users(phone_number);

-- Referenced by the seed's migrate_tenant_to_shard() but never created.
CREATE TABLE tenant_migrations (
    id            UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     UUID NOT NULL REFERENCES tenants(id),
    source_shard  INTEGER NOT NULL REFERENCES shard_map(shard_id),
    target_shard  INTEGER NOT NULL REFERENCES shard_map(shard_id),
    status        VARCHAR(20) NOT NULL DEFAULT 'started'
                  CHECK (status IN ('started', 'copying', 'switching', 'completed', 'failed')),
    error_message TEXT,
    started_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at  TIMESTAMPTZ
);

-- Referenced by the seed's perform_tenant_backup()/restore_tenant_backup() but never created.
CREATE TABLE backup_log (
    backup_id    UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    UUID REFERENCES tenants(id),
    backup_type  VARCHAR(20) NOT NULL CHECK (backup_type IN ('full', 'incremental')),
    status       VARCHAR(20) NOT NULL CHECK (status IN ('started', 'completed', 'failed')),
    location     TEXT,
    size_bytes   BIGINT,
    checksum     VARCHAR(64),
    error_message TEXT,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at TIMESTAMPTZ
);

CREATE TABLE restore_log (
    restore_id       UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    backup_id        UUID NOT NULL REFERENCES backup_log(backup_id),
    target_tenant_id UUID NOT NULL REFERENCES tenants(id),
    status           VARCHAR(20) NOT NULL CHECK (status IN ('started', 'completed', 'failed')),
    error_message    TEXT,
    started_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at     TIMESTAMPTZ
);
