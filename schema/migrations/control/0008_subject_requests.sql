-- Data subject requests (POPIA sections 23-25: access, correction, deletion, objection /
-- restriction) as the engine records and executes them (dispatch/identity/subject_requests.py).
--
-- The seed's table is kept and its names reused: request_type keeps 'access', 'rectification'
-- (a correction), 'erasure' and 'portability', and gains 'restriction'; processed_at /
-- processed_by say when and by whom a request was executed; response holds the summary (never
-- the exported personal data itself: a copy here would outlive an erasure). New columns say who
-- recorded the request, how the requester was verified, why, by when it is due (30 days) and
-- what went wrong. subject_type gains 'user' (an account that is neither customer nor driver,
-- e.g. a tenant admin).
ALTER TABLE data_subject_requests
    DROP CONSTRAINT IF EXISTS data_subject_requests_request_type_check,
    DROP CONSTRAINT IF EXISTS data_subject_requests_subject_type_check,
    ADD CONSTRAINT data_subject_requests_request_type_check
        CHECK (request_type IN ('access', 'rectification', 'erasure', 'portability', 'restriction')),
    ADD CONSTRAINT data_subject_requests_subject_type_check
        CHECK (subject_type IN ('customer', 'vendor', 'driver', 'user')),
    ADD CONSTRAINT data_subject_requests_status_check
        CHECK (status IN ('pending', 'completed', 'failed')),
    ADD COLUMN requested_by           UUID,
    ADD COLUMN verification_method    VARCHAR(40),
    ADD COLUMN verification_reference VARCHAR(200),
    ADD COLUMN reason                 VARCHAR(500),
    ADD COLUMN due_at                 TIMESTAMPTZ NOT NULL DEFAULT now() + interval '30 days',
    ADD COLUMN error                  TEXT;

CREATE INDEX idx_dsr_subject ON data_subject_requests (tenant_id, subject_id, request_type, status);
CREATE INDEX idx_data_access_log_record ON data_access_log (tenant_id, record_id, created_at);

-- The engine (application role) records requests and access, reads the registry, and
-- anonymises the control plane's copy of a phone number.
DO $$
BEGIN
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON data_subject_requests TO %I',
                   current_setting('wakala.app_role'));
    EXECUTE format('GRANT SELECT, INSERT ON data_access_log TO %I', current_setting('wakala.app_role'));
    EXECUTE format('GRANT SELECT ON personal_data_registry TO %I', current_setting('wakala.app_role'));
    EXECUTE format('GRANT SELECT, UPDATE ON tenant_users TO %I', current_setting('wakala.app_role'));
END $$;
