-- Consent records as the engine writes them (dispatch/identity/consent_store.py), and the
-- access log split into monthly partitions so retention drops whole months.
--
-- consent_records keeps the seed's columns; a record is one change (given or withdrawn), never
-- updated except to stamp withdrawn_at on the consent a withdrawal ends. New: where it was
-- captured (channel, the seed had none) and who recorded it (the subject themselves, or a
-- tenant admin writing down a paper form).
ALTER TABLE consent_records
    ADD COLUMN channel     VARCHAR(20),
    ADD COLUMN recorded_by UUID,
    ADD CONSTRAINT consent_records_purpose_check CHECK (purpose IN ('marketing', 'location_tracking')),
    ADD CONSTRAINT consent_records_subject_type_check CHECK (subject_type IN ('customer', 'driver', 'user'));
DROP INDEX IF EXISTS idx_consent_subject;
CREATE INDEX idx_consent_subject ON consent_records (tenant_id, subject_type, subject_id, purpose, given_at DESC);

-- The seed's data_access_log had one default partition. Monthly partitions from the oldest row
-- on (and the next three months; the maintenance loop keeps three ahead and drops the months
-- past the retention period), rows moved out of the default partition, which stays for rows
-- whose month has no partition yet (a clock far off).
DO $$
DECLARE
    first_month date;
    m date;
BEGIN
    ALTER TABLE data_access_log DETACH PARTITION data_access_log_default;
    SELECT date_trunc('month', min(created_at))::date INTO first_month FROM data_access_log_default;
    m := least(coalesce(first_month, date_trunc('month', now())::date), date_trunc('month', now())::date);
    WHILE m <= (date_trunc('month', now()) + interval '3 months')::date LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF data_access_log FOR VALUES FROM (%L) TO (%L)',
                       'data_access_log_y' || to_char(m, 'YYYY') || 'm' || to_char(m, 'MM'),
                       m, (m + interval '1 month')::date);
        m := (m + interval '1 month')::date;
    END LOOP;
    INSERT INTO data_access_log SELECT * FROM data_access_log_default;
    TRUNCATE data_access_log_default;
    ALTER TABLE data_access_log ATTACH PARTITION data_access_log_default DEFAULT;
END $$;

DO $$
BEGIN
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON consent_records TO %I', current_setting('wakala.app_role'));
END $$;
