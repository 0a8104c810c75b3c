"""Refusals counted per client address, in process: who keeps failing is turned away unasked.

A client that sends well-formed tokens it made up costs a cache entry and, for an unknown
tenant, a control-database query each. Legitimate clients hold tokens that verify, so they
practically never fail; after ``limit`` refusals from one address within ``window_s`` that
address gets a 429 before any lookup, until its window ends.

Why not the Redis sliding window (``web.ratelimit``): this check runs before every token
verification, and a Redis round trip per request is exactly the cost a flood should not buy.
Each process counts on its own, so N processes admit at most N x ``limit`` failures per
window; that bounds the work, which is the point. A fixed window (start, count) per address
keeps an entry at two numbers; memory is bounded by ``max_clients`` addresses, the least
recently failing ones forgotten first.

Addresses are taken as given (the socket's peer): behind a proxy every client shares the
proxy's address, so the proxy must forward a trusted address or this limit must be raised.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any


def client_address(scope: Mapping[str, Any]) -> str | None:
    """The peer address of an ASGI connection (HTTP or websocket), None if the server gave none
    (a unix socket, a test transport): such callers are not counted."""
    client = scope.get("client")
    return str(client[0]) if client else None


class FailureLimiter:
    def __init__(self, limit: int, window_s: float, *, max_clients: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1 or window_s <= 0 or max_clients < 1:
            raise ValueError("limit, window_s and max_clients must be positive")
        self.limit = limit
        self.window_s = window_s
        self.max_clients = max_clients
        self._clock = clock
        self._clients: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._clients)

    def retry_after(self, client: str) -> int | None:
        """Whole seconds until ``client`` may try again, or None if it may try now."""
        entry = self._clients.get(client)
        if entry is None:
            return None
        started, count = entry
        left = started + self.window_s - self._clock()
        if left <= 0:
            del self._clients[client]
            return None
        return max(1, math.ceil(left)) if count >= self.limit else None

    def failed(self, client: str) -> None:
        """Count one refusal for ``client``."""
        now = self._clock()
        entry = self._clients.get(client)
        if entry is None or entry[0] + self.window_s <= now:
            self._clients[client] = (now, 1)
        else:
            self._clients[client] = (entry[0], entry[1] + 1)
        self._clients.move_to_end(client)
        while len(self._clients) > self.max_clients:
            self._clients.popitem(last=False)
