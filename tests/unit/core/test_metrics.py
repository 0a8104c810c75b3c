"""Sampled gauges: reported while fresh, ages counting on from their sample, unknown names
refused; and the sampling interval's setting."""

from __future__ import annotations

import time

import pytest
from prometheus_client import REGISTRY

from dispatch.core.metrics import forget_sample, record_sample
from dispatch.core.settings import EngineSettings
from schema.errors import ConfigError


def test_a_fresh_sample_is_reported_and_a_forgotten_one_is_not():
    record_sample("wakala_backup_stale_tenants", 3, fresh_s=60)
    assert REGISTRY.get_sample_value("wakala_backup_stale_tenants") == 3
    forget_sample("wakala_backup_stale_tenants")
    assert REGISTRY.get_sample_value("wakala_backup_stale_tenants") is None


def test_a_sample_past_its_freshness_is_not_reported():
    record_sample("wakala_location_lag_messages", 42, fresh_s=0.0)
    time.sleep(0.01)
    assert REGISTRY.get_sample_value("wakala_location_lag_messages") is None


def test_an_age_goes_on_counting_from_its_sample():
    record_sample("wakala_backup_age_seconds", 100.0, ageing=True)
    first = REGISTRY.get_sample_value("wakala_backup_age_seconds")
    time.sleep(0.05)
    second = REGISTRY.get_sample_value("wakala_backup_age_seconds")
    assert 100.0 <= first < second < 101.0
    forget_sample("wakala_backup_age_seconds")


def test_an_unknown_sampled_name_is_refused():
    with pytest.raises(KeyError, match="not a sampled metric"):
        record_sample("wakala_made_up", 1)


@pytest.mark.parametrize("value", ["-1", "3601", "1.5", "nan", "often"])
def test_a_bad_sampling_interval_names_the_variable(value):
    with pytest.raises(ConfigError, match="WAKALA_OPS_SAMPLE_S"):
        EngineSettings.from_env({"WAKALA_OPS_SAMPLE_S": value})


def test_sampling_is_every_30_s_by_default_and_0_turns_it_off():
    assert EngineSettings.from_env({}).ops_sample_s == 30
    assert EngineSettings.from_env({"WAKALA_OPS_SAMPLE_S": "0"}).ops_sample_s == 0
