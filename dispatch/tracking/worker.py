"""The location worker as the engine runs it: the ``streams`` ingest app with the tracker.

``streams`` lands pings in Redis and never imports the engine; what the worker needs from
the engine (geofence arrivals, live ETAs, delivery transitions, the shared ETA calibration)
is built here, in a composition root, and handed to it as the app's batch observer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import faust
from redis.asyncio import Redis

from dispatch.core.cache import Cache
from dispatch.deliveries.transitions import PostgresTransitions
from dispatch.matching.calibration import CalibrationStore
from dispatch.tracking.tracker import Tracker
from schema.db import TenantDatabase
from schema.settings import PostgresSettings
from streams import app as ingest
from streams.settings import StreamSettings

__all__ = ["create_worker", "run_worker", "tracker_factory"]


def tracker_factory(settings: StreamSettings) -> Callable[[Redis, TenantDatabase | None], Tracker]:
    """Builds the worker's tracker from the pipeline's own Redis client and databases.

    Without Postgres (``db`` None) the tracker still writes ETAs but applies no transitions.
    """

    def build(redis: Redis, db: TenantDatabase | None) -> Tracker:
        transitions = None if db is None else PostgresTransitions(db, Cache(redis))
        return Tracker(redis, transitions, db=db,
                       pickup_radius_m=settings.geofence_pickup_m,
                       dropoff_radius_m=settings.geofence_dropoff_m,
                       calibration=CalibrationStore(redis))   # the engines' shared calibration

    return build


def create_worker(settings: StreamSettings, pg: PostgresSettings | None = None,
                  **options: Any) -> faust.App:
    """``streams.app.create_app`` with the tracker; ``options`` as there."""
    return ingest.create_app(settings, pg, observer=tracker_factory(settings), **options)


def run_worker(settings: StreamSettings | None = None, pg: PostgresSettings | None = None, *,
               loglevel: str = "info", web_port: int | None = None) -> None:
    """The foreground worker of ``wakala engine worker`` (until SIGINT/SIGTERM)."""
    settings = settings or StreamSettings.from_env()
    ingest.run_worker(settings, pg, loglevel=loglevel, web_port=web_port,
                      observer=tracker_factory(settings))
