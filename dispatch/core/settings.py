"""Engine settings from WAKALA_* variables, one group per concern.

Each concern (the HTTP edge, matching, the REST API, commerce's background work, the
tracking hub) owns its fields and how they are read from the environment; ``EngineSettings``
is their union, so call sites keep one flat object (``engine.port``, ``engine.hub_stall_s``)
while a reader finds every knob of a concern in one place. Location-stream settings are
``streams.settings``, database settings ``schema.settings``. Every bad value is refused
naming its variable (``ConfigError``); nothing half-applies.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from schema.errors import ConfigError
from schema.settings import env_int as _int
from schema.settings import env_number as _num


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    return raw.lower() in ("1", "true", "yes") if not default else raw.lower() not in ("0", "false", "no")


@dataclass(frozen=True)
class EdgeSettings:
    """The one HTTP port: bind address, input limits, websocket behaviour, token trust."""

    host: str = "127.0.0.1"
    port: int = 8080
    ping_rate_limit: int = 60            # pings per driver per window
    ping_rate_window_s: int = 10
    max_message_bytes: int = 16 * 1024   # one websocket message (error frame beyond, connection kept)
    max_body_bytes: int = 256 * 1024     # one HTTP request body (413 beyond)
    max_batch_pings: int = 500
    auth_timeout_s: int = 10             # websocket: time to present a token
    token_cache_s: int = 60
    token_cache_max: int = 100_000       # verified or refused tokens kept per process (LRU beyond)
    auth_failure_limit: int = 50         # refused tokens per client address per window, then 429 unasked
    auth_failure_window_s: int = 60
    max_url_bytes: int = 4096            # request target (path and query): 414 beyond
    operator_token: str = ""             # bearer for /metrics on the public port ("" = not served there)
    metrics_port: int = 0                # operator port on 127.0.0.1 for /metrics (0 = none)
    ops_sample_s: int = 30               # backup ages and the worker's lag sampled for /metrics (0 = not)
    api_docs: bool = False               # /docs and /openapi.json on the public port
    ws_compression: bool = False         # permessage-deflate: see README ("Websocket compression")
    ws_ping_interval_s: int = 20         # server keepalive pings find dead connections

    @staticmethod
    def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
        d = EdgeSettings
        return dict(
            host=env.get("WAKALA_HTTP_HOST") or d.host,
            port=_int(env, "WAKALA_HTTP_PORT", d.port, 0, 65535),
            ping_rate_limit=_int(env, "WAKALA_PING_RATE_LIMIT", d.ping_rate_limit, 1, 1_000_000),
            ping_rate_window_s=_int(env, "WAKALA_PING_RATE_WINDOW_S", d.ping_rate_window_s, 1, 3600),
            max_message_bytes=_int(env, "WAKALA_MAX_MESSAGE_BYTES", d.max_message_bytes, 256, 1 << 20),
            max_body_bytes=_int(env, "WAKALA_MAX_BODY_BYTES", d.max_body_bytes, 1024, 16 << 20),
            max_batch_pings=_int(env, "WAKALA_MAX_BATCH_PINGS", d.max_batch_pings, 1, 100_000),
            auth_timeout_s=_int(env, "WAKALA_WS_AUTH_TIMEOUT_S", d.auth_timeout_s, 1, 300),
            token_cache_s=_int(env, "WAKALA_TOKEN_CACHE_S", d.token_cache_s, 0, 3600),
            token_cache_max=_int(env, "WAKALA_TOKEN_CACHE_MAX", d.token_cache_max, 100, 10_000_000),
            auth_failure_limit=_int(env, "WAKALA_AUTH_FAILURE_LIMIT", d.auth_failure_limit, 1, 1_000_000),
            auth_failure_window_s=_int(env, "WAKALA_AUTH_FAILURE_WINDOW_S", d.auth_failure_window_s, 1, 3600),
            max_url_bytes=_int(env, "WAKALA_MAX_URL_BYTES", d.max_url_bytes, 256, 65_536),
            operator_token=env.get("WAKALA_OPERATOR_TOKEN", ""),
            metrics_port=_int(env, "WAKALA_METRICS_PORT", d.metrics_port, 0, 65535),
            ops_sample_s=_int(env, "WAKALA_OPS_SAMPLE_S", d.ops_sample_s, 0, 3600),
            api_docs=_flag(env, "WAKALA_API_DOCS", False),
            ws_compression=_flag(env, "WAKALA_WS_COMPRESSION", False),
            ws_ping_interval_s=_int(env, "WAKALA_WS_PING_INTERVAL_S", d.ws_ping_interval_s, 1, 3600),
        )


@dataclass(frozen=True)
class MatchingSettings:
    """Offers, the dispatcher, batch matching and the unassigned retry."""

    offer_timeout_s: int = 20            # a driver's time to accept an offer
    offer_max_attempts: int = 5          # offers per round before the delivery is unassigned
    dispatcher: bool = True              # match new deliveries in this process (WAKALA_DISPATCHER=0: gateway only)
    matching_mode: str = "greedy"        # greedy (each delivery at once) or batch (solved per window)
    batch_window_ms: int = 2000          # batch mode: how long deliveries gather before a solve
    driver_capacity: int = 1             # active deliveries a driver may carry (2+: bundles in batch mode)
    bundle_max_hold_ms: int = 60_000     # batch mode: longest a ready delivery waits for a bundle partner
    retry_interval_s: int = 10           # backstop retry of unassigned deliveries
    # Replays only (`wakala loadtest replay --speed 10x`): simulated seconds per wall second. A
    # leg's wall-clock duration times this is what the ETA calibration learns; 1 in production.
    sim_time_scale: float = 1.0
    driver_action_limit: int = 30        # shift changes, delivery events, offer replies per driver per window
    driver_action_window_s: int = 60
    offer_send_timeout_s: int = 5        # one frame to a driver's socket: dropped (not sent) beyond
    driver_send_queue_max: int = 64      # frames waiting for one driver socket

    @staticmethod
    def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
        d = MatchingSettings
        return dict(
            offer_timeout_s=_int(env, "WAKALA_OFFER_TIMEOUT_S", d.offer_timeout_s, 1, 3600),
            offer_max_attempts=_int(env, "WAKALA_OFFER_MAX_ATTEMPTS", d.offer_max_attempts, 1, 100),
            dispatcher=_flag(env, "WAKALA_DISPATCHER", True),
            matching_mode=_mode(env.get("WAKALA_MATCHING_MODE") or d.matching_mode),
            batch_window_ms=_int(env, "WAKALA_BATCH_WINDOW_MS", d.batch_window_ms, 50, 60_000),
            driver_capacity=_int(env, "WAKALA_DRIVER_CAPACITY", d.driver_capacity, 1, 10),
            bundle_max_hold_ms=_int(env, "WAKALA_BUNDLE_MAX_HOLD_MS", d.bundle_max_hold_ms, 0, 600_000),
            retry_interval_s=_int(env, "WAKALA_RETRY_INTERVAL_S", d.retry_interval_s, 1, 3600),
            sim_time_scale=_num(env, "WAKALA_SIM_TIME_SCALE", d.sim_time_scale, 0.01, 1000),
            driver_action_limit=_int(env, "WAKALA_DRIVER_ACTION_LIMIT", d.driver_action_limit, 1, 1_000_000),
            driver_action_window_s=_int(env, "WAKALA_DRIVER_ACTION_WINDOW_S", d.driver_action_window_s, 1, 3600),
            offer_send_timeout_s=_int(env, "WAKALA_OFFER_SEND_TIMEOUT_S", d.offer_send_timeout_s, 1, 300),
            driver_send_queue_max=_int(env, "WAKALA_DRIVER_SEND_QUEUE_MAX", d.driver_send_queue_max, 1, 10_000),
        )


@dataclass(frozen=True)
class ApiSettings:
    """The REST API's per-caller limit and the payment gateway's webhook key."""

    api_rate_limit: int = 120            # REST requests per caller per window
    api_rate_window_s: int = 60
    payment_webhook_secret: str = ""     # HMAC key of the payment gateway's callbacks ("" = refuse them)
    payment_signature_tolerance_s: int = 300   # a signed callback's timestamp may be this old (or ahead)

    @staticmethod
    def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
        d = ApiSettings
        return dict(
            api_rate_limit=_int(env, "WAKALA_API_RATE_LIMIT", d.api_rate_limit, 1, 1_000_000),
            api_rate_window_s=_int(env, "WAKALA_API_RATE_WINDOW_S", d.api_rate_window_s, 1, 3600),
            payment_webhook_secret=env.get("WAKALA_PAYMENT_WEBHOOK_SECRET", ""),
            payment_signature_tolerance_s=_int(env, "WAKALA_PAYMENT_SIGNATURE_TOLERANCE_S",
                                               d.payment_signature_tolerance_s, 10, 86_400),
        )


@dataclass(frozen=True)
class CommerceSettings:
    """Commerce's background work: the reservation sweeper and the view refresher."""

    reservation_sweep_s: int = 30        # how often expired stock reservations are released
    view_refresh_s: int = 900            # materialized views refreshed and popular products warmed
    max_pending_orders: int = 5          # unpaid orders holding stock per customer per vendor (409 beyond)

    @staticmethod
    def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
        d = CommerceSettings
        return dict(
            reservation_sweep_s=_int(env, "WAKALA_RESERVATION_SWEEP_S", d.reservation_sweep_s, 1, 3600),
            view_refresh_s=_int(env, "WAKALA_VIEW_REFRESH_S", d.view_refresh_s, 10, 86_400),
            max_pending_orders=_int(env, "WAKALA_MAX_PENDING_ORDERS", d.max_pending_orders, 1, 10_000),
        )


