-- Retention (seed section 6.1), run by schema/retention/runner.py instead of the seed's
-- apply_retention_policies(): the tables a policy may name, and how each is aged, are a fixed
-- catalogue in Python (schema/retention/policies.py); a policy row only chooses a table of
-- that catalogue, a number of days, optional equality conditions and whether it is active.
-- Departures from the seed are listed in docs/schema.md.

-- Why a policy exists: shown by `wakala retention policies` and kept with the row, so that a
-- changed period carries its justification.
ALTER TABLE data_retention_policies
    ADD COLUMN reason     TEXT,
    ADD COLUMN updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- A period longer than a century is a typing mistake, not a policy.
    ADD CONSTRAINT retention_days_at_most_a_century CHECK (retention_days <= 36500),
    -- One policy per table and conditions: defaults are never inserted twice, and
    -- `wakala retention set` updates the row instead of adding a second one.
    ADD CONSTRAINT one_policy_per_table_and_conditions UNIQUE (table_name, conditions);

-- One row per run of the retention runner (also what the maintenance loop of every engine
-- process reads to decide whether a run is due: the last finished run, not a per-process clock).
CREATE TABLE retention_runs (
    id          UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    dry_run     BOOLEAN NOT NULL,
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ,
    status      VARCHAR(20) NOT NULL DEFAULT 'running'
                CHECK (status IN ('running', 'completed', 'failed')),
    -- What the run was limited to (CLI --tenant / --table); NULL: everything.
    tenant_id   UUID,
    table_name  VARCHAR(255),
    error_message TEXT
);
CREATE INDEX idx_retention_runs_finished ON retention_runs (finished_at DESC)
    WHERE status = 'completed' AND NOT dry_run;

-- One row per (run, tenant, table, policy), zero counts included: an auditor sees that the
-- policy ran and found nothing, not only that it found something.
ALTER TABLE data_deletion_log
    ADD COLUMN run_id             UUID REFERENCES retention_runs(id) ON DELETE CASCADE,
    ADD COLUMN dry_run            BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN batches            INTEGER NOT NULL DEFAULT 0 CHECK (batches >= 0),
    ADD COLUMN duration_ms        INTEGER NOT NULL DEFAULT 0 CHECK (duration_ms >= 0),
    ADD COLUMN partitions_dropped TEXT[] NOT NULL DEFAULT '{}',
    ADD COLUMN cutoff             TIMESTAMPTZ,
    ADD COLUMN error_message      TEXT,
    ALTER COLUMN deleted_count TYPE BIGINT;
CREATE INDEX idx_data_deletion_log_run ON data_deletion_log (run_id);
CREATE INDEX idx_data_deletion_log_tenant ON data_deletion_log (tenant_id, executed_at DESC);

-- The default policies. The periods and reasons are those of DEFAULT_POLICIES in
-- schema/retention/policies.py (a unit test compares the two). POPIA section 14: personal
-- information is kept no longer than its purpose needs, so every table whose rows stop
-- serving a purpose has an active policy. Financial records (orders with their payments,
-- deliveries, refunds, returns, items and history) are kept: the Tax Administration Act
-- (s29) requires records for 5 years, the Companies Act (s24) 7; their policy is inactive
-- and the runner refuses to activate it below 5 years or without
-- WAKALA_RETENTION_ALLOW_FINANCIAL=1.
INSERT INTO data_retention_policies (table_name, retention_days, is_active, reason) VALUES
    ('auth_tokens', 30, true,
     'token hashes are useless once expired or revoked; 30 days keep them for investigating recent misuse'),
    ('user_sessions', 30, true,
     'expired sessions identify devices and addresses; 30 days after expiry covers a support question'),
    ('tracking_links', 30, true,
     'a link stops working an hour after its delivery ends; 30 days after that (or after revocation) covers a customer query'),
    ('idempotency_keys', 7, true,
     'keys are only needed until they expire (24 h); the reservation sweeper deletes them sooner, this is the backstop'),
    ('delivery_events_outbox', 90, true,
     'published events live on in Kafka; a delivery''s timeline is read while it is live; 90 days for incident analysis'),
    ('order_events_outbox', 90, true,
     'published events live on in Kafka and in order_status_history; 90 days for incident analysis'),
    ('whatsapp_messages', 365, true,
     'message contents are personal information; a year covers order disputes and card chargebacks'),
    ('notifications', 180, true,
     'notification copies have no use once read or failed; 180 days covers delivery complaints'),
    ('conversations', 365, true,
     'chat state of customers who have not written for a year is stale and personal'),
    ('user_activities', 365, true,
     'behaviour records tied to a user: a year of history is enough for product decisions'),
    ('analytics_events', 395, true,
     '13 months: the same month a year ago can still be compared; older months are dropped whole'),
    ('orders', 2557, false,
     'financial records: Companies Act s24 requires 7 years (Tax Administration Act s29: 5); kept unless an operator activates this')
ON CONFLICT (table_name, conditions) DO NOTHING;
