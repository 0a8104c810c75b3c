"""Throttled Postgres copies of driver positions (``drivers.current_location``).

Redis holds the live position; Postgres gets the latest one per driver at most once per
interval, one ``UPDATE ... FROM unnest(...)`` per tenant, so ingestion never waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from schema.db import TenantDatabase
from schema.errors import InvalidTenantId, TenantNotActive, UnknownTenant
from streams.records import DriverPing

log = logging.getLogger("wakala.streams")

PG_FLUSH_TIMEOUT_S = 10.0
UNKNOWN_TENANT_SKIP_S = 60.0    # positions of an unknown or inactive tenant are dropped this long

UPDATE_LOCATIONS_SQL = """
UPDATE drivers AS d
SET current_location = ST_SetSRID(ST_MakePoint(u.lng, u.lat), 4326)::geography
FROM unnest($1::uuid[], $2::float8[], $3::float8[]) AS u(id, lat, lng)
WHERE d.id = u.id
"""


class PgLocationWriter:
    """Throttled ``drivers.current_location`` writes: latest position, at most once per interval.

    ``note`` is called with every batch's accepted pings (cheap: a dict update per ping);
    ``flush`` writes the drivers whose last write (or attempt) is at least ``interval_s`` old,
    one statement per tenant. State is per process: a driver whose partition moves to another
    worker is written by that worker at its first ping.
    """

    def __init__(self, db: TenantDatabase, interval_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.db = db
        self.interval_s = interval_s
        self.clock = clock
        self._pending: dict[str, tuple[str, float, float]] = {}   # driver -> (tenant, lat, lng)
        self._last: dict[str, float] = {}                         # driver -> last write/attempt
        self._unknown: dict[str, float] = {}                      # tenant -> skip until

    def note(self, pings: Sequence[DriverPing]) -> None:
        pending = self._pending
        for p in pings:
            pending[p.driver_id] = (p.tenant_id, p.lat, p.lng)

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def flush(self, *, force: bool = False) -> tuple[int, int]:
        """Write what is due; returns (rows updated, positions that failed)."""
        now = self.clock()
        horizon = now - self.interval_s
        last = self._last
        due: dict[str, list[tuple[str, float, float]]] = {}
        for driver, (tenant, lat, lng) in list(self._pending.items()):
            if force or last.get(driver, -1e18) <= horizon:
                due.setdefault(tenant, []).append((driver, lat, lng))
                del self._pending[driver]
                last[driver] = now
        for driver in [d for d, t in last.items() if t < horizon and d not in self._pending]:
            del last[driver]   # forget drivers that went quiet (and keep the dict bounded)
        if not due:
            return 0, 0
        results = await asyncio.gather(*(self._write_tenant(t, rows) for t, rows in due.items()))
        return sum(r[0] for r in results), sum(r[1] for r in results)

    async def _write_tenant(self, tenant: str, rows: list[tuple[str, float, float]]) -> tuple[int, int]:
        if self._unknown.get(tenant, -1e18) > self.clock():
            return 0, len(rows)    # refused recently: do not ask the control plane every second
        rows.sort()   # same lock order in every statement
        ids = [r[0] for r in rows]
        lats = [r[1] for r in rows]
        lngs = [r[2] for r in rows]
        try:
            async with asyncio.timeout(PG_FLUSH_TIMEOUT_S):
                async with self.db.tenant_transaction(tenant) as conn:
                    status = await conn.execute(UPDATE_LOCATIONS_SQL, ids, lats, lngs)
            return int(status.rsplit(" ", 1)[-1]), 0
        except (UnknownTenant, TenantNotActive, InvalidTenantId) as exc:
            log.warning("dropping driver positions of tenant %s for %.0f s: %s",
                        tenant, UNKNOWN_TENANT_SKIP_S, exc)
            self._unknown[tenant] = self.clock() + UNKNOWN_TENANT_SKIP_S
            return 0, len(rows)
        except Exception as exc:  # noqa: BLE001 - any PG failure: count, retry next interval
            log.warning("writing %d driver position(s) of tenant %s failed (%s: %s); "
                        "retrying in %.0f s", len(rows), tenant, type(exc).__name__, exc,
                        self.interval_s)
            for driver, lat, lng in rows:
                self._pending.setdefault(driver, (tenant, lat, lng))   # a newer one wins
            return 0, len(rows)
