"""The worker supervisor's restart backoff."""

from dispatch.ops.supervisor import RESTART_BACKOFF_MAX_S, restart_delay


def test_restarts_back_off_doubling_up_to_the_cap():
    assert [restart_delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert restart_delay(1000) == RESTART_BACKOFF_MAX_S
    assert restart_delay(0) == 1 and restart_delay(3, base_s=0.5, cap_s=1.5) == 1.5
