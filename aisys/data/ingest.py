"""Ingest raw event files into the lake with Ray Data.

read (json/jsonl, csv, parquet; mixed ok) -> map_batches(validate, whole blocks)
-> materialize once (blocks stay in the object store, in input order). A block holds
   the clean rows, typed, plus one carrier row with its rejected rows (Arrow IPC).
-> driver: hash the event_id of every clean row to 64 bits (the driver keeps 16 bytes
   a row: hash, timestamp), re-read the exact ids of the rows whose hash repeats or
   matches an id in the lake, and pick the global winners among them (earliest
   timestamp, ties by input order; ids already in the lake dropped)
-> one write task per group of blocks: keep the winners, write them partitioned by
   event_date, write the quarantine rows
-> reconcile the counts, check the Parquet footers, commit the manifest.

There is no shuffle: the keys of every clean row meet on the driver, which is all a
global dedupe needs. The rows themselves are read, validated and written once, in
parallel. Identities checked before commit:

    input == clean + quarantined
    clean == written + duplicates_in_batch + duplicates_in_lake

A task that dies after writing leaves orphan files that no manifest lists.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from datetime import datetime, timezone
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aisys.config import AppConfig
from aisys.data.lake import Lake, Manifest, new_snapshot_id
from aisys.data.lake_commit import commit_with_rebase
from aisys.data.validate import ValidationRules, validate_events
from aisys.runtime import init_ray
from aisys.schemas import EVENT_COLUMNS, EVENT_SCHEMA, QUARANTINE_SCHEMA, schema_hash

QUARANTINE_COLUMN = "_quarantine"
# One schema for every block between validation and writing: the typed event columns
# of the clean rows, in input order, plus one binary column that is null on them. A
# block with rejected rows ends with one extra "carrier" row (event columns null) whose
# binary value is the Arrow IPC stream of all its rejected rows (QUARANTINE_SCHEMA).
# Rejected rows are ~0.5%: carrying their ten text columns on every clean row (as
# nulls: offsets + validity) cost ~40 B per row and made 10M validated rows overflow
# the object store; the carrier costs ~4 B per clean row.
TAGGED_SCHEMA = pa.schema(
    [pa.field(f.name, f.type, nullable=True) for f in EVENT_SCHEMA] + [pa.field(QUARANTINE_COLUMN, pa.binary())]
)
STATS_SCHEMA = pa.schema([("kind", pa.string()), ("path", pa.string()), ("rows", pa.int64())])
# Rows handed to one write task: big enough that files are not tiny, small enough
# that one task per CPU stays well inside the memory budget (~80 B per tagged row,
# a few copies while filtering and writing).
WRITE_CHUNK_ROWS = 1_000_000
# Parquet bytes per read task (~2.5M rows of events): a huge single file is still read in parallel.
PARQUET_BYTES_PER_BLOCK = 64 * 1024 * 1024


_log = logging.getLogger(__name__)


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
    """Validate a raw batch and return it as one ``TAGGED_SCHEMA`` table: the clean rows
    in their original order, then (if any row was rejected) one carrier row holding the
    rejected rows as an Arrow IPC stream."""
    clean, quarantine = validate_events(batch, rules)
    extra = 1 if quarantine.num_rows else 0
    columns = []
    for field in EVENT_SCHEMA:
        column = clean.column(field.name).combine_chunks().cast(field.type)
        columns.append(pa.concat_arrays([column, pa.nulls(extra, field.type)]) if extra else column)
    if extra:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, QUARANTINE_SCHEMA) as writer:
            writer.write_table(quarantine.cast(QUARANTINE_SCHEMA))
        carrier = pa.array([None] * clean.num_rows + [sink.getvalue().to_pybytes()], pa.binary())
    else:
        carrier = pa.nulls(clean.num_rows, pa.binary())
    return pa.Table.from_arrays(columns + [carrier], schema=TAGGED_SCHEMA)


def _is_clean(tagged: pa.Table) -> pa.Array | None:
    """Mask of the clean rows, or None when every row is clean (the common block)."""
    column = tagged.column(QUARANTINE_COLUMN)
    if column.null_count == tagged.num_rows:
        return None
    return pc.is_null(column)


def quarantine_of(tagged: pa.Table) -> pa.Table:
    """The rejected rows carried by a tagged block (``QUARANTINE_SCHEMA``), in block order."""
    column = tagged.column(QUARANTINE_COLUMN)
    parts = [pa.ipc.open_stream(value.as_buffer()).read_all()
             for chunk in column.chunks if chunk.null_count < len(chunk)
             for value in chunk.filter(pc.is_valid(chunk))]
    return pa.concat_tables(parts) if parts else QUARANTINE_SCHEMA.empty_table()


def split_tagged(tagged: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Undo :func:`validate_to_tagged`: ``(clean EVENT_SCHEMA, quarantine QUARANTINE_SCHEMA)``,
    both in block order."""
    return clean_rows(tagged), quarantine_of(tagged)


