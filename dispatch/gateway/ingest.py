"""Driver-facing ingest: a websocket per driver and an HTTP batch endpoint.

Both paths do the same four steps (authenticate, validate, rate-limit, produce) through
``Ingest``; only the framing differs. Nothing reaches Kafka unless every step passed, and
every refusal is counted by reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from dispatch.core.metrics import GATEWAY_PRODUCE_SECONDS, PINGS_ACCEPTED, PINGS_REJECTED
from dispatch.core.settings import EngineSettings
from dispatch.gateway.pings import (
    BAD_JSON,
    BOUNDS,
    RATE_LIMITED,
    TOO_LARGE,
    UNKNOWN_TOKEN,
    WRONG_DRIVER,
    BatchRejected,
    Ping,
    PingRejected,
    validate_batch,
    validate_ping,
)
from dispatch.identity.auth import AuthDriver, DriverAuthenticator, TokenRejected
from dispatch.matching.dispatcher import Dispatcher, DriverUpdateRefused, parse_driver_update
from dispatch.matching.offers import (
    OFFER_NOT_HELD,
    InvalidOfferReply,
    OfferEngine,
    OfferNotHeld,
    parse_offer_reply,
)
from dispatch.web.ratelimit import SlidingWindowLimiter
from streams.producer import PingProducer, encode_pings
from streams.settings import StreamSettings

CLOSE_UNAUTHORISED = 4401   # token unknown, revoked or expired
CLOSE_AUTH_TIMEOUT = 4408   # no token presented in time
SUBPROTOCOL_PREFIX = "bearer."


class PingDoc(BaseModel):
    """One GPS fix (documentation of the wire format; validation is dispatch.pings)."""

    driver_id: str = Field(description="UUID of the authenticated driver; any other id is refused")
    lat: float = Field(ge=BOUNDS["lat"][0], le=BOUNDS["lat"][1])
    lng: float = Field(ge=BOUNDS["lng"][0], le=BOUNDS["lng"][1])
    accuracy: float = Field(ge=BOUNDS["accuracy"][0], le=BOUNDS["accuracy"][1], description="metres")
    speed: float = Field(ge=BOUNDS["speed"][0], le=BOUNDS["speed"][1], description="m/s")
    heading: float = Field(ge=BOUNDS["heading"][0], le=BOUNDS["heading"][1], description="degrees")
    timestamp: float = Field(description="fix time, Unix epoch seconds; at most 60 s ahead, no older than the location TTL")
    battery: float | None = Field(default=None, ge=0, le=100, description="percent")
    seq: int | None = Field(default=None, description="echoed in the websocket ack")


class PingBatchDoc(BaseModel):
    pings: list[PingDoc]


class Refused(Exception):
    def __init__(self, status: int, reason: str, message: str, field: str | None = None,
                 errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.field, self.errors = status, reason, message, field, errors

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"reason": self.reason, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        if self.errors is not None:
            error["errors"] = self.errors
        return {"error": error}


@dataclass
class Ingest:
    engine: EngineSettings
    streams: StreamSettings
    auth: DriverAuthenticator
    limiter: SlidingWindowLimiter
    producer: PingProducer

    async def authenticate(self, token: object, channel: str) -> AuthDriver:
        try:
            return await self.auth.verify(token)
        except TokenRejected as exc:
            PINGS_REJECTED.labels(channel, exc.reason).inc()
            raise Refused(401, exc.reason, exc.message) from None

    def validate(self, payload: Any, now: float, channel: str) -> list[Ping]:
        kwargs = {"now": now, "max_age_s": self.streams.location_ttl_s, "max_future_s": self.streams.max_future_s}
        try:
            if isinstance(payload, dict) and "pings" in payload:
                return validate_batch(payload["pings"], max_items=self.engine.max_batch_pings, **kwargs)
            return [validate_ping(payload, **kwargs)]
        except BatchRejected as exc:
            for error in exc.errors:
                PINGS_REJECTED.labels(channel, error.reason).inc()
            first = exc.errors[0]
            raise Refused(422, first.reason, f"{len(exc.errors)} ping(s) refused; nothing was accepted",
                          field=first.field, errors=[e.as_dict() for e in exc.errors]) from None
        except PingRejected as exc:
            PINGS_REJECTED.labels(channel, exc.reason).inc()
            raise Refused(413 if exc.reason == TOO_LARGE else 422, exc.reason, exc.message,
                          field=exc.field) from None

    async def accept(self, driver: AuthDriver, pings: list[Ping], received_at: float, channel: str) -> int:
        for ping in pings:
            if ping.driver_id != driver.driver_id:
                PINGS_REJECTED.labels(channel, WRONG_DRIVER).inc(len(pings))
                raise Refused(403, WRONG_DRIVER, "a driver can only report its own location", field="driver_id")
        if not await self.limiter.allow(f"driver:{driver.driver_id}:pings", len(pings)):
            PINGS_REJECTED.labels(channel, RATE_LIMITED).inc(len(pings))
            raise Refused(429, RATE_LIMITED,
                          f"more than {self.engine.ping_rate_limit} pings in {self.engine.ping_rate_window_s} s")
        key = driver.driver_id.encode()
        started = time.perf_counter()
        # One message per upload, keyed by driver: ordering per driver, one produce per request.
        await self.producer.send(self.streams.locations_topic, [
            (key, encode_pings(pings, tenant_id=driver.tenant_id, vehicle_type=driver.vehicle_type,
                               received_at=received_at))
        ])
        GATEWAY_PRODUCE_SECONDS.observe(time.perf_counter() - started)
        PINGS_ACCEPTED.labels(channel).inc(len(pings))
        return len(pings)


async def read_body(request: Request, limit: int, channel: str) -> bytes:
    """The request body, refused (413) from its declared length or as soon as it outgrows
    ``limit``: an oversized body is never buffered whole."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        PINGS_REJECTED.labels(channel, TOO_LARGE).inc()
        raise Refused(413, TOO_LARGE, f"body over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            PINGS_REJECTED.labels(channel, TOO_LARGE).inc()
            raise Refused(413, TOO_LARGE, f"body over {limit} bytes")
    return bytes(body)


def parse_json(raw: str | bytes | bytearray | None, limit: int, channel: str, what: str) -> Any:
    """Size limit, then JSON: the same refusal, counted the same way, on both channels."""
    if raw is None or len(raw) > limit:
        PINGS_REJECTED.labels(channel, TOO_LARGE).inc()
        raise Refused(413, TOO_LARGE, f"{what} over {limit} bytes")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):   # RecursionError: nested too deep
        PINGS_REJECTED.labels(channel, BAD_JSON).inc()
        raise Refused(400, BAD_JSON, f"the {what} is not valid JSON") from None


