-- 0001: tenant context.
--
-- The runner applies every tenant migration with search_path = <tenant schema>, public
-- and sets wakala.schema_tenant_id to the tenant this schema belongs to.
-- Row-level security compares each row's tenant_id with current_tenant_id().

CREATE EXTENSION IF NOT EXISTS postgis WITH SCHEMA public;

-- schema_tenant_id(): the tenant this schema belongs to, fixed when the schema is built.
-- Built with dynamic SQL so the UUID is a literal in the function body.
DO $$
DECLARE
    configured text := current_setting('wakala.schema_tenant_id', true);
    tenant uuid;
BEGIN
    IF configured IS NULL OR configured = '' THEN
        RAISE EXCEPTION 'wakala.schema_tenant_id is not set'
            USING HINT = 'Run tenant migrations through the migration runner, which sets it to the tenant''s UUID.';
    END IF;
    tenant := configured::uuid;

    EXECUTE format(
        'CREATE FUNCTION schema_tenant_id() RETURNS uuid LANGUAGE sql IMMUTABLE PARALLEL SAFE AS %L',
        format('SELECT %L::uuid', tenant)
    );
END
$$;

-- current_tenant_id(): the tenant the session has declared (app.current_tenant_id),
-- but only when it is this schema's tenant; NULL when unset, empty or another tenant's.
-- The seed's version was SECURITY DEFINER and raised when the setting was missing.
-- A standard-SQL body binds schema_tenant_id() to this schema's function at creation,
-- whatever search_path the caller has.
CREATE FUNCTION current_tenant_id() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE
        WHEN NULLIF(current_setting('app.current_tenant_id', true), '')::uuid = schema_tenant_id()
        THEN schema_tenant_id()
    END;
END;
