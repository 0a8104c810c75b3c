"""The `wakala` console script: exit codes and messages a user can act on."""

import os
import subprocess
import sys

import pytest

from schema.migrate import load_migrations


def _wakala(settings, *args):
    env = dict(os.environ)
    env["WAKALA_CONTROL_DSN"] = settings.control.url()
    env["WAKALA_SHARD_DATABASES"] = ",".join(settings.shard_databases)
    return subprocess.run([sys.executable, "-m", "dispatch.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.timeout(300)
async def test_cli_migrates_creates_lists_and_refuses_bad_names(fresh_settings):
    first = _wakala(fresh_settings, "migrate")
    assert first.returncode == 0, first.stderr
    assert f"{len(load_migrations('control'))} migration(s) applied" in first.stdout
    assert "nothing to do" in _wakala(fresh_settings, "migrate").stdout
    created = _wakala(fresh_settings, "tenant", "create", "Kwa-Mai Mai Traders")
    assert created.returncode == 0, created.stderr
    assert "kwa-mai-mai-traders" in created.stdout
    listed = _wakala(fresh_settings, "tenant", "list")
    assert "kwa-mai-mai-traders" in listed.stdout and "tenant_" in listed.stdout
    status = _wakala(fresh_settings, "migrate", "status")
    assert status.returncode == 0 and "tenant_" in status.stdout
    bad = _wakala(fresh_settings, "tenant", "create", "x'); DROP TABLE tenants; --")
    assert bad.returncode == 2
    assert "may not contain" in bad.stderr and "Traceback" not in bad.stderr
    assert _wakala(fresh_settings, "tenant", "list").stdout.count("tenant_") == 1


def test_cli_names_the_fix_when_postgres_is_down():
    env = dict(os.environ, WAKALA_CONTROL_DSN="postgresql://postgres@127.0.0.1:1/wakala_control")
    result = subprocess.run([sys.executable, "-m", "dispatch.cli", "migrate", "status"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "does not answer" in result.stderr and "wakala services up" in result.stderr


@pytest.mark.timeout(300)
async def test_cli_sets_a_tenants_payment_secret_and_refuses_a_weak_one(fresh_settings):
    from dispatch.commerce.payment_secrets import get_webhook_secret
    from schema.db import TenantDatabase

    assert _wakala(fresh_settings, "migrate").returncode == 0
    created = _wakala(fresh_settings, "tenant", "create", "Spaza Secrets")
    tenant_id = created.stdout.split(" id ")[1].split()[0]
    weak = _wakala(fresh_settings, "tenant", "payment-secret", tenant_id, "--secret", "short")
    assert weak.returncode == 2 and "secret must be" in weak.stderr and "Traceback" not in weak.stderr
    generated = _wakala(fresh_settings, "tenant", "payment-secret", tenant_id)
    assert generated.returncode == 0, generated.stderr
    shown = generated.stdout.strip().splitlines()[-1]
    async with TenantDatabase(fresh_settings) as db:
        assert await get_webhook_secret(db, tenant_id) == shown and len(shown) == 64
    unknown = _wakala(fresh_settings, "tenant", "payment-secret", "00000000-0000-0000-0000-000000000001")
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
