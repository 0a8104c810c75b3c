"""Driver-facing ingest: a websocket per driver and an HTTP batch endpoint.

Both paths do the same four steps (authenticate, validate, rate-limit, produce) through
``Ingest``; only the framing differs. Nothing reaches Kafka unless every step passed, and
every refusal is counted by reason. Refusals are ``dispatch.core.errors.Refusal``s rendered
in the gateway's envelope (``dispatch.web.http.gateway_error``): the HTTP batch answers
``{"error": {...}}``, the websocket an ``{"type": "error", ...}`` frame and stays open.
Redis or the broker away is such a refusal too (503 ``unavailable`` with ``Retry-After``,
``dispatch.web.outages``): a fleet's sockets survive an outage of a few seconds.

The driver's other REST routes (``POST /v1/drivers/shift``, ``POST /v1/drivers/deliveries/
{id}/events``) live with the API in ``dispatch.api.drivers``; they authenticate through
``Ingest.authenticate`` too, so every driver-token refusal is counted in one place, and the
delivery-event route shares ``delivery_update`` with the websocket's frame. Every driver
action (shift change, delivery event, offer reply), on whichever channel, passes
``Ingest.allow_action``: one window per driver, separate from the pings'.

Each authenticated socket has a ``DriverSender`` (``dispatch.gateway.sender``): what others
send it (offers, the worker's notices) waits in a bounded queue drained by the socket's own
task, so a driver who stops reading never holds up the dispatcher; and it closes the socket
when the token expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from dispatch.core.errors import (
    CONSENT_WITHDRAWN,
    EXPIRED_TOKEN,
    MISSING_FIELD,
    NO_DISPATCHER,
    OFFER_NOT_HELD,
    OFFER_WITHDRAWN,
    RATE_LIMITED,
    REVOKED_TOKEN,
    UNAVAILABLE,
    WRONG_DRIVER,
    Refusal,
)
from dispatch.core.metrics import GATEWAY_PRODUCE_SECONDS, PINGS_ACCEPTED, PINGS_REJECTED
from dispatch.core.settings import EngineSettings
from dispatch.deliveries.reports import DriverUpdateRefused, parse_driver_update
from dispatch.gateway.pings import BOUNDS, Ping, validate_batch, validate_ping
from dispatch.gateway.sender import DriverSender, encode_frame
from dispatch.identity.auth import AuthDriver, DriverAuthenticator, TokenRejected
from dispatch.matching.dispatcher import Dispatcher
from dispatch.matching.offers import OfferEngine, OfferNotHeld
from dispatch.matching.terms import InvalidOfferReply, parse_offer_reply
from dispatch.web.failures import client_address
from dispatch.web.http import (
    SUBPROTOCOL_PREFIX,
    bearer,
    gateway_error,
    gateway_error_response,
    parse_json,
    read_body,
)
from dispatch.web.outages import OUTAGES, unavailable
from dispatch.web.ratelimit import SlidingWindowLimiter
from dispatch.web.windows import LocalWindows
from streams.producer import PingProducer, encode_pings
from streams.settings import StreamSettings

__all__ = [
    "CLOSE_AUTH_TIMEOUT",
    "CLOSE_UNAUTHORISED",
    "DRIVER_STREAM_PATH",
    "DriverStreamRoute",
    "Ingest",
    "close_refreshed",
    "close_revoked",
    "delivery_update",
    "router",
    "transport_limit",
]

log = logging.getLogger(__name__)

CLOSE_UNAUTHORISED = 4401   # token unknown, revoked or expired
CLOSE_AUTH_TIMEOUT = 4408   # no token presented in time
CLOSE_RETRY_LATER = 1013    # try again later: token checks throttled or unavailable


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


@dataclass
class Ingest:
    """Authenticate, validate, rate-limit, produce; and the per-driver limit of driver actions.

    Pings are limited per driver (``ping_rate_limit`` per ``ping_rate_window_s``): on the
    websocket by this process's own count (``dispatch.web.windows``, no Redis call per
    upload), on the HTTP batch route by the shared Redis window.
    ``actions`` counts a driver's shift changes, delivery events and offer replies together
    (``driver_action_limit`` per ``driver_action_window_s``), on whichever channel they come;
    by default a window on the same Redis as the ping limiter.
    """

    engine: EngineSettings
    streams: StreamSettings
    auth: DriverAuthenticator
    limiter: SlidingWindowLimiter
    producer: PingProducer
    actions: SlidingWindowLimiter | None = None

    def __post_init__(self) -> None:
        self.socket_pings = LocalWindows(self.engine.ping_rate_limit, self.engine.ping_rate_window_s)
        if self.actions is None:
            self.actions = SlidingWindowLimiter(self.limiter.redis, self.engine.driver_action_limit,
                                                self.engine.driver_action_window_s)

    async def authenticate(self, token: object, channel: str, client: str | None = None) -> AuthDriver:
        """The token's driver; ``client`` (the peer address) spends that address's budget of
        made-up tokens, past which it is refused 429 before any lookup."""
        try:
            return await self.auth.verify(token, client=client)
        except TokenRejected as exc:   # 401 unknown/revoked/expired_token, or 429 for a throttled address
            PINGS_REJECTED.labels(channel, exc.reason).inc()
            raise
        except OUTAGES:   # a token not in the cache needs its tenant's database
            PINGS_REJECTED.labels(channel, UNAVAILABLE).inc()
            raise unavailable() from None

    def validate(self, payload: Any, now: float, channel: str) -> list[Ping]:
        kwargs = {"now": now, "max_age_s": self.streams.location_ttl_s, "max_future_s": self.streams.max_future_s}
        try:
            if isinstance(payload, dict) and "pings" in payload:
                return validate_batch(payload["pings"], max_items=self.engine.max_batch_pings, **kwargs)
            return [validate_ping(payload, **kwargs)]
        except Refusal as exc:   # a batch lists every bad ping in ``errors``: each is counted
            for error in exc.errors if exc.errors is not None else (exc.as_dict(),):
                PINGS_REJECTED.labels(channel, error["reason"]).inc()
            raise

    async def accept(self, driver: AuthDriver, pings: list[Ping], received_at: float, channel: str) -> int:
        """Rate-limit and produce: the pings are durable in the log when this returns. Redis or
        the broker away is a 503 ``unavailable`` (nothing produced), never a dropped socket."""
        if driver.tracking_withdrawn:
            PINGS_REJECTED.labels(channel, CONSENT_WITHDRAWN).inc(len(pings))
            raise Refusal(403, CONSENT_WITHDRAWN, "you withdrew consent to location tracking: no location is "
                          "taken until you give it again (PUT /v1/drivers/consents/location_tracking)", "consent")
        for ping in pings:
            if ping.driver_id != driver.driver_id:
                PINGS_REJECTED.labels(channel, WRONG_DRIVER).inc(len(pings))
                raise Refusal(403, WRONG_DRIVER, "a driver can only report its own location", field="driver_id")
        if channel == "ws":   # the driver's socket is in this process: count here (dispatch.web.windows)
            allowed = self.socket_pings.allow(driver.driver_id, len(pings), received_at)
        else:
            try:
                allowed = await self.limiter.allow(f"driver:{driver.driver_id}:pings", len(pings))
            except OUTAGES:
                PINGS_REJECTED.labels(channel, UNAVAILABLE).inc(len(pings))
                raise unavailable() from None
        if not allowed:
            PINGS_REJECTED.labels(channel, RATE_LIMITED).inc(len(pings))
            raise Refusal(429, RATE_LIMITED,
                          f"more than {self.engine.ping_rate_limit} pings in {self.engine.ping_rate_window_s} s",
                          headers={"Retry-After": str(self.engine.ping_rate_window_s)})
        started = time.perf_counter()
        # One upload, on the driver's partition (ordering per driver), bundled with the other
        # uploads this process accepts in the same loop iteration (streams.bundles).
        try:
            await self.producer.send_upload(
                self.streams.locations_topic, driver.driver_id.encode(),
                encode_pings(pings, tenant_id=driver.tenant_id, vehicle_type=driver.vehicle_type,
                             received_at=received_at))
        except OUTAGES:
            PINGS_REJECTED.labels(channel, UNAVAILABLE).inc(len(pings))
            raise unavailable() from None
        GATEWAY_PRODUCE_SECONDS.observe(time.perf_counter() - started)
        PINGS_ACCEPTED.labels(channel).inc(len(pings))
        return len(pings)

    async def allow_action(self, driver: AuthDriver, channel: str) -> None:
        """Count one driver action (shift change, delivery event, offer reply); 429
        ``rate_limited`` with ``Retry-After`` over the limit, 503 when Redis is away."""
        assert self.actions is not None
        try:
            allowed = await self.actions.allow(f"driver:{driver.driver_id}:actions")
        except OUTAGES:
            PINGS_REJECTED.labels(channel, UNAVAILABLE).inc()
            raise unavailable() from None
        if not allowed:
            PINGS_REJECTED.labels(channel, RATE_LIMITED).inc()
            raise Refusal(429, RATE_LIMITED,
                          f"more than {self.engine.driver_action_limit} shift changes, delivery events and "
                          f"offer replies in {self.engine.driver_action_window_s} s",
                          headers={"Retry-After": str(self.engine.driver_action_window_s)})


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
        driver = await ingest.authenticate(bearer(request.headers.get("authorization")), "http",
                                           client_address(request.scope))
        payload = parse_json(await read_body(request, ingest.engine.max_body_bytes, "http"),
                             ingest.engine.max_body_bytes, "http", "body")
        if not isinstance(payload, dict) or "pings" not in payload:
            PINGS_REJECTED.labels("http", MISSING_FIELD).inc()
            raise Refusal(422, MISSING_FIELD, 'the body must be {"pings": [...]}', field="pings")
        pings = ingest.validate(payload, received_at, "http")
        accepted = await ingest.accept(driver, pings, received_at, "http")
    except Refusal as exc:   # the 429 carries its Retry-After
        return gateway_error_response(exc)
    return JSONResponse({"accepted": accepted}, status_code=202)


DRIVER_STREAM_PATH = "/v1/drivers/stream"
TRANSPORT_LIMIT_FLOOR = 1 << 20


def transport_limit(engine: EngineSettings) -> int:
    """The websocket transport's message limit (uvicorn's ``ws_max_size``): 1 MiB, or twice
    ``max_message_bytes`` when that is set above 512 KiB.

    A message over ``max_message_bytes`` but within this limit is read, refused with a
    ``too_large`` error frame, and the socket stays open. One over this limit is refused by
    the transport before the engine sees it: the socket is closed ``1009`` (message too big).
    Some limit must exist there, since the transport buffers a whole message before handing
    it over, and an unauthenticated socket (its first message is the token) can send one. At
    1 MiB a socket holds at most about 2 MiB for a message (the bytes and their decoded text),
    as before; the factor two keeps a refusal band above every allowed message limit.
    """
    return max(TRANSPORT_LIMIT_FLOOR, 2 * engine.max_message_bytes)


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
            await driver_stream(WebSocket(scope, receive, send), self.app.state, receive)
        else:
            await self.app(scope, receive, send)


async def driver_stream(ws: WebSocket, state, receive=None) -> None:
    """Pings in (``{"type": "ping", ...}`` or ``{"type": "pings", "pings": [...]}``), acks and errors out.

    The token comes in the Authorization header, as a ``bearer.<token>`` subprotocol (browsers),
    or as a first message ``{"type": "auth", "token": ...}``. Once authenticated the socket has
    a ``DriverSender`` (``dispatch.gateway.sender``): offers and worker notices are queued on
    it, replies sent inline with a timeout, and it closes the socket ``4401 expired_token``
    when the token expires (one timer, no per-frame lookup).
    """
    ingest: Ingest = state.ingest
    sockets: dict[str, set[DriverSender]] = state.driver_sockets
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
        except (TimeoutError, ValueError, KeyError, RecursionError):
            await ws.close(CLOSE_AUTH_TIMEOUT, "present a token first")
            return
        except WebSocketDisconnect:
            return
    try:
        driver = await ingest.authenticate(token, "ws", client_address(ws.scope))
    except Refusal as exc:   # 401 (close 4401); throttled or unavailable: try again later (1013)
        with contextlib.suppress(Exception):
            await ws.send_text(encode_frame({"type": "error", **gateway_error(exc)}))
            await ws.close(CLOSE_UNAUTHORISED if exc.status == 401 else CLOSE_RETRY_LATER, exc.reason)
        return
    sender = DriverSender(ws, queue_max=ingest.engine.driver_send_queue_max,
                          send_timeout_s=ingest.engine.offer_send_timeout_s, receive=receive,
                          tenant_id=driver.tenant_id, driver_id=driver.driver_id)
    sender.close_at(driver.expires_at, CLOSE_UNAUTHORISED, EXPIRED_TOKEN,
                    {"type": "error", "reason": EXPIRED_TOKEN, "message": "the token has expired; ask for a new one"})
    sockets.setdefault(driver.token_hash, set()).add(sender)
    by_driver: dict[str, set[DriverSender]] = state.driver_ids   # where offers and notices are sent
    by_driver.setdefault(driver.driver_id, set()).add(sender)
    offers: OfferEngine | None = getattr(state, "offers", None)
    notifier = getattr(state, "notifier", None)
    try:
        if notifier is not None:
            try:   # offers made by other engine processes come here
                await notifier.register(driver.driver_id)
            except OUTAGES:   # Redis away: offers made in this process still reach the socket
                log.warning("driver socket registered locally only: Redis unavailable")
        if not await sender.reply({"type": "ready", "driver_id": driver.driver_id}):
            return
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            raw = message.get("text") if message.get("text") is not None else message.get("bytes")
            await _handle_frame(sender, ingest, driver, raw, offers, getattr(state, "dispatcher", None))
    except WebSocketDisconnect:
        return
    finally:
        await sender.stop()
        mine = sockets.get(driver.token_hash)
        if mine is not None:
            mine.discard(sender)
            if not mine:
                sockets.pop(driver.token_hash, None)
        mine = by_driver.get(driver.driver_id)
        if mine is not None:
            mine.discard(sender)
            if not mine:
                by_driver.pop(driver.driver_id, None)
                if notifier is not None:
                    with contextlib.suppress(Exception):   # Redis away: the registration expires
                        await notifier.unregister(driver.driver_id)


async def _handle_frame(sender: DriverSender, ingest: Ingest, driver: AuthDriver, raw: str | bytes | None,
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
            PINGS_REJECTED.labels("ws", EXPIRED_TOKEN).inc()
            raise Refusal(401, EXPIRED_TOKEN, "the token has expired")
        if isinstance(payload, dict) and payload.get("type") in ("offer_reply", "delivery_update"):
            await ingest.allow_action(driver, "ws")
            try:
                if payload["type"] == "offer_reply":
                    reply = await _offer_reply(offers, driver, payload)
                else:
                    reply = await delivery_update(dispatcher, driver, payload)
            except OUTAGES:
                raise unavailable() from None
            await sender.reply({"seq": seq, **reply})
            return
        pings = ingest.validate(payload, received_at, "ws")
        accepted = await ingest.accept(driver, pings, received_at, "ws")
    except Refusal as exc:
        await sender.reply({"type": "error", "seq": seq, **gateway_error(exc)})
        return
    if seq is None or seq.__class__ is int:   # the hot path: one ack per upload, no encoder
        await sender.reply_text(f'{{"type":"ack","seq":{"null" if seq is None else seq},"accepted":{accepted}}}')
    else:
        await sender.reply({"type": "ack", "seq": seq, "accepted": accepted})


async def _offer_reply(offers: OfferEngine | None, driver: AuthDriver, payload: dict[str, Any]) -> dict[str, Any]:
    """``{"type": "offer_reply", "delivery_id": <uuid>, "bundle_id"?: <uuid>, "accept": <bool>}``
    -> the reply frame; a bundle's answer also carries ``bundle_id`` and ``delivery_ids``."""
    try:
        reply = parse_offer_reply(payload)
    except InvalidOfferReply as exc:
        raise Refusal(422, exc.reason, exc.message, exc.field) from None
    field = "delivery_id" if reply.delivery_id is not None else "bundle_id"
    if offers is None:
        raise Refusal(409, OFFER_NOT_HELD, "this engine makes no offers", field)
    try:
        outcome = await offers.reply(driver.driver_id, reply.delivery_id, reply.accept, bundle_id=reply.bundle_id)
    except OfferNotHeld as exc:
        raise Refusal(409, OFFER_NOT_HELD, str(exc), field) from None
    if reply.accept and outcome.status != "assigned":   # e.g. the delivery was cancelled meanwhile
        raise Refusal(409, OFFER_WITHDRAWN, outcome.reason or "the delivery can no longer be assigned", field)
    frame = {"type": "offer_reply", "delivery_id": reply.delivery_id or outcome.delivery_id,
             "status": "assigned" if reply.accept else "declined"}
    if outcome.bundle_id is not None:
        frame.update(bundle_id=outcome.bundle_id, delivery_ids=list(outcome.delivery_ids))
    return frame


