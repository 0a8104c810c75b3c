-- The engine reads the placement tables as the application role (it owns nothing and
-- writes nothing here; provisioning runs with owner rights).
DO $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA public TO %I', current_setting('wakala.app_role'));
    EXECUTE format('GRANT SELECT ON shard_map, tenants, tenant_shard_mapping TO %I',
                   current_setting('wakala.app_role'));
END $$;
