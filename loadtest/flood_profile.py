"""Where the engine's time goes during the token flood: py-spy on the engine process.

``py-spy record --format raw`` writes collapsed stacks (``frame;frame;frame count``); the
bench reads them back into the few lines worth printing next to its figures: the functions
the samples were in (self) and those on the stack (total), as shares of all samples. py-spy
is not a dependency of the engine: the profile is skipped, and says so, when it is absent
(``pip install py-spy``; it needs to be allowed to ptrace the engine).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections import Counter

__all__ = ["OWN_CODE", "Profiler", "top_frames"]

# Frames of this project's code (py-spy names a frame ``function (path:line)``).
OWN_CODE = ("(dispatch/", "(schema/", "(streams/", "(geo/")


def top_frames(collapsed: str, n: int = 12, only: tuple[str, ...] = ()) -> tuple[int, list[tuple[str, float, float]]]:
    """(samples, [(frame, share %, total share %)]) from py-spy's raw collapsed stacks.

    Without ``only``: the frames the samples were in (self share), highest first. With
    ``only`` (strings a frame must contain, e.g. the project's paths): each sample goes to the
    deepest such frame on its stack, so the shares say where the project's code spends the
    time, the library calls it makes included, without the wrappers every request passes
    through. Total share: samples with the frame anywhere on the stack."""
    share: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        frames = stack.split(";")
        samples += k
        if only:
            mine = [f for f in frames if any(o in f for o in only)]
            if mine:
                share[mine[-1]] += k
        else:
            share[frames[-1]] += k
        for frame in set(frames):
            total[frame] += k
    if not samples:
        return 0, []
    return samples, [(frame, round(100 * k / samples, 1), round(100 * total[frame] / samples, 1))
                     for frame, k in share.most_common(n)]


class Profiler:
    """``py-spy record`` on one process from ``start`` to ``stop``."""

    def __init__(self, pid: int, path: str, rate: int = 100) -> None:
        self.pid, self.path, self.rate = pid, path, rate
        self.proc: subprocess.Popen | None = None
        self.note = ""

    def start(self) -> None:
        exe = shutil.which("py-spy")
        if exe is None:
            self.note = "py-spy not found on PATH: no profile"
            return
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self.proc = subprocess.Popen([exe, "record", "--pid", str(self.pid), "--format", "raw", "--rate",
                                      str(self.rate), "--nonblocking", "--output", self.path],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> tuple[int, list[tuple[str, float, float]], list[tuple[str, float, float]]]:
        """(samples, top frames by self share, the project's deepest frames)."""
        if self.proc is None:
            return 0, [], []
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGINT)   # py-spy writes its output on Ctrl-C
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        try:
            with open(self.path) as f:
                collapsed = f.read()
        except OSError:
            self.note = f"py-spy wrote no profile: {err.decode(errors='replace').strip()[-200:]}"
            return 0, [], []
        samples, by_self = top_frames(collapsed)
        return samples, by_self, top_frames(collapsed, 10, OWN_CODE)[1]
