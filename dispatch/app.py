"""The engine's ASGI app: one HTTP port for the driver gateway, the REST API and tracking.

FastAPI on uvicorn, with uvicorn's websocket protocol provided by the ``websockets``
library (``ws="websockets"``). See README, "Why FastAPI + uvicorn".

Routes are registered gateway first (``POST /v1/drivers/locations``), then the tracking and
vendor pages (not in the OpenAPI document), then the REST API (``dispatch.api``, drivers'
routes first), then the operators' probes: the OpenAPI document lists them in that order.
The websockets (driver stream, tracking, vendor screen) are answered in front of FastAPI by
``DriverStreamRoute`` and ``HubRoute``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import redis.asyncio as aioredis
import uvicorn
from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dispatch.api import install as install_api
from dispatch.commerce.catalogue.views import run_view_refresher
from dispatch.commerce.orders.expiry import run_reservation_sweeper
from dispatch.core.cache import Cache
from dispatch.core.settings import EngineSettings
from dispatch.deliveries.outbox import OutboxRelay
from dispatch.deliveries.transitions import PostgresTransitions
from dispatch.gateway.ingest import DriverStreamRoute, Ingest, close_revoked
from dispatch.gateway.ingest import router as ingest_router
from dispatch.identity.auth import DriverAuthenticator
from dispatch.identity.users import UserAuthenticator
from dispatch.matching.calibration import CalibrationStore
from dispatch.matching.claims import DriverClaims
from dispatch.matching.dispatcher import Dispatcher
from dispatch.matching.notify import RoutedNotifier
from dispatch.matching.offers import OfferEngine, WebsocketNotifier
from dispatch.tracking.hub import TrackingHub
from dispatch.tracking.pages.tracking import router as tracking_page_router
from dispatch.tracking.pages.vendor import router as vendor_page_router
from dispatch.tracking.sockets import HubRoute
from dispatch.web.ratelimit import SlidingWindowLimiter
from schema.db import TenantDatabase
from schema.settings import PostgresSettings
from schema.tenants import list_tenants
from streams.location_store import LocationStore
from streams.producer import PingProducer
from streams.settings import StreamSettings

log = logging.getLogger(__name__)


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


def create_app(engine: EngineSettings | None = None, streams: StreamSettings | None = None,
               pg: PostgresSettings | None = None) -> HubRoute:
    engine = engine or EngineSettings.from_env()
    streams = streams or StreamSettings.from_env()
    pg = pg or PostgresSettings.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Tens of thousands of long-lived websocket objects make every full collection scan a
        # huge heap; profiles of the ingest bench showed the collector in a third of the
        # gateway's time. Collect young objects as usual, old ones rarely.
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        # Blocking pool: a burst of requests waits for a connection instead of failing.
        redis = aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
            streams.redis_url, max_connections=64, timeout=10))
        db = TenantDatabase(pg)
        producer = PingProducer(streams)
        auth = DriverAuthenticator(db, redis, cache_ttl_s=engine.token_cache_s)
        await db.start()
        await producer.start()
        await auth.start()
        app.state.redis, app.state.db = redis, db
        app.state.driver_sockets = {}
        auth.on_revoked(lambda token_hash: close_revoked(app.state, token_hash))
        app.state.ingest = Ingest(engine, streams, auth,
                                  SlidingWindowLimiter(redis, engine.ping_rate_limit, engine.ping_rate_window_s),
                                  producer)
        app.state.locations = LocationStore(redis, streams)
        app.state.driver_ids = {}
        app.state.cache = cache = Cache(redis)
        notifier = RoutedNotifier(redis, WebsocketNotifier(app.state), app_id=streams.app_id)
        await notifier.start()
        app.state.notifier = notifier
        app.state.offers = OfferEngine(
            DriverClaims(redis, offer_ttl_s=engine.offer_timeout_s), notifier, redis,
            transitions=PostgresTransitions(db, cache), app_id=streams.app_id,
            offer_timeout_s=engine.offer_timeout_s, max_attempts=engine.offer_max_attempts)
        app.state.dispatcher = Dispatcher(
            db, redis, app.state.locations, app.state.offers, mode=engine.matching_mode,
            window_s=engine.batch_window_ms / 1000, retry_interval_s=engine.retry_interval_s, cache=cache,
            calibration=CalibrationStore(redis, time_scale=engine.sim_time_scale))
        # The REST API (dispatch.api): users' tokens, per-caller limits, the cache.
        users = UserAuthenticator(db, redis, cache_ttl_s=engine.token_cache_s)
        await users.start()
        app.state.engine, app.state.users = engine, users
        app.state.api_limiter = SlidingWindowLimiter(redis, engine.api_rate_limit, engine.api_rate_window_s)
        # The tracking hub (dispatch.tracking.hub): this process's tracking pages and vendor screens.
        app.state.hub = hub = TrackingHub.from_settings(redis, db, engine, streams)
        await hub.start()
        users.on_revoked(hub.close_token)

        async def active_tenants() -> list:
            return [t.id for t in await list_tenants(pg) if t.status == "active"]

        tasks = [asyncio.create_task(app.state.offers.run_sweeper(), name="offer-sweeper")]
        if engine.dispatcher:
            for topic in (streams.delivery_events_topic, streams.order_events_topic):
                await producer.ensure_topic(topic, streams.locations_partitions)
            relay = OutboxRelay(db, producer.kafka, streams.delivery_events_topic)
            order_relay = OutboxRelay(db, producer.kafka, streams.order_events_topic, table="order_events_outbox")
            tasks += [
                asyncio.create_task(_forever(relay.run, pg), name="outbox-relay"),
                asyncio.create_task(_forever(order_relay.run, pg), name="order-outbox-relay"),
                asyncio.create_task(_forever(run_reservation_sweeper, db, active_tenants,
                                             engine.reservation_sweep_s, cache=cache), name="reservation-sweeper"),
                asyncio.create_task(_forever(run_view_refresher, db, cache, active_tenants,
                                             engine.view_refresh_s), name="view-refresher"),
                asyncio.create_task(_forever(app.state.dispatcher.run, streams.kafka_bootstrap,
                                             streams.delivery_events_topic, f"{streams.app_id}-dispatcher"),
                                    name="dispatcher"),
            ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await hub.stop()
            await users.stop()
            await notifier.stop()
            await auth.stop()
            await producer.stop()
            await db.close()
            await redis.aclose()

    app = FastAPI(title="Wakala dispatch engine", version="0.1.0", lifespan=lifespan,
                  description="Streaming geospatial dispatch and tracking for last-mile commerce.")
    app.include_router(ingest_router)
    app.include_router(tracking_page_router)
    app.include_router(vendor_page_router)
    install_api(app)

    @app.get("/healthz", tags=["operators"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operators"])
    async def readyz(response: Response) -> dict[str, str]:
        checks = {}
        try:
            await app.state.redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:  # readiness reports, it does not raise
            checks["redis"] = f"down: {exc.__class__.__name__}"
        try:
            await app.state.db.start()
            checks["postgres"] = "ok"
        except Exception as exc:
            checks["postgres"] = f"down: {exc.__class__.__name__}"
        if any(v != "ok" for v in checks.values()):
            response.status_code = 503
        return checks

    @app.get("/metrics", tags=["operators"], include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return HubRoute(DriverStreamRoute(app))


def uvicorn_config(app: FastAPI | str, engine: EngineSettings, **overrides) -> uvicorn.Config:
    options = dict(
        host=engine.host, port=engine.port, ws="websockets-sansio", http="httptools", loop="uvloop",
        ws_max_size=1 << 20, ws_ping_interval=engine.ws_ping_interval_s,
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
                                    "lifespan")})
    else:
        uvicorn.Server(uvicorn_config(create_app(engine), engine)).run()
