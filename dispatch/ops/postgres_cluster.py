"""A private, throw-away PostgreSQL 15 cluster for tests and benchmarks of tenant moves.

Why a private cluster: moving a tenant between shards uses logical replication, which needs
``wal_level=logical``. The shared server on this machine runs with ``wal_level=replica``, and
``wal_level`` only changes with a server restart, which the shared server must never have
(every other test, engine and helper uses it). So whatever needs logical decoding starts its
own cluster with :func:`private_postgres`, on a spare port, in a fresh temporary directory,
and throws it away at the end.

Decisions:

* The server binaries come from ``/usr/lib/postgresql/15/bin`` (the Debian layout, which is
  also where the system-wide PostGIS package puts its extension files, so ``CREATE EXTENSION
  postgis`` works inside the private cluster).
* ``initdb`` and ``postgres`` refuse to run as root, so under root they run as the
  ``postgres`` OS user (the same as ``runuser -u postgres --``, but through
  ``subprocess``'s ``user=``/``group=``: the postmaster is then our own child, whose pid we
  signal and whose exit we reap, with no ``runuser`` or ``pg_ctl`` process in between).
  The temporary directory is handed to that user.
* The postmaster runs in a session of its own, so a Ctrl-C in the terminal reaches only the
  Python process, whose cleanup then stops the server in order.
* Settings favour speed over durability (``fsync=off`` and friends): the data lives only as
  long as the test. ``kill()`` (SIGKILL) is still a faithful crash of the server processes:
  without an OS crash the page cache keeps what ``fsync=off`` did not flush, and the next
  ``start()`` runs crash recovery.
* Authentication is ``trust`` for the Unix socket (in the temporary directory) and for
  127.0.0.1, the only address the server listens on.
* Cleanup always happens, also on exceptions, cancellation and KeyboardInterrupt: a fast
  shutdown (SIGINT to the postmaster), then SIGKILL of the postmaster and its children when
  it does not finish in time, then removal of the directory. The teardown blocks instead of
  awaiting, so a second cancellation cannot cut it short. A Python process that is itself
  killed with SIGKILL cannot clean up; its server then runs on until stopped by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from schema.errors import WakalaError

__all__ = [
    "PG15_BINDIR",
    "READY_TIMEOUT",
    "PrivateCluster",
    "PrivateClusterError",
    "cluster_settings",
    "private_postgres",
    "render_settings",
]

PG15_BINDIR = Path("/usr/lib/postgresql/15/bin")
#: Seconds the server gets to accept connections after a start.
READY_TIMEOUT = 30.0
#: Seconds a fast shutdown may take before the processes are killed.
STOP_TIMEOUT = 15.0
_OS_USER = "postgres"
_LOG_TAIL_LINES = 25

FAST_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "128MB",
    "max_connections": "200",
    "max_replication_slots": "20",
    "max_wal_senders": "20",
    "max_logical_replication_workers": "8",
    "max_worker_processes": "16",
    "max_sync_workers_per_subscription": "4",
}
# Chosen by private_postgres itself: a caller changing them would break its own cluster.
_RESERVED = frozenset({
    "port", "listen_addresses", "unix_socket_directories", "data_directory", "hba_file",
    "ident_file", "config_file", "external_pid_file", "wal_level", "logging_collector",
})
_SETTING_NAME = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")

_HBA = """\
# private_postgres: trust on the socket and on 127.0.0.1 only
local   all             all                     trust
local   replication     all                     trust
host    all             all     127.0.0.1/32    trust
host    replication     all     127.0.0.1/32    trust
"""


class PrivateClusterError(WakalaError):
    """A private PostgreSQL cluster could not be set up, started or stopped."""


def cluster_settings(
    *, logical: bool, port: int, socket_dir: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Every setting the private cluster runs with: the fast defaults, then *extra*.

    *extra* may override the fast defaults but not the reserved settings (address, socket,
    files, ``wal_level``, which *logical* decides); names and values are checked by
    :func:`render_settings`.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise PrivateClusterError(f"port must be an integer between 1 and 65535, got {port!r}")
    chosen = dict(FAST_SETTINGS)
    for name, value in (extra or {}).items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise PrivateClusterError(
                f"settings must map names to strings, got {name!r}: {value!r}"
            )
        if name.lower() in _RESERVED:
            raise PrivateClusterError(
                f"setting {name!r} is chosen by private_postgres (use its port/logical "
                "arguments, or connect through PrivateCluster.dsn); remove it from settings"
            )
        chosen[name] = value
    chosen.update(
        wal_level="logical" if logical else "replica",
        port=str(port),
        listen_addresses="127.0.0.1",
        unix_socket_directories=socket_dir,
    )
    return chosen


def render_settings(settings: Mapping[str, str]) -> str:
    """``postgresql.conf`` lines for *settings*, each value quoted.

    Names must be plain (``[a-z_][a-z0-9_]*``, optionally one ``.``-qualified part) and values
    may hold no control characters, so one entry can never become two lines of the file.
    """
    lines = ["", "# private_postgres settings (later lines win)"]
    for name, value in settings.items():
        if not _SETTING_NAME.match(name):
            raise PrivateClusterError(
                f"setting name {name!r} is not a PostgreSQL parameter name ([a-z_][a-z0-9_]*)"
            )
        if _CONTROL_CHARS.search(value):
            raise PrivateClusterError(
                f"setting {name!r} has a control character (newline, NUL...) in its value "
                f"{value!r}; give a single-line value"
            )
        quoted = value.replace("\\", "\\\\").replace("'", "''")
        lines.append(f"{name} = '{quoted}'")
    return "\n".join(lines) + "\n"


def _spare_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres_user() -> dict[str, object]:
    """``Popen`` arguments that drop root to the postgres OS user (nothing when not root)."""
    if os.geteuid() != 0:
        return {}
    import pwd

    try:
        entry = pwd.getpwnam(_OS_USER)
    except KeyError:
        raise PrivateClusterError(
            f"running as root, but there is no {_OS_USER!r} OS user to run PostgreSQL as; "
            "install the postgresql-15 package or run as an unprivileged user"
        ) from None
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no server log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty server log)"


def _children_of(pid: int) -> list[int]:
    """Pids whose parent is *pid* (the postmaster's backends and auxiliary processes)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    """True while *pid* runs (a zombie no longer counts: it holds no memory or sockets)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


class PrivateCluster:
    """One private PostgreSQL 15 cluster: a data directory and, while started, its postmaster."""

    def __init__(self, root: Path, port: int, settings: Mapping[str, str],
                 bindir: Path = PG15_BINDIR) -> None:
        self.host = "127.0.0.1"
        self.port = port
        self.root = root
        self.data_dir = root / "data"
        self.log_path = root / "server.log"
        self.settings = dict(settings)
        self._bindir = bindir
        self._popen_user = _as_postgres_user()
        self._proc: subprocess.Popen[bytes] | None = None

    def dsn(self, database: str = "postgres") -> str:
        """A ``postgresql://`` URL for the superuser ``postgres`` (trust, no password)."""
        from urllib.parse import quote

        return f"postgresql://postgres@{self.host}:{self.port}/{quote(database, safe='')}"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def _run(self, argv: list[str], what: str) -> None:
        done = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=120,
                              cwd=self.root, check=False, **self._popen_user)  # type: ignore[call-overload]
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")[-2000:]
            raise PrivateClusterError(f"{what} failed (exit {done.returncode}): {output}")

    def init(self) -> None:
        """Create the data directory with ``initdb`` and write the settings and pg_hba."""
        self._run([str(self._bindir / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
                   "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"], "initdb")
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(render_settings(self.settings))
        (self.data_dir / "pg_hba.conf").write_text(_HBA)

    async def start(self) -> None:
        """Start the postmaster on the same data directory; wait until it accepts connections."""
        if self.pid is not None:
            raise PrivateClusterError(f"the private cluster on port {self.port} already runs")
        self._spawn()
        await self._wait_ready()

    def _spawn(self) -> None:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [str(self._bindir / "postgres"), "-D", str(self.data_dir)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.root,
                start_new_session=True, **self._popen_user,  # type: ignore[call-overload]
            )

    async def _wait_ready(self) -> None:
        import asyncpg

        deadline = time.monotonic() + READY_TIMEOUT
        last: BaseException | None = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                self._proc = None
                raise PrivateClusterError(
                    f"the private PostgreSQL on port {self.port} exited during start-up; "
                    f"server log tail:\n{_tail(self.log_path)}"
                )
            try:
                conn = await asyncpg.connect(self.dsn(), timeout=2)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                last = exc
                await asyncio.sleep(0.1)
                continue
            await conn.close()
            return
        self._hard_kill()
        raise PrivateClusterError(
            f"the private PostgreSQL on port {self.port} did not accept connections within "
            f"{READY_TIMEOUT:g}s (last error: {last}); server log tail:\n{_tail(self.log_path)}"
        )

    def _hard_kill(self) -> None:
        """SIGKILL the postmaster and every child it has, then reap and wait for them.

        The postmaster is stopped first (SIGSTOP) so that it cannot fork a new backend
        between the listing of its children and the kill; its children run in sessions of
        their own, so a process-group kill would miss them.
        """
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGSTOP)
        children = _children_of(proc.pid)
        for pid in (proc.pid, *children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in children):
            if time.monotonic() > deadline:
                raise PrivateClusterError(
                    f"processes {[p for p in children if _alive(p)]} of the private PostgreSQL "
                    "survived SIGKILL for 10 s"
                )
            time.sleep(0.02)

    def _stop_blocking(self, timeout: float = STOP_TIMEOUT) -> None:
        """Fast shutdown (SIGINT), then :meth:`_hard_kill` if it takes longer than *timeout*."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self._proc = None
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._hard_kill()
        self._proc = None

    async def stop(self) -> None:
        """Stop the server in fast mode (SIGKILL after STOP_TIMEOUT seconds); the data stays."""
        await asyncio.to_thread(self._stop_blocking)

    async def kill(self) -> None:
        """Crash the server: SIGKILL the postmaster and all its processes (the data stays)."""
        await asyncio.to_thread(self._hard_kill)

    def destroy(self) -> None:
        """Stop whatever runs and remove the whole temporary directory."""
        try:
            self._stop_blocking()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@contextlib.asynccontextmanager
async def private_postgres(
    *,
    logical: bool = True,
    port: int | None = None,
    settings: dict[str, str] | None = None,
    bindir: Path = PG15_BINDIR,
) -> AsyncIterator[PrivateCluster]:
    """A started private PostgreSQL 15 cluster, stopped and deleted on exit.

    *logical* picks ``wal_level`` (``logical``, or ``replica`` like the shared server);
    *port* defaults to a spare one; *settings* adds or overrides ``postgresql.conf`` entries
    (see :func:`cluster_settings`). Raises :class:`PrivateClusterError` when the binaries are
    missing or the server does not start (with the tail of its log).
    """
    if not (bindir / "initdb").is_file() or not (bindir / "postgres").is_file():
        raise PrivateClusterError(
            f"no PostgreSQL 15 server binaries in {bindir}; install postgresql-15 "
            "(Debian/Ubuntu: apt-get install postgresql-15)"
        )
    root = Path(tempfile.mkdtemp(prefix="wakala-pg-"))
    try:
        chosen = cluster_settings(logical=logical, port=_spare_port() if port is None else port,
                                  socket_dir=str(root), extra=settings)
        cluster = PrivateCluster(root, int(chosen["port"]), chosen, bindir)
        if cluster._popen_user:
            os.chown(root, cluster._popen_user["user"], cluster._popen_user["group"])  # type: ignore[arg-type]
        await asyncio.to_thread(cluster.init)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    try:
        await cluster.start()
        yield cluster
    finally:
        cluster.destroy()
