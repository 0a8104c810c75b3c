"""The message that begins a tenant's transaction: values quoted whatever they hold."""

import uuid

import pytest

from schema.db import begin_tenant_sql


def test_hostile_schema_names_and_ids_are_quoted():
    sql = begin_tenant_sql("evil'; DROP TABLE users; --\"", uuid.UUID(int=1))
    assert sql.count("'") % 2 == 0
    assert "'\"evil''; DROP TABLE users; --\"\"\", public'" in sql
    with pytest.raises(ValueError, match="NUL"):
        begin_tenant_sql("a\0b", uuid.UUID(int=1))


def test_read_only_transactions_say_so():
    assert begin_tenant_sql("tenant_ab", uuid.UUID(int=1), readonly=True).startswith("BEGIN READ ONLY;")
    assert begin_tenant_sql("tenant_ab", uuid.UUID(int=1)).startswith("BEGIN;")
