"""The websocket transport's message limit leaves a band where oversized frames are refused
with an error frame (the socket kept), whatever the configured message limit."""

from dispatch.core.settings import EngineSettings
from dispatch.gateway.ingest import transport_limit


def test_the_transport_limit_is_one_mib_by_default():
    assert transport_limit(EngineSettings()) == 1 << 20


def test_the_transport_limit_leaves_a_refusal_band_above_every_message_limit():
    for limit in (256, 16 * 1024, 512 * 1024, 768 * 1024, 1 << 20):   # the setting's whole range
        assert transport_limit(EngineSettings(max_message_bytes=limit)) >= 2 * limit
