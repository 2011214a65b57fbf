"""The pure steps of ingest, one Arrow block or one array at a time (no Ray): parse, validate and tag,
split clean from quarantined rows, hash and dedupe event ids, write a block's winners by day, reconcile.

:mod:`aisys.data.ingest` is the Ray Data adapter that maps these over the blocks; its docstring tells the
whole flow and the identities checked before commit.
"""

from __future__ import annotations

import json
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aisys.data.lake import Lake
from aisys.data.validate import ValidationRules, validate_events
from aisys.schemas import EVENT_COLUMNS, EVENT_SCHEMA, QUARANTINE_SCHEMA

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