def bearer(value: str | None) -> str | None:
    if value and value[:7].lower() == "bearer ":
        return value[7:].strip()
    return None


router = APIRouter()


@router.post(
    "/v1/drivers/locations",
    status_code=202,
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": PingBatchDoc.model_json_schema(ref_template="#/components/schemas/{model}")}}}},
    responses={401: {"description": "unknown, revoked or expired token"},
               403: {"description": "a ping for another driver"}, 413: {"description": "body too large"},
               422: {"description": "invalid pings; every bad one is listed, none is accepted"},
               429: {"description": "over the per-driver rate limit"}},
    summary="Report a batch of the authenticated driver's GPS pings",
    tags=["drivers"],
)
async def post_locations(request: Request) -> JSONResponse:
    ingest: Ingest = request.app.state.ingest
    received_at = time.time()
    try:
        driver = await ingest.authenticate(bearer(request.headers.get("authorization")), "http")
        payload = parse_json(await read_body(request, ingest.engine.max_body_bytes, "http"),
                             ingest.engine.max_body_bytes, "http", "body")
        if not isinstance(payload, dict) or "pings" not in payload:
            PINGS_REJECTED.labels("http", "missing_field").inc()
            raise Refused(422, "missing_field", 'the body must be {"pings": [...]}', field="pings")
        pings = ingest.validate(payload, received_at, "http")
        accepted = await ingest.accept(driver, pings, received_at, "http")
    except Refused as exc:
        headers = {"Retry-After": str(ingest.engine.ping_rate_window_s)} if exc.status == 429 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)
    return JSONResponse({"accepted": accepted}, status_code=202)


class ShiftDoc(BaseModel):
    action: str = Field(description="start (available for offers) or end (offline)", pattern="^(start|end)$")


@router.post("/v1/drivers/shift", tags=["drivers"], summary="Start or end the authenticated driver's shift",
             responses={401: {"description": "unknown, revoked or expired token"},
                        422: {"description": "action is not start or end"}})