def clean_rows(tagged: pa.Table) -> pa.Table:
    """The clean rows of a tagged block as ``EVENT_SCHEMA``, in block order."""
    mask = _is_clean(tagged)
    table = tagged if mask is None else tagged.filter(mask)
    return table.select(list(EVENT_COLUMNS)).cast(EVENT_SCHEMA)


_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def hash_strings(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """64-bit FNV-1a hash of every (non-null) string, vectorised over byte positions.

    Only a filter: equal strings get equal hashes; unequal strings almost always get
    different ones, and callers resolve equal hashes on the exact strings.
    """
    if isinstance(values, pa.ChunkedArray):
        parts = [hash_strings(chunk) for chunk in values.chunks]
        return np.concatenate(parts) if parts else np.zeros(0, np.uint64)
    values = values.cast(pa.large_string()) if values.type != pa.large_string() else values
    n = len(values)
    if n == 0:
        return np.zeros(0, np.uint64)
    _, offsets_buf, data_buf = values.buffers()
    offsets = np.frombuffer(offsets_buf, np.int64)[values.offset:values.offset + n + 1]
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(1, np.uint8)
    if len(data) == 0:
        data = np.zeros(1, np.uint8)
    starts = offsets[:-1]
    lengths = offsets[1:] - starts
    h = np.full(n, _FNV_OFFSET, np.uint64) ^ lengths.astype(np.uint64)
    with np.errstate(over="ignore"):
        for j in range(int(lengths.max()) if n else 0):
            live = lengths > j
            byte = data[np.minimum(starts + j, len(data) - 1)].astype(np.uint64)
            h = np.where(live, (h ^ byte) * _FNV_PRIME, h)
    return h


def pick_winners(event_ids: pa.Array, timestamps: pa.Array,
                 existing_ids: pa.Array | None = None) -> tuple[np.ndarray, int, int]:
    """Global dedupe on keys only: returns ``(positions to keep, n_duplicates_in_batch,
    n_already_in_lake)``.

    Position ``i`` is row ``i`` of the keys in input order. Per event_id the row with
    the earliest timestamp wins, ties going to the earlier position; then winners whose
    id is already in ``existing_ids`` are dropped. Same rule as
    :func:`aisys.data.validate.dedupe_events`, but ids that occur once (nearly all)
    skip the sort: only rows of repeated ids are sorted.
    """
    n = len(event_ids)
    if n == 0:
        return np.zeros(0, np.int64), 0, 0
    if isinstance(event_ids, pa.ChunkedArray):
        # (Encoding chunk by chunk repeats the growing dictionary in every chunk: slow.)
        event_ids = event_ids.combine_chunks()
    codes = pc.dictionary_encode(event_ids).indices.to_numpy(zero_copy_only=False)
    repeated = np.bincount(codes)[codes] > 1
    keep = ~repeated
    rows = np.flatnonzero(repeated)
    if len(rows):
        ts = pc.cast(timestamps, pa.int64())
        ts = np.concatenate([c.to_numpy(zero_copy_only=False) for c in ts.chunks]) if isinstance(
            ts, pa.ChunkedArray) else ts.to_numpy(zero_copy_only=False)
        order = rows[np.lexsort((rows, ts[rows], codes[rows]))]  # by id, then timestamp, then position
        first = np.ones(len(order), bool)
        first[1:] = codes[order[1:]] != codes[order[:-1]]
        keep[order[first]] = True
    winners = np.flatnonzero(keep)
    n_in_batch = n - len(winners)
    n_in_lake = 0
    if existing_ids is not None and len(existing_ids):
        in_lake = pc.fill_null(pc.is_in(event_ids.take(pa.array(winners)), value_set=existing_ids), False)
        in_lake = in_lake.to_numpy(zero_copy_only=False)
        n_in_lake = int(in_lake.sum())
        winners = winners[~in_lake]
    return winners, n_in_batch, n_in_lake


def write_blocks(blocks: Sequence[pa.Table], keeps: Sequence[np.ndarray], lake: "Lake | str",
                 snapshot_id: str) -> pa.Table:
    """Write a group of tagged blocks: of each block's clean rows only the positions in
    ``keeps`` (the winners), partitioned by event_date; all its quarantine rows.

    Returns ``STATS_SCHEMA`` rows, one per file written.
    """
    lake = lake if isinstance(lake, Lake) else Lake(lake)
    kept, rejected = [], []
    for block, keep in zip(blocks, keeps):
        clean, quarantine = split_tagged(block)
        kept.append(clean.take(pa.array(keep, pa.int64())))
        rejected.append(quarantine)
    rows = [("data", path, n) for day in by_day(pa.concat_tables(kept))
            for path, n in lake.write_event_files(day, snapshot_id)]
    rows += [("quarantine", path, n)
             for path, n in lake.write_quarantine_file(pa.concat_tables(rejected), snapshot_id)]
    del kept, rejected
    pa.default_memory_pool().release_unused()  # a long-lived worker should not hold the peak
    return pa.table({"kind": [r[0] for r in rows], "path": [r[1] for r in rows], "rows": [r[2] for r in rows]},
                    schema=STATS_SCHEMA)


def by_day(table: pa.Table) -> list[pa.Table]:
    """Cut rows into one slice per UTC day, keeping their order within a day.

    ``Lake.write_event_files`` filters its input once per date; handing it one day at a
    time makes that a single pass over the rows instead of one pass per date.
    """
    if table.num_rows == 0:
        return []
    micros = pc.cast(table.column("timestamp"), pa.int64()).to_numpy(zero_copy_only=False)
    day = np.floor_divide(micros, 86_400_000_000)
    order = np.argsort(day, kind="stable")
    day = day[order]
    table = table.take(pa.array(order))
    starts = np.flatnonzero(np.concatenate([[True], day[1:] != day[:-1]]))
    ends = np.concatenate([starts[1:], [len(day)]])
    return [table.slice(int(a), int(b - a)) for a, b in zip(starts, ends)]


def reconcile(counts: dict[str, int], stats: pa.Table) -> None:
    """Check the identities and the write tasks' reports against ``counts`` (manifest
    counts without ``total_rows``); raises :class:`ReconciliationError` if any fails."""

    def total(kind: str) -> int:
        return int(pc.sum(stats.filter(pc.equal(stats.column("kind"), kind)).column("rows")).as_py() or 0)

    problems = []
    if counts["input"] != counts["clean"] + counts["quarantined"]:
        problems.append(f"input ({counts['input']}) != clean + quarantined ({counts})")
    if counts["clean"] != counts["written"] + counts["duplicates_in_batch"] + counts["duplicates_in_lake"]:
        problems.append(f"clean ({counts['clean']}) != written + duplicates ({counts})")
    if total("data") != counts["written"]:
        problems.append(f"data files hold {total('data')} rows but {counts['written']} were chosen")
    if total("quarantine") != counts["quarantined"]:
        problems.append(f"quarantine files hold {total('quarantine')} rows but {counts['quarantined']} were rejected")
    if problems:
        raise ReconciliationError("ingest counts do not reconcile: " + "; ".join(problems))


def group_blocks(sizes: Sequence[int], target_rows: int) -> list[list[int]]:
    """Consecutive block indices grouped so each group holds about ``target_rows`` rows."""
    groups: list[list[int]] = [[]]
    rows = 0
    for index, size in enumerate(sizes):
        if groups[-1] and rows + size > target_rows:
            groups.append([])
            rows = 0
        groups[-1].append(index)
        rows += size
    return [g for g in groups if g]


# --- the Ray adapter ------------------------------------------------------------------


def _kind(path: str) -> str:
    lower = path.lower()
    for suffix, kind in ((".jsonl", "json"), (".json", "json"), (".ndjson", "json"), (".csv", "csv"),
                         (".parquet", "parquet"), (".pq", "parquet")):
        if lower.endswith(suffix):
            return kind
    raise ValueError(f"cannot tell the format of {path!r}: use .jsonl/.json, .csv or .parquet")


def _runs(paths: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Consecutive paths of one format, in the given order (the order decides ties)."""
    runs: list[tuple[str, list[str]]] = []
    for path in paths:
        kind = _kind(path)
        if runs and runs[-1][0] == kind:
            runs[-1][1].append(path)
        else:
            runs.append((kind, [path]))
    return runs


def _read(ray, kind: str, paths: list[str]):
    import pyarrow.csv as pacsv
    from ray.data import DataContext

    # One read task per file: files are the natural unit, and few large blocks keep
    # the per-block cost (task launch, vectorised validation setup) negligible.
    blocks = len(paths)
    if kind == "json":
        # Text lines, parsed in map_batches: a broken row must not fail the read.
        return ray.data.read_text(paths, override_num_blocks=blocks).map_batches(
            parse_jsonl_lines, batch_format="pyarrow", batch_size=None)
    if kind == "csv":
        # Every event column as text: a bad value becomes a quarantined row, not a read error.
        convert = pacsv.ConvertOptions(column_types={name: pa.string() for name in EVENT_COLUMNS},
                                       strings_can_be_null=False)
        return ray.data.read_csv(paths, convert_options=convert, override_num_blocks=blocks)
    # Ray 2.60's DataSourceV2 Parquet reader (ListFiles -> ReadFiles) put two 500k-row
    # files into one read task and one block (no parallelism: 3.3 s vs 0.9 s for read +
    # validate of 1M rows); the V1 reader honours one read task per file.
    total = sum(_size(p) for p in paths)
    blocks = max(blocks, math.ceil(total / PARQUET_BYTES_PER_BLOCK))
    context = DataContext.get_current()
    previous = context.use_datasource_v2
    context.use_datasource_v2 = False  # read_parquet copies the context: restored at once
    try:
        return ray.data.read_parquet(paths, override_num_blocks=blocks)
    finally:
        context.use_datasource_v2 = previous


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:  # a remote path: count it as one block's worth
        return PARQUET_BYTES_PER_BLOCK


def ingest_files(
    cfg: AppConfig,
    paths: Sequence[str],
    source: str | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> Manifest:
    """Validate, deduplicate and append raw event files to the lake as a new snapshot.

    Duplicates: per event_id the earliest timestamp wins, ties going to the row that
    comes first in ``paths`` order, then file order; ids already in the lake are dropped.

    ``on_progress(phase, done, total)`` is told how far each phase is: ``validate`` (0/1 then 1/1: Ray Data
    reads and validates in one pass), ``keys`` (blocks whose keys reached the driver), ``write`` (write
    tasks finished) and ``commit`` (1/1).
    """
    progress = on_progress or (lambda phase, done, total: None)
    if not paths:
        raise ValueError("ingest_files needs at least one path")
    paths = [str(p) for p in paths]
    ray = init_ray(cfg)

    lake = Lake.from_config(cfg.paths)  # with the S3 endpoint, when one is set
    rules = ValidationRules.from_config(cfg.ingest, now=datetime.now(timezone.utc))
    parent = lake.latest()
    existing = lake.existing_event_ids()
    snapshot_id = new_snapshot_id()

    tagged = None
    for kind, run_paths in _runs(paths):
        part = _read(ray, kind, run_paths).map_batches(
            validate_to_tagged, batch_format="pyarrow", batch_size=None, fn_kwargs={"rules": rules}
        )
        tagged = part if tagged is None else tagged.union(part)
    # Blocks in input order: a row's position (block, row) then breaks timestamp ties
    # the same way on every run.
    tagged.context.execution_options.preserve_order = True
    t0 = time.perf_counter()
    progress("validate", 0, 1)
    materialized = tagged.materialize()  # the only pass over the rows before the write
    tm = time.perf_counter()
    progress("validate", 1, 1)
    refs = [entry.ref for bundle in materialized.iter_internal_ref_bundles() for entry in bundle.blocks]

    # Keys of the clean rows, block by block: 16 bytes per row (a 64-bit hash of the
    # event_id, the timestamp) reach the driver, not the ids themselves.
    hashes, stamps, sizes, n_input = [], [], [], 0
    for ref in refs:
        block = ray.get(ref)
        clean = clean_rows(block)
        n_input += clean.num_rows + quarantine_of(block).num_rows
        hashes.append(hash_strings(clean.column("event_id")))
        stamps.append(_micros(clean.column("timestamp")))
        sizes.append(clean.num_rows)
        del block, clean  # releases the object-store pin
        progress("keys", len(sizes), len(refs))
    t1 = time.perf_counter()
    winners, in_batch, in_lake = pick_winners_hashed(
        np.concatenate(hashes) if hashes else np.zeros(0, np.uint64),
        np.concatenate(stamps) if stamps else np.zeros(0, np.int64), _fetch_ids(ray, refs, sizes), existing)
    del hashes, stamps, existing
    pa.default_memory_pool().release_unused()  # hand the keys' memory back before the write
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    cut = np.searchsorted(winners, offsets)
    keeps = [winners[cut[i]:cut[i + 1]] - offsets[i] for i in range(len(refs))]

    t2 = time.perf_counter()
    # The write: groups of consecutive blocks, at most one task per CPU in flight.
    write = _remote_write_task(ray)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    target = max(1, min(WRITE_CHUNK_ROWS, math.ceil(max(1, sum(sizes)) / cpus)))
    pending, results = [], []
    groups = list(group_blocks(sizes, target))
    progress("write", 0, len(groups))
    for group in groups:
        if len(pending) >= cpus:
            done, pending = ray.wait(pending, num_returns=1)
            results += ray.get(done)
            progress("write", len(results), len(groups))
        pending.append(write.remote(lake, snapshot_id, [keeps[i] for i in group], *[refs[i] for i in group]))
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        results += ray.get(done)
        progress("write", len(results), len(groups))
    del materialized, refs
    t3 = time.perf_counter()
    _log.info("ingest %s: read+validate %.2fs, keys %.2fs, dedupe %.2fs, write %.2fs", snapshot_id, tm - t0, t1 - tm,
              t2 - t1, t3 - t2)
    stats = pa.concat_tables(results) if results else STATS_SCHEMA.empty_table()

    n_clean = int(sum(sizes))
    counts = {
        "input": n_input,
        "clean": n_clean,
        "quarantined": n_input - n_clean,
        "duplicates_in_batch": in_batch,
        "duplicates_in_lake": in_lake,
        "written": len(winners),
    }
    reconcile(counts, stats)
    new_files = sorted(stats.filter(pc.equal(stats.column("kind"), "data")).column("path").to_pylist())
    quarantine_files = sorted(stats.filter(pc.equal(stats.column("kind"), "quarantine")).column("path").to_pylist())
    # The footers must agree with what the tasks said they wrote.
    on_disk = lake.file_rows(new_files)
    if on_disk != counts["written"]:
        raise ReconciliationError(f"data files hold {on_disk} rows on disk, {counts['written']} were chosen")
    previous_total = parent.counts.get("total_rows", 0) if parent else 0
    counts["total_rows"] = previous_total + counts["written"]
    partitions = sorted({path.split("/")[2] for path in new_files})
    manifest = Manifest(
        snapshot_id=snapshot_id,
        parent_id=parent.snapshot_id if parent else None,
        created_at=datetime.now(timezone.utc).isoformat(),
        source=source or ",".join(paths),
        schema_hash=schema_hash(),
        counts=counts,
        files=(parent.files if parent else []) + new_files,
        quarantine_files=quarantine_files,
        partitions=partitions,
    )
    # Another ingest may have committed since `parent` was read: rebase onto it rather than hide its rows.
    committed = commit_with_rebase(lake, manifest)
    progress("commit", 1, 1)
    return committed


def _micros(timestamps: pa.ChunkedArray) -> np.ndarray:
    ts = pc.cast(timestamps, pa.int64())
    parts = [c.to_numpy(zero_copy_only=False) for c in ts.chunks]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def pick_winners_hashed(hashes: np.ndarray, timestamps: np.ndarray, fetch_ids: Callable[[np.ndarray], pa.Array],
                        existing_ids: pa.Array | None = None,
                        hash_fn: Callable[[pa.Array], np.ndarray] | None = None) -> tuple[np.ndarray, int, int]:
    """:func:`pick_winners` from 64-bit id hashes, fetching exact ids only where needed.

    ``hashes``/``timestamps`` (int64 micros) hold one entry per clean row in input order;
    ``fetch_ids(rows)`` returns the exact event_ids of the sorted positions ``rows``. A
    row whose hash occurs once and is not the hash of an id in the lake has a unique id
    that is not in the lake: it wins. Every copy of a repeated id shares its hash, so
    every row that could lose or be in the lake is a candidate, and :func:`pick_winners`
    decides among the candidates on their exact ids: hash collisions cost a little
    work, never a wrong answer.
    """
    hash_fn = hash_fn or hash_strings
    n = len(hashes)
    if n == 0:
        return np.zeros(0, np.int64), 0, 0
    order = np.argsort(hashes)
    same = hashes[order[1:]] == hashes[order[:-1]]
    candidate = np.zeros(n, bool)
    candidate[order[1:][same]] = True
    candidate[order[:-1][same]] = True
    del order, same
    if existing_ids is not None and len(existing_ids):
        candidate |= np.isin(hashes, hash_fn(existing_ids))
    else:
        existing_ids = None
    rows = np.flatnonzero(candidate)
    del candidate
    if len(rows) == 0:
        return np.arange(n, dtype=np.int64), 0, 0
    won, in_batch, in_lake = pick_winners(fetch_ids(rows), pa.array(timestamps[rows], pa.int64()), existing_ids)
    keep = np.ones(n, bool)  # non-candidates all win; candidates where pick_winners chose them
    keep[rows] = False
    keep[rows[won]] = True
    return np.flatnonzero(keep), in_batch, in_lake


def _fetch_ids(ray, refs, sizes: Sequence[int]) -> Callable[[np.ndarray], pa.Array]:
    """``fetch_ids`` for :func:`pick_winners_hashed`: reads the ids again from the blocks."""
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def fetch(rows: np.ndarray) -> pa.Array:
        cut = np.searchsorted(rows, offsets)
        ids = [pa.array([], pa.string())]
        for i, ref in enumerate(refs):
            local = rows[cut[i]:cut[i + 1]] - offsets[i]
            if len(local):
                block = ray.get(ref)
                ids.append(clean_rows(block).column("event_id").take(pa.array(local)).combine_chunks())
                del block
        return pa.concat_arrays(ids)

    return fetch


_REMOTE_WRITE_TASK = None


def _remote_write_task(ray):
    """The write task as a Ray remote function, made once per process (each new
    remote function is exported to the workers again)."""
    global _REMOTE_WRITE_TASK
    if _REMOTE_WRITE_TASK is None:
        _REMOTE_WRITE_TASK = ray.remote(num_cpus=1)(_write_task)
    return _REMOTE_WRITE_TASK


def _write_task(lake: Lake, snapshot_id: str, keeps: list[np.ndarray], *blocks: pa.Table) -> pa.Table:
    """Ray task body: blocks arrive as arguments (resolved from the object store)."""
    return write_blocks(blocks, keeps, lake, snapshot_id)
