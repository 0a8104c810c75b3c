"""The replay apps' backoff and Retry-After reading (pure)."""

import random

import pytest

from loadtest.reconnect import Backoff, retry_after_s


def test_backoff_is_jittered_exponential_and_capped():
    backoff = Backoff(base_s=0.25, cap_s=4.0, rng=random.Random(1))
    waits = [backoff.next() for _ in range(40)]
    ceilings = [min(4.0, 0.25 * 2 ** i) for i in range(40)]
    assert all(0 <= w <= c for w, c in zip(waits, ceilings, strict=True))
    assert max(waits) <= 4.0 and len(set(waits)) == len(waits)   # jittered: no two alike
    backoff.reset()
    assert backoff.next() <= 0.25


@pytest.mark.parametrize("base, cap", [(0, 1), (-1, 1), (2, 1)])
def test_a_backoff_that_cannot_work_is_refused(base, cap):
    with pytest.raises(ValueError, match="backoff"):
        Backoff(base, cap)


@pytest.mark.parametrize("header, expected", [
    ("3", 3.0), (" 1.5 ", 1.5), ("0", 0.0), ("-5", 0.0), ("999999", 8.0), ("1e308", 8.0),
    (None, None), ("", None), ("soon", None), ("nan", None), ("inf", 8.0),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
])
def test_retry_after_is_read_capped_and_hostile_values_ignored(header, expected):
    assert retry_after_s(header, cap_s=8.0) == expected


def test_retry_after_as_an_http_date_counts_from_now():
    assert retry_after_s("Wed, 21 Oct 2015 07:28:05 GMT", cap_s=60, now=1445412480.0) == pytest.approx(5.0)
