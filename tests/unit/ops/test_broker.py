"""``dispatch.ops.broker``: the pid file and the process identity that guard ``services down``.
No broker is started here (that is tests/integration/ops)."""

from __future__ import annotations

import os
from pathlib import Path

from dispatch.ops.broker import is_tansu_process, managed_broker_pid, pid_alive, read_pid_file
from dispatch.ops.config import ServicesConfig


def test_pid_file_absent_unreadable_or_recorded(tmp_path: Path) -> None:
    pid_file = tmp_path / "tansu.pid"
    assert read_pid_file(pid_file) is None
    for garbage in ("", "\n", "not-a-pid\n"):
        pid_file.write_text(garbage)
        assert read_pid_file(pid_file) == -1
    pid_file.write_text("4242\n")
    assert read_pid_file(pid_file) == 4242


def test_a_live_process_that_is_not_tansu_is_never_the_managed_broker(tmp_path: Path) -> None:
    config = ServicesConfig(state_dir=tmp_path)
    assert managed_broker_pid(config) is None
    tmp_path.joinpath("tansu.pid").write_text(f"{os.getpid()}\n")
    assert pid_alive(os.getpid()) and not is_tansu_process(os.getpid())
    assert managed_broker_pid(config) is None
