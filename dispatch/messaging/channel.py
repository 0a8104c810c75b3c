"""The outbound WhatsApp channel as the engine runs it: the notifier and the sender, built from
the engine's settings (the composition root, ``dispatch.app``, starts and stops it).

Off unless both ``WAKALA_WHATSAPP_PHONE_NUMBER_ID`` and ``WAKALA_WHATSAPP_TOKEN`` are set:
the engine then logs ``OFF_MESSAGE`` once at start and plans nothing (events are not queued
for later: a channel turned on later starts with the events it reads then, within
``WAKALA_WHATSAPP_MAX_EVENT_AGE_S``). The consumer group is ``<app id>-whatsapp``; its session
timeout is the location worker's (``WAKALA_KAFKA_SESSION_TIMEOUT_S``, default 10 s).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from dispatch.core.settings import EngineSettings
from dispatch.messaging.graph_client import GraphClient
from dispatch.messaging.notifier import Notifier
from dispatch.messaging.sender import Sender
from schema.db import TenantDatabase
from streams.settings import StreamSettings

__all__ = ["OFF_MESSAGE", "WhatsAppChannel", "build_channel"]

OFF_MESSAGE = "WhatsApp channel off: WAKALA_WHATSAPP_PHONE_NUMBER_ID and WAKALA_WHATSAPP_TOKEN not set"
SESSION_TIMEOUT_ENV = "WAKALA_KAFKA_SESSION_TIMEOUT_S"


@dataclass
class WhatsAppChannel:
    client: GraphClient
    notifier: Notifier
    sender: Sender

    async def close(self) -> None:
        await self.client.close()


def public_url(engine: EngineSettings) -> str:
    """Where customers reach the engine's pages: ``WAKALA_PUBLIC_URL``, else the HTTP port."""
    return engine.public_url or f"http://{engine.host}:{engine.port}"


def build_channel(engine: EngineSettings, streams: StreamSettings, db: TenantDatabase) -> WhatsAppChannel:
    client = GraphClient(engine.whatsapp_timeout_s)
    sender = Sender(db, client, graph_url=engine.whatsapp_graph_url,
                    phone_number_id=engine.whatsapp_phone_number_id, token=engine.whatsapp_token,
                    public_url=public_url(engine), link_grace_s=engine.tracking_link_grace_s,
                    send_per_s=engine.whatsapp_send_per_s, max_attempts=engine.whatsapp_max_attempts,
                    retry_base_s=engine.whatsapp_retry_base_s, timeout_s=engine.whatsapp_timeout_s)
    notifier = Notifier(db, streams.kafka_bootstrap, order_topic=streams.order_events_topic,
                        delivery_topic=streams.delivery_events_topic, group=f"{streams.app_id}-whatsapp",
                        max_event_age_s=engine.whatsapp_max_event_age_s,
                        partitions=streams.locations_partitions,
                        session_timeout_s=float(os.environ.get(SESSION_TIMEOUT_ENV) or 10.0),
                        on_planned=sender.wake)
    return WhatsAppChannel(client, notifier, sender)
