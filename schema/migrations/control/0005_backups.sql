-- Encrypted per-tenant backups and their restores (schema/backups). The seed's backup_log
-- and restore_log (0001) grow the columns the backup service records; see docs/schema.md.

-- 'full'/'incremental' stays the seed's vocabulary (every backup here is a full schema dump);
-- the retention class is kind: the tenant's first completed backup of an ISO week is
-- 'weekly' (kept 30 days), others are 'daily' (kept 7). A pruned backup's file is deleted and
-- its row stays as 'expired', so the history of what existed is kept.
ALTER TABLE backup_log DROP CONSTRAINT backup_log_status_check;
ALTER TABLE backup_log
    ADD CONSTRAINT backup_log_status_check
        CHECK (status IN ('started', 'completed', 'failed', 'expired')),
    ADD COLUMN kind          VARCHAR(10) CHECK (kind IN ('daily', 'weekly')),
    ADD COLUMN reason        VARCHAR(20) NOT NULL DEFAULT 'manual'
                             CHECK (reason IN ('manual', 'scheduled', 'pre-restore')),
    ADD COLUMN schema_name   VARCHAR(63),
    ADD COLUMN shard_id      INTEGER,
    ADD COLUMN key_id        VARCHAR(16),
    ADD COLUMN table_counts  JSONB,          -- {"orders": 1234, ...}, as in the file's header
    ADD COLUMN total_rows    BIGINT,
    ADD COLUMN verified_at   TIMESTAMPTZ,    -- the last `wakala backup verify` of this backup
    ADD COLUMN verify_status VARCHAR(10) CHECK (verify_status IN ('ok', 'mismatch', 'error')),
    ADD COLUMN expired_at    TIMESTAMPTZ;

-- The last completed backup of each tenant (scheduling, verify, list).
CREATE INDEX idx_backup_log_tenant_completed
    ON backup_log (tenant_id, started_at DESC) WHERE status = 'completed';

-- A restore may come from a file whose backup was never logged here (a control plane rebuilt
-- from scratch, a file copied from another site): backup_id is the id in the file's header,
-- not a foreign key. The target tenant of --as-new-tenant exists only once the restore has
-- got far enough to create it, so it is filled in then.
ALTER TABLE restore_log DROP CONSTRAINT restore_log_backup_id_fkey;
ALTER TABLE restore_log ALTER COLUMN target_tenant_id DROP NOT NULL;
ALTER TABLE restore_log
    ADD COLUMN mode                  VARCHAR(20) NOT NULL DEFAULT 'in-place'
                                     CHECK (mode IN ('in-place', 'replace', 'to-shard', 'as-new-tenant')),
    ADD COLUMN source_tenant_id      UUID,
    ADD COLUMN target_shard_id       INTEGER,
    ADD COLUMN location              TEXT,
    ADD COLUMN pre_restore_backup_id UUID,   -- the backup --replace took of the live schema
    ADD COLUMN rows_restored         BIGINT;
