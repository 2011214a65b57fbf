"""The event lake: versioned Parquet on a local folder or any pyarrow filesystem URI.

Layout under ``{lake}/events/``::

    data/{snapshot_id}/event_date=YYYY-MM-DD/part-*.parquet   rows new in that snapshot
    quarantine/{snapshot_id}/part-*.parquet                    rejected rows, with reasons
    _manifests/{snapshot_id}.json                              what makes a snapshot visible

A manifest lists its parent's files plus its own, so each snapshot is an
immutable version of the whole table (time travel by snapshot id). Data files
are written first and the manifest last: a writer killed half-way leaves orphan
files that no manifest lists, never a visible partial snapshot.
"""

from __future__ import annotations

import json
import os
import secrets
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from aisys.schemas import EVENT_COLUMNS, LAKE_SCHEMA, PARTITION_COLUMN, QUARANTINE_SCHEMA

if TYPE_CHECKING:
    from aisys.config import PathsConfig

COUNT_KEYS = ("input", "clean", "quarantined", "duplicates_in_batch", "duplicates_in_lake", "written", "total_rows")
_PARTITIONING = ds.partitioning(pa.schema([pa.field(PARTITION_COLUMN, pa.string())]), flavor="hive")


@dataclass
class Manifest:
    """One immutable version of the events table. File paths are relative to ``{lake}/events``."""

    snapshot_id: str
    parent_id: str | None
    created_at: str
    source: str
    schema_hash: str
    counts: dict[str, int]
    files: list[str]
    quarantine_files: list[str] = field(default_factory=list)
    partitions: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        return cls(**json.loads(text))


def new_snapshot_id(now: datetime | None = None) -> str:
    """A sortable id: UTC time to the microsecond plus 6 random hex digits
    (``20261129T101500.123456Z-1a2b3c``); microseconds keep quick successive ingests in order."""
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return f"{now.strftime('%Y%m%dT%H%M%S.%fZ')}-{secrets.token_hex(3)}"


def snapshot_time(snapshot_id: str | None) -> datetime | None:
    """When a snapshot was taken, read from its id (None for ids that are not :func:`new_snapshot_id`'s)."""
    try:
        return datetime.strptime(str(snapshot_id).split("-", 1)[0], "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def add_event_date(table: pa.Table) -> pa.Table:
    """Append the ``event_date`` partition column (UTC ``YYYY-MM-DD``)."""
    # The lake's timestamps are UTC, so the date cast is the UTC date; it is ~5x faster than strftime.
    dates = table.column("timestamp").cast(pa.date32()).cast(pa.string())
    return table.append_column(PARTITION_COLUMN, dates)


def lake_filesystem(uri: str, s3_endpoint_url: str | None = None,
                    s3_region: str | None = None) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and root path for a lake ``uri``.

    ``s3://`` with ``s3_endpoint_url`` (``http://host:port``) builds an ``S3FileSystem`` with
    ``endpoint_override`` and ``scheme`` set explicitly: pyarrow ignores ``AWS_ENDPOINT_URL``,
    so without this an S3-compatible store (MinIO, moto) would be looked up on AWS. Credentials
    come from the usual AWS chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, profile, role).
    Other URIs go to ``FileSystem.from_uri``; a plain path is a local folder.
    """
    if uri.startswith("s3://") and (s3_endpoint_url or s3_region):
        bucket_and_key = uri[len("s3://"):].split("?", 1)[0]
        options: dict = {"region": s3_region} if s3_region else {}
        if s3_endpoint_url:
            parts = urlsplit(s3_endpoint_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"s3_endpoint_url must look like http://host:port; got {s3_endpoint_url!r}")
            options.update(endpoint_override=parts.netloc, scheme=parts.scheme)
        return pafs.S3FileSystem(**options), bucket_and_key
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def filesystem_for(uri: str, paths: "PathsConfig | None" = None) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path of any location in the lake's store (a report, a profile, the audit log).

    The one way every reader and writer opens a lake location: with ``paths``' S3 endpoint and region,
    so an S3-compatible store (MinIO, moto) is reached there and not on AWS.
    """
    if paths is None:
        return lake_filesystem(uri)
    return lake_filesystem(uri, paths.s3_endpoint_url, paths.s3_region)


