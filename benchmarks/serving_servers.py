"""The servers the serving benchmark measures, each in its own process tree, and the CPU they spend.

- :func:`start_aisys_serve`: ``aisys serve`` itself (``python -m aisys.cli serve``, the code path a user runs),
  on a config file with the benchmark's few overrides; stopped with SIGINT to its process group (Ctrl-C).
- :func:`start_uvicorn`: ``uvicorn --workers N --factory serving_servers:uvicorn_app``: the same FastAPI app
  (``build_fastapi_app`` + the gateway + request metrics over an ``OnlineService`` built as a replica builds
  one), one per worker, no Ray: what a user would run instead.
- :class:`CpuMeter`: CPU seconds per process of a server's tree (psutil), labelled by what the process is
  (``ray::ServeReplica...``, ``ray::ProxyActor``, ``haproxy``, ``raylet``, ``uvicorn worker``...).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from contextlib import closing
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
QUIET = {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
UVICORN_WORKER = "uvicorn worker"  # the CPU label of uvicorn's worker processes
CONFIG_ENV = "AISYS_BENCH_CONFIG"  # the uvicorn factory's config file (set by start_uvicorn)


# ------------------------------------------------------------------ the uvicorn app (one per worker)


def uvicorn_app():
    """uvicorn ``--factory`` target: the project's FastAPI app with the gateway, for the config in ``$AISYS_BENCH_CONFIG``.

    The service is built on a thread of its own: uvicorn calls the factory inside its running event loop.
    """
    from serving_workload import local_service

    from aisys.config import load_config
    from aisys.gateway import Gateway
    from aisys.serving.routes import build_fastapi_app
    from aisys.serving.telemetry import install_request_metrics

    cfg = load_config(os.environ[CONFIG_ENV], environ={})
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        service = pool.submit(asyncio.run, local_service(cfg)).result()
    app = build_fastapi_app(service, default_k=cfg.serve.default_k, max_k=cfg.serve.max_k,
                            gateway=Gateway.from_config(cfg), freeze_heap=cfg.serve.freeze_heap)
    install_request_metrics(app)
    return app


# ------------------------------------------------------------------ starting and stopping


def free_port_block(span: int = 1) -> int:
    """A port ``p`` such that ``p .. p + span - 1`` are free now."""
    import socket

    for _ in range(200):
        with closing(socket.socket()) as sock:
            sock.bind(("127.0.0.1", 0))
            base = sock.getsockname()[1]
        if base + span > 65000:
            continue
        try:
            for p in range(base, base + span):
                with closing(socket.socket()) as probe:
                    probe.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
    raise RuntimeError(f"no block of {span} free ports found")


def start_aisys_serve(config_path: Path, log_path: Path, env: dict[str, str]) -> subprocess.Popen:
    """``aisys serve`` on ``config_path`` in a new session (so SIGINT to its group is a terminal's Ctrl-C)."""
    cmd = [sys.executable, "-m", "aisys.cli", "serve", "--config", str(config_path)]
    return _popen(cmd, log_path, env)


def start_uvicorn(config_path: Path, port: int, workers: int, log_path: Path) -> subprocess.Popen:
    """``uvicorn --workers N --factory`` over :func:`uvicorn_app`."""
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "serving_servers:uvicorn_app",
           "--app-dir", str(REPO / "benchmarks"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", str(workers), "--log-level", "warning", "--no-access-log"]
    return _popen(cmd, log_path, {CONFIG_ENV: str(config_path)})


def _popen(cmd: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen:
    log = open(log_path, "w")  # closed with the process (the child keeps its own descriptor)
    try:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **QUIET, **env}, cwd=REPO, start_new_session=True)
    finally:
        log.close()


def wait_healthy(urls: list[str], timeout: float, proc: subprocess.Popen, api_key: str,
                 probe_path: str) -> list[str]:
    """The ``urls`` that answer ``probe_path`` with 200 (polls until at least one does, or raise)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before it answered")
        found = []
        for url in urls:
            try:
                if httpx.get(url + probe_path, headers={"X-API-Key": api_key}, timeout=5).status_code == 200:
                    found.append(url)
            except Exception:
                pass
        if found:
            return found
        time.sleep(1.0)
    raise RuntimeError(f"no answer from {urls} after {timeout:.0f} s")


def stop(proc: subprocess.Popen, sig: int, timeout: float = 90) -> None:
    """Send ``sig`` to the server's process group (SIGINT: Ctrl-C); SIGKILL the group if it outlives ``timeout``.

    Then SIGKILL whatever of the server's process tree is still alive (noted before the signal): an HAProxy left
    behind by a replica manager that was killed keeps ports 9101/8404, and the next ``aisys serve`` fails to start.
    """
    import psutil

    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # our own child's session (start_new_session=True)
        proc.wait(timeout=10)
    _, alive = psutil.wait_procs(tree, timeout=10)
    for child in alive:  # our server's own descendants, by pid
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


# ------------------------------------------------------------------ CPU per process


def process_label(cmdline: list[str], name: str) -> str:
    """What a process is, from its command line: ``ray::ServeReplica:aisys:RecommenderService``, ``raylet``..."""
    if not cmdline:
        return name
    head = cmdline[0]
    if head.startswith("ray::"):
        return head.split(" ")[0]
    base = Path(head).name
    if base.startswith("python"):
        args = [a for a in cmdline[1:] if not a.startswith("-")]
        if "-m" in cmdline:
            module = cmdline[cmdline.index("-m") + 1]
            if module == "uvicorn":
                return "uvicorn master"
            return f"python -m {module}"
        line = " ".join(cmdline)
        if "multiprocessing.resource_tracker" in line:
            return "python resource_tracker"  # multiprocessing's helper, not a worker
        if "multiprocessing" in line:
            return UVICORN_WORKER
        return f"python {Path(args[0]).name}" if args else base
    return base


class CpuMeter:
    """CPU seconds (user + system) spent by each process of the tree under ``root_pid`` between two samples."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid

    def sample(self) -> dict[int, tuple[str, float]]:
        import psutil

        try:
            root = psutil.Process(self.root_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return {}
        out = {}
        for proc in procs:
            try:
                times = proc.cpu_times()
                out[proc.pid] = (process_label(proc.cmdline(), proc.name()), times.user + times.system)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return out

    @staticmethod
    def per_label(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
        """CPU seconds between the samples, summed per label (a process started between them counts from 0)."""
        spent: dict[str, float] = defaultdict(float)
        for pid, (label, cpu) in after.items():
            spent[label] += max(0.0, cpu - before.get(pid, (label, 0.0))[1])
        return {label: round(cpu, 3) for label, cpu in sorted(spent.items(), key=lambda kv: -kv[1]) if cpu > 0}


CLIENT_LABEL = "client (aisys.loadgen)"


def busy_processes(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], label: str,
                   share: float = 0.1) -> list[int]:
    """``[busy, all]``: the processes labelled ``label`` that spent at least ``share`` of their label's CPU between
    the samples, and all of them. uvicorn's workers share one listening socket and a keep-alive client's
    connections stay with the worker that accepted them: measured, 16 connections opened at once all landed on
    one of two workers in some cells (one core serving, ~290 requests/s, against ~700-800 when they spread)."""
    spent = {pid: max(0.0, cpu - before.get(pid, (lbl, 0.0))[1]) for pid, (lbl, cpu) in after.items() if lbl == label}
    total = sum(spent.values())
    return [sum(1 for cpu in spent.values() if total > 0 and cpu >= share * total), len(spent)]


def cpu_per_request_ms(spent: dict[str, float], requests: int) -> dict[str, Any]:
    """Milliseconds of CPU per answered request, per process label; ``total`` is the server's (client excluded)."""
    if requests <= 0:
        return {}
    per = {label: round(cpu * 1000 / requests, 3) for label, cpu in spent.items()}
    server = sum(cpu for label, cpu in spent.items() if label != CLIENT_LABEL)
    return {"total": round(server * 1000 / requests, 3), **per}
