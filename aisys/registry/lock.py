"""An exclusive lock shared by threads and processes of one host: ``fcntl.flock`` on a lock file.

Why ``flock``: the kernel drops the lock when its holder dies (a killed promotion never leaves a stale lock
behind), and every :func:`file_lock` call opens the file anew, so two threads of one process exclude each other
as two processes do. What it does not cover: hosts that share no filesystem (or an NFS without ``flock``), e.g.
several machines writing to one remote MLflow server; see :func:`registry_lock_path`.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

DEFAULT_TIMEOUT_S = 300.0
_POLL_S = 0.02


class LockTimeout(TimeoutError):
    """The lock was held by someone else for longer than the caller would wait."""


@contextmanager
def file_lock(path: str | Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created, with its folder, when missing) for the ``with`` body.

    Waits up to ``timeout_s`` seconds, then raises :class:`LockTimeout` naming the file. Not re-entrant: a
    thread that takes the same lock twice waits for itself until the timeout.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeout(f"lock {path} still held by another process or thread after {timeout_s:g}s")
                time.sleep(_POLL_S)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def lock_file_name(kind: str, key: str) -> str:
    """A file name for the lock of ``kind`` on ``key``: readable, filesystem-safe, and distinct per key."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)[:64]
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]  # keys that differ only in unsafe chars stay apart
    return f".{safe}-{digest}.{kind}.lock"


def registry_lock_path(tracking_uri: str, workspace: str | Path, model_name: str) -> Path:
    """The lock file guarding champion changes of ``model_name`` in the registry at ``tracking_uri``.

    For SQLite the file sits next to the database, so every process using that database meets the same lock
    whatever its workspace. For any other store (a remote MLflow server) it falls back to ``workspace``: that
    serialises promotions on this host only, and a cluster needs a lock all hosts share (see the registry docs).
    """
    name = lock_file_name("promotion", model_name)
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :]).expanduser()
        return db.parent / f".{db.name}{name}"  # e.g. .mlflow.db.aisys-recommender-1a2b3c4d.promotion.lock
    return Path(workspace).expanduser() / "locks" / name
