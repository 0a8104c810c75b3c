"""What a caller hears when the engine, not the request, is at fault.

Two answers, in the envelope of the route that failed (``dispatch.web.http.error_response``):

- an outage of a service the engine needs (PostgreSQL down, restarting or terminating our
  sessions, Redis unreachable, the broker unreachable) is 503 ``unavailable`` with
  ``Retry-After``: the same request later will likely work, so clients and load balancers
  should retry, not report a bug;
- anything else unhandled is a 500 with a generic body.

Neither body carries the exception's text: driver messages name hosts, ports, database
names and roles (``PostgreSQL at db-3.internal:5432/wakala_shard_2 does not answer``), which
tell an attacker the topology and a client nothing it can act on. The full exception is
logged server-side instead, once, with the method and path.

``install_failure_handlers`` registers the outage types with FastAPI's exception middleware
(so they are answered without the traceback machinery of a crash) and a catch-all for the
rest; ``EdgeLimits`` covers what happens outside FastAPI.
"""

from __future__ import annotations

import logging

import asyncpg
import redis.exceptions
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError
from fastapi import FastAPI, Request
from starlette.responses import JSONResponse

from dispatch.core.errors import INTERNAL_ERROR, UNAVAILABLE, Refusal
from dispatch.web.http import error_response
from schema.errors import DatabaseUnavailable
from streams.producer import BrokerUnavailable

__all__ = ["OUTAGES", "RETRY_AFTER_S", "install_failure_handlers", "internal_error", "is_outage",
           "unavailable"]

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5

# Exception types that mean "a service is down or restarting", never "this request is wrong".
OUTAGES: tuple[type[BaseException], ...] = (
    DatabaseUnavailable,
    BrokerUnavailable,
    asyncpg.PostgresConnectionError,       # the connection is gone (terminated, reset)
    asyncpg.InterfaceError,                # connection closed or in an unusable state
    asyncpg.exceptions.OperatorInterventionError,   # 57P01 admin shutdown, 57P03 cannot connect now
    asyncpg.exceptions.TooManyConnectionsError,     # 53300: the server is full for now
    # A session terminated mid-statement can leave asyncpg's protocol state confused; seen
    # under repeated pg_terminate_backend ("cannot switch to state 15"). Logged in full.
    asyncpg.exceptions._base.InternalClientError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    KafkaConnectionError,
    KafkaTimeoutError,
    NodeNotReadyError,
    ConnectionError,                       # refused or reset at the socket
    TimeoutError,                          # a pool acquire or a command that did not finish
)


def is_outage(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from or while handling, is an outage
    (a commit failing after the connection died raises from within the first error)."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, OUTAGES):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def unavailable() -> Refusal:
    """503 ``unavailable``, retry after ``RETRY_AFTER_S``; no detail of what is down."""
    return Refusal(503, UNAVAILABLE, "a service the engine needs is unavailable; retry later",
                   headers={"Retry-After": str(RETRY_AFTER_S)})


def internal_error() -> Refusal:
    """500 with a body that says nothing of the cause."""
    # The reason stays out of the shared vocabulary: clients cannot act on it, so none keys on it.
    return Refusal(500, INTERNAL_ERROR, "internal error; it has been logged")


def failure_response(path: str, method: str, exc: BaseException) -> JSONResponse:
    """Log ``exc`` in full and answer 503 or 500 in the route's envelope."""
    if is_outage(exc):
        log.warning("%s %s: service unavailable: %s", method, path, exc, exc_info=exc)
        return error_response(path, unavailable())
    log.error("%s %s: unhandled error", method, path, exc_info=exc)
    return error_response(path, internal_error())


def install_failure_handlers(app: FastAPI) -> None:
    """Outages answer 503, everything else unhandled 500, in the route's envelope."""

    async def outage(request: Request, exc: Exception) -> JSONResponse:
        try:
            exc._wakala_answered = True   # type: ignore[attr-defined]  # EdgeLimits: already logged
        except AttributeError:
            pass
        return failure_response(request.url.path, request.method, exc)

    for kind in OUTAGES:
        app.add_exception_handler(kind, outage)
    # Exception goes to Starlette's ServerErrorMiddleware, which answers with this and then
    # re-raises for the server to see; EdgeLimits swallows the re-raise (already logged here).
    app.add_exception_handler(Exception, outage)
