"""``/v1/trackers/osmand``: Traccar Client and OsmAnd-protocol trackers as driver apps.

One fix per request, in the shapes those clients send (``dispatch.gateway.osmand``): the
query string (GET, or POST with an empty body as Traccar Client sends it), a form body, or
Traccar Client 9's JSON. The device identifier is a tracker key
(``dispatch.identity.trackers``); the fix then goes the websocket pings' way: the same
validation, the driver's rate limit, the locations topic and the worker
(``Ingest.validate``/``Ingest.accept``, channel ``osmand`` in the gateway's metrics).

Answers: 200 ``{"accepted": 1}``; a refusal in the gateway's envelope naming the field as the
tracker named it (401 for a missing, unknown or revoked key, 422 for a bad value, 413 past the
body limit, 429 past the rate limit). One exception: a fix older than the location TTL
(``stale_timestamp``) is answered 200 ``{"accepted": 0, "reason": "stale_timestamp"}`` and not
stored. Trackers buffer fixes while offline and resend them one by one; a 4xx would keep the
oldest at the head of their queue forever, while a position that old is no longer live for
matching anyway. It is counted as refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from dispatch.core.errors import BAD_JSON, STALE_TIMESTAMP, TOO_MANY, Refusal
from dispatch.core.metrics import PINGS_REJECTED
from dispatch.gateway.ingest import Ingest
from dispatch.gateway.osmand import TrackerFix, from_json, from_params, rename_field
from dispatch.identity.auth import TokenRejected
from dispatch.identity.trackers import TrackerAuthenticator
from dispatch.web.failures import client_address
from dispatch.web.http import gateway_error_response, parse_json, read_body
from dispatch.web.outages import OUTAGES, unavailable

__all__ = ["CHANNEL", "OSMAND_PATH", "router"]

OSMAND_PATH = "/v1/trackers/osmand"
CHANNEL = "osmand"
MAX_FIELDS = 64                 # parameters in one query or form: a tracker sends a dozen

router = APIRouter()
T = TypeVar("T")


def _params(pairs: list[tuple[str, str]]) -> dict[str, str]:
    if len(pairs) > MAX_FIELDS:
        raise Refusal(413, TOO_MANY, f"more than {MAX_FIELDS} parameters in one fix", None)
    out: dict[str, str] = {}
    for name, value in pairs:
        out.setdefault(name, value)   # the first value of a repeated name, as trackers mean it
    return out


def _counted(read: Callable[[Any], T], value: Any) -> T:
    try:
        return read(value)
    except Refusal as exc:   # (the body reader and JSON parser count their own refusals)
        PINGS_REJECTED.labels(CHANNEL, exc.reason).inc()
        raise


async def _fix(request: Request, ingest: Ingest) -> TrackerFix:
    query = _counted(_params, list(request.query_params.multi_items()))
    raw = await read_body(request, ingest.engine.max_body_bytes, CHANNEL)
    if "id" in query or "deviceid" in query or not raw.strip():
        return _counted(from_params, query)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/x-www-form-urlencoded":
        try:
            text = raw.decode("utf-8")
            pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_FIELDS,
                              errors="strict")
        except (UnicodeDecodeError, ValueError):
            PINGS_REJECTED.labels(CHANNEL, BAD_JSON).inc()
            raise Refusal(400, BAD_JSON, f"the form body is not UTF-8 or has more than {MAX_FIELDS} fields",
                          "body") from None
        return _counted(from_params, {**_counted(_params, pairs), **query})
    return _counted(from_json, parse_json(raw, ingest.engine.max_body_bytes, CHANNEL, "body"))


_DOC = {
    "tags": ["drivers"],
    "summary": "One GPS fix from Traccar Client or an OsmAnd-protocol tracker (query, form or JSON)",
    "responses": {200: {"description": "accepted (or, for a fix older than the location TTL, not stored)"},
                  401: {"description": "missing, unknown or revoked tracker key"},
                  413: {"description": "body or parameter list too large"},
                  422: {"description": "a bad value; the error names the tracker's field"},
                  429: {"description": "over the driver's rate limit (Retry-After)"}},
}


@router.get(OSMAND_PATH, operation_id="tracker_fix_get", **_DOC)
@router.post(OSMAND_PATH, operation_id="tracker_fix_post", **_DOC)
async def osmand(request: Request) -> JSONResponse:
    ingest: Ingest = request.app.state.ingest
    trackers: TrackerAuthenticator = request.app.state.trackers
    received_at = time.time()
    try:
        fix = await _fix(request, ingest)
        try:
            driver = await trackers.verify(fix.key, client=client_address(request.scope))
        except TokenRejected as exc:
            PINGS_REJECTED.labels(CHANNEL, exc.reason).inc()
            raise Refusal(exc.status, exc.reason, exc.message, fix.names["driver_id"],
                          headers=exc.headers) from None
        except OUTAGES:
            raise unavailable() from None
        try:
            pings = ingest.validate({**fix.ping, "driver_id": driver.driver_id}, received_at, CHANNEL)
        except Refusal as exc:
            if exc.reason == STALE_TIMESTAMP:
                return JSONResponse({"accepted": 0, "reason": STALE_TIMESTAMP, "message": exc.message})
            raise rename_field(exc, fix.names) from None
        accepted = await ingest.accept(driver, pings, received_at, CHANNEL)
    except Refusal as exc:
        return gateway_error_response(exc)
    return JSONResponse({"accepted": accepted})

