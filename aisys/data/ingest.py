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
from aisys.data.validate import ValidationRules
from aisys.runtime import init_ray
from aisys.schemas import EVENT_COLUMNS, schema_hash

from aisys.data.ingest_blocks import (
    PARQUET_BYTES_PER_BLOCK,
    STATS_SCHEMA,
    WRITE_CHUNK_ROWS,
    ReconciliationError,
    _micros,
    clean_rows,
    group_blocks,
    hash_strings,
    parse_jsonl_lines,
    pick_winners_hashed,
    quarantine_of,
    reconcile,
    validate_to_tagged,
    write_blocks,
)

_log = logging.getLogger(__name__)

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