@dataclass(frozen=True)
class TrackingSettings:
    """Tracking links and the hub's sockets."""

    tracking_link_grace_s: int = 3600    # a tracking link outlives its delivery's end by this much
    hub_queue_max: int = 32              # frames (not positions) waiting for one watcher before 4408 too_slow
    hub_heartbeat_s: int = 15            # heartbeat frames to every watcher and vendor screen
    hub_stall_s: int = 30                # one frame's send blocked this long: 4408 too_slow
    # The tracking page's optional street basemap: an XYZ tile URL template
    # (https://{host}/{z}/{x}/{y}.png) and the attribution its licence asks for. Off by default;
    # the H3 view stays the offline fallback, and the CSP allows only this URL's host.
    basemap_tile_url: str = ""
    basemap_attribution: str = ""

    @staticmethod
    def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
        d = TrackingSettings
        return dict(
            tracking_link_grace_s=_int(env, "WAKALA_TRACKING_LINK_GRACE_S", d.tracking_link_grace_s,
                                       0, 30 * 86_400),
            hub_queue_max=_int(env, "WAKALA_HUB_QUEUE_MAX", d.hub_queue_max, 1, 100_000),
            hub_heartbeat_s=_int(env, "WAKALA_HUB_HEARTBEAT_S", d.hub_heartbeat_s, 1, 3600),
            hub_stall_s=_int(env, "WAKALA_HUB_STALL_S", d.hub_stall_s, 1, 3600),
            basemap_tile_url=env.get("WAKALA_BASEMAP_TILE_URL", ""),
            basemap_attribution=env.get("WAKALA_BASEMAP_ATTRIBUTION", ""),
        )


