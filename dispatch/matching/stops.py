"""A bundle's drop-off sequence as the tracker sees it: the stops before a customer's. Pure.

A driver carrying a bundle has one ``delivery:active`` hash per delivery, each with its place
(``stop`` of ``stops``, ``dispatch.matching.active``); the tracker reads all of a driver's
hashes for every ping anyway. A stop already delivered has no hash any more, so the stops
still before a customer's are exactly the hashes of the same bundle with a lower ``stop``:
nothing to keep in step when a stop ends.

The drop-off ETA of stop k is the ETA to the first open stop before it (by that delivery's
own status: via the pickup while assigned), then each leg door to door, plus one hand-over
(``HANDOVER_S``) at every door before the customer's. The leg model is the caller's
(``remaining``: the tracker's own ``remaining_etas``), so stops and single deliveries are
estimated alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dispatch.matching.active import ActiveDelivery

__all__ = ["HANDOVER_S", "earlier_stops", "through_stops"]

# Seconds at each door beyond the parking and walk-in the ETA model already counts: the
# hand-over itself (finding the customer, a PIN, a photo). Counted for every stop before a
# customer's own, by the tracker and by the bundling policy alike.
HANDOVER_S = 90.0

# (status, from (lat, lng), delivery) -> (seconds to its pickup or None, seconds to its door)
Remaining = Callable[[str, tuple[float, float], "ActiveDelivery"], tuple[float | None, float]]


def earlier_stops(deliveries: Sequence[ActiveDelivery]) -> dict[str, tuple[ActiveDelivery, ...]]:
    """For each delivery of a bundle with open stops before it: those stops, in drop-off order."""
    groups: dict[tuple[str, str], list[ActiveDelivery]] = {}
    for d in deliveries:
        if d.bundle_id is not None and d.stop is not None:
            groups.setdefault((d.driver_id, d.bundle_id), []).append(d)
    out: dict[str, tuple[ActiveDelivery, ...]] = {}
    for group in groups.values():
        group.sort(key=lambda d: d.stop or 0)
        for i, d in enumerate(group):
            if i:
                out[d.delivery_id] = tuple(group[:i])
    return out


def through_stops(before: Sequence[ActiveDelivery], delivery: ActiveDelivery, driver: tuple[float, float],
                  remaining: Remaining, handover_s: float = HANDOVER_S) -> float:
    """Seconds until the driver at ``driver`` reaches ``delivery``'s door through ``before``."""
    if not before:
        return remaining(delivery.status, driver, delivery)[1]
    total = remaining(before[0].status, driver, before[0])[1]
    previous = before[0]
    for stop in (*before[1:], delivery):
        total += handover_s + remaining("picked_up", previous.dropoff, stop)[1]
        previous = stop
    return total