async def post_shift(request: Request, body: ShiftDoc) -> JSONResponse:
    ingest: Ingest = request.app.state.ingest
    try:
        driver = await ingest.authenticate(bearer(request.headers.get("authorization")), "http")
    except Refused as exc:
        return JSONResponse(exc.body(), status_code=exc.status)
    locations = request.app.state.locations
    if body.action == "start":
        await locations.start_shift(driver.tenant_id, driver.driver_id, driver.vehicle_type)
        dispatcher = getattr(request.app.state, "dispatcher", None)
        if dispatcher is not None:
            dispatcher.retry_soon(driver.tenant_id)   # a driver is free: waiting deliveries get a chance
    else:
        await locations.end_shift(driver.driver_id)
    return JSONResponse({"status": await locations.status(driver.driver_id)})


DRIVER_STREAM_PATH = "/v1/drivers/stream"


class DriverStreamRoute:
    """ASGI front door: the driver websocket skips FastAPI's middleware stack.

    Every frame of every driver would otherwise pass through eight wrapper layers (error,
    exception, telemetry, body-limit, exit-stack middleware and the router) on its way in and
    its ack on the way out; the ingest bench measured them as a large share of the gateway's
    CPU. Everything else goes to FastAPI untouched.
    """

    def __init__(self, app) -> None:
        self.app = app
        self.state = app.state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "websocket" and scope["path"] == DRIVER_STREAM_PATH:
            await driver_stream(WebSocket(scope, receive, send), self.app.state)
        else:
            await self.app(scope, receive, send)


async def driver_stream(ws: WebSocket, state) -> None:
    """Pings in (``{"type": "ping", ...}`` or ``{"type": "pings", "pings": [...]}``), acks and errors out.

    The token comes in the Authorization header, as a ``bearer.<token>`` subprotocol (browsers),
    or as a first message ``{"type": "auth", "token": ...}``.
    """
    ingest: Ingest = state.ingest
    sockets: dict[str, set[WebSocket]] = state.driver_sockets
    token = bearer(ws.headers.get("authorization"))
    subprotocol = None
    for proto in ws.scope.get("subprotocols", []):
        if proto.startswith(SUBPROTOCOL_PREFIX):
            token, subprotocol = proto[len(SUBPROTOCOL_PREFIX):], proto
    await ws.accept(subprotocol=subprotocol)
    if token is None:
        try:
            first = json.loads(await asyncio.wait_for(ws.receive_text(), ingest.engine.auth_timeout_s))
            token = first.get("token") if isinstance(first, dict) and first.get("type") == "auth" else None
        except (TimeoutError, ValueError, KeyError):
            await ws.close(CLOSE_AUTH_TIMEOUT, "present a token first")
            return
        except WebSocketDisconnect:
            return
    try:
        driver = await ingest.authenticate(token, "ws")
    except Refused as exc:
        await ws.send_json({"type": "error", **exc.body()["error"]})
        await ws.close(CLOSE_UNAUTHORISED, exc.reason)
        return
    sockets.setdefault(driver.token_hash, set()).add(ws)
    by_driver: dict[str, set[WebSocket]] = state.driver_ids   # where offers are sent
    by_driver.setdefault(driver.driver_id, set()).add(ws)
    offers: OfferEngine | None = getattr(state, "offers", None)
    notifier = getattr(state, "notifier", None)
    if notifier is not None:
        await notifier.register(driver.driver_id)   # offers made by other engine processes come here
    await ws.send_json({"type": "ready", "driver_id": driver.driver_id})
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            raw = message.get("text") if message.get("text") is not None else message.get("bytes")
            await _handle_frame(ws, ingest, driver, raw, offers, getattr(state, "dispatcher", None))
    except WebSocketDisconnect:
        return
    finally:
        sockets.get(driver.token_hash, set()).discard(ws)
        mine = by_driver.get(driver.driver_id)
        if mine is not None:
            mine.discard(ws)
            if not mine:
                by_driver.pop(driver.driver_id, None)
                if notifier is not None:
                    with contextlib.suppress(Exception):   # Redis away: the registration expires
                        await notifier.unregister(driver.driver_id)


