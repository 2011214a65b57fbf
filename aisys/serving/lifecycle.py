"""A clean stop for `aisys serve`, and a clean start after an unclean one.

Ray's processes do not all die with the process that started them: after a SIGTERM or SIGKILL of
`aisys serve`, ``ray::DashboardAgent`` and ``ray::RuntimeEnvAgent`` were left running (reparented to
init), and with ``serve.ingress=haproxy`` the HAProxy (a child of an actor, in its own process group)
kept the port, so the next `aisys serve` failed to bind. Killing a process group does not reach them
either: Ray's workers and agents run in groups of their own.

So `aisys serve` keeps a **run record** in the workspace (``<workspace>/run/serve.json``): its own pid
and every descendant process, each with its creation time (so a recycled pid is never mistaken for
ours), refreshed while it serves because replicas and HAProxy start later. A clean stop (Ctrl-C or
SIGTERM) shuts Serve and Ray down and then reaps whatever of the record is still alive; the next start
reads a record whose owner is gone (a ``kill -9``) and reaps its leftovers before binding the port.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import psutil

RECORD_NAME = "run/serve.json"
# The GCS server and the autoscaler monitor ignore SIGTERM (measured: still up after 20 s): a short grace,
# then SIGKILL. Nothing they hold needs a drain once Serve itself has shut down.
TERMINATE_GRACE_S = 3.0


class ServeStartError(OSError):
    """`aisys serve` cannot start here: another one serves this workspace, or its port is taken."""


@dataclass(frozen=True)
class TrackedProcess:
    """A process and its creation time: the pair identifies it even after its pid is reused."""

    pid: int
    create_time: float
    name: str = ""

    @classmethod
    def of(cls, proc: psutil.Process) -> "TrackedProcess":
        with proc.oneshot():
            return cls(proc.pid, proc.create_time(), _describe(proc))

    def alive(self) -> psutil.Process | None:
        """The live process this record names, or None (gone, or its pid now belongs to another process)."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE:
                return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
        return None


@dataclass
class RunRecord:
    """What one `aisys serve` started: its own process, its descendants, and the port it serves on."""

    owner: TrackedProcess
    port: int
    processes: list[TrackedProcess] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "RunRecord":
        data = json.loads(text)
        return cls(owner=TrackedProcess(**data["owner"]), port=int(data["port"]),
                   processes=[TrackedProcess(**p) for p in data.get("processes", [])])


def _describe(proc: psutil.Process) -> str:
    try:
        cmdline = proc.cmdline()
        return " ".join(cmdline)[:120] if cmdline else proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return ""


