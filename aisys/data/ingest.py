"""Ingest raw event files into the lake with Ray Data.

read (json/jsonl, csv, parquet; mixed ok) -> map_batches(validate) -> hash-partition
by event_id -> map_batches(dedupe + write clean rows by event_date + write quarantine)
-> commit the manifest.

All rows that share an ``event_id`` meet in one hash partition, and Ray Data's
hash-shuffle reduce emits each partition as one block (it never splits them), so
deduplication per block is global. Each write task returns one row per file it
wrote plus one row of counts; the driver sums those, checks them against the
Parquet footers and the reconciliation identity, and only then commits:

    input == clean + quarantined
    clean == written + duplicates_in_batch + duplicates_in_lake

A task that dies after writing leaves orphan files that no manifest lists.
"""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from aisys.config import AppConfig
from aisys.data.lake import Lake, Manifest, new_snapshot_id
from aisys.data.validate import ValidationRules, dedupe_events, validate_events
from aisys.runtime import init_ray
from aisys.schemas import EVENT_COLUMNS, EVENT_SCHEMA, QUARANTINE_SCHEMA, REJECT_REASON_COLUMN, schema_hash

RAW_PREFIX = "raw_"
# One schema for every block between validation and writing: typed event columns
# (null for rejected rows), the reason (null for clean rows), the raw text of
# rejected rows (null for clean rows).
TAGGED_SCHEMA = pa.schema(
    [pa.field(f.name, f.type, nullable=True) for f in EVENT_SCHEMA]
    + [pa.field(REJECT_REASON_COLUMN, pa.string())]
    + [pa.field(RAW_PREFIX + name, pa.string()) for name in EVENT_COLUMNS]
)
STATS_SCHEMA = pa.schema(
    [("kind", pa.string()), ("path", pa.string()), ("rows", pa.int64()), ("clean", pa.int64()),
     ("quarantined", pa.int64()), ("duplicates_in_batch", pa.int64()), ("duplicates_in_lake", pa.int64())]
)
# Rows per hash partition: small enough that one partition is a comfortable batch.
TARGET_PARTITION_BYTES = 64 * 1024 * 1024
RAW_BYTES_PER_ROW_GUESS = 150


class ReconciliationError(RuntimeError):
    """The ingest counts do not add up; nothing was committed."""


# --- pure block functions (no Ray) -----------------------------------------------------


def parse_jsonl_lines(batch: pa.Table) -> pa.Table:
    """Parse a batch of JSONL text lines (column ``text``) into a table.

    Arrow's JSON reader is tried first; when a column mixes types (a broken row
    with ``"value": "lots"``) it fails for the whole batch, so the fallback parses
    line by line and keeps every value as text for validation to judge. A line that
    is not a JSON object becomes an all-null row, which validation quarantines.
    """
    import io

    import pyarrow.json as pajson

    lines = [line for line in batch.column("text").to_pylist() if line and line.strip()]
    if not lines:
        return pa.table({})
    try:
        return pajson.read_json(io.BytesIO("\n".join(lines).encode()))
    except pa.ArrowInvalid:
        rows = []
        for line in lines:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                obj = None
            if not isinstance(obj, dict):
                obj = {}
            rows.append({k: None if v is None else (v if isinstance(v, str) else json.dumps(v)) for k, v in obj.items()})
        names = sorted({k for row in rows for k in row})
        return pa.table({k: pa.array([row.get(k) for row in rows], pa.string()) for k in names})


def validate_to_tagged(batch: pa.Table, rules: ValidationRules) -> pa.Table:
    """Validate a raw batch and return clean and rejected rows in one ``TAGGED_SCHEMA`` table."""
    clean, quarantine = validate_events(batch, rules)
    n_clean, n_bad = clean.num_rows, quarantine.num_rows
    columns = []
    for field in TAGGED_SCHEMA:
        if field.name in EVENT_SCHEMA.names:
            columns.append(pa.concat_arrays([clean.column(field.name).combine_chunks().cast(field.type),
                                             pa.nulls(n_bad, field.type)]))
        elif field.name == REJECT_REASON_COLUMN:
            columns.append(pa.concat_arrays([pa.nulls(n_clean, pa.string()),
                                             quarantine.column(REJECT_REASON_COLUMN).combine_chunks()]))
        else:
            name = field.name[len(RAW_PREFIX):]
            columns.append(pa.concat_arrays([pa.nulls(n_clean, pa.string()),
                                             quarantine.column(name).combine_chunks()]))
    return pa.Table.from_arrays(columns, schema=TAGGED_SCHEMA)


