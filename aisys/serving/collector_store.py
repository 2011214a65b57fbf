"""The collector on object storage: accepted events as immutable JSONL batch objects, written before the 202.

``paths.collector_uri`` unset keeps the one-machine default (:class:`~aisys.serving.event_log.JsonlEventLog`,
daily files on the replica's disk). On a cluster a replica's disk dies with its node, and the retrain loop on
another node cannot read it; with ``paths.collector_uri`` set (``s3://bucket/lake/collector``, MinIO, or a
shared path) every replica writes :class:`ObjectStoreEventLog` batches there instead:

- **Durable before acknowledged.** ``append`` returns only once the object holding the event is stored, and the
  route answers 202 only after ``append`` returned. A worker node that dies afterwards takes nothing with it.
- **Group commit.** One object per event would cost a PUT (milliseconds on S3) per event. Appends that arrive
  while a write is in flight queue up and go out together in the next object, so under load a PUT carries many
  events and a lone event still goes out at once (no timer to wait for).
- **Immutable, uniquely named objects** (``events-YYYYMMDD-HHMMSSffffff-<writer>-<seq>.jsonl``): no two writers
  ever touch one object, so nothing needs a lock that spans nodes; a local or shared path gets a temporary name
  then a rename, so a reader never sees half an object (an S3 PUT is atomic already).

The loop reads them as it reads the folder (:func:`claim_collected_objects` moves them under ``claimed/``,
:func:`stage_for_ingest` copies them to local JSONL files for ``aisys ingest``, :func:`mark_ingested` moves them
under ``ingested/``). The raw format and the ``sender`` field are the folder's
(:mod:`aisys.serving.event_log`).
"""

from __future__ import annotations

import json
import secrets
import threading
from concurrent.futures import Future
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from aisys.serving.event_log import EventLog, JsonlEventLog

if TYPE_CHECKING:
    from aisys.config import AppConfig, PathsConfig

CLAIMED, INGESTED = "claimed", "ingested"
# How long an append waits for its batch to be stored before the request fails (503, not a lost 202).
DEFAULT_APPEND_TIMEOUT_S = 30.0
MAX_EVENTS_PER_OBJECT = 1000


def collector_folder(cfg: "AppConfig") -> Path:
    """Where the HTTP collector writes accepted events, and the loop reads them: ``<workspace>/collector``."""
    return Path(cfg.paths.workspace) / "collector"


def open_event_log(cfg: "AppConfig") -> EventLog:
    """The collector ``cfg.paths.collector_uri`` names: batch objects there, else the workspace's JSONL folder."""
    if cfg.paths.collector_uri:
        return ObjectStoreEventLog(cfg.paths.collector_uri, cfg.paths)
    return JsonlEventLog(collector_folder(cfg))


def collector_location(cfg: "AppConfig") -> str:
    """Where the collector of ``cfg`` writes (for messages and docs): the URI, or the local folder."""
    return cfg.paths.collector_uri or str(collector_folder(cfg))


class ObjectStoreEventLog(EventLog):
    """Accepted events as immutable JSONL objects under ``uri``; ``append`` returns once its object is stored.

    ``paths`` gives the S3 endpoint and region (:func:`aisys.data.lake.filesystem_for`). A failed write raises
    from ``append`` for every event of its batch, so none of them is acknowledged.
    """

    def __init__(self, uri: str, paths: "PathsConfig | None" = None, *,
                 clock: Callable[[], datetime] | None = None, writer_id: str | None = None,
                 append_timeout_s: float = DEFAULT_APPEND_TIMEOUT_S) -> None:
        self.uri = uri.rstrip("/")
        self._paths = paths
        self._clock = clock or (lambda: datetime.now(timezone.utc))
        self.writer_id = writer_id or secrets.token_hex(4)  # replicas never share an object name
        self.append_timeout_s = append_timeout_s
        self._pending: list[tuple[str, Future]] = []
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._writer: threading.Thread | None = None
        self._seq = 0
        self._fs = None
        self.objects_written = 0
        self.events_written = 0

    @property
    def filesystem(self):
        """The pyarrow filesystem and root path (opened on first use: nothing happens at construction)."""
        if self._fs is None:
            from aisys.data.lake import filesystem_for

            self._fs = filesystem_for(self.uri, self._paths)
        return self._fs

    def append(self, event: Mapping[str, Any]) -> None:
        line = json.dumps(dict(event), separators=(",", ":"), allow_nan=False) + "\n"
        done: Future = Future()
        with self._wake:
            self._pending.append((line, done))
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(target=self._write_batches, name="collector-writer", daemon=True)
                self._writer.start()
            self._wake.notify()
        done.result(timeout=self.append_timeout_s)  # raises the write's error: the caller answers 5xx, not 202

    def _write_batches(self) -> None:
        """Write whatever is pending as one object, again and again (group commit)."""
        while True:
            with self._wake:
                while not self._pending:
                    self._wake.wait()
                batch = self._pending[:MAX_EVENTS_PER_OBJECT]
                del self._pending[:MAX_EVENTS_PER_OBJECT]
                self._seq += 1
                seq = self._seq
            try:
                self._put("".join(line for line, _ in batch), seq)
            except BaseException as err:  # noqa: BLE001 - every waiting append must hear of it
                for _, done in batch:
                    done.set_exception(err)
                continue
            self.objects_written += 1
            self.events_written += len(batch)
            for _, done in batch:
                done.set_result(None)

    def object_name(self, when: datetime, seq: int) -> str:
        """``events-YYYYMMDD-HHMMSSffffff-<writer>-<seq>.jsonl``: sorts by time of receipt, unique per writer."""
        return f"events-{when.astimezone(timezone.utc):%Y%m%d-%H%M%S%f}-{self.writer_id}-{seq:08d}.jsonl"

    def _put(self, text: str, seq: int) -> None:
        import pyarrow.fs as pafs

        fs, root = self.filesystem
        final = f"{root}/{self.object_name(self._clock(), seq)}"
        if isinstance(fs, pafs.LocalFileSystem):
            # A local or shared path: write aside, then rename, so a reader never lists half an object.
            Path(root).mkdir(parents=True, exist_ok=True)
            partial = f"{root}/.{Path(final).name}.partial"
            with fs.open_output_stream(partial) as out:
                out.write(text.encode())
            fs.move(partial, final)
        else:
            with fs.open_output_stream(final) as out:  # one PUT: atomic on S3
                out.write(text.encode())


