"""The operators' endpoints: readiness, metrics and the API documents, kept off the public.

``/readyz`` asks every service the engine needs, at once and each within ``timeout_s``:
PostgreSQL (``select 1`` through the engine's own pool, so a full or broken pool shows),
Redis (``PING``) and the broker (a metadata request through the producer's client). Any one
down or slow is a 503; the body says which (``"down: timeout"``, ``"down:
ConnectionError"``) and never the exception's text, which names hosts. The full error is
logged. Results are shared for ``READY_CACHE_S`` and one round of probes runs at a time, so a
flood of unauthenticated ``/readyz`` requests costs the services one round a second, not one
per request.

``/metrics`` exposes counters an attacker should not read (refusals by reason, queue depths,
tenant activity), so the public port serves it only to ``Authorization: Bearer
<WAKALA_OPERATOR_TOKEN>`` and answers 404, as for any path that does not exist, otherwise
(and always when no token is configured). Scrapers on the same host use the operator port
(``WAKALA_METRICS_PORT``, bound to 127.0.0.1 only), served by prometheus_client's own
threaded server started with the app.

``/docs``, ``/redoc`` and ``/openapi.json`` exist only with ``WAKALA_API_DOCS`` on
(``docs_urls``).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dispatch.core.errors import NotFound
from dispatch.web.http import api_error_response, bearer
from streams.metrics import serve_metrics

__all__ = ["READY_CACHE_S", "READY_TIMEOUT_S", "docs_urls", "install_operator_routes", "readiness", "start_metrics_server"]

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 2.0
READY_CACHE_S = 1.0

Probe = Callable[[], Awaitable[Any]]


async def readiness(probes: Mapping[str, Probe], timeout_s: float = READY_TIMEOUT_S) -> tuple[bool, dict[str, str]]:
    """Run every probe at once, each bounded by ``timeout_s``: (all ok, name -> "ok"/"down: ...")."""

    async def one(name: str, probe: Probe) -> str:
        try:
            await asyncio.wait_for(probe(), timeout_s)
        except TimeoutError:
            log.warning("readiness: %s did not answer within %s s", name, timeout_s)
            return "down: timeout"
        except Exception as exc:   # readiness reports, it does not raise
            log.warning("readiness: %s is down", name, exc_info=exc)
            return f"down: {exc.__class__.__name__}"
        return "ok"

    names = list(probes)
    results = await asyncio.gather(*(one(name, probes[name]) for name in names))
    checks = dict(zip(names, results, strict=True))
    return all(v == "ok" for v in results), checks


def docs_urls(api_docs: bool) -> dict[str, str | None]:
    """FastAPI's keyword arguments for the documentation routes: on, or none at all."""
    if api_docs:
        return {"docs_url": "/docs", "redoc_url": "/redoc", "openapi_url": "/openapi.json"}
    return {"docs_url": None, "redoc_url": None, "openapi_url": None}


def install_operator_routes(app: FastAPI, probes: Callable[[], Mapping[str, Probe]], operator_token: str) -> None:
    """``/healthz``, ``/readyz`` (over ``probes()``, read per request) and the guarded ``/metrics``."""

    @app.get("/healthz", tags=["operators"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    last: list[Any] = [float("-inf"), False, {}]   # when, ready, checks
    lock = asyncio.Lock()

    @app.get("/readyz", tags=["operators"])
    async def readyz(response: Response) -> dict[str, str]:
        async with lock:
            if time.monotonic() - last[0] >= READY_CACHE_S:
                ready, checks = await readiness(probes())
                last[:] = [time.monotonic(), ready, checks]
        _, ready, checks = last
        if not ready:
            response.status_code = 503
        return checks

    @app.get("/metrics", tags=["operators"], include_in_schema=False)
    async def metrics(request: Request) -> Response:
        token = bearer(request.headers.get("authorization"))
        if not operator_token or token is None or not hmac.compare_digest(token.encode(), operator_token.encode()):
            return api_error_response(NotFound("no such route"))
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def start_metrics_server(port: int) -> Callable[[], None] | None:
    """Serve /metrics on 127.0.0.1:``port`` in a thread; returns how to stop it, or None if the
    port is taken (another worker process of this engine serves it). The location worker's
    port is served the same way (``streams.metrics.serve_metrics``)."""
    return serve_metrics(port)