@dataclass(frozen=True)
class MessagingSettings:
    """The WhatsApp Business Cloud API channel. Without a phone-number id and a token the
    channel is off (the engine says so at start); the webhook needs the app secret (to check
    X-Hub-Signature-256) and the verify token (to answer Meta's hub.challenge GET)."""

    whatsapp_graph_url: str = "https://graph.facebook.com/v21.0"
    whatsapp_phone_number_id: str = ""
    whatsapp_token: str = ""
    whatsapp_app_secret: str = ""
    whatsapp_verify_token: str = ""
    whatsapp_timeout_s: int = 10         # one Graph API request
    whatsapp_max_attempts: int = 6       # sends of one message before it is recorded failed
    whatsapp_send_per_s: int = 20        # the sender's own pace (Meta's per-number throughput)
    whatsapp_retry_base_s: float = 2.0   # first retry's backoff; doubles per attempt (jittered, capped)
    whatsapp_max_event_age_s: int = 3600  # an event older than this when read is not messaged about
    # The engine's address as customers reach it: links in messages are <public_url>/t/<token>.
    # "" = http://<WAKALA_HTTP_HOST>:<WAKALA_HTTP_PORT> (fine on a laptop, wrong behind a proxy).
    public_url: str = ""

    @property
    def whatsapp_enabled(self) -> bool:
        return bool(self.whatsapp_phone_number_id and self.whatsapp_token)

    @staticmethod
    def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
        d = MessagingSettings
        return dict(
            whatsapp_graph_url=(env.get("WAKALA_WHATSAPP_GRAPH_URL") or d.whatsapp_graph_url).rstrip("/"),
            whatsapp_phone_number_id=env.get("WAKALA_WHATSAPP_PHONE_NUMBER_ID", ""),
            whatsapp_token=env.get("WAKALA_WHATSAPP_TOKEN", ""),
            whatsapp_app_secret=env.get("WAKALA_WHATSAPP_APP_SECRET", ""),
            whatsapp_verify_token=env.get("WAKALA_WHATSAPP_VERIFY_TOKEN", ""),
            whatsapp_timeout_s=_int(env, "WAKALA_WHATSAPP_TIMEOUT_S", d.whatsapp_timeout_s, 1, 120),
            whatsapp_max_attempts=_int(env, "WAKALA_WHATSAPP_MAX_ATTEMPTS", d.whatsapp_max_attempts, 1, 100),
            whatsapp_send_per_s=_int(env, "WAKALA_WHATSAPP_SEND_PER_S", d.whatsapp_send_per_s, 1, 10_000),
            whatsapp_retry_base_s=_num(env, "WAKALA_WHATSAPP_RETRY_BASE_S", d.whatsapp_retry_base_s, 0.01, 600),
            whatsapp_max_event_age_s=_int(env, "WAKALA_WHATSAPP_MAX_EVENT_AGE_S", d.whatsapp_max_event_age_s,
                                          10, 7 * 86_400),
            public_url=_public_url(env.get("WAKALA_PUBLIC_URL", "")),
        )


CONCERNS = (EdgeSettings, MatchingSettings, ApiSettings, CommerceSettings, TrackingSettings,
            MessagingSettings)


@dataclass(frozen=True)
class EngineSettings(MessagingSettings, TrackingSettings, CommerceSettings, ApiSettings, MatchingSettings, EdgeSettings):
    """Every concern's settings in one flat, frozen object (the engine process's settings)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EngineSettings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for concern in CONCERNS:
            values.update(concern._from_env(env))
        return cls(**values)


def _public_url(value: str) -> str:
    """An http(s) origin with an optional path prefix, without a trailing slash ("" = unset)."""
    value = value.strip().rstrip("/")
    if value and not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~\-/]*)?", value):
        raise ConfigError(f"WAKALA_PUBLIC_URL must be an http:// or https:// URL like "
                          f"https://track.example.co.za, got {value!r}")
    return value


def _mode(value: str) -> str:
    if value not in ("greedy", "batch"):
        raise ConfigError(f"WAKALA_MATCHING_MODE must be greedy or batch, got {value!r}")
    return value