async def delivery_update(dispatcher: Dispatcher | None, driver: AuthDriver, payload: Any,
                          delivery_id: str | None = None) -> dict[str, Any]:
    """A driver's pick_up / deliver / fail of their own delivery -> the reply frame (the
    websocket's ``delivery_update``) or body (``POST /v1/drivers/deliveries/{id}/events`` in
    ``dispatch.api.drivers``); refusals are gateway-shaped ``Refusal``s."""
    if dispatcher is None:
        raise Refusal(409, NO_DISPATCHER, "this engine does not dispatch deliveries")
    try:
        update = parse_driver_update(payload, delivery_id)
        state = await dispatcher.driver_update(driver.tenant_id, driver.driver_id, update)
    except DriverUpdateRefused as exc:
        raise Refusal(exc.status, exc.reason, exc.message, exc.field) from None
    return {"type": "delivery_update", "delivery_id": update.delivery_id, "status": state.value}


def close_refreshed(app_state, token_hash: str) -> None:
    """A token's driver changed (consent to tracking): close its open websockets so the app
    reconnects and is verified afresh (1013, try again)."""
    for sender in list(app_state.driver_sockets.pop(token_hash, ())):
        sender.close(CLOSE_RETRY_LATER, CONSENT_WITHDRAWN)


def close_revoked(app_state, token_hash: str) -> None:
    """Revocation from any process: close that token's open websockets (without waiting)."""
    for sender in list(app_state.driver_sockets.pop(token_hash, ())):
        sender.close(CLOSE_UNAUTHORISED, REVOKED_TOKEN)
