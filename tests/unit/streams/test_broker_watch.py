"""The broker watch's decisions (pure: a fake clock, no broker)."""

from __future__ import annotations

from redis import exceptions as redis_errors

from streams.app import _retryable
from streams.consumer import BrokerWatch


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def watch(clock: Clock) -> BrokerWatch:
    return BrokerWatch(give_up_after_s=120, give_up_min_failures=5, clock=clock)


def test_commits_failing_past_the_bound_make_the_worker_give_up():
    clock = Clock()
    w = watch(clock)
    for _ in range(6):
        w.note_commit(False)
        clock.now += 25
    assert w.should_give_up()


def test_one_successful_commit_resets_the_bound():
    clock = Clock()
    w = watch(clock)
    for _ in range(6):
        w.note_commit(False)
        clock.now += 20
    w.note_commit(True)
    w.note_commit(False)
    clock.now += 60
    assert not w.should_give_up()


def test_an_idle_worker_with_one_old_failure_never_gives_up():
    """No traffic, no commit attempts: a single failure long ago is not 'stuck'."""
    clock = Clock()
    w = watch(clock)
    w.note_commit(False)
    clock.now += 3600
    assert not w.should_give_up()


def test_many_quick_failures_alone_do_not_give_up_before_the_time_bound():
    clock = Clock()
    w = watch(clock)
    for _ in range(100):
        w.note_commit(False)
        clock.now += 0.1
    assert not w.should_give_up()


def test_a_failed_commit_or_no_partition_asks_for_one_topic_check():
    w = watch(Clock())
    assert not w.due_for_topic_check(owns_partitions=True)
    w.note_commit(False)
    assert w.due_for_topic_check(owns_partitions=True)
    assert not w.due_for_topic_check(owns_partitions=True)     # once per failure
    assert w.due_for_topic_check(owns_partitions=False)        # every round while unassigned


def test_a_lost_script_cache_is_retried_like_a_redis_outage():
    assert _retryable(redis_errors.NoScriptError("NOSCRIPT No matching script"))
    assert _retryable(redis_errors.ConnectionError("gone"))
    assert not _retryable(redis_errors.ResponseError("WRONGTYPE"))
    assert not _retryable(ValueError("a bug"))
