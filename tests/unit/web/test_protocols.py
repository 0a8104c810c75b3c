"""How the bounded uvicorn protocols find the edge's limits: from the app uvicorn loaded."""

from __future__ import annotations

from types import SimpleNamespace

from dispatch.core.settings import EdgeSettings
from dispatch.web.limits import MAX_HEADER_BYTES, EdgeLimits
from dispatch.web.protocols import edge_limits


def test_limits_are_read_through_the_middleware_around_the_app_and_cached():
    inner = SimpleNamespace(state=SimpleNamespace())
    edge = EdgeLimits(inner, max_body_bytes=1024, max_url_bytes=2048, max_header_bytes=8192)
    config = SimpleNamespace(loaded_app=SimpleNamespace(app=SimpleNamespace(app=edge)))   # proxy-headers etc.
    assert edge_limits(config) == (2048, 8192)
    config.loaded_app = None
    assert edge_limits(config) == (2048, 8192)   # cached on the config


def test_without_the_edge_layer_the_defaults_apply():
    assert edge_limits(SimpleNamespace(loaded_app=object())) == (EdgeSettings.max_url_bytes, MAX_HEADER_BYTES)