# --------------------------------------------------------------------------- the loop's side


def _list_objects(fs, folder: str) -> list[str]:
    """The batch objects directly in ``folder`` (sorted), ignoring partial writes and sub-folders."""
    import pyarrow.fs as pafs

    try:
        infos = fs.get_file_info(pafs.FileSelector(folder, recursive=False, allow_not_found=True))
    except FileNotFoundError:
        return []
    names = [info.path for info in infos if info.type == pafs.FileType.File
             and info.base_name.endswith(".jsonl") and not info.base_name.startswith(".")]
    return sorted(names)


def collected_objects(uri: str, paths: "PathsConfig | None" = None) -> list[str]:
    """Every batch object not yet ingested: those under ``uri`` and those claimed by an unfinished ingest."""
    from aisys.data.lake import filesystem_for

    fs, root = filesystem_for(uri, paths)
    root = root.rstrip("/")
    return _list_objects(fs, root) + _list_objects(fs, f"{root}/{CLAIMED}")


def claim_collected_objects(uri: str, paths: "PathsConfig | None" = None) -> list[str]:
    """Move the batch objects under ``uri`` into ``uri/claimed`` and return every claimed object's path.

    Objects are immutable and written whole, so one listed now is complete; one stored after the listing
    waits for the next claim. Objects claimed earlier but never ingested (a failed ingest) are returned again.
    """
    from aisys.data.lake import filesystem_for

    fs, root = filesystem_for(uri, paths)
    root = root.rstrip("/")
    claimed = f"{root}/{CLAIMED}"
    for path in _list_objects(fs, root):
        fs.create_dir(claimed, recursive=True)
        fs.move(path, f"{claimed}/{Path(path).name}")
    return _list_objects(fs, claimed)


def stage_for_ingest(uri: str, objects: list[str], folder: Path, paths: "PathsConfig | None" = None) -> list[Path]:
    """Copy claimed ``objects`` into local JSONL files under ``folder`` (what ``aisys ingest`` reads)."""
    from aisys.data.lake import filesystem_for

    fs, _ = filesystem_for(uri, paths)
    folder.mkdir(parents=True, exist_ok=True)
    staged = []
    for path in objects:
        target = folder / Path(path).name
        with fs.open_input_stream(path) as source:
            target.write_bytes(source.read())
        if target.stat().st_size:
            staged.append(target)
    return staged


def mark_ingested(uri: str, objects: list[str], paths: "PathsConfig | None" = None) -> None:
    """Move ingested objects from ``claimed/`` to ``ingested/`` (kept, like the folder's files, for audit)."""
    from aisys.data.lake import filesystem_for

    fs, root = filesystem_for(uri, paths)
    done = f"{root.rstrip('/')}/{INGESTED}"
    fs.create_dir(done, recursive=True)
    for path in objects:
        fs.move(path, f"{done}/{Path(path).name}")


def read_collected_events(uri: str, paths: "PathsConfig | None" = None, *, include_ingested: bool = True
                          ) -> list[dict[str, Any]]:
    """Every event stored under ``uri`` (pending, claimed and, by default, ingested): for audits and tests."""
    from aisys.data.lake import filesystem_for

    fs, root = filesystem_for(uri, paths)
    root = root.rstrip("/")
    folders = [root, f"{root}/{CLAIMED}"] + ([f"{root}/{INGESTED}"] if include_ingested else [])
    events = []
    for folder in folders:
        for path in _list_objects(fs, folder):
            with fs.open_input_stream(path) as source:
                events.extend(json.loads(line) for line in source.read().decode().splitlines() if line.strip())
    return events


def purge_sender_objects(uri: str, sender: str, paths: "PathsConfig | None" = None) -> dict[str, int]:
    """Remove ``sender``'s events from the objects not yet ingested; ``{object: events removed}``.

    An object holding some of them is replaced by a new object without them (then deleted), never edited in
    place, so a claim running meanwhile sees either the old object or the new one, never a torn one.
    """
    from aisys.data.lake import filesystem_for

    fs, root = filesystem_for(uri, paths)
    removed: dict[str, int] = {}
    for path in collected_objects(uri, paths):
        with fs.open_input_stream(path) as source:
            lines = source.read().decode().splitlines(keepends=True)
        kept = [line for line in lines if not _sent_by(line, sender)]
        if len(kept) == len(lines):
            continue
        folder, name = path.rsplit("/", 1)
        replacement = f"{folder}/{name.removesuffix('.jsonl')}-purged.jsonl"
        if kept:
            with fs.open_output_stream(replacement) as out:
                out.write("".join(kept).encode())
        fs.delete_file(path)
        removed[path] = len(lines) - len(kept)
    return removed


def _sent_by(line: str, sender: str) -> bool:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return False  # not ours to judge: ingestion quarantines it
    return isinstance(row, dict) and row.get("sender") == sender
