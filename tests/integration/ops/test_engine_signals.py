"""`wakala engine all` stops its location worker with it: SIGTERM, SIGINT, kill -9; and restarts
a worker that dies on its own.

Real processes against the real services (this test's databases, topics and consumer group).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dispatch.ops.broker import pid_alive, wait_gone
from loadtest.processes import free_port, streams_env

WORKER_PID = re.compile(r"location worker pid (\d+)")
RESTARTED = re.compile(r"restarted the location worker \(pid (\d+)\)")


def _exit_status(proc: subprocess.Popen, seconds: float, log: Path) -> int:
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the engine did not stop within {seconds} s:\n{log.read_text()[-3000:]}") from None


def _wait_for(log: Path, pattern: re.Pattern, proc: subprocess.Popen, seconds: float = 60) -> re.Match:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = pattern.search(log.read_text(errors="replace"))
        if found:
            return found
        assert proc.poll() is None, f"the engine exited early:\n{log.read_text()[-3000:]}"
        time.sleep(0.1)
    raise AssertionError(f"no {pattern.pattern!r} in the engine's output:\n{log.read_text()[-3000:]}")


@pytest.fixture
def engine_all(platform, stream_settings, tmp_path):
    """Start ``wakala engine all``; yields (process, worker pid, log); kills what is left."""
    started: list[subprocess.Popen] = []
    pids: list[int] = []

    def start() -> tuple[subprocess.Popen, int, Path]:
        log = tmp_path / "engine.log"
        env = dict(os.environ, **streams_env(stream_settings), PYTHONUNBUFFERED="1",
                   WAKALA_CONTROL_DSN=platform.control.url(),
                   WAKALA_SHARD_DATABASES=",".join(platform.shard_databases),
                   WAKALA_HTTP_PORT=str(free_port()))
        with log.open("w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "dispatch.cli", "engine", "all"], env=env,
                                    stdout=out, stderr=subprocess.STDOUT)
        started.append(proc)
        worker = int(_wait_for(log, WORKER_PID, proc).group(1))
        pids.append(worker)
        return proc, worker, log

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for pid in pids:   # whatever a failed assertion left behind
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_engine_stops_its_location_worker_too(engine_all, sig):
    engine, worker, log = engine_all()
    assert pid_alive(worker)
    time.sleep(3)   # well into start-up: uvicorn's signal handlers are in place
    engine.send_signal(sig)
    # Bounded by uvicorn's shutdown plus the worker's 30 s grace (then SIGKILL): generous, since
    # the suite's four workers share two cores with it.
    assert _exit_status(engine, 90, log) == 0, log.read_text()[-3000:]
    assert wait_gone(worker, 10), f"worker {worker} outlived the engine:\n{log.read_text()[-3000:]}"
    assert "Traceback" not in log.read_text()


def test_a_killed_engine_takes_its_worker_with_it(engine_all):
    engine, worker, _ = engine_all()
    engine.kill()
    engine.wait()
    assert wait_gone(worker, 15)


def test_a_worker_that_dies_is_said_and_restarted_and_still_stopped_at_the_end(engine_all):
    engine, worker, log = engine_all()
    time.sleep(2)
    os.kill(worker, signal.SIGKILL)
    text = _wait_for(log, RESTARTED, engine, seconds=30)
    assert f"(pid {worker}) exited with signal {int(signal.SIGKILL)}" in log.read_text()
    replacement = int(text.group(1))
    assert replacement != worker and pid_alive(replacement)
    engine.send_signal(signal.SIGTERM)
    assert _exit_status(engine, 90, log) == 0, log.read_text()[-3000:]
    assert wait_gone(replacement, 10)
