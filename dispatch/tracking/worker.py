"""The location worker as the engine runs it: the ``streams`` ingest app with the tracker.

``streams`` lands pings in Redis and never imports the engine; what the worker needs from
the engine (geofence arrivals, live ETAs, delivery transitions, the shared ETA calibration)
is built here, in a composition root, and handed to it as the app's batch observer.

The observer is ``LandedBatch``: first it publishes the batch's drivers as Redis now holds
them for the matchers' availability replicas (``dispatch.matching.fleet_replica``: one
script call per batch, so the replicas see a landed ping within a round trip), then it runs
the tracker. A failed publish is logged and counted as ``failed`` like a tracking failure;
the replicas' periodic resync repairs what it missed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import faust
from redis.asyncio import Redis

from dispatch.core.cache import Cache
from dispatch.core.settings import EngineSettings
from dispatch.deliveries.transitions import PostgresTransitions
from dispatch.matching.calibration import CalibrationStore
from dispatch.matching.fleet_replica import AvailabilityPublisher
from dispatch.matching.keys import calibration_key
from dispatch.tracking.tracker import Tracker, TrackingOutcome
from schema.db import TenantDatabase
from schema.settings import PostgresSettings
from streams import app as ingest
from streams.records import DriverPing
from streams.settings import StreamSettings

__all__ = ["LandedBatch", "create_worker", "run_worker", "tracker_factory"]

log = logging.getLogger(__name__)


class LandedBatch:
    """The worker's batch observer: publish the availability rows, then track."""

    def __init__(self, publisher: AvailabilityPublisher, tracker: Tracker) -> None:
        self.publisher = publisher
        self.tracker = tracker

    async def on_pings(self, pings: list[DriverPing]) -> TrackingOutcome:
        published_ok = True
        try:
            await self.publisher.publish(p.driver_id for p in pings)
        except Exception as exc:  # noqa: BLE001 - Redis trouble: the replicas resync later
            published_ok = False
            log.warning("publishing %d availability row(s) failed: %s: %s", len(pings),
                        type(exc).__name__, exc)
        outcome = await self.tracker.on_pings(pings)
        if not published_ok:
            outcome.failed += 1
        return outcome


def tracker_factory(settings: StreamSettings) -> Callable[[Redis, TenantDatabase | None], LandedBatch]:
    """Builds the worker's batch observer (availability publisher and tracker) from the
    pipeline's own Redis client and databases.

    Without Postgres (``db`` None) the tracker still writes ETAs but applies no transitions.
    """

    def build(redis: Redis, db: TenantDatabase | None) -> LandedBatch:
        transitions = None if db is None else PostgresTransitions(db, Cache(redis))
        tracker = Tracker(redis, transitions, db=db,
                          pickup_radius_m=settings.geofence_pickup_m,
                          dropoff_radius_m=settings.geofence_dropoff_m,
                          # the engines' shared ETA model, learning in simulated seconds in a replay
                          calibration=CalibrationStore(redis, key=calibration_key(settings.app_id),
                                                       time_scale=EngineSettings.from_env().sim_time_scale))
        return LandedBatch(AvailabilityPublisher(redis), tracker)

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