def split_tagged(tagged: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Undo :func:`validate_to_tagged`: ``(clean EVENT_SCHEMA, quarantine QUARANTINE_SCHEMA)``."""
    rejected = pc.is_valid(tagged.column(REJECT_REASON_COLUMN))
    clean = tagged.filter(pc.invert(rejected)).select(list(EVENT_COLUMNS)).cast(EVENT_SCHEMA)
    bad = tagged.filter(rejected)
    quarantine = pa.Table.from_arrays(
        [bad.column(RAW_PREFIX + name) for name in EVENT_COLUMNS] + [bad.column(REJECT_REASON_COLUMN)],
        schema=QUARANTINE_SCHEMA,
    )
    return clean, quarantine


def canonical_order(clean: pa.Table) -> pa.Table:
    """Sort rows by their content so that "first row wins" on timestamp ties does not
    depend on how Ray cut the input into blocks."""
    keys = [(name, "ascending") for name in ("event_id", "timestamp", "user_id", "item_id", "event_type", "value")]
    return clean.sort_by(keys)


def dedupe_and_write(tagged: pa.Table, lake_uri: str, snapshot_id: str, existing_ids: pa.Array | None) -> pa.Table:
    """Write one hash partition: quarantine rows, then deduplicated clean rows.

    Returns ``STATS_SCHEMA`` rows: one per file written and one ``counts`` row.
    """
    lake = Lake(lake_uri)
    clean, quarantine = split_tagged(tagged)
    unique, in_batch, in_lake = dedupe_events(canonical_order(clean), existing_ids)
    rows = [("data", path, n) for path, n in lake.write_event_files(unique, snapshot_id)]
    rows += [("quarantine", path, n) for path, n in lake.write_quarantine_file(quarantine, snapshot_id)]
    stats = [
        {"kind": kind, "path": path, "rows": n, "clean": 0, "quarantined": 0, "duplicates_in_batch": 0,
         "duplicates_in_lake": 0}
        for kind, path, n in rows
    ]
    stats.append({"kind": "counts", "path": "", "rows": unique.num_rows, "clean": clean.num_rows,
                  "quarantined": quarantine.num_rows, "duplicates_in_batch": in_batch,
                  "duplicates_in_lake": in_lake})
    return pa.Table.from_pylist(stats, schema=STATS_SCHEMA)


def reconcile(stats: pa.Table) -> dict[str, int]:
    """Sum the write tasks' stats into manifest counts (without ``total_rows``) and check
    the identities; raises :class:`ReconciliationError` if they do not hold."""
    counts_rows = stats.filter(pc.equal(stats.column("kind"), "counts"))

    def total(table: pa.Table, column: str) -> int:
        return int(pc.sum(table.column(column)).as_py() or 0)

    counts = {
        "clean": total(counts_rows, "clean"),
        "quarantined": total(counts_rows, "quarantined"),
        "duplicates_in_batch": total(counts_rows, "duplicates_in_batch"),
        "duplicates_in_lake": total(counts_rows, "duplicates_in_lake"),
        "written": total(counts_rows, "rows"),
    }
    counts["input"] = counts["clean"] + counts["quarantined"]
    data_rows = total(stats.filter(pc.equal(stats.column("kind"), "data")), "rows")
    quarantine_rows = total(stats.filter(pc.equal(stats.column("kind"), "quarantine")), "rows")
    problems = []
    if data_rows != counts["written"]:
        problems.append(f"data files hold {data_rows} rows but {counts['written']} were written")
    if quarantine_rows != counts["quarantined"]:
        problems.append(f"quarantine files hold {quarantine_rows} rows but {counts['quarantined']} were rejected")
    if counts["clean"] != counts["written"] + counts["duplicates_in_batch"] + counts["duplicates_in_lake"]:
        problems.append(f"clean ({counts['clean']}) != written + duplicates ({counts})")
    if problems:
        raise ReconciliationError("ingest counts do not reconcile: " + "; ".join(problems))
    return counts


# --- the Ray adapter ------------------------------------------------------------------


def _kind(path: str) -> str:
    lower = path.lower()
    for suffix, kind in ((".jsonl", "json"), (".json", "json"), (".ndjson", "json"), (".csv", "csv"),
                         (".parquet", "parquet"), (".pq", "parquet")):
        if lower.endswith(suffix):
            return kind
    raise ValueError(f"cannot tell the format of {path!r}: use .jsonl/.json, .csv or .parquet")


def _read(ray, kind: str, paths: list[str]):
    import pyarrow.csv as pacsv

    if kind == "json":
        # Text lines, parsed in map_batches: a broken row must not fail the read.
        return ray.data.read_text(paths).map_batches(parse_jsonl_lines, batch_format="pyarrow")
    if kind == "csv":
        # Every event column as text: a bad value becomes a quarantined row, not a read error.
        convert = pacsv.ConvertOptions(column_types={name: pa.string() for name in EVENT_COLUMNS},
                                       strings_can_be_null=False)
        return ray.data.read_csv(paths, convert_options=convert)
    return ray.data.read_parquet(paths)


def _num_partitions(paths: Sequence[str]) -> int:
    size = 0
    for path in paths:
        try:
            size += os.path.getsize(path)
        except OSError:  # remote path: fall back to one partition per file
            size += TARGET_PARTITION_BYTES
    return max(2, math.ceil(size * 3 / TARGET_PARTITION_BYTES))  # decoded Arrow is ~3x the file


def ingest_files(cfg: AppConfig, paths: Sequence[str], source: str | None = None) -> Manifest:
    """Validate, deduplicate and append raw event files to the lake as a new snapshot."""
    if not paths:
        raise ValueError("ingest_files needs at least one path")
    ray = init_ray(cfg)
    from ray.data import DataContext

    lake_uri = cfg.paths.lake_uri  # absolute already (config resolves local paths)
    lake = Lake(lake_uri)
    rules = ValidationRules.from_config(cfg.ingest, now=datetime.now(timezone.utc))
    parent = lake.latest()
    existing = lake.existing_event_ids()
    snapshot_id = new_snapshot_id()

    by_kind: dict[str, list[str]] = {}
    for path in paths:
        by_kind.setdefault(_kind(str(path)), []).append(str(path))
    ctx = DataContext.get_current()
    # Hash shuffle emits one block per partition (needed for a global dedupe).
    from ray.data.context import ShuffleStrategy

    if ctx.shuffle_strategy not in (ShuffleStrategy.HASH_SHUFFLE, ShuffleStrategy.SHUFFLE_V2):
        ctx.shuffle_strategy = ShuffleStrategy.HASH_SHUFFLE
    tagged = None
    for kind, kind_paths in by_kind.items():
        part = _read(ray, kind, kind_paths).map_batches(
            validate_to_tagged, batch_format="pyarrow", fn_kwargs={"rules": rules}
        )
        tagged = part if tagged is None else tagged.union(part)
    written = tagged.repartition(_num_partitions([str(p) for p in paths]), keys=["event_id"]).map_batches(
        dedupe_and_write,
        batch_format="pyarrow",
        batch_size=None,  # the whole partition: all rows of an event_id together
        fn_kwargs={"lake_uri": lake_uri, "snapshot_id": snapshot_id,
                   "existing_ids": existing if len(existing) else None},
    )
    stats = pa.Table.from_pylist(written.take_all(), schema=STATS_SCHEMA)
    counts = reconcile(stats)
    new_files = sorted(stats.filter(pc.equal(stats.column("kind"), "data")).column("path").to_pylist())
    quarantine_files = sorted(stats.filter(pc.equal(stats.column("kind"), "quarantine")).column("path").to_pylist())
    # The footers must agree with what the tasks said they wrote.
    on_disk = lake.file_rows(new_files)
    if on_disk != counts["written"]:
        raise ReconciliationError(f"data files hold {on_disk} rows on disk, tasks reported {counts['written']}")
    previous_total = parent.counts.get("total_rows", 0) if parent else 0
    counts["total_rows"] = previous_total + counts["written"]
    partitions = sorted({path.split("/")[2] for path in new_files})
    manifest = Manifest(
        snapshot_id=snapshot_id,
        parent_id=parent.snapshot_id if parent else None,
        created_at=datetime.now(timezone.utc).isoformat(),
        source=source or ",".join(str(p) for p in paths),
        schema_hash=schema_hash(),
        counts=counts,
        files=(parent.files if parent else []) + new_files,
        quarantine_files=quarantine_files,
        partitions=partitions,
    )
    lake.commit(manifest)
    return manifest
