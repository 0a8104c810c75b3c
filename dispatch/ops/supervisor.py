"""The location worker as a child of ``wakala engine all``: started, restarted, never orphaned.

``wakala engine all`` is the one-command engine: the API in the foreground and the location
worker as a child process. Three things go wrong with a bare ``Popen`` and a ``finally``:

* uvicorn captures SIGTERM/SIGINT, shuts down, restores the previous handlers and raises the
  signal again; with the default SIGTERM handler the process dies right there and no
  ``finally`` runs, so the worker is orphaned. :func:`exit_on_signals` installs handlers that
  raise :class:`SystemExit` instead (uvicorn restores those, so its re-raise lands in them),
  and the caller's ``finally`` stops the worker.
* a kill -9 of the engine runs no code at all: the worker asks the kernel for SIGTERM when
  its parent dies (``PR_SET_PDEATHSIG``, Linux), as a backstop.
* a Ctrl-C in a terminal reaches the whole foreground process group, so the worker would
  stop on its own while the engine is still shutting down, and the supervisor would take that
  for a crash. The worker runs in a process group of its own: only the engine stops it.

A worker that exits while the engine runs (a crash, an out-of-memory kill, or a worker that
gave up because it could not make progress) is restarted, with a backoff that doubles from
one second up to :data:`RESTART_BACKOFF_MAX_S` and starts over once a worker has run for
:data:`STABLE_AFTER_S`. Each exit is said on stderr with its status. Restarting rather than
exiting the engine: the API keeps answering (pings are accepted into the broker and processed
when the worker is back, from the committed offsets), and an engine that dies because its
worker died would turn one crash into an outage of every door.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TextIO

__all__ = ["RESTART_BACKOFF_MAX_S", "STABLE_AFTER_S", "ChildSupervisor", "exit_on_signals",
           "restart_delay"]

#: Longest wait between two restarts of a worker that keeps exiting.
RESTART_BACKOFF_MAX_S = 30.0
#: A worker that ran this long before it exited is restarted after the shortest delay again.
STABLE_AFTER_S = 60.0
_PR_SET_PDEATHSIG = 1


def restart_delay(failures: int, *, base_s: float = 1.0, cap_s: float = RESTART_BACKOFF_MAX_S) -> float:
    """Seconds before restart number ``failures`` (1, 2, 4, ... up to ``cap_s``)."""
    return min(cap_s, base_s * 2 ** max(0, failures - 1))


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: SIGTERM this child when the process that started it dies."""
    def preexec() -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:   # the parent died before prctl: no signal will come
            os._exit(1)
    return preexec


def exit_on_signals(signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT)) -> None:
    """SIGTERM and SIGINT raise ``SystemExit(0)`` once (later ones are ignored, so they cannot
    interrupt the clean-up the first one started)."""
    fired = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        if fired:
            return
        fired = True
        raise SystemExit(0)

    for sig in signals:
        signal.signal(sig, handler)


class ChildSupervisor:
    """Runs ``argv`` as a child, restarts it when it exits on its own, stops it on request."""

    def __init__(self, argv: Sequence[str], *, name: str = "location worker",
                 backoff_base_s: float = 1.0, backoff_max_s: float = RESTART_BACKOFF_MAX_S,
                 stable_after_s: float = STABLE_AFTER_S, log: TextIO | None = None) -> None:
        self.argv, self.name = list(argv), name
        self.backoff_base_s, self.backoff_max_s, self.stable_after_s = backoff_base_s, backoff_max_s, stable_after_s
        self.log = log or sys.stderr
        self.restarts = 0
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return None if proc is None else proc.pid

    def _spawn(self) -> subprocess.Popen:
        # The thread that spawns is the one whose exit PR_SET_PDEATHSIG watches: the main
        # thread for the first worker, the supervising thread (alive until stop) for restarts.
        return subprocess.Popen(self.argv, preexec_fn=_die_with_parent(os.getpid()), process_group=0)

    def start(self) -> int:
        with self._lock:
            self._proc = self._spawn()
        self._thread = threading.Thread(target=self._watch, name=f"{self.name} supervisor", daemon=True)
        self._thread.start()
        return self._proc.pid

    def _say(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            print(f"wakala engine: {text}", file=self.log, flush=True)

    def _watch(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            proc = self._proc
            assert proc is not None
            started = time.monotonic()
            status = proc.wait()
            if self._stopping.is_set():
                return
            failures = 1 if time.monotonic() - started >= self.stable_after_s else failures + 1
            delay = restart_delay(failures, base_s=self.backoff_base_s, cap_s=self.backoff_max_s)
            how = f"signal {-status}" if status < 0 else f"status {status}"
            self._say(f"the {self.name} (pid {proc.pid}) exited with {how}; restarting it in {delay:g} s")
            if self._stopping.wait(delay):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                self._proc = self._spawn()
                self.restarts += 1
            self._say(f"restarted the {self.name} (pid {self._proc.pid})")
        # stop() joins this thread after the child is gone: it stays alive while its child
        # runs, so the child's PR_SET_PDEATHSIG does not fire early.

    def stop(self, grace_s: float = 20.0) -> int | None:
        """SIGTERM the child, SIGKILL after ``grace_s``; no restart after this. Its exit status."""
        with self._lock:
            self._stopping.set()
            proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self._say(f"the {self.name} (pid {proc.pid}) did not stop within {grace_s:g} s; killing it")
                proc.kill()
                proc.wait()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        return proc.returncode
