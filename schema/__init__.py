"""Control plane, shards, migrations, tenant provisioning and tenant transactions."""
