-- Tenant moves between shards (schema/moves/). A move records each step it reaches, so that
-- a rerun after a crash resumes where it stopped; the mapping carries the write pause that
-- every engine process honours while the move switches the tenant over.
--
-- Steps, in order: started -> preparing (target schema built from the tenant migrations)
-- -> copying (publication, slot and subscription exist; the initial copy runs) ->
-- catching_up -> switching (writes paused and the source fenced) -> switched (the mapping
-- points at the target) -> completed (replication objects dropped) -> cleaned (the old
-- schema dropped). failed: aborted, the tenant stays on its source shard.
ALTER TABLE tenant_migrations DROP CONSTRAINT tenant_migrations_status_check;
ALTER TABLE tenant_migrations ADD CONSTRAINT tenant_migrations_status_check
    CHECK (status IN ('started', 'preparing', 'copying', 'catching_up', 'switching', 'switched',
                      'completed', 'cleaned', 'failed'));
ALTER TABLE tenant_migrations
    ADD COLUMN schema_name       VARCHAR(63),
    ADD COLUMN method            VARCHAR(20) NOT NULL DEFAULT 'logical'
                                 CHECK (method IN ('logical', 'copy')),
    ADD COLUMN rows_copied       BIGINT,
    ADD COLUMN copy_seconds      NUMERIC(12, 3),
    ADD COLUMN catchup_lag_bytes BIGINT,
    ADD COLUMN pause_ms          NUMERIC(12, 1),
    ADD COLUMN checksums         JSONB,
    ADD COLUMN cleanup_after     TIMESTAMPTZ,
    ADD COLUMN cleaned_at        TIMESTAMPTZ,
    ADD COLUMN updated_at        TIMESTAMPTZ NOT NULL DEFAULT now();
-- One unfinished move per tenant: a second `wakala tenant move` resumes it or is refused.
CREATE UNIQUE INDEX tenant_migrations_one_open ON tenant_migrations (tenant_id)
    WHERE status NOT IN ('completed', 'cleaned', 'failed');
CREATE INDEX tenant_migrations_cleanup ON tenant_migrations (cleanup_after)
    WHERE status = 'completed';

-- Set while a move switches the tenant: engine processes hold the tenant's transactions
-- (they wait, then answer 503 with Retry-After) until it is cleared with the new shard.
ALTER TABLE tenant_shard_mapping ADD COLUMN writes_paused_at TIMESTAMPTZ;
