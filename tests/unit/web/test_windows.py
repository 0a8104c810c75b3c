"""In-process sliding windows (the websocket's ping limit)."""

from dispatch.web.windows import SWEEP_EVERY, LocalWindows


def test_a_window_counts_events_and_refuses_without_counting():
    w = LocalWindows(limit=5, window_s=10)
    assert w.allow("d", 2, 100.0) and w.allow("d", 3, 101.0)
    assert not w.allow("d", 1, 102.0)          # 5 in the window already
    assert not w.allow("d", 1, 109.9)
    assert w.allow("other", 5, 102.0)          # keys are independent
    assert w.allow("d", 2, 110.0)              # the first 2 left the window at 110
    assert not w.allow("d", 1, 110.5)
    assert w.allow("d", 3, 111.0)              # ... and the next 3 at 111


def test_a_batch_larger_than_the_limit_is_refused_whole():
    w = LocalWindows(limit=5, window_s=10)
    assert not w.allow("d", 6, 0.0)
    assert w.allow("d", 5, 0.0)


def test_idle_keys_are_swept_so_memory_follows_the_active_drivers():
    w = LocalWindows(limit=5, window_s=10)
    for i in range(SWEEP_EVERY - 1):
        w.allow(f"driver-{i}", 1, 0.0)
    assert len(w) == SWEEP_EVERY - 1
    w.allow("late", 1, 20.0)                   # the sweeping call: everyone else is idle for 20 s
    assert len(w) == 1
    w.sweep(40.0)
    assert len(w) == 0
