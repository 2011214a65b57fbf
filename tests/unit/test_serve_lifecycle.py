"""The run record of `aisys serve`: what it tracks, what a clean stop and a restart after `kill -9` reap.

Real processes stand in for Ray's: a child that starts a grandchild in a session of its own (as Ray's
workers, agents and HAProxy run in process groups of their own, out of reach of a group kill).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from aisys.serving import lifecycle
from aisys.serving.lifecycle import (RunRecord, ServeRun, ServeStartError, TrackedProcess, clean_up_stale_run,
                                     port_holder, read_record, reap, record_path, require_free_port, write_record)

SPAWNER = (
    "import subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True)\n"
    "time.sleep(120)\n"
)


def _spawn_tree() -> subprocess.Popen:
    """A child of this process that starts a grandchild in its own session; both sleep."""
    proc = subprocess.Popen([sys.executable, "-c", SPAWNER])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not psutil.Process(proc.pid).children():
        time.sleep(0.05)
    return proc


def _gone(tracked: list[TrackedProcess], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(t.alive() is None for t in tracked):
            return True
        time.sleep(0.1)
    return False


def test_the_record_tracks_descendants_and_a_clean_stop_reaps_them_all(tmp_path, monkeypatch):
    # The record follows every descendant of this process, and this pytest process may also own a Ray (a session
    # Ray started by an earlier test on the same worker): the run sees only the tree spawned here, or its reap
    # would stop that Ray too.
    mine: set[int] = set()
    every_descendant = lifecycle.descendants
    monkeypatch.setattr(lifecycle, "descendants", lambda pid: [p for p in every_descendant(pid) if p.pid in mine])
    with ServeRun(tmp_path, port=8000, refresh_s=0.1) as run:
        child = _spawn_tree()
        grandchild = psutil.Process(child.pid).children()[0]
        mine.update({child.pid, grandchild.pid})
        grand_tracked = TrackedProcess.of(grandchild)
        record = run.refresh()
        assert {child.pid, grandchild.pid} <= {p.pid for p in record.processes}
        assert read_record(record_path(tmp_path)).owner.pid == os.getpid()
        # The grandchild outlives its parent, reparented away from us: the record still names it.
        child.kill()
        child.wait()
        time.sleep(0.3)
        assert grandchild.is_running() and grandchild.pid not in {p.pid for p in psutil.Process().children(True)}
        reaped = run.reap_leftovers()
    assert grandchild.pid in {p.pid for p in reaped}
    assert _gone([grand_tracked])
    assert not record_path(tmp_path).exists()


def test_a_restart_after_kill_9_reaps_what_the_dead_run_left(tmp_path):
    owner = subprocess.Popen([sys.executable, "-c", "pass"])
    owner_tracked = TrackedProcess.of(psutil.Process(owner.pid))
    owner.wait()  # the old `aisys serve`, killed
    left = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    left_tracked = TrackedProcess.of(psutil.Process(left.pid))
    write_record(record_path(tmp_path), RunRecord(owner_tracked, 8000, [left_tracked]))

    reaped = clean_up_stale_run(tmp_path)
    left.wait(timeout=10)
    assert [p.pid for p in reaped] == [left.pid]
    assert left.returncode is not None and not record_path(tmp_path).exists()


def test_a_live_owner_is_reported_not_killed(tmp_path):
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        write_record(record_path(tmp_path), RunRecord(TrackedProcess.of(psutil.Process(owner.pid)), 8123, []))
        with pytest.raises(ServeStartError, match=f"already running for this workspace \\(pid {owner.pid}, port 8123\\)"):
            clean_up_stale_run(tmp_path)
        assert owner.poll() is None
    finally:
        owner.kill()
        owner.wait()


def test_a_recycled_pid_is_never_killed():
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        real = TrackedProcess.of(psutil.Process(bystander.pid))
        impostor = TrackedProcess(real.pid, real.create_time - 1000.0, "an older process with the same pid")
        assert impostor.alive() is None
        assert reap([impostor]) == [] and bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_a_torn_record_is_ignored(tmp_path):
    path = record_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert read_record(path) is None and clean_up_stale_run(tmp_path) == []


def test_port_holder_names_the_listener():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        holder = port_holder("127.0.0.1", port)
        assert holder is not None and (f"pid {os.getpid()}" in holder or holder == "another process")
        with pytest.raises(ServeStartError, match=f"port {port} on 127.0.0.1 is held by .*--set serve.port="):
            require_free_port("127.0.0.1", port)
    assert port_holder("127.0.0.1", port) is None
