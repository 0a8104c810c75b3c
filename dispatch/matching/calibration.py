"""ETA calibration learned from completed deliveries, shared by every engine through Redis.

``geo.eta.EtaCalibration`` is the model (per-res-7-cell factor, shrunk towards 1.0 by a
prior); this keeps its sufficient statistics in one Redis hash so that every engine learns
from every delivery and a restart forgets nothing:

``eta:calibration`` HASH: ``{cell}:n`` (legs observed) and ``{cell}:sum`` (sum of clipped
actual/estimated ratios), both ``HINCRBYFLOAT``-ed, so concurrent observers never lose one.
"""

from __future__ import annotations

import logging
import math
import time

from redis.asyncio import Redis

from dispatch.matching.keys import CALIBRATION_KEY
from geo.eta import EtaCalibration
from streams.replies import as_text

__all__ = ["CalibrationStore"]


log = logging.getLogger(__name__)


class CalibrationStore:
    def __init__(self, redis: Redis, *, prior_weight: float = 20.0, key: str = CALIBRATION_KEY,
                 cache_s: float = 60.0, time_scale: float = 1.0) -> None:
        self.redis = redis
        # A replay faster than real time (EngineSettings.sim_time_scale): legs take 1/scale of
        # their simulated duration on the wall clock; the model learns simulated seconds.
        self.time_scale = time_scale
        self.key = key
        self.model = EtaCalibration(prior_weight)   # parameters and clipping; filled by load()
        self.cache_s = cache_s
        self._loaded_at = -math.inf

    async def observe(self, lat: float, lng: float, estimated_s: float, actual_s: float) -> float:
        """Record one completed leg ending at (lat, lng); returns the ratio counted."""
        cell = EtaCalibration.cell_for(lat, lng)
        actual_s *= self.time_scale
        ratio = EtaCalibration(self.model.prior_weight, min_ratio=self.model.min_ratio,
                               max_ratio=self.model.max_ratio).observe(cell, estimated_s, actual_s)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hincrbyfloat(self.key, f"{cell}:n", 1)
            pipe.hincrbyfloat(self.key, f"{cell}:sum", ratio)
            await pipe.execute()
        self._loaded_at = -math.inf   # next current() reads it
        return ratio

    async def load(self) -> EtaCalibration:
        raw = {as_text(k): as_text(v) for k, v in (await self.redis.hgetall(self.key)).items()}
        data = self.model.to_dict()
        cells = {}
        for field, value in raw.items():
            cell, _, what = field.rpartition(":")
            if what != "n":
                continue
            try:
                entry = [float(value), float(raw[f"{cell}:sum"])]
                EtaCalibration.from_dict({**data, "cells": {cell: entry}})   # validates the cell
            except (KeyError, ValueError):
                log.warning("ignored a malformed calibration entry for %.40r", cell)
                continue
            cells[cell] = entry
        self.model = EtaCalibration.from_dict({**data, "cells": cells})
        self._loaded_at = time.monotonic()
        return self.model

    async def current(self) -> EtaCalibration:
        """The model, re-read from Redis at most every ``cache_s`` seconds."""
        if time.monotonic() - self._loaded_at > self.cache_s:
            await self.load()
        return self.model
