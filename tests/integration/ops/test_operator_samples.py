"""The engine's operator samples for /metrics (the location worker's lag from the broker, the
backup ages from the control plane), against the real services and against dead ones."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY

from dispatch.ops.maintenance import sample_operator_metrics
from loadtest.processes import free_port
from schema.connect import connection
from schema.tenants import create_tenant

pytestmark = pytest.mark.timeout(120)


def _value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_backup_ages_count_from_the_last_backup_or_the_tenants_creation(platform, stream_settings):
    backed_up = await create_tenant(platform, "Backed Up Spaza")
    never = await create_tenant(platform, "Never Spaza")
    young = await create_tenant(platform, "Young Spaza")
    async with connection(platform.control) as conn:
        await conn.execute("INSERT INTO backup_log (tenant_id, backup_type, status, started_at, completed_at) "
                           "VALUES ($1, 'full', 'completed', $2, $2)", backed_up.id,
                           datetime.now(UTC) - timedelta(hours=2))
        await conn.execute("INSERT INTO backup_log (tenant_id, backup_type, status, started_at) "
                           "VALUES ($1, 'full', 'failed', now())", never.id)
        await conn.execute("UPDATE tenants SET created_at = now() - interval '40 hours' WHERE id = $1", never.id)
    assert young.id   # created now, never backed up: not overdue yet

    # The locations topic does not exist (no worker ever ran): the lag is not reported.
    failed = await sample_operator_metrics(platform, stream_settings, fresh_s=60, timeout_s=5)

    assert failed == ["lag"] and _value("wakala_location_lag_messages") is None
    assert 40 * 3600 <= _value("wakala_backup_age_seconds") < 40 * 3600 + 60
    assert _value("wakala_backup_stale_tenants") == 1


async def test_dead_services_are_counted_and_their_figures_dropped_within_the_bound(platform, stream_settings):
    await sample_operator_metrics(platform, stream_settings, fresh_s=60)
    assert _value("wakala_backup_age_seconds") is not None
    lag_before = _value("wakala_ops_sample_failures_total", part="lag") or 0
    backups_before = _value("wakala_ops_sample_failures_total", part="backups") or 0
    dead = free_port()   # nothing listens there
    pg = replace(platform, control=replace(platform.control, port=dead))
    streams = replace(stream_settings, kafka_bootstrap=f"127.0.0.1:{dead}")

    started = time.monotonic()
    failed = await sample_operator_metrics(pg, streams, fresh_s=60, timeout_s=1)

    assert time.monotonic() - started < 5
    assert sorted(failed) == ["backups", "lag"]
    assert _value("wakala_ops_sample_failures_total", part="lag") == lag_before + 1
    assert _value("wakala_ops_sample_failures_total", part="backups") == backups_before + 1
    assert _value("wakala_backup_age_seconds") is None and _value("wakala_backup_stale_tenants") is None
