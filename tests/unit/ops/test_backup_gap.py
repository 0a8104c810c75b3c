"""How long a tenant has gone without a backup: since its last one, or since it was created."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dispatch.ops.status import BACKUP_STALE_S, backup_gap_s

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def test_the_gap_runs_from_the_last_completed_backup():
    assert backup_gap_s(NOW - timedelta(hours=2), NOW - timedelta(days=90), NOW) == 7200


def test_a_tenant_never_backed_up_counts_from_its_creation():
    assert backup_gap_s(None, NOW - timedelta(hours=1), NOW) == 3600
    assert backup_gap_s(None, NOW - timedelta(hours=27), NOW) > BACKUP_STALE_S


def test_times_in_the_future_and_missing_ones_give_no_negative_gap():
    assert backup_gap_s(NOW + timedelta(hours=1), None, NOW) == 0.0
    assert backup_gap_s(None, None, NOW) == 0.0
