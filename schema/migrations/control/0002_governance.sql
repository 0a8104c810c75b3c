-- Data governance (seed section 6) and monitoring (section 8), kept in the control database.
-- The seed's versions referenced users(id), which lives in tenant schemas on other databases:
-- here subjects carry tenant_id + subject_id without a cross-database foreign key.

CREATE TABLE data_retention_policies (
    id                 UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    table_name         VARCHAR(255) NOT NULL,
    retention_days     INTEGER NOT NULL CHECK (retention_days > 0),
    archive_after_days INTEGER CHECK (archive_after_days > 0),
    delete_after_days  INTEGER CHECK (delete_after_days > 0),
    conditions         JSONB NOT NULL DEFAULT '{}',
    is_active          BOOLEAN NOT NULL DEFAULT true,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Referenced by the seed's apply_retention_policies() but never created.
CREATE TABLE data_deletion_log (
    id            BIGSERIAL PRIMARY KEY,
    tenant_id     UUID REFERENCES tenants(id),
    table_name    VARCHAR(255) NOT NULL,
    deleted_count INTEGER NOT NULL,
    policy_id     UUID REFERENCES data_retention_policies(id),
    executed_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE personal_data_registry (
    id                    UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    table_name            VARCHAR(255) NOT NULL,
    column_name           VARCHAR(255) NOT NULL,
    data_category         VARCHAR(100) NOT NULL,
    sensitivity_level     VARCHAR(50) NOT NULL
                          CHECK (sensitivity_level IN ('public', 'internal', 'confidential', 'restricted')),
    encryption_required   BOOLEAN NOT NULL DEFAULT false,
    anonymization_method  VARCHAR(100),
    retention_period_days INTEGER,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (table_name, column_name)
);

CREATE TABLE data_subject_requests (
    id           UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    UUID NOT NULL REFERENCES tenants(id),
    request_type VARCHAR(50) NOT NULL
                 CHECK (request_type IN ('access', 'rectification', 'erasure', 'portability')),
    subject_id   UUID NOT NULL,
    subject_type VARCHAR(50) NOT NULL CHECK (subject_type IN ('customer', 'vendor', 'driver')),
    status       VARCHAR(50) NOT NULL DEFAULT 'pending',
    requested_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    processed_at TIMESTAMPTZ,
    processed_by UUID,
    response     JSONB,
    metadata     JSONB NOT NULL DEFAULT '{}'
);

CREATE TABLE consent_records (
    id            UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     UUID NOT NULL REFERENCES tenants(id),
    subject_id    UUID NOT NULL,
    subject_type  VARCHAR(50) NOT NULL,
    purpose       VARCHAR(255) NOT NULL,
    lawful_basis  VARCHAR(100) NOT NULL,
    consent_given BOOLEAN NOT NULL,
    consent_text  TEXT,
    version       VARCHAR(50),
    ip_address    INET,
    given_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    withdrawn_at  TIMESTAMPTZ,
    expires_at    TIMESTAMPTZ,
    metadata      JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX idx_consent_subject ON consent_records(tenant_id, subject_id);

-- The seed partitions this by created_at with id alone as primary key, which PostgreSQL
-- refuses: the key of a partitioned table must include the partition column.
CREATE TABLE data_access_log (
    id              UUID NOT NULL DEFAULT gen_random_uuid(),
    tenant_id       UUID,
    user_id         UUID,
    action          VARCHAR(100) NOT NULL,
    table_name      VARCHAR(255),
    record_id       UUID,
    ip_address      INET,
    user_agent      TEXT,
    purpose         VARCHAR(255),
    accessed_fields TEXT[],
    metadata        JSONB NOT NULL DEFAULT '{}',
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
CREATE TABLE data_access_log_default PARTITION OF data_access_log DEFAULT;

CREATE TABLE database_metrics (
    id           BIGSERIAL PRIMARY KEY,
    shard_id     INTEGER REFERENCES shard_map(shard_id),
    metric_name  VARCHAR(100) NOT NULL,
    metric_value NUMERIC,
    metric_unit  VARCHAR(50),
    metadata     JSONB NOT NULL DEFAULT '{}',
    recorded_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
