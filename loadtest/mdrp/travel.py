"""The set's travel-time model and how service time splits around a stop.

Travel between two points takes ``ceil(euclidean metres / metres_per_minute)`` whole minutes,
computed as the set's evaluator does (square root of the summed squares, then divide, then
ceil, in float64), so a route we plan is a route it accepts to the minute.

Service: the instance gives minutes per pickup and per dropoff. We spend the first half
(rounded up) on arrival - parking, walking in - before the hand-over, and the rest after it,
before leaving: arrive at ``a``, hand-over at ``a + before``, leave at ``+ after``. The
evaluator only sees the hand-over minute and needs it strictly after the arrival, which the
rounding up guarantees for any service of at least one minute; consecutive dropoffs of a
bundle are then at least one full dropoff service apart, as it requires.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from loadtest.mdrp.instance import Parameters

__all__ = ["Service", "TravelModel"]


@dataclass(frozen=True, slots=True)
class Service:
    """Minutes before and after the hand-over at a pickup and at a dropoff."""

    pickup_before: int
    pickup_after: int
    dropoff_before: int
    dropoff_after: int

    @classmethod
    def of(cls, params: Parameters) -> Service:
        p, d = params.pickup_service_min, params.dropoff_service_min
        return cls(-(-p // 2), p - -(-p // 2), -(-d // 2), d - -(-d // 2))


class TravelModel:
    """Whole minutes between planar points at the instance's speed."""

    def __init__(self, metres_per_minute: float) -> None:
        if not (metres_per_minute > 0 and math.isfinite(metres_per_minute)):
            raise ValueError(f"metres_per_minute must be a positive number, got {metres_per_minute}")
        self.mpm = float(metres_per_minute)

    def minutes(self, a: tuple[float, float], b: tuple[float, float]) -> int:
        dx, dy = b[0] - a[0], b[1] - a[1]
        return math.ceil(math.sqrt(dx * dx + dy * dy) / self.mpm)

    def matrix(self, xs0: NDArray[np.float64], ys0: NDArray[np.float64], xs1: NDArray[np.float64],
               ys1: NDArray[np.float64]) -> NDArray[np.float64]:
        """Minutes from every point 0 (rows) to every point 1 (columns)."""
        dx = xs1[None, :] - xs0[:, None]
        dy = ys1[None, :] - ys0[:, None]
        return np.ceil(np.sqrt(dx * dx + dy * dy) / self.mpm)