def descendants(pid: int) -> list[TrackedProcess]:
    """Every live descendant of ``pid`` (children, their children, ...)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    tracked = []
    for child in children:
        try:
            tracked.append(TrackedProcess.of(child))
        except psutil.NoSuchProcess:
            continue
    return tracked


def record_path(workspace: str | os.PathLike) -> Path:
    return Path(workspace) / RECORD_NAME


def write_record(path: Path, record: RunRecord) -> None:
    """Write the record atomically (a reader never sees half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(".tmp")
    temp.write_text(record.to_json())
    temp.replace(path)


def read_record(path: Path) -> RunRecord | None:
    try:
        return RunRecord.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return None  # a torn or foreign file: nothing we can trust to kill


def reap(processes: list[TrackedProcess], grace_s: float = TERMINATE_GRACE_S) -> list[TrackedProcess]:
    """SIGTERM every process of ``processes`` still alive, SIGKILL what outlives ``grace_s``; return those reaped."""
    live = [(p, proc) for p in processes if (proc := p.alive()) is not None]
    for _, proc in live:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, survivors = psutil.wait_procs([proc for _, proc in live], timeout=grace_s)
    for proc in survivors:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(survivors, timeout=grace_s)
    return [p for p, _ in live]


def clean_up_stale_run(workspace: str | os.PathLike) -> list[TrackedProcess]:
    """Reap what an earlier `aisys serve` of this workspace left behind when it was killed; return it.

    A record whose owner still runs belongs to a live server: that is an error to report, not to clean.
    """
    path = record_path(workspace)
    record = read_record(path)
    if record is None:
        return []
    if record.owner.alive() is not None and record.owner.pid != os.getpid():
        raise ServeStartError(
            f"`aisys serve` is already running for this workspace (pid {record.owner.pid}, port {record.port}): "
            f"stop it first (Ctrl-C in its terminal, or `kill {record.owner.pid}`)"
        )
    reaped = reap(record.processes)
    # HAProxy reloads by starting a new process (`-sf <old pid>`): one started after the record's last refresh
    # is not in it, but it is still ours if it is an orphaned Serve HAProxy holding this run's port.
    reaped += reap([TrackedProcess.of(proc) for proc in _orphaned_serve_haproxies(record.port)])
    path.unlink(missing_ok=True)
    return reaped


def _orphaned_serve_haproxies(port: int) -> list[psutil.Process]:
    """Ray Serve HAProxy processes reparented to init that listen on ``port``."""
    found = []
    try:
        listeners = {c.pid for c in psutil.net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid}
    except psutil.AccessDenied:
        return found
    for pid in listeners:
        try:
            proc = psutil.Process(pid)
            if proc.ppid() == 1 and proc.name().startswith("haproxy") and "haproxy-serve" in " ".join(proc.cmdline()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def require_free_port(host: str, port: int) -> None:
    """Raise :class:`ServeStartError` naming the holder and the fix when ``host:port`` is taken."""
    holder = port_holder(host, port)
    if holder is not None:
        raise ServeStartError(
            f"port {port} on {host} is held by {holder}: stop that process, or serve elsewhere with "
            f"--set serve.port=<free port>"
        )


def port_holder(host: str, port: int) -> str | None:
    """Who listens on ``host:port`` (``"pid 123 (haproxy ...)"``), ``"another process"`` when that cannot be
    read, or None when the port is free."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return None
        except OSError:
            pass
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return f"pid {conn.pid} ({_describe(psutil.Process(conn.pid))})"
    except (psutil.AccessDenied, psutil.NoSuchProcess):
        pass
    return "another process"


class ServeRun:
    """The run record of this `aisys serve`, kept current by a background thread while it serves.

    Use as a context manager around start-and-wait: on exit (normal, Ctrl-C, or SIGTERM turned into
    ``KeyboardInterrupt`` by :func:`sigterm_as_interrupt`) the caller stops Serve and Ray, then
    :meth:`reap_leftovers` kills whatever the record still names.
    """

    def __init__(self, workspace: str | os.PathLike, port: int, refresh_s: float = 0.5) -> None:
        self.path = record_path(workspace)
        self.port = port
        self.refresh_s = refresh_s
        self._seen: dict[tuple[int, float], TrackedProcess] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> RunRecord:
        """Add the current descendants to the record (a process once seen stays in it) and write it."""
        for proc in descendants(os.getpid()):
            self._seen.setdefault((proc.pid, proc.create_time), proc)
        # Ray recycles workers over a long run: forget the ones that ended, or the record only grows.
        self._seen = {key: p for key, p in self._seen.items() if p.alive() is not None}
        record = RunRecord(TrackedProcess.of(psutil.Process()), self.port, list(self._seen.values()))
        write_record(self.path, record)
        return record

    def __enter__(self) -> "ServeRun":
        self.refresh()
        self._thread = threading.Thread(target=self._keep_current, name="aisys-run-record", daemon=True)
        self._thread.start()
        return self

    def _keep_current(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - a missed refresh is retried; it must never stop serving
                continue

    def stop_tracking(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def reap_leftovers(self) -> list[TrackedProcess]:
        """After Serve and Ray were shut down: kill what the record still names, then drop the record."""
        self.stop_tracking()
        self.refresh()  # anything started since the last refresh
        reaped = reap(list(self._seen.values()))
        self.path.unlink(missing_ok=True)
        return reaped

    def __exit__(self, *exc) -> None:
        self.stop_tracking()


def sigterm_as_interrupt() -> None:
    """Make SIGTERM (``docker stop``, systemd, ``kill``) stop `aisys serve` the way Ctrl-C does, and make
    SIGINT stop it even when it was started ignoring SIGINT.

    Call it again once Ray has started: Ray's core worker installs a SIGTERM handler of its own, which logs
    "SIGTERM received" and aborts the process (exit -6) with nothing stopped. A shell script's background job
    (``aisys serve &``, ``nohup``) starts with SIGINT ignored, and Python then keeps it ignored: a ``kill -INT``
    (what the benchmarks and a supervisor's "Ctrl-C" send) did nothing until a SIGKILL 90 s later (2026-12-07).
    """

    def interrupt(signum, frame) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def live_processes(record: RunRecord) -> Iterator[TrackedProcess]:
    """The processes of ``record`` that are still alive (for tests and diagnostics)."""
    return (p for p in record.processes if p.alive() is not None)