class ConcurrentCommitError(RuntimeError):
    """Another writer committed on top of this manifest's parent first: rebase and commit again."""

    def __init__(self, parent_id: str | None, latest_id: str | None) -> None:
        super().__init__(f"snapshot parent {parent_id} is no longer the latest (now {latest_id}): rebase and retry")
        self.parent_id = parent_id
        self.latest_id = latest_id


class Lake:
    """A versioned events table under ``uri`` (a local path, ``file://`` or ``s3://`` URI).

    ``s3_endpoint_url``/``s3_region`` reach an S3-compatible store (see :func:`lake_filesystem`);
    :meth:`from_config` takes all three from ``cfg.paths``. A Lake pickles (Ray tasks can take one).
    """

    def __init__(self, uri: str, *, s3_endpoint_url: str | None = None, s3_region: str | None = None):
        self.uri = uri
        self.s3_endpoint_url = s3_endpoint_url
        self.s3_region = s3_region
        self.fs, root = lake_filesystem(uri, s3_endpoint_url, s3_region)
        self.root = root.rstrip("/")
        self.events_root = f"{self.root}/events"
        self._local = isinstance(self.fs, pafs.LocalFileSystem)

    @classmethod
    def from_config(cls, paths: "PathsConfig") -> "Lake":
        """The lake of ``cfg.paths``: ``lake_uri`` with its S3 endpoint and region."""
        return cls(paths.lake_uri, s3_endpoint_url=paths.s3_endpoint_url, s3_region=paths.s3_region)

    # --- paths ---------------------------------------------------------------------
    def data_dir(self, snapshot_id: str) -> str:
        """Folder that receives the rows new in ``snapshot_id``."""
        return f"{self.events_root}/data/{snapshot_id}"

    def quarantine_dir(self, snapshot_id: str) -> str:
        return f"{self.events_root}/quarantine/{snapshot_id}"

    def _manifest_dir(self) -> str:
        return f"{self.events_root}/_manifests"

    def _abs(self, relative: str) -> str:
        return f"{self.events_root}/{relative}"

    def _rel(self, absolute: str) -> str:
        return absolute[len(self.events_root) + 1 :]

    # --- writing -------------------------------------------------------------------
    def write_event_files(self, table: pa.Table, snapshot_id: str) -> list[tuple[str, int]]:
        """Write clean rows (``EVENT_SCHEMA``) partitioned by event_date into the snapshot's
        data folder; returns ``(relative path, rows)`` per file. Safe to call from many workers."""
        if table.num_rows == 0:
            return []
        table = add_event_date(table.select(list(EVENT_COLUMNS)))
        written: list[tuple[str, int]] = []
        dates = pc.unique(table.column(PARTITION_COLUMN)).to_pylist()
        token = uuid.uuid4().hex[:12]
        for date in sorted(dates):
            part = table.filter(pc.equal(table.column(PARTITION_COLUMN), date)).drop_columns([PARTITION_COLUMN])
            folder = f"{self.data_dir(snapshot_id)}/{PARTITION_COLUMN}={date}"
            self.fs.create_dir(folder, recursive=True)
            path = f"{folder}/part-{token}.parquet"
            pq.write_table(part, path, filesystem=self.fs)
            written.append((self._rel(path), part.num_rows))
        return written

    def write_quarantine_file(self, table: pa.Table, snapshot_id: str) -> list[tuple[str, int]]:
        """Write rejected rows (``QUARANTINE_SCHEMA``); returns ``[(relative path, rows)]`` or []."""
        if table.num_rows == 0:
            return []
        folder = self.quarantine_dir(snapshot_id)
        self.fs.create_dir(folder, recursive=True)
        path = f"{folder}/part-{uuid.uuid4().hex[:12]}.parquet"
        pq.write_table(table.cast(QUARANTINE_SCHEMA), path, filesystem=self.fs)
        return [(self._rel(path), table.num_rows)]

    def commit(self, manifest: Manifest) -> None:
        """Make ``manifest`` visible atomically, but only if its parent is still the latest snapshot.

        The commit point is claiming the parent: ``_manifests/_children/{parent}.json`` is created
        exclusively (a hard link of the written manifest, which fails if the name exists), so of two
        writers that started from the same parent exactly one wins; the other gets
        :class:`ConcurrentCommitError` and must rebase (``aisys.data.lake_commit``). The claim holds the
        whole manifest, so a writer killed between the claim and the publish is rolled forward by the
        next commit, never left half-visible. On object stores, which have no exclusive create in
        pyarrow, the parent check is a read before the write (single writer advised; see docs/data.md).
        """
        missing = [key for key in COUNT_KEYS if key not in manifest.counts]
        if missing:
            raise ValueError(f"manifest {manifest.snapshot_id}: counts lack {missing}")
        final = self._manifest_path(manifest.snapshot_id)
        if self.fs.get_file_info(final).type != pafs.FileType.NotFound:
            raise FileExistsError(f"snapshot {manifest.snapshot_id} already committed in {self.uri}")
        self.fs.create_dir(f"{self._manifest_dir()}/_children", recursive=True)
        self._roll_forward_claims()
        latest = self.latest()
        latest_id = latest.snapshot_id if latest else None
        if latest_id != manifest.parent_id:
            raise ConcurrentCommitError(manifest.parent_id, latest_id)
        body = manifest.to_json().encode()
        claim = self._claim_path(manifest.parent_id)
        if self._local:
            # A temp name of its own: a concurrent commit may roll this claim forward (`_publish`) meanwhile.
            temp = f"{self._manifest_dir()}/.{manifest.snapshot_id}.{uuid.uuid4().hex[:8]}.json.tmp"
            with self.fs.open_output_stream(temp) as out:
                out.write(body)
            try:
                os.link(temp, claim)  # atomic, and fails if another writer claimed this parent first
            except FileExistsError:
                self.fs.delete_file(temp)
                raise ConcurrentCommitError(manifest.parent_id, self._claimed_by(manifest.parent_id)) from None
            self.fs.move(temp, final)  # rename: atomic on POSIX
        else:
            if self.fs.get_file_info(claim).type != pafs.FileType.NotFound:
                raise ConcurrentCommitError(manifest.parent_id, self._claimed_by(manifest.parent_id))
            for target in (claim, final):  # one PUT each is all-or-nothing on an object store
                with self.fs.open_output_stream(target) as out:
                    out.write(body)

    def _manifest_path(self, snapshot_id: str) -> str:
        return f"{self._manifest_dir()}/{snapshot_id}.json"

    def _claim_path(self, parent_id: str | None) -> str:
        return f"{self._manifest_dir()}/_children/{parent_id or '_root'}.json"

    def _claimed_by(self, parent_id: str | None) -> str | None:
        try:
            return self._read_manifest(self._claim_path(parent_id)).snapshot_id
        except (FileNotFoundError, OSError):
            return None

    def _roll_forward_claims(self) -> None:
        """Publish a claimed manifest whose writer died before publishing it (the claim is complete).

        Only the latest snapshot's claim can be unpublished (a later commit would have had to claim
        the unpublished one), so this reads one claim per commit, not one per snapshot.
        """
        while True:
            latest = self.latest()
            claim = self._claim_path(latest.snapshot_id if latest else None)
            if self.fs.get_file_info(claim).type == pafs.FileType.NotFound:
                return
            claimed = self._read_manifest(claim)
            final = self._manifest_path(claimed.snapshot_id)
            if self.fs.get_file_info(final).type != pafs.FileType.NotFound:
                return
            self._publish(self._read_bytes(claim), final)

    def _read_bytes(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as stream:
            return stream.read()

    def _publish(self, body: bytes, final: str) -> None:
        """Write ``final`` all-or-nothing: a hidden temp file and a rename locally, one PUT on object stores."""
        # Unique temp name: the claim's own writer may be publishing the same manifest at the same moment; both
        # renames put identical bytes under ``final``.
        folder, name = final.rsplit("/", 1)
        target = f"{folder}/.{name}.{uuid.uuid4().hex[:8]}.tmp" if self._local else final
        with self.fs.open_output_stream(target) as out:
            out.write(body)
        if self._local:
            self.fs.move(target, final)

    # --- reading -------------------------------------------------------------------
    def list_snapshots(self) -> list[Manifest]:
        """Every committed snapshot, oldest first."""
        selector = pafs.FileSelector(self._manifest_dir(), allow_not_found=True)
        names = sorted(
            info.path for info in self.fs.get_file_info(selector)
            if info.base_name.endswith(".json") and not info.base_name.startswith(".")
        )
        return [self._read_manifest(path) for path in names]

    def _read_manifest(self, path: str) -> Manifest:
        with self.fs.open_input_stream(path) as stream:
            return Manifest.from_json(stream.read().decode())

    def latest(self) -> Manifest | None:
        """The newest snapshot, or None for an empty lake."""
        selector = pafs.FileSelector(self._manifest_dir(), allow_not_found=True)
        names = sorted(
            info.path for info in self.fs.get_file_info(selector)
            if info.base_name.endswith(".json") and not info.base_name.startswith(".")
        )
        return self._read_manifest(names[-1]) if names else None

    def get(self, snapshot_id: str) -> Manifest:
        """The manifest of ``snapshot_id``; KeyError naming the known ids if absent."""
        path = f"{self._manifest_dir()}/{snapshot_id}.json"
        if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
            known = [m.snapshot_id for m in self.list_snapshots()][-5:]
            raise KeyError(f"snapshot '{snapshot_id}' not found in lake {self.uri} (latest: {known})")
        return self._read_manifest(path)

    def _resolve(self, snapshot_id: str | None) -> Manifest | None:
        return self.latest() if snapshot_id is None else self.get(snapshot_id)

    def read_events(self, snapshot_id: str | None = None, columns: list[str] | None = None) -> pa.Table:
        """The whole table as of ``snapshot_id`` (latest if None): ``LAKE_SCHEMA``
        (``EVENT_SCHEMA`` + ``event_date``), sorted by timestamp then event_id."""
        manifest = self._resolve(snapshot_id)
        wanted = list(LAKE_SCHEMA.names) if columns is None else list(columns)
        unknown = [c for c in wanted if c not in LAKE_SCHEMA.names]
        if unknown:
            raise ValueError(f"unknown column(s) {unknown}; the lake has {LAKE_SCHEMA.names}")
        if manifest is None or not manifest.files:
            return LAKE_SCHEMA.empty_table().select(wanted)
        read_cols = list(dict.fromkeys(wanted + ["timestamp", "event_id"]))
        dataset = ds.dataset(
            [self._abs(f) for f in manifest.files], schema=LAKE_SCHEMA, format="parquet",
            filesystem=self.fs, partitioning=_PARTITIONING, partition_base_dir=f"{self.events_root}/data",
        )
        table = dataset.to_table(columns=read_cols)
        table = table.sort_by([("timestamp", "ascending"), ("event_id", "ascending")])
        return table.select(wanted).cast(pa.schema([LAKE_SCHEMA.field(c) for c in wanted]))

    def read_quarantine(self, snapshot_id: str) -> pa.Table:
        """The rows rejected by ``snapshot_id``'s ingest (``QUARANTINE_SCHEMA``)."""
        manifest = self.get(snapshot_id)
        if not manifest.quarantine_files:
            return QUARANTINE_SCHEMA.empty_table()
        dataset = ds.dataset([self._abs(f) for f in manifest.quarantine_files], schema=QUARANTINE_SCHEMA,
                             format="parquet", filesystem=self.fs)
        return dataset.to_table()

    def existing_event_ids(self, snapshot_id: str | None = None) -> pa.Array:
        """Every event_id in the table as of ``snapshot_id`` (latest if None)."""
        manifest = self._resolve(snapshot_id)
        if manifest is None or not manifest.files:
            return pa.array([], pa.string())
        dataset = ds.dataset([self._abs(f) for f in manifest.files], format="parquet", filesystem=self.fs)
        return dataset.to_table(columns=["event_id"]).column("event_id").combine_chunks().cast(pa.string())

    def file_rows(self, relative_paths: list[str]) -> int:
        """Total rows in these files, from Parquet footers (no data read)."""
        total = 0
        for rel in relative_paths:
            with self.fs.open_input_file(self._abs(rel)) as handle:
                total += pq.ParquetFile(handle).metadata.num_rows
        return total
