"""How matching and tracking move a delivery: a callable they are handed, not a database.

The offer engine and the tracker decide *that* a delivery moves (accepted, arrived at the
pickup); applying the event is this shell's job: one tenant transaction through
``dispatch.deliveries.store.transition`` (row, order status, history, outbox), and, with a
cache, the order's cached view dropped when its status changes. Tests hand them a recorder
instead; the location worker gets a ``PostgresTransitions`` from its composition root.
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol

from dispatch.core.cache import Cache
from dispatch.deliveries.state import DeliveryEvent
from dispatch.deliveries.store import DEFAULT_CAPACITY, transition, transition_together
from schema.db import TenantDatabase

__all__ = ["DeliveryTransitions", "PostgresTransitions"]


class DeliveryTransitions(Protocol):
    async def __call__(self, tenant_id: str, delivery_id: str, event: DeliveryEvent, *,
                       actor: str | None = None, reason: str | None = None, **facts: Any) -> object:
        """Apply one ``dispatch.deliveries.state`` event to the delivery's stored state."""


class PostgresTransitions:
    """``dispatch.deliveries.store.transition`` on one TenantDatabase; with a ``cache``, the
    order's cached view is invalidated when a transition changes the order's status.
    ``capacity``: active deliveries a driver may carry, checked by the database on ``offer``
    and ``accept`` (``DriverAtCapacity``); the same value as the claims' capacity."""

    def __init__(self, db: TenantDatabase, cache: Cache | None = None, *,
                 capacity: int = DEFAULT_CAPACITY) -> None:
        self.db = db
        self.cache = cache
        self.capacity = capacity

    async def __call__(self, tenant_id: str, delivery_id: str, event: DeliveryEvent, *,
                       actor: str | None = None, reason: str | None = None, **facts: Any) -> object:
        return await transition(self.db, tenant_id, delivery_id, event, actor=actor, reason=reason,
                                cache=self.cache, capacity=self.capacity, **facts)

    async def together(self, tenant_id: str, steps: list[tuple[str, DeliveryEvent, dict[str, Any]]], *,
                       actor: str | None = None, reason: str | None = None,
                       bundle_id: str | None = None) -> object:
        """Several transitions in one transaction (a bundle's deliveries): all or none."""
        return await transition_together(self.db, tenant_id, steps, actor=actor, reason=reason,
                                         bundle_id=None if bundle_id is None else uuid.UUID(bundle_id),
                                         cache=self.cache, capacity=self.capacity)
