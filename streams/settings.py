"""Settings of the location pipeline (gateway, broker, agent, Redis) from WAKALA_* variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from schema.settings import env_int as _int
from schema.settings import env_number as _num


@dataclass(frozen=True)
class StreamSettings:
    kafka_bootstrap: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    locations_topic: str = "driver-locations"
    dead_letters_topic: str = "dead-letters"
    delivery_events_topic: str = "delivery-events"
    order_events_topic: str = "order-events"
    locations_partitions: int = 4
    location_ttl_s: float = 30.0          # driver:location:{id} expiry; silent drivers vanish
    h3_resolution: int = 9                # availability index cells (~0.1 km² at res 9)
    max_speed_kmh: float = 250.0          # a jump implying more than this is rejected
    max_future_s: float = 60.0            # pings stamped further ahead than this are refused
    pg_write_interval_s: float = 10.0     # at most one drivers.current_location write per driver
    batch_size: int = 1000                # agent: events per batch (stream.take)
    batch_within_s: float = 0.005         # agent: max wait to fill a batch
    fetch_max_wait_ms: int = 10           # agent: broker fetch wait (tansu holds every fetch this long)
    producer_linger_ms: float = 1.0       # gateway: aiokafka's linger before a produce request
    bundle_wait_ms: float = 20.0          # gateway, when busy: at most one bundle flush per interval
    app_id: str = "wakala"                # faust app id (consumer group)
    geofence_pickup_m: float = 75.0       # tracker: a driver this close to the pickup has arrived
    geofence_dropoff_m: float = 75.0      # tracker: ... and to the dropoff
    metrics_port: int = 0                 # worker: /metrics on 127.0.0.1 (0 = not served)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StreamSettings:
        env = os.environ if env is None else env
        return cls(
            kafka_bootstrap=env.get("WAKALA_KAFKA_BOOTSTRAP") or cls.kafka_bootstrap,
            redis_url=env.get("WAKALA_REDIS_URL") or cls.redis_url,
            locations_topic=env.get("WAKALA_LOCATIONS_TOPIC") or cls.locations_topic,
            dead_letters_topic=env.get("WAKALA_DEAD_LETTERS_TOPIC") or cls.dead_letters_topic,
            delivery_events_topic=env.get("WAKALA_DELIVERY_EVENTS_TOPIC") or cls.delivery_events_topic,
            order_events_topic=env.get("WAKALA_ORDER_EVENTS_TOPIC") or cls.order_events_topic,
            locations_partitions=int(_num(env, "WAKALA_LOCATIONS_PARTITIONS", 4, 1, 1024)),
            location_ttl_s=_num(env, "WAKALA_LOCATION_TTL_S", 30.0, 0.5, 3600),
            h3_resolution=int(_num(env, "WAKALA_H3_RESOLUTION", 9, 0, 15)),
            max_speed_kmh=_num(env, "WAKALA_MAX_SPEED_KMH", 250.0, 1, 2000),
            max_future_s=_num(env, "WAKALA_MAX_FUTURE_S", 60.0, 0, 3600),
            pg_write_interval_s=_num(env, "WAKALA_PG_LOCATION_INTERVAL_S", 10.0, 0, 3600),
            batch_size=int(_num(env, "WAKALA_AGENT_BATCH", 1000, 1, 100_000)),
            batch_within_s=_num(env, "WAKALA_AGENT_BATCH_WITHIN_S", 0.005, 0.001, 10),
            fetch_max_wait_ms=int(_num(env, "WAKALA_FETCH_MAX_WAIT_MS", 10, 1, 10_000)),
            producer_linger_ms=_num(env, "WAKALA_PRODUCER_LINGER_MS", 1.0, 0, 1_000),
            bundle_wait_ms=_num(env, "WAKALA_BUNDLE_WAIT_MS", 20.0, 0, 1_000),
            app_id=env.get("WAKALA_APP_ID") or cls.app_id,
            geofence_pickup_m=_num(env, "WAKALA_GEOFENCE_PICKUP_M", 75.0, 5, 5000),
            geofence_dropoff_m=_num(env, "WAKALA_GEOFENCE_DROPOFF_M", 75.0, 5, 5000),
            metrics_port=_int(env, "WAKALA_WORKER_METRICS_PORT", 0, 0, 65535),
        )
