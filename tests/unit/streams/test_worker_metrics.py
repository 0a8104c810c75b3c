"""The location worker's metrics: the lag per partition from what the consumer holds, the
outcome counts, the metrics port setting, and a taken port."""

from __future__ import annotations

import socket

import pytest
from prometheus_client import REGISTRY

from schema.errors import ConfigError
from streams.metrics import count_outcomes, partition_lag, sample_lag, serve_metrics
from streams.settings import StreamSettings


def test_lag_is_the_high_watermark_minus_the_larger_of_committed_and_landed():
    lag = partition_lag({0: 100, 1: 50, 2: 10}, committed={0: 90, 1: 20, 2: None}, landed={1: 45})
    assert lag == {0: 10, 1: 5, 2: 10}


def test_a_partition_without_a_known_high_watermark_has_no_lag_figure():
    assert partition_lag({0: None, 1: 7}, committed={}, landed={}) == {1: 7}


def test_a_high_watermark_older_than_what_landed_never_gives_a_negative_lag():
    assert partition_lag({0: 10}, committed={0: 12}, landed={0: 15}) == {0: 0}


class _TP:
    def __init__(self, topic: str, partition: int) -> None:
        self.topic, self.partition = topic, partition

    def __hash__(self) -> int:
        return hash((self.topic, self.partition))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _TP) and (self.topic, self.partition) == (other.topic, other.partition)


class _Consumer:
    """What sample_lag reads of faust's consumer: its assignment, high watermarks, commits."""

    def __init__(self, highwaters: dict[_TP, int | None], committed: dict[_TP, int]) -> None:
        self.highwaters, self._committed_offset = highwaters, committed

    def assignment(self) -> set[_TP]:
        return set(self.highwaters)

    def highwater(self, tp: _TP) -> int | None:
        return self.highwaters[tp]


def _gauge(partition: str) -> float | None:
    return REGISTRY.get_sample_value("wakala_worker_lag_messages", {"partition": partition})


def test_sampling_sets_the_assigned_partitions_and_drops_revoked_ones():
    topic, other = "driver-locations-unit", "dead-letters-unit"
    consumer = _Consumer({_TP(topic, 0): 30, _TP(topic, 1): 8, _TP(other, 0): 999}, {_TP(topic, 0): 10})
    assert sample_lag(consumer, topic, {1: 8}) == {0: 20, 1: 0}
    assert _gauge("0") == 20 and _gauge("1") == 0
    consumer.highwaters = {_TP(topic, 1): 12}          # partition 0 revoked
    assert sample_lag(consumer, topic, {1: 8}) == {1: 4}
    assert _gauge("0") is None and _gauge("1") == 4


def test_a_consumer_that_cannot_tell_leaves_the_figures_alone():
    class Broken:
        def assignment(self):
            raise RuntimeError("not started")

    assert sample_lag(Broken(), "driver-locations-unit", {}) == {}


def test_outcome_counts_add_up_and_zeros_make_no_series():
    before = REGISTRY.get_sample_value("wakala_worker_pings_total", {"outcome": "accepted"}) or 0
    count_outcomes([("accepted", 3), ("out_of_order", 0)])
    count_outcomes([("accepted", 2)])
    assert REGISTRY.get_sample_value("wakala_worker_pings_total", {"outcome": "accepted"}) == before + 5
    assert REGISTRY.get_sample_value("wakala_worker_pings_total", {"outcome": "never_seen"}) is None


@pytest.mark.parametrize("value", ["-1", "65536", "9464.5", "nan", "9464; rm -rf /", "lots"])
def test_a_bad_worker_metrics_port_names_the_variable(value):
    with pytest.raises(ConfigError, match="WAKALA_WORKER_METRICS_PORT"):
        StreamSettings.from_env({"WAKALA_WORKER_METRICS_PORT": value})


def test_the_worker_metrics_port_is_off_by_default():
    assert StreamSettings.from_env({}).metrics_port == 0
    assert StreamSettings.from_env({"WAKALA_WORKER_METRICS_PORT": "9465"}).metrics_port == 9465


def test_a_taken_port_is_logged_and_not_served():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert serve_metrics(taken.getsockname()[1]) is None
