"""How the replay's apps ride out an engine that goes away: backoff, retries, reconnects.

Real phone and shop apps do not give up when a request fails or a socket closes, so neither
do the replay's drivers, tracking watchers and vendors:

- **Websockets** reconnect after a jittered exponential backoff (:class:`Backoff`: "full
  jitter", a random wait between 0 and ``min(cap, base * 2**attempt)``, so a fleet that lost
  the same server does not come back in one thundering herd), presenting their token again.
  A close that says the token is no good (:data:`PERMANENT_CLOSE_CODES`) is not retried.
- **HTTP calls** (:class:`RetryingApi`) are retried on a transport error (refused, reset,
  timed out) and on 429/500/502/503/504, waiting what ``Retry-After`` asks (capped) or the
  backoff. Every unsafe call carries an ``Idempotency-Key`` made once per logical action and
  sent again on each retry, so a retry after a lost answer never acts twice on an engine that
  honours the key. A 409 with ``Retry-After`` (the engine is still working on the first
  request with this key) is waited for too. Other refusals (4xx) are answers, not failures:
  they are not retried.

Every retry and reconnect is counted (``api_retries``, ``driver_reconnects``,
``watcher_reconnects``) and shows in the replay's report.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from loadtest.provision import ApiCaller, ApiFailed

__all__ = ["PERMANENT_CLOSE_CODES", "RETRY_STATUSES", "UNSAFE_METHODS", "Backoff", "RetryingApi",
           "retry_after_s"]

#: Close codes after which a reconnect with the same token cannot succeed.
PERMANENT_CLOSE_CODES = frozenset({1008, 4401, 4403, 4410})
#: HTTP statuses that mean "not now": retried.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
IDEMPOTENCY_HEADER = "Idempotency-Key"


class Backoff:
    """Jittered exponential backoff; ``next()`` is the wait before the next attempt."""

    def __init__(self, base_s: float = 0.25, cap_s: float = 4.0, rng: random.Random | None = None) -> None:
        if not (0 < base_s <= cap_s):
            raise ValueError(f"backoff needs 0 < base_s <= cap_s, got {base_s}, {cap_s}")
        self.base_s, self.cap_s = base_s, cap_s
        self.rng = rng or random.Random()
        self.attempt = 0

    def next(self) -> float:
        ceiling = min(self.cap_s, self.base_s * 2 ** min(self.attempt, 30))
        self.attempt += 1
        return self.rng.uniform(0, ceiling)

    def reset(self) -> None:
        self.attempt = 0


def retry_after_s(value: str | None, *, cap_s: float, now: float | None = None) -> float | None:
    """``Retry-After`` (delta seconds or an HTTP date) as seconds from now, capped; None when
    absent or unreadable (a hostile value must not make a client sleep forever)."""
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(text).timestamp() - (time.time() if now is None else now)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if seconds != seconds:   # NaN
        return None
    return min(cap_s, max(0.0, seconds))


class _Retryable(Exception):
    def __init__(self, failure: ApiFailed, retry_after: str | None) -> None:
        super().__init__(str(failure))
        self.failure, self.retry_after = failure, retry_after


class RetryingApi(ApiCaller):
    """An :class:`ApiCaller` that retries like an app: transport errors and 429/5xx, with
    backoff (or ``Retry-After``), until ``patience_s`` wall seconds have passed or ``stop`` is
    set; then the last failure is raised as the plain caller would have."""

    def __init__(self, http: httpx.AsyncClient, record: Callable[[str, float], None] | None = None, *,
                 count: Callable[[str], None] | None = None, stop: asyncio.Event | None = None,
                 patience_s: float = 60.0, backoff_base_s: float = 0.25, backoff_cap_s: float = 4.0) -> None:
        super().__init__(http, record)
        self.count = count or (lambda name: None)
        self.stop = stop
        self.patience_s = patience_s
        self.backoff_base_s, self.backoff_cap_s = backoff_base_s, backoff_cap_s

    async def __call__(self, method: str, path: str, token: str | None, body: Any = None, *,
                       route: str | None = None, headers: dict[str, str] | None = None,
                       content: bytes | None = None, idempotency_key: str | None = None) -> dict:
        sent = dict(headers or {})
        if method.upper() in UNSAFE_METHODS:
            # one key per logical action: made here once, the same on every retry below
            sent.setdefault(IDEMPOTENCY_HEADER, idempotency_key or str(uuid.uuid4()))
        backoff = Backoff(self.backoff_base_s, self.backoff_cap_s)
        deadline = time.monotonic() + self.patience_s
        label = f"{method} {route or path}"
        while True:
            try:
                return await self._once(method, path, token, body, label, sent, content)
            except _Retryable as exc:
                wait = retry_after_s(exc.retry_after, cap_s=self.backoff_cap_s * 2)
                failure: Exception = exc.failure
                kind = f"http_{exc.failure.status}"
            except httpx.TransportError as exc:
                wait, failure, kind = None, exc, type(exc).__name__
            if wait is None:
                wait = backoff.next()
            if time.monotonic() + wait > deadline or (self.stop is not None and self.stop.is_set()):
                self.count(f"api_gave_up:{label}:{kind}")
                raise failure
            self.count("api_retries")
            self.count(f"api_retry:{label}:{kind}")
            if self.stop is None:
                await asyncio.sleep(wait)
            else:
                try:
                    await asyncio.wait_for(self.stop.wait(), wait)
                except TimeoutError:
                    pass

    async def _once(self, method: str, path: str, token: str | None, body: Any, label: str,
                    headers: dict[str, str], content: bytes | None) -> dict:
        resp = await self._send(method, path, token, body, label, headers, content)
        if resp.status_code >= 300:
            failure = ApiFailed(label, resp.status_code, resp.text)
            if resp.status_code in RETRY_STATUSES or (resp.status_code == 409 and "retry-after" in resp.headers):
                # 409 with Retry-After: the first request with this key is still being worked on
                raise _Retryable(failure, resp.headers.get("retry-after"))
            raise failure
        return resp.json()
