"""The inter-process lock behind promotions: excludes threads and processes, times out, dies with its holder."""

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from aisys.registry.lock import LockTimeout, file_lock, lock_file_name, registry_lock_path

HOLDER = """
import sys, time
from aisys.registry.lock import file_lock
with file_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def hold_in_child(path: Path, seconds: float) -> subprocess.Popen:
    """A child process that holds the lock on ``path`` for ``seconds``; returns once it holds it."""
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def test_threads_exclude_each_other_so_no_update_is_lost(tmp_path):
    lock, counter = tmp_path / "locks" / "x.lock", tmp_path / "counter"
    counter.write_text("0")

    def increment():
        with file_lock(lock, timeout_s=10):
            value = int(counter.read_text())
            time.sleep(0.005)  # widen the read-modify-write window: without the lock, updates are lost
            counter.write_text(str(value + 1))

    threads = [threading.Thread(target=increment) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter.read_text() == "12"


def test_a_lock_held_by_another_process_times_out_with_its_path_then_frees(tmp_path):
    path = tmp_path / "p.lock"
    child = hold_in_child(path, 30)
    try:
        started = time.perf_counter()
        with pytest.raises(LockTimeout, match="p.lock"):
            with file_lock(path, timeout_s=0.2):
                pass
        assert 0.2 <= time.perf_counter() - started < 2
    finally:
        child.kill()  # SIGKILL: the kernel releases a flock with its holder, no stale lock remains
        child.wait()
    started = time.perf_counter()
    with file_lock(path, timeout_s=5):
        assert time.perf_counter() - started < 1


def test_the_lock_is_released_after_the_body_even_on_error(tmp_path):
    path = tmp_path / "e.lock"
    with pytest.raises(RuntimeError):
        with file_lock(path, timeout_s=1):
            raise RuntimeError("boom")
    with file_lock(path, timeout_s=0.1):
        pass


def test_lock_paths_are_per_database_and_per_model(tmp_path):
    db = tmp_path / "reg" / "mlflow.db"
    sqlite_lock = registry_lock_path(f"sqlite:///{db}", tmp_path / "ws", "aisys-recommender")
    assert sqlite_lock.parent == db.parent and sqlite_lock.name.startswith(".mlflow.db.aisys-recommender-")
    assert registry_lock_path(f"sqlite:///{db}", tmp_path / "other-ws", "aisys-recommender") == sqlite_lock
    remote = registry_lock_path("http://mlflow:5000", tmp_path / "ws", "aisys-recommender")
    assert remote.parent == tmp_path / "ws" / "locks"
    assert registry_lock_path(f"sqlite:///{db}", tmp_path / "ws", "other-model") != sqlite_lock
    # Names that differ only in characters a file name cannot hold still get different locks.
    assert lock_file_name("promotion", "a/b") != lock_file_name("promotion", "a:b")
    assert "/" not in lock_file_name("promotion", "a/b")
