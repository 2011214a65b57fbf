"""`aisys serve` stops cleanly and starts cleanly after an unclean stop (a real process, its own Ray).

Started in its own session (the Ctrl-C run with SIGINT ignored, as a script's background job starts;
../shared/STACK.md), then:
- Ctrl-C (SIGINT to the process group) and SIGTERM (to the process alone, as `docker stop` and systemd send it)
  each stop the app and every process it started within 15 s;
- after a SIGKILL of its whole process group with the HAProxy ingress (which used to leave HAProxy holding the
  port and Ray's agents running), a second `aisys serve` on the same port starts, reaps the leftovers, and serves.
The SIGTERM check is made on that second run (each start costs a Ray and a Serve application: ~20 s), with the same
assertions as the Ctrl-C one (:func:`stop_and_check`).

What is left is checked by listing processes (psutil), not by process group: Ray's workers, agents and HAProxy
run in groups of their own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from aisys.config import config_from_dict
from aisys.data.lake import Lake
from tests.conftest import seed_mlflow_db, small_config_dict
from tests.e2e.cluster_helpers import commit_events, free_port, tiny_events, train_tiny_champion, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STOP_WITHIN_S = 15.0


@pytest.fixture(scope="module")
def served_workspace(tmp_path_factory, mlflow_db_template) -> Path:
    """A workspace with a registered champion and a config file that serves it on a free port."""
    root = tmp_path_factory.mktemp("serve-stop")
    seed_mlflow_db(mlflow_db_template, root / "mlflow.db")  # small_config_dict's tracking URI
    data = small_config_dict(root)
    data["serve"] = {"port": free_port(), "access_log": False}
    data["monitor"] = {"enabled": False}
    cfg = config_from_dict(data, "test_serve_stop")
    lake = Lake.from_config(cfg.paths)
    events = tiny_events()
    snapshot_id = commit_events(lake, events)
    train_tiny_champion(cfg, lake.read_events(snapshot_id), snapshot_id, epochs=1)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _stop_a_server_the_test_left():
    """A test that fails before it stops its `aisys serve` must not leave it (and its Ray) running for the rest of the
    suite: SIGTERM (its clean stop), then SIGKILL of its group."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def launch_serve(config: Path, *overrides: str, sigint_ignored: bool = False) -> subprocess.Popen:
    """`aisys serve` in its own process group, its output to a file beside ``config`` (:func:`output_of`).

    ``sigint_ignored``: started as a shell script's background job is (``aisys serve &``, ``nohup``), with SIGINT
    ignored, which Python keeps unless told otherwise.

    A file, not a pipe: nobody reads a pipe while the server runs, and an `aisys serve` that writes more than the
    pipe's 64 KiB (Ray's warnings on a loaded box) would block on its next write and never answer."""
    log = config.parent / f"serve-{time.monotonic_ns()}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aisys.cli", "serve", "--config", str(config),
             *(f"--set={o}" for o in overrides)],
            stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None,
        )
    proc.log_path = log
    _STARTED.append(proc)
    return proc


def output_of(proc: subprocess.Popen) -> str:
    """What ``proc`` (started by :func:`launch_serve`) has written so far."""
    return proc.log_path.read_text(errors="replace")


def start_serve(config: Path, *overrides: str, sigint_ignored: bool = False) -> tuple[subprocess.Popen, str]:
    port = yaml.safe_load(config.read_text())["serve"]["port"]
    proc = launch_serve(config, *overrides, sigint_ignored=sigint_ignored)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"`aisys serve` exited {proc.returncode}:\n{output_of(proc)[-4000:]}")
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, timeout=180, what="`aisys serve` /healthz")
    return proc, url


