"""Engine (HTTP/websocket) settings from WAKALA_* variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from schema.errors import ConfigError
from schema.settings import env_int as _int
from schema.settings import env_number as _num


@dataclass(frozen=True)
class EngineSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    ping_rate_limit: int = 60            # pings per driver per window
    ping_rate_window_s: int = 10
    max_message_bytes: int = 16 * 1024   # one websocket message (error frame beyond, connection kept)
    max_body_bytes: int = 256 * 1024     # one HTTP request body (413 beyond)
    max_batch_pings: int = 500
    auth_timeout_s: int = 10             # websocket: time to present a token
    token_cache_s: int = 60
    ws_compression: bool = False         # permessage-deflate: see README ("Websocket compression")
    ws_ping_interval_s: int = 20         # server keepalive pings find dead connections
    offer_timeout_s: int = 20            # a driver's time to accept an offer
    offer_max_attempts: int = 5          # offers per round before the delivery is unassigned
    dispatcher: bool = True              # match new deliveries in this process (WAKALA_DISPATCHER=0: gateway only)
    matching_mode: str = "greedy"        # greedy (each delivery at once) or batch (solved per window)
    batch_window_ms: int = 2000          # batch mode: how long deliveries gather before a solve
    retry_interval_s: int = 10           # backstop retry of unassigned deliveries
    api_rate_limit: int = 120            # REST requests per caller per window
    api_rate_window_s: int = 60
    payment_webhook_secret: str = ""     # HMAC key of the payment gateway's callbacks ("" = refuse them)
    reservation_sweep_s: int = 30        # how often expired stock reservations are released
    view_refresh_s: int = 900            # materialized views refreshed and popular products warmed
    tracking_link_grace_s: int = 3600    # a tracking link outlives its delivery's end by this much
    hub_queue_max: int = 32              # frames (not positions) waiting for one watcher before 4408 too_slow
    hub_heartbeat_s: int = 15            # heartbeat frames to every watcher and vendor screen
    hub_stall_s: int = 30                # one frame's send blocked this long: 4408 too_slow
    # Replays only (`wakala loadtest replay --speed 10x`): simulated seconds per wall second. A
    # leg's wall-clock duration times this is what the ETA calibration learns; 1 in production.
    sim_time_scale: float = 1.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EngineSettings:
        env = os.environ if env is None else env
        return cls(
            host=env.get("WAKALA_HTTP_HOST") or cls.host,
            port=_int(env, "WAKALA_HTTP_PORT", cls.port, 0, 65535),
            ping_rate_limit=_int(env, "WAKALA_PING_RATE_LIMIT", cls.ping_rate_limit, 1, 1_000_000),
            ping_rate_window_s=_int(env, "WAKALA_PING_RATE_WINDOW_S", cls.ping_rate_window_s, 1, 3600),
            max_message_bytes=_int(env, "WAKALA_MAX_MESSAGE_BYTES", cls.max_message_bytes, 256, 1 << 20),
            max_body_bytes=_int(env, "WAKALA_MAX_BODY_BYTES", cls.max_body_bytes, 1024, 16 << 20),
            max_batch_pings=_int(env, "WAKALA_MAX_BATCH_PINGS", cls.max_batch_pings, 1, 100_000),
            auth_timeout_s=_int(env, "WAKALA_WS_AUTH_TIMEOUT_S", cls.auth_timeout_s, 1, 300),
            token_cache_s=_int(env, "WAKALA_TOKEN_CACHE_S", cls.token_cache_s, 0, 3600),
            ws_compression=(env.get("WAKALA_WS_COMPRESSION", "").lower() in ("1", "true", "yes")),
            ws_ping_interval_s=_int(env, "WAKALA_WS_PING_INTERVAL_S", cls.ws_ping_interval_s, 1, 3600),
            offer_timeout_s=_int(env, "WAKALA_OFFER_TIMEOUT_S", cls.offer_timeout_s, 1, 3600),
            offer_max_attempts=_int(env, "WAKALA_OFFER_MAX_ATTEMPTS", cls.offer_max_attempts, 1, 100),
            dispatcher=env.get("WAKALA_DISPATCHER", "1").lower() not in ("0", "false", "no"),
            matching_mode=_mode(env.get("WAKALA_MATCHING_MODE") or cls.matching_mode),
            batch_window_ms=_int(env, "WAKALA_BATCH_WINDOW_MS", cls.batch_window_ms, 50, 60_000),
            retry_interval_s=_int(env, "WAKALA_RETRY_INTERVAL_S", cls.retry_interval_s, 1, 3600),
            api_rate_limit=_int(env, "WAKALA_API_RATE_LIMIT", cls.api_rate_limit, 1, 1_000_000),
            api_rate_window_s=_int(env, "WAKALA_API_RATE_WINDOW_S", cls.api_rate_window_s, 1, 3600),
            payment_webhook_secret=env.get("WAKALA_PAYMENT_WEBHOOK_SECRET", ""),
            reservation_sweep_s=_int(env, "WAKALA_RESERVATION_SWEEP_S", cls.reservation_sweep_s, 1, 3600),
            view_refresh_s=_int(env, "WAKALA_VIEW_REFRESH_S", cls.view_refresh_s, 10, 86_400),
            tracking_link_grace_s=_int(env, "WAKALA_TRACKING_LINK_GRACE_S", cls.tracking_link_grace_s, 0, 30 * 86_400),
            hub_queue_max=_int(env, "WAKALA_HUB_QUEUE_MAX", cls.hub_queue_max, 1, 100_000),
            hub_heartbeat_s=_int(env, "WAKALA_HUB_HEARTBEAT_S", cls.hub_heartbeat_s, 1, 3600),
            hub_stall_s=_int(env, "WAKALA_HUB_STALL_S", cls.hub_stall_s, 1, 3600),
            sim_time_scale=_num(env, "WAKALA_SIM_TIME_SCALE", cls.sim_time_scale, 0.01, 1000),
        )


def _mode(value: str) -> str:
    if value not in ("greedy", "batch"):
        raise ConfigError(f"WAKALA_MATCHING_MODE must be greedy or batch, got {value!r}")
    return value
