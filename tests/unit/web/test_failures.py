"""Refusals per client address: a budget per window, then turned away until the window ends."""

import pytest

from dispatch.web.failures import FailureLimiter, client_address


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def test_an_address_is_turned_away_after_its_budget_until_the_window_ends():
    clock = Clock()
    limiter = FailureLimiter(3, 60, clock=clock)
    for _ in range(2):
        limiter.failed("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") is None
    limiter.failed("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == 60
    assert limiter.retry_after("10.0.0.2") is None    # another address is not affected
    clock.now += 59.5
    assert limiter.retry_after("10.0.0.1") == 1       # never 0: a client retrying at once is still early
    clock.now += 0.5
    assert limiter.retry_after("10.0.0.1") is None
    limiter.failed("10.0.0.1")                        # a fresh window
    assert limiter.retry_after("10.0.0.1") is None


def test_memory_is_bounded_by_the_number_of_addresses_kept():
    limiter = FailureLimiter(1, 60, max_clients=100)
    for i in range(10_000):
        limiter.failed(f"2001:db8::{i:x}")
        assert len(limiter) <= 100
    assert limiter.retry_after("2001:db8::0") is None        # forgotten first
    assert limiter.retry_after(f"2001:db8::{9999:x}") == 60  # the latest are kept


@pytest.mark.parametrize("limit, window, clients", [(0, 60, 1), (1, 0, 1), (1, 60, 0)])
def test_nonsense_bounds_are_refused(limit, window, clients):
    with pytest.raises(ValueError):
        FailureLimiter(limit, window, max_clients=clients)


@pytest.mark.parametrize("scope, address", [
    ({"type": "http", "client": ("203.0.113.9", 51234)}, "203.0.113.9"),
    ({"type": "websocket", "client": ["2001:db8::1", 443]}, "2001:db8::1"),
    ({"type": "http", "client": None}, None),
    ({"type": "http"}, None),
])
def test_the_client_address_comes_from_the_asgi_scope(scope, address):
    assert client_address(scope) == address