def process_tree(pid: int) -> list[psutil.Process]:
    """The process and every descendant now (Ray's head, workers, agents, replicas, HAProxy)."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def still_running(procs: list[psutil.Process]) -> list[str]:
    alive = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{proc.pid} {' '.join(proc.cmdline())[:100]}")
        except psutil.NoSuchProcess:
            continue
    return alive


def wait_all_gone(procs: list[psutil.Process], within_s: float) -> list[str]:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        alive = still_running(procs)
        if not alive:
            return []
        time.sleep(0.2)
    return still_running(procs)


def run_record(config: Path) -> Path:
    """Where `aisys serve` records its processes (removed by a clean stop)."""
    return Path(yaml.safe_load(config.read_text())["paths"]["workspace"]) / "run" / "serve.json"


def stop_and_check(proc: subprocess.Popen, url: str, config: Path, how: str) -> None:
    """Stop a healthy `aisys serve` with ``how`` ("ctrl-c" or "sigterm"); assert it exited 0 within
    STOP_WITHIN_S with every process it started, freed the port and removed its run record."""
    tree = process_tree(proc.pid)
    assert len(tree) > 5, "Ray's processes should be under `aisys serve`"
    started = time.monotonic()
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends to the foreground group
    else:
        proc.send_signal(signal.SIGTERM)  # docker stop / systemd: the main process only
    proc.wait(timeout=60)
    left = wait_all_gone(tree, max(STOP_WITHIN_S - (time.monotonic() - started), 0.5))
    took = time.monotonic() - started
    output = output_of(proc)
    assert left == [], f"left running {took:.1f} s after {how}: {left}\n{output[-3000:]}"
    assert proc.returncode == 0, output[-3000:]
    print(f"{how}: {len(tree)} processes stopped in {took:.1f} s")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/healthz", timeout=2)
    assert not run_record(config).exists()


def test_ctrl_c_stops_the_app_and_every_process_it_started(served_workspace):
    """Even when started with SIGINT ignored (a script's background job): a SIGINT to it used to do nothing until
    the benchmark's SIGKILL 90 s later; a terminal's foreground start is the easier case of the same handler."""
    proc, url = start_serve(served_workspace, sigint_ignored=True)
    # The shipped default serve.replica_niceness: the replicas serve at nice 0, not at Ray's worker default 15.
    replicas = [p for p in process_tree(proc.pid) if "ServeReplica" in " ".join(p.cmdline())]
    assert replicas and all(p.nice() == 0 for p in replicas), [(p.pid, p.nice()) for p in replicas]
    stop_and_check(proc, url, served_workspace, "ctrl-c")


def test_after_a_kill_9_of_the_group_the_next_serve_reaps_the_leftovers_and_starts_and_sigterm_stops_it(
        served_workspace):
    first, url = start_serve(served_workspace, "serve.ingress=haproxy")
    tree = process_tree(first.pid)
    # The run record is refreshed every 0.5 s: wait until it names the whole tree seen now, as it will by the
    # time anything but a kill in the very first instant arrives.
    record = run_record(served_workspace)

    def recorded() -> set[int]:
        return {p["pid"] for p in json.loads(record.read_text())["processes"]}

    # Only the processes still alive: a worker that Ray starts and retires at once (the replicas' runtime_env
    # makes Ray start their workers anew) has nothing left to record.
    wait_until(lambda: {p.pid for p in tree if p.is_running()} <= recorded() | {first.pid}, timeout=10,
               what="the run record to list every process")
    time.sleep(2)  # HAProxy reloads (a new process) as replicas register; the kill then catches all of it
    tree = process_tree(first.pid)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    time.sleep(1)
    orphans = still_running(tree)
    print(f"left by the SIGKILL of the group: {len(orphans)} of {len(tree)} processes")
    assert orphans, "nothing outlived the group kill: the test no longer exercises the clean-up"
    # The orphans still answer on the port (HAProxy, proxy and replica survive), so /healthz alone would not
    # tell the runs apart: the second run has taken over once the record names it as the owner. It serves through
    # the default ingress: what is tested is that the first run's HAProxy no longer holds the port (and Serve's
    # controller takes its full 30 s shutdown timeout with HAProxy, which would only slow the test).
    second = launch_serve(served_workspace)
    try:
        wait_until(lambda: record.exists() and json.loads(record.read_text())["owner"]["pid"] == second.pid,
                   timeout=60, what="the second run to take over the run record")
        assert still_running(tree) == [], "the second start left the first run's processes running"
        wait_until(lambda: httpx.get(f"{url}/healthz", timeout=2).status_code == 200, timeout=180,
                   what="the second run's /healthz")
        assert second.poll() is None
        # (Whether it also says "stopped N processes left by an earlier `aisys serve`" depends on how many orphans
        # were still alive when it looked: Ray's workers exit on their own once they notice their raylet is gone.)
        stop_and_check(second, url, served_workspace, "sigterm")
    finally:
        if second.poll() is None:  # an assertion above failed: do not leave it running; say what it printed
            print(f"the second run's output:\n{output_of(second)[-4000:]}")


def test_a_port_held_by_someone_else_is_named_with_the_fix(served_workspace):
    import socket

    port = yaml.safe_load(served_workspace.read_text())["serve"]["port"]
    with socket.socket() as holder:
        # The earlier tests' connections to this port may linger in TIME_WAIT; without SO_REUSEADDR that alone
        # refuses the bind (as it would refuse any server that sets it). A port still *listened on* still fails.
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", port))
        holder.listen()
        proc = subprocess.run([sys.executable, "-m", "aisys.cli", "serve", "--config", str(served_workspace)],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"port {port} on 127.0.0.1 is held by pid {os.getpid()}" in proc.stderr
    assert "--set serve.port=" in proc.stderr and "Traceback" not in proc.stderr
