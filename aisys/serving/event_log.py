"""Where the HTTP collector puts the events it accepts.

:class:`JsonlEventLog` appends one JSON object per line to
``<folder>/events-YYYYMMDD.jsonl`` (UTC date of receipt), in the raw event
format, so ``aisys ingest`` can later read the folder like any other raw
source. Serve points it at ``{workspace}/collector``.
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from aisys.config import AppConfig


def collector_folder(cfg: "AppConfig") -> Path:
    """Where the HTTP collector writes accepted events, and the loop reads them: ``<workspace>/collector``."""
    return Path(cfg.paths.workspace) / "collector"


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
    interleave within a line on a local filesystem.
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
            with path.open("a", encoding="utf-8") as handle:
                handle.write(line)
