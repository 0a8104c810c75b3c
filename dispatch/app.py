"""The engine's ASGI app: one HTTP port for the driver gateway, the REST API and tracking.

FastAPI on uvicorn, with uvicorn's websocket protocol provided by the ``websockets``
library (``ws="websockets"``). See README, "Why FastAPI + uvicorn".

Routes are registered gateway first (``POST /v1/drivers/locations``), then the tracking and
vendor pages (not in the OpenAPI document), then the REST API (``dispatch.api``, drivers'
routes first), then the operators' probes: the OpenAPI document lists them in that order.
The websockets (driver stream, tracking, vendor screen) are answered in front of FastAPI by
``DriverStreamRoute`` and ``HubRoute``. In front of everything, ``EdgeLimits`` enforces the
request-target, header and body limits before any route parses anything, and turns an
exception that escapes every handler into a 500/503 answer (``dispatch.web.limits``);
uvicorn runs our bounded protocol classes (``dispatch.web.protocols``) so that an oversized
request head is answered even when it never reaches the app. Outages answer 503 with
``Retry-After`` (``dispatch.web.outages``). The operators' endpoints are guarded
(``dispatch.web.operators``): ``/metrics`` on the public port only with the operator token,
or on the operator port; the API documents only with ``WAKALA_API_DOCS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import redis.asyncio as aioredis
import uvicorn
from fastapi import FastAPI

from dispatch.api import install as install_api
from dispatch.api.proofs import router as proofs_router
from dispatch.api.whatsapp import router as whatsapp_router
from dispatch.commerce.catalogue.views import active_tenant_ids, run_view_refresher
from dispatch.commerce.orders.expiry import run_reservation_sweeper
from dispatch.core.cache import Cache
from dispatch.core.metrics import watch_pools
from dispatch.core.settings import EngineSettings
from dispatch.deliveries.outbox import OutboxRelay
from dispatch.deliveries.transitions import PostgresTransitions
from dispatch.gateway.ingest import (
    DriverStreamRoute,
    Ingest,
    close_refreshed,
    close_revoked,
    transport_limit,
)
from dispatch.gateway.ingest import router as ingest_router
from dispatch.gateway.notices import DriverNotices
from dispatch.gateway.trackers import router as trackers_router
from dispatch.identity.auth import DriverAuthenticator
from dispatch.identity.trackers import TrackerAuthenticator
from dispatch.identity.users import UserAuthenticator
from dispatch.matching.calibration import CalibrationStore
from dispatch.matching.claims import DriverClaims
from dispatch.matching.dispatcher import Dispatcher
from dispatch.matching.fleet_replica import FleetReplica
from dispatch.matching.keys import calibration_key
from dispatch.matching.notify import RoutedNotifier
from dispatch.matching.offers import OfferEngine, WebsocketNotifier
from dispatch.matching.recovery import watch_redis
from dispatch.messaging.channel import OFF_MESSAGE as WHATSAPP_OFF
from dispatch.messaging.channel import build_channel
from dispatch.ops.maintenance import run_maintenance
from dispatch.tracking.hub import TrackingHub
from dispatch.tracking.pages.tracking import router as tracking_page_router
from dispatch.tracking.pages.vendor import router as vendor_page_router
from dispatch.tracking.sockets import HubRoute
from dispatch.web.failures import FailureLimiter
from dispatch.web.limits import MAX_HEADER_BYTES, EdgeLimits
from dispatch.web.operators import docs_urls, install_operator_routes, start_metrics_server
from dispatch.web.outages import install_failure_handlers
from dispatch.web.protocols import HTTP_PROTOCOL, WS_PROTOCOL
from dispatch.web.ratelimit import SlidingWindowLimiter
from schema.backups.settings import BackupSettings
from schema.db import TenantDatabase
from schema.retention.policies import RetentionSettings
from schema.settings import PostgresSettings
from streams.location_store import LocationStore
from streams.producer import PingProducer
from streams.settings import StreamSettings

log = logging.getLogger(__name__)

STOP_STEP_S = 5.0   # each step of the shutdown (see _bounded)


async def _forever(run: Callable[..., Awaitable[None]], *args: object, **kwargs: object) -> None:
    """Run a background loop of the engine; if it fails (a service restarting), start it again."""
    while True:
        try:
            await run(*args, **kwargs)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s stopped; restarting in 2 s", getattr(run, "__qualname__", run))
            await asyncio.sleep(2)


async def _bounded(name: str, step: Awaitable[object], timeout_s: float = STOP_STEP_S) -> None:
    """One step of the engine's shutdown, given ``timeout_s``: a step that hangs (a task that
    does not take its cancellation, a service that stopped answering) is logged by name and
    abandoned, so a SIGTERM always ends the process instead of waiting on it forever."""
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        task.cancel()   # not awaited: a step that ignores cancellation must not hold the stop
        log.error("stopping the engine: %s did not stop within %.0f s; abandoned", name, timeout_s)
    elif not task.cancelled() and task.exception() is not None:
        log.warning("stopping the engine: %s failed (%r)", name, task.exception())


def create_app(engine: EngineSettings | None = None, streams: StreamSettings | None = None,
               pg: PostgresSettings | None = None) -> EdgeLimits:
    engine = engine or EngineSettings.from_env()
    streams = streams or StreamSettings.from_env()
    pg = pg or PostgresSettings.from_env()
    retention_settings = RetentionSettings.from_env()   # a bad WAKALA_RETENTION_* fails at start
    backup_settings = BackupSettings.from_env()         # and so does a malformed backup key

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Tens of thousands of long-lived websocket objects make every full collection scan a
        # huge heap; profiles of the ingest bench showed the collector in a third of the
        # gateway's time. Collect young objects as usual, old ones rarely.
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        # Blocking pool: a burst of requests waits for a connection instead of failing.
        redis = aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
            streams.redis_url, max_connections=64, timeout=10,
            # A Redis that stops answering (not refusing) must not hang requests: 503 instead.
            socket_connect_timeout=2, socket_timeout=5))
        db = TenantDatabase(pg)
        producer = PingProducer(streams)
        auth = DriverAuthenticator.from_settings(db, redis, engine, failures)
        trackers = TrackerAuthenticator.from_settings(db, redis, engine, failures)
        await db.start()
        watch_pools(db)
        await producer.start()
        await auth.start()
        await trackers.start()
        app.state.trackers = trackers
        app.state.redis, app.state.db, app.state.producer = redis, db, producer
        app.state.driver_sockets = {}
        auth.on_revoked(lambda token_hash: close_revoked(app.state, token_hash))
        auth.on_refreshed(lambda token_hash: close_refreshed(app.state, token_hash))
        app.state.ingest = Ingest(engine, streams, auth,
                                  SlidingWindowLimiter(redis, engine.ping_rate_limit, engine.ping_rate_window_s),
                                  producer)
        app.state.locations = LocationStore(redis, streams)
        app.state.driver_ids = {}
        # Pings the location worker refused after the gateway's ack, told to the driver's socket.
        app.state.driver_notices = notices = DriverNotices(redis, app.state.driver_ids)
        await notices.start()
        app.state.cache = cache = Cache(redis)
        notifier = RoutedNotifier(redis, WebsocketNotifier(app.state), app_id=streams.app_id)
        await notifier.start()
        app.state.notifier = notifier
        app.state.offers = OfferEngine(
            DriverClaims(redis, offer_ttl_s=engine.offer_timeout_s, capacity=engine.driver_capacity), notifier,
            redis, transitions=PostgresTransitions(db, cache, capacity=engine.driver_capacity), app_id=streams.app_id,
            offer_timeout_s=engine.offer_timeout_s, max_attempts=engine.offer_max_attempts)
        app.state.dispatcher = Dispatcher(
            db, redis, app.state.locations, app.state.offers, mode=engine.matching_mode,
            window_s=engine.batch_window_ms / 1000, retry_interval_s=engine.retry_interval_s, cache=cache,
            bundle_max_hold_s=engine.bundle_max_hold_ms / 1000,
            calibration=CalibrationStore(redis, key=calibration_key(streams.app_id), time_scale=engine.sim_time_scale),
            replica=FleetReplica(redis, streams))   # nearest drivers from memory (fleet_replica)
        # The REST API (dispatch.api): users' tokens, per-caller limits, the cache.
        users = UserAuthenticator.from_settings(db, redis, engine, failures)
        await users.start()
        app.state.engine, app.state.users = engine, users
        app.state.api_limiter = SlidingWindowLimiter(redis, engine.api_rate_limit, engine.api_rate_window_s)
        # The tracking hub (dispatch.tracking.hub): this process's tracking pages and vendor screens.
        app.state.hub = hub = TrackingHub.from_settings(redis, db, engine, streams)
        await hub.start()
        users.on_revoked(hub.close_token)

        active_tenants = active_tenant_ids(db)

        tasks = [asyncio.create_task(app.state.offers.run_sweeper(), name="offer-sweeper"),
                 # A tenant moving between shards: paused, then routed to its new shard at once.
                 asyncio.create_task(db.watch_placements(), name="placement-watcher")]
        if engine.dispatcher:
            for topic in (streams.delivery_events_topic, streams.order_events_topic):
                await producer.ensure_topic(topic, streams.locations_partitions)
            relay = OutboxRelay(db, producer.kafka, streams.delivery_events_topic,
                                bootstrap=streams.kafka_bootstrap, partitions=streams.locations_partitions)
            order_relay = OutboxRelay(db, producer.kafka, streams.order_events_topic, table="order_events_outbox",
                                      bootstrap=streams.kafka_bootstrap, partitions=streams.locations_partitions)
            tasks += [
                asyncio.create_task(_forever(relay.run, pg), name="outbox-relay"),
                asyncio.create_task(_forever(order_relay.run, pg), name="order-outbox-relay"),
                asyncio.create_task(_forever(run_reservation_sweeper, db, active_tenants,
                                             engine.reservation_sweep_s, cache=cache), name="reservation-sweeper"),
                asyncio.create_task(_forever(run_view_refresher, db, cache, active_tenants,
                                             engine.view_refresh_s), name="view-refresher"),
                # Analytics partitions ahead, retention, due backups, moved tenants' old schemas.
                asyncio.create_task(_forever(run_maintenance, pg, interval_s=retention_settings.round_s,
                                             retention=retention_settings.enabled,
                                             backups=backup_settings if backup_settings.scheduled else None,
                                             retention_settings=retention_settings, streams=streams,
                                             sample_s=engine.ops_sample_s), name="maintenance"),
                asyncio.create_task(_forever(app.state.dispatcher.run, streams.kafka_bootstrap,
                                             streams.delivery_events_topic, f"{streams.app_id}-dispatcher",
                                             partitions=streams.locations_partitions), name="dispatcher"),
                # Redis restarted empty: driver status, claims and tracked deliveries rebuilt from
                # PostgreSQL, and the rebuilt tenants' pending deliveries matched again at once.
                asyncio.create_task(_forever(watch_redis, db, redis, app.state.offers.claims, app_id=streams.app_id,
                                             on_rebuilt=lambda done: [app.state.dispatcher.retry_soon(t)
                                                                      for t in done.tenants]),
                                    name="redis-recovery"),
            ]
        # WhatsApp notifications (dispatch/messaging/channel.py): planned from the event topics
        # and sent by the processes that dispatch; off without the Cloud API's credentials.
        whatsapp = build_channel(engine, streams, db) if engine.whatsapp_enabled and engine.dispatcher else None
        if not engine.whatsapp_enabled:
            log.warning(WHATSAPP_OFF)   # warning: the level an engine shows by default
        elif whatsapp is not None:
            tasks += [asyncio.create_task(_forever(whatsapp.notifier.run), name="whatsapp-notifier"),
                      asyncio.create_task(_forever(whatsapp.sender.run), name="whatsapp-sender")]
        stop_metrics = start_metrics_server(engine.metrics_port) if engine.metrics_port else None
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await _bounded("background tasks", asyncio.gather(*tasks, return_exceptions=True))
            if whatsapp is not None:
                await _bounded("whatsapp client", whatsapp.close())
            for name, stop in (("driver notices", notices.stop), ("tracking hub", hub.stop),
                               ("user tokens", users.stop), ("offer notifier", notifier.stop),
                               ("driver tokens", auth.stop), ("tracker keys", trackers.stop),
                               ("producer", producer.stop),
                               ("database pools", db.close), ("redis", redis.aclose)):
                await _bounded(name, stop())
            if stop_metrics is not None:
                await _bounded("metrics server", asyncio.to_thread(stop_metrics))

    # One budget of made-up tokens per client address, shared by drivers' and users' tokens and
    # checked again at the edge (EdgeLimits) before a throttled request reaches a route.
    failures = FailureLimiter(engine.auth_failure_limit, engine.auth_failure_window_s)
    app = FastAPI(title="Wakala dispatch engine", version="0.1.0", lifespan=lifespan,
                  description="Streaming geospatial dispatch and tracking for last-mile commerce.",
                  **docs_urls(engine.api_docs))
    app.include_router(ingest_router)
    app.include_router(trackers_router)
    app.include_router(tracking_page_router.for_settings(engine))   # a bad WAKALA_BASEMAP_* fails at start
    app.include_router(vendor_page_router)
    app.include_router(whatsapp_router)
    app.include_router(proofs_router)   # proof of delivery: drivers, customers, vendors, admins
    install_api(app)
    install_failure_handlers(app)

    def probes() -> dict:
        state = app.state
        return {"postgres": state.db.ping,
                "redis": state.redis.ping,
                "broker": lambda: state.producer.kafka.client.fetch_all_metadata()}

    install_operator_routes(app, probes, engine.operator_token)
    return EdgeLimits(HubRoute(DriverStreamRoute(app)), max_body_bytes=engine.max_body_bytes,
                      max_url_bytes=engine.max_url_bytes, failures=failures)


def uvicorn_config(app: FastAPI | str, engine: EngineSettings, **overrides) -> uvicorn.Config:
    options = dict(
        host=engine.host, port=engine.port, ws=WS_PROTOCOL, http=HTTP_PROTOCOL, loop="uvloop",
        # Only used if a caller overrides http="h11": the same bound on a request head.
        h11_max_incomplete_event_size=engine.max_url_bytes + MAX_HEADER_BYTES,
        ws_max_size=transport_limit(engine), ws_ping_interval=engine.ws_ping_interval_s,
        ws_ping_timeout=engine.ws_ping_interval_s, ws_per_message_deflate=engine.ws_compression,
        log_level="warning", backlog=8192,   # a city's drivers reconnecting at once after an outage
        access_log=False, lifespan="on",
    )
    options.update(overrides)
    return uvicorn.Config(app, **options)


def run_gateway(engine: EngineSettings, workers: int = 1) -> None:
    """Serve in the foreground. With workers > 1, several processes share the port, each with
    its own producer and token cache (settings come from the environment in each)."""
    if workers > 1:
        options = uvicorn_config("dispatch.app:create_app", engine).__dict__
        uvicorn.run("dispatch.app:create_app", factory=True, workers=workers, **{
            k: options[k] for k in ("host", "port", "ws", "http", "loop", "ws_max_size", "ws_ping_interval",
                                    "ws_ping_timeout", "ws_per_message_deflate", "log_level", "access_log", "backlog",
                                    "lifespan", "h11_max_incomplete_event_size")})
    else:
        uvicorn.Server(uvicorn_config(create_app(engine), engine)).run()