async def _handle_frame(ws: WebSocket, ingest: Ingest, driver: AuthDriver, raw: str | bytes | None,
                        offers: OfferEngine | None = None, dispatcher: Dispatcher | None = None) -> None:
    received_at = time.time()
    seq = None
    try:
        payload = parse_json(raw, ingest.engine.max_message_bytes, "ws", "message")
        if isinstance(payload, dict):
            seq = payload.get("seq") if isinstance(payload.get("seq"), int) else None
            if payload.get("type") == "pings":
                payload = {"pings": payload.get("pings")}
        if driver.expires_at <= received_at:
            PINGS_REJECTED.labels("ws", "expired_token").inc()
            raise Refused(401, "expired_token", "the token has expired")
        if isinstance(payload, dict) and payload.get("type") == "offer_reply":
            await ws.send_json({"seq": seq, **await _offer_reply(offers, driver, payload)})
            return
        if isinstance(payload, dict) and payload.get("type") == "delivery_update":
            await ws.send_json({"seq": seq, **await _delivery_update(dispatcher, driver, payload)})
            return
        pings = ingest.validate(payload, received_at, "ws")
        accepted = await ingest.accept(driver, pings, received_at, "ws")
    except Refused as exc:
        await ws.send_json({"type": "error", "seq": seq, **exc.body()["error"]})
        return
    await ws.send_json({"type": "ack", "seq": seq, "accepted": accepted})


async def _offer_reply(offers: OfferEngine | None, driver: AuthDriver, payload: dict[str, Any]) -> dict[str, Any]:
    """``{"type": "offer_reply", "delivery_id": <uuid>, "accept": <bool>}`` -> the reply frame."""
    try:
        reply = parse_offer_reply(payload)
    except InvalidOfferReply as exc:
        raise Refused(422, exc.reason, exc.message, field=exc.field) from None
    if offers is None:
        raise Refused(409, OFFER_NOT_HELD, "this engine makes no offers", field="delivery_id")
    try:
        outcome = await offers.reply(driver.driver_id, reply.delivery_id, reply.accept)
    except OfferNotHeld as exc:
        raise Refused(409, OFFER_NOT_HELD, str(exc), field="delivery_id") from None
    if reply.accept and outcome.status != "assigned":   # e.g. the delivery was cancelled meanwhile
        raise Refused(409, "offer_withdrawn", outcome.reason or "the delivery can no longer be assigned",
                      field="delivery_id")
    return {"type": "offer_reply", "delivery_id": reply.delivery_id,
            "status": "assigned" if reply.accept else "declined"}


async def _delivery_update(dispatcher: Dispatcher | None, driver: AuthDriver, payload: Any,
                           delivery_id: str | None = None) -> dict[str, Any]:
    """A driver's pick_up / deliver / fail of their own delivery -> the reply frame/body."""
    if dispatcher is None:
        raise Refused(409, "no_dispatcher", "this engine does not dispatch deliveries")
    try:
        update = parse_driver_update(payload, delivery_id)
        state = await dispatcher.driver_update(driver.tenant_id, driver.driver_id, update)
    except DriverUpdateRefused as exc:
        raise Refused(exc.status, exc.reason, exc.message, field=exc.field) from None
    return {"type": "delivery_update", "delivery_id": update.delivery_id, "status": state.value}


@router.post("/v1/drivers/deliveries/{delivery_id}/events", tags=["drivers"],
             summary="The authenticated driver reports pick-up, delivery (with proof) or failure",
             responses={401: {"description": "unknown, revoked or expired token"},
                        404: {"description": "no such delivery assigned to this driver"},
                        409: {"description": "the delivery is not in a state that allows this event"},
                        422: {"description": "malformed body; the error names the field"}})
async def post_delivery_event(request: Request, delivery_id: str) -> JSONResponse:
    ingest: Ingest = request.app.state.ingest
    try:
        driver = await ingest.authenticate(bearer(request.headers.get("authorization")), "http")
        body = parse_json(await read_body(request, ingest.engine.max_body_bytes, "http"),
                          ingest.engine.max_body_bytes, "http", "body")
        reply = await _delivery_update(getattr(request.app.state, "dispatcher", None), driver, body, delivery_id)
    except Refused as exc:
        return JSONResponse(exc.body(), status_code=exc.status)
    return JSONResponse(reply)


def close_revoked(app_state, token_hash: str) -> None:
    """Revocation from any process: close that token's open websockets."""
    for ws in list(app_state.driver_sockets.pop(token_hash, ())):
        asyncio.get_running_loop().create_task(ws.close(CLOSE_UNAUTHORISED, "revoked_token"))


__all__ = ["Ingest", "router", "close_revoked", "UNKNOWN_TOKEN"]
