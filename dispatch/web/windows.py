"""Sliding-window counts in process memory: the driver websocket's ping limit (pure, no I/O).

The shared limiter (``dispatch.web.ratelimit``) costs a Redis script call per upload and a
sorted-set member per ping in Redis; at tens of thousands of pings a second that was a
visible share of the gateway's and Redis's CPU and a round trip before every produce. A
driver's websocket lives in one gateway process, so that process can count the driver's
pings itself, exactly, with the same sliding window.

The trade-off, accepted and documented: the count is per process. A driver holding sockets
on several gateway processes at once (an app that opened two connections which the kernel
spread over two workers) may send up to ``limit`` per window on each, and the HTTP batch
route keeps the shared Redis window. The limit exists to stop a runaway app from flooding the
log, and that stays bounded (by the number of gateway processes plus one, times the limit).
Windows outlive the socket until they expire, so reconnecting does not reset a driver's count.

Memory is bounded by the drivers seen within one window: each key holds at most ``limit``
entries, and keys idle for a whole window are swept every ``SWEEP_EVERY`` calls.
"""

from __future__ import annotations

from collections import deque

__all__ = ["SWEEP_EVERY", "LocalWindows"]

SWEEP_EVERY = 4096


class LocalWindows:
    """``allow(key, n, now)``: count ``n`` events at ``now`` (seconds) unless that would put
    more than ``limit`` in the last ``window_s``; refused events are not counted."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._windows: dict[str, tuple[deque[tuple[float, int]], list[int]]] = {}
        self._calls = 0

    def __len__(self) -> int:
        return len(self._windows)

    def allow(self, key: str, n: int, now: float) -> bool:
        self._calls += 1
        if self._calls % SWEEP_EVERY == 0:
            self.sweep(now)
        entry = self._windows.get(key)
        if entry is None:
            entry = self._windows[key] = (deque(), [0])
        events, total = entry
        horizon = now - self.window_s
        while events and events[0][0] <= horizon:
            total[0] -= events.popleft()[1]
        if total[0] + n > self.limit:
            return False
        events.append((now, n))
        total[0] += n
        return True

    def sweep(self, now: float) -> None:
        """Forget the keys with no event inside the window."""
        horizon = now - self.window_s
        for key in [k for k, (events, _) in self._windows.items() if not events or events[-1][0] <= horizon]:
            del self._windows[key]
