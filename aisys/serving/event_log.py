"""Where the HTTP collector puts the events it accepts.

:class:`JsonlEventLog` appends one JSON object per line to
``<folder>/events-YYYYMMDD.jsonl`` (UTC date of receipt), in the raw event
format, so ``aisys ingest`` can later read the folder like any other raw
source. Serve points it at ``{workspace}/collector``
(:func:`aisys.serving.collector_store.collector_folder`). Each line also carries
``sender`` (``key:<key_id>`` or ``session:<sid>``: who posted it), which ingestion
ignores and :func:`purge_sender` uses to take one sender's events out again
(``aisys keys revoke NAME --purge``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import threading
from abc import ABC, abstractmethod
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping


class EventLog(ABC):
    """An append-only sink for accepted raw events."""

    @abstractmethod
    def append(self, event: Mapping[str, Any]) -> None:
        """Durably record one raw event (a dict of the raw event fields)."""


class InMemoryEventLog(EventLog):
    """Keeps events in a list; for tests and for running without a workspace."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def append(self, event: Mapping[str, Any]) -> None:
        with self._lock:
            self.events.append(dict(event))


class JsonlEventLog(EventLog):
    """Daily JSONL files in ``folder``; the folder is created on the first append.

    Each event is written as a single ``write`` of one line to a file opened in
    append mode, so concurrent writers (threads, or replicas on one host) do not
    interleave within a line on a local filesystem. The write holds a shared
    ``flock`` on the file and checks that the path still names the file it
    opened, so a :func:`purge_sender` rewriting the file (exclusive lock, then
    ``os.replace``) never loses an event appended meanwhile.
    """

    def __init__(self, folder: str | Path, clock: Callable[[], datetime] | None = None) -> None:
        self.folder = Path(folder)
        self._clock = clock or (lambda: datetime.now(timezone.utc))
        self._lock = threading.Lock()

    def path_for(self, when: datetime) -> Path:
        """The file that events received at ``when`` go to."""
        return self.folder / f"events-{when.astimezone(timezone.utc):%Y%m%d}.jsonl"

    def append(self, event: Mapping[str, Any]) -> None:
        line = json.dumps(dict(event), separators=(",", ":"), allow_nan=False) + "\n"
        path = self.path_for(self._clock())
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            with _locked_for_append(path) as handle:
                handle.write(line)


@contextlib.contextmanager
def _locked_for_append(path: Path) -> Iterator[Any]:
    """``path`` opened for append under a shared lock, reopened if a purge replaced it meanwhile."""
    while True:
        handle = path.open("a", encoding="utf-8")
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
        try:
            same = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:  # claimed (renamed) by the loop since we opened it: append to a new file
            same = False
        if same:
            break
        handle.close()
    try:
        yield handle
        handle.flush()
    finally:
        handle.close()  # closing releases the lock


def collector_files(folder: Path) -> list[Path]:
    """Every collector file not yet ingested: ``folder/*.jsonl`` and ``folder/claimed/*.jsonl``
    (claimed: moved aside by the loop for the ingest in progress)."""
    return sorted(folder.glob("*.jsonl")) + sorted((folder / "claimed").glob("*.jsonl"))


def purge_sender(folder: str | Path, sender: str) -> dict[str, int]:
    """Remove every event whose ``sender`` is ``sender`` from the collector files; ``{file: lines removed}``.

    Each file is rewritten under an exclusive lock and replaced atomically, so
    appenders (which take a shared lock and re-check the file) lose nothing.
    Events already ingested into a lake snapshot (``folder/ingested``) are not
    in the next snapshot's input any more and are left alone: the lake is
    immutable, so removing them is a new snapshot's job.
    """
    removed: dict[str, int] = {}
    for path in collector_files(Path(folder)):
        with path.open("r+", encoding="utf-8") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            kept, dropped = [], 0
            for line in handle:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    kept.append(line)  # not ours to judge: ingestion quarantines it
                    continue
                if isinstance(row, dict) and row.get("sender") == sender:
                    dropped += 1
                else:
                    kept.append(line)
            if dropped:
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    out.writelines(kept)
                    out.flush()
                    os.fsync(out.fileno())
                os.chmod(tmp, os.fstat(handle.fileno()).st_mode & 0o777)  # as the file it replaces
                os.replace(tmp, path)  # appenders waiting on the old file's lock see the new inode and reopen
                removed[str(path)] = dropped
    return removed
