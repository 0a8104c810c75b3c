-- The engine lists every user it creates in the tenant_users directory (which tenants know
-- this phone number: WhatsApp routing), so the application role may add rows there.
DO $$
BEGIN
    EXECUTE format('GRANT INSERT ON tenant_users TO %I', current_setting('wakala.app_role'));
END $$;
