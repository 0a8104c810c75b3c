"""Fixtures of the fault tests: the baseline replay, run once for the whole test run.

The delivered count of a replay under a fault is compared with the same replay without one.
That baseline costs a replay, so it runs once per ``make test``: the first fault test to start
takes a file lock and runs it beside its own fault replay, in a rig of its own (an engine no
fault touches) on databases of its own (two engines on one database would relay each other's
events); every other fault test, once its own replay is done, waits for that lock and reads the
figures from a file in the run's shared temp folder (pytest-xdist workers share that folder's
parent). The baseline must satisfy every invariant itself: a rig that breaks them without a
fault would prove nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import uuid
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import SESSION_PREFIX, _names_under, _settings_under, clone_platform
from tests.integration.faults.rig import Rig, invariants, small_city


@pytest.fixture(scope="session")
def _baseline_dir(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    root = tmp_path_factory.getbasetemp()
    return root if worker_id == "master" else root.parent


async def _clone_platform(pg_base, template):
    """Databases like the ``platform`` fixture's (a clone of the session's migrated template)."""
    return await clone_platform(_settings_under(pg_base, f"{SESSION_PREFIX}_{uuid.uuid4().hex[:8]}"), template)


class Baseline:
    """``start()`` at the beginning of a fault test, ``await summary()`` after its replay."""

    def __init__(self, folder: Path, workdir: Path, pg_base, template, graveyard) -> None:
        self.cache, self.lock_path = folder / "fault-baseline.json", folder / "fault-baseline.lock"
        self.workdir, self.pg_base, self.template, self.graveyard = workdir, pg_base, template, graveyard
        self.lock = None
        self.task: asyncio.Task | None = None
        self.databases: list[str] = []

    def start(self) -> None:
        handle = self.lock_path.open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:   # another test is making it
            handle.close()
            return
        if self.cache.exists():
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
            return
        self.lock = handle
        self.task = asyncio.create_task(self._run(), name="fault-baseline")

    async def _run(self) -> dict:
        pg = await _clone_platform(self.pg_base, self.template)
        self.databases = [pg.control.database, *pg.shard_databases]
        async with Rig(pg, self.workdir) as clean:
            outcome = await clean.replay(small_city(tenant_suffix="-baseline"), label="baseline")
            problems = (await invariants(clean.pg, outcome)).problems()
        assert not problems, f"the baseline replay (no fault) broke invariants: {problems}; see {self.workdir}"
        self.cache.write_text(json.dumps(outcome.summary))
        return outcome.summary

    async def summary(self) -> dict:
        if self.task is not None:
            return await self.task
        handle = self.lock_path.open("a")
        try:
            await asyncio.to_thread(fcntl.flock, handle, fcntl.LOCK_EX)
            if not self.cache.exists():   # its maker failed: make it here, now
                self.lock, handle = handle, None
                self.task = asyncio.create_task(self._run(), name="fault-baseline")
                return await self.task
            return json.loads(self.cache.read_text())
        finally:
            if handle is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()

    async def close(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        if self.lock is not None:
            fcntl.flock(self.lock, fcntl.LOCK_UN)
            self.lock.close()
        if self.databases:
            conn = await asyncpg.connect(self.pg_base.url())
            try:
                names = [n for d in self.databases for n in await _names_under(conn, d)]
            finally:
                await conn.close()
            await self.graveyard.bury(names)


@pytest.fixture
async def baseline(_baseline_dir: Path, tmp_path: Path, pg_base, _migrated_template, _session_cleanup):
    made = Baseline(_baseline_dir, tmp_path / "baseline-rig", pg_base, _migrated_template, _session_cleanup)
    made.start()
    try:
        yield made
    finally:
        await made.close()
