"""Small JSON files that several processes share: the key file and the session revocation list.

Servers read them on (almost) every request and the CLI or an admin route changes them, so:

- **reads are cheap**: :meth:`WatchedJsonFile.read` re-reads the file only when its (inode, mtime, size) changed,
  and looks at most every ``reload_every_s`` seconds; a change made elsewhere is seen within that time;
- **updates do not lose each other**: :meth:`WatchedJsonFile.update` holds an exclusive ``flock`` on
  ``<file>.lock``, reads the current content, lets the caller change it, and writes it back;
- **readers never see half a file**: writes go to a 0600 temporary file that ``os.replace`` moves into place.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` via a 0600 temporary file and ``os.replace`` (durable on return)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass
class _Cached(Generic[T]):
    value: T
    signature: tuple[int, int, int] | None = None  # (inode, mtime_ns, size) of what was read
    checked_at: float = float("-inf")


class WatchedJsonFile(Generic[T]):
    """One shared JSON file, parsed by ``load`` and serialised by ``dump`` (see the module docstring).

    ``load(path)`` returns the parsed content (it decides what a missing or malformed file means);
    ``dump(value)`` returns the JSON-able document to write.
    """

    def __init__(
        self,
        path: str | Path,
        load: Callable[[Path], T],
        dump: Callable[[T], Any],
        reload_every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.reload_every_s = reload_every_s
        self._load, self._dump, self._clock = load, dump, clock
        self._lock = threading.Lock()
        self._cached: _Cached[T] | None = None

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def read(self) -> T:
        """The content as last read; re-read first when the file changed (checked every ``reload_every_s``)."""
        with self._lock:
            now = self._clock()
            cached = self._cached
            if cached is None or now - cached.checked_at >= self.reload_every_s:
                signature = self._signature()
                if cached is None or signature != cached.signature:
                    cached = _Cached(self._load(self.path), signature)
                cached.checked_at = now
                self._cached = cached
            return cached.value

    @contextlib.contextmanager
    def update(self) -> Iterator[T]:
        """Lock the file against other writers, yield its current content to change in place, write it back.

        Nothing is written when the content did not change, or when the body raises.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            value = self._load(self.path)
            before = copy.deepcopy(value)
            yield value
            if value == before:
                return
            write_json_atomic(self.path, self._dump(value))
            with self._lock:
                self._cached = _Cached(value, self._signature(), self._clock())
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
