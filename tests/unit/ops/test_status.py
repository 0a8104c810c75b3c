"""The status screen's verdict, flags and rendering, over plain reports (no service)."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta

import pytest

from dispatch.cli.status import register, timeout_seconds
from dispatch.ops.status import (
    BACKUP_STALE_S,
    ServiceCheck,
    StatusReport,
    backup_age_flag,
    human_age,
    human_bytes,
    render,
    to_json,
    verdict,
)

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def _report(**kw) -> StatusReport:
    services = [ServiceCheck("postgres control", True, 3.0, "PostgreSQL 15"),
                ServiceCheck("redis", True, 1.0, "Redis 7"), ServiceCheck("broker", True, 5.0, "tansu")]
    return StatusReport(checked_at=NOW, services=kw.pop("services", services), **kw)


def test_all_services_up_and_every_part_read_is_up():
    assert verdict(_report())


def test_one_service_down_is_not_up():
    report = _report()
    report.services[1] = ServiceCheck("redis", False, None, "refused")
    assert not verdict(report)


def test_a_part_that_could_not_be_read_is_not_up():
    assert not verdict(_report(errors=["shard 1: no answer within 3s"]))


def test_no_services_checked_is_not_up():
    assert not verdict(_report(services=[]))


def test_stale_backups_and_moves_are_flagged_but_not_an_outage():
    report = _report(backups=[{"slug": "acme", "completed_at": None, "age_s": None, "stale": True}],
                     moves=[{"id": "a" * 36, "tenant_id": "b" * 36, "source_shard": 0, "target_shard": 1,
                             "status": "copying", "age_s": 90.0}])
    assert verdict(report)
    screen = render(report)
    assert "STALE" in screen and "copying" in screen
    assert "1 tenant(s) without a backup in 26 h" in screen and "1 move(s) unfinished" in screen


@pytest.mark.parametrize("age_h, stale", [(1, False), (25.9, False), (26.1, True), (24 * 9, True)])
def test_backups_older_than_26_hours_are_stale(age_h, stale):
    age, flagged = backup_age_flag(NOW - timedelta(hours=age_h), NOW)
    assert flagged is stale and age == pytest.approx(age_h * 3600)


def test_a_tenant_never_backed_up_is_stale():
    assert backup_age_flag(None, NOW) == (None, True)
    assert BACKUP_STALE_S == 26 * 3600


def test_render_shows_down_services_deliveries_lag_and_sample_time():
    report = _report(deliveries={"pending": 2, "assigned": 1, "picked_up": 0},
                     shards=[{"shard_id": 0, "name": "shard_0", "status": "active", "tenants": 3,
                              "size_bytes": 5 * 1024 * 1024, "connections": 7}],
                     consumer_lag=12, metrics_sampled_at=NOW - timedelta(minutes=5))
    report.services[2] = ServiceCheck("broker", False, None, "127.0.0.1:1: Connection refused")
    screen = render(report)
    assert "DOWN" in screen and "Connection refused" in screen
    assert "pending" in screen and "picked_up" not in screen  # zero states are left out
    assert "5.0 MB" in screen and "12 message(s)" in screen and "(5m ago)" in screen
    assert screen.rstrip().endswith("verdict: NOT all up")


def test_unknown_lag_and_no_sample_are_said_so():
    screen = render(_report(consumer_lag_detail="unknown (the broker is down)"))
    assert "location worker lag: unknown (the broker is down)" in screen
    assert "database metrics sampled: never" in screen
    assert "(none)" in screen


def test_json_is_one_object_with_the_verdict():
    data = json.loads(json.dumps(to_json(_report(metrics_sampled_at=NOW)), default=str))
    assert data["ok"] is True
    assert data["checked_at"] == NOW.isoformat() and data["metrics_sampled_at"] == NOW.isoformat()
    assert [s["name"] for s in data["services"]] == ["postgres control", "redis", "broker"]


@pytest.mark.parametrize("seconds, text", [(None, "never"), (-5, "0s"), (30, "30s"), (600, "10m"),
                                           (3 * 3600, "3.0h"), (5 * 86400, "5.0d")])
def test_ages_read_like_an_operator_would_say_them(seconds, text):
    assert human_age(seconds) == text


@pytest.mark.parametrize("n, text", [(None, "?"), (0, "0 B"), (2048, "2.0 kB"), (3 * 1024 ** 4, "3.0 TB"),
                                     (5 * 1024 ** 5, "5120.0 TB")])
def test_sizes_are_binary_units(n, text):
    assert human_bytes(n) == text


@pytest.mark.parametrize("raw", ["0", "-1", "61", "nan", "inf", "abc", "", "1e309", "3;rm -rf /"])
def test_a_hostile_timeout_is_refused(raw):
    with pytest.raises(argparse.ArgumentTypeError):
        timeout_seconds(raw)


def test_the_command_parses_json_and_timeout():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["status", "--json", "--timeout", " 0.5 "])
    assert args.json and args.timeout == 0.5
    assert parser.parse_args(["status"]).timeout == 3.0
