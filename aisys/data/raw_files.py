"""Write raw event files the way an upstream system would, optionally with broken rows.

Timestamps are written as ISO-8601 strings (``2026-01-01T00:03:43.119481Z``).
``bad_share`` replaces that share of rows with deliberately broken copies, cycling
through :data:`BREAKAGES` (one defect per broken row); ``duplicate_share`` appends
exact copies of that share of rows (same event_id). The returned
:class:`RawWriteStats` says how many of each were written, so ingestion counts can
be reconciled exactly: ``clean == rows - bad_rows - duplicate_rows``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from aisys.schemas import EVENT_COLUMNS

FORMATS = ("jsonl", "csv", "parquet")
# Each defect breaks exactly one validation rule (docs/ingest.md).
BREAKAGES: tuple[str, ...] = (
    "empty_user_id",
    "unknown_event_type",
    "negative_price",
    "unparseable_timestamp",
    "timestamp_1970",
    "non_numeric_value",
    "missing_item_id",
)


@dataclass
class RawWriteStats:
    """What a raw file holds: ``rows`` in total, of which ``bad_rows`` broken and
    ``duplicate_rows`` exact repeats of other rows."""

    rows: int
    bad_rows: int
    duplicate_rows: int
    path: str


def _as_raw_strings(table: pa.Table) -> dict[str, list]:
    """Columns as an upstream writer emits them: ISO timestamps, numbers as numbers."""
    # Arrow's %S already carries the microseconds; "Z" marks UTC.
    ts = pc.strftime(table.column("timestamp"), format="%Y-%m-%dT%H:%M:%S")
    columns = {name: table.column(name).to_pylist() for name in EVENT_COLUMNS if name != "timestamp"}
    columns["timestamp"] = [f"{t}Z" for t in ts.to_pylist()]
    return {name: columns[name] for name in EVENT_COLUMNS}


def _break_row(row: dict, kind: str) -> None:
    if kind == "empty_user_id":
        row["user_id"] = ""
    elif kind == "unknown_event_type":
        row["event_type"] = "teleport"
    elif kind == "negative_price":
        row["price"] = -abs(row["price"] or 1.0) - 1.0
    elif kind == "unparseable_timestamp":
        row["timestamp"] = "2026-13-99T25:61:00Z"
    elif kind == "timestamp_1970":
        row["timestamp"] = "1970-01-01T00:00:00Z"
    elif kind == "non_numeric_value":
        row["value"] = "lots"
    elif kind == "missing_item_id":
        row["item_id"] = None
    else:  # pragma: no cover - BREAKAGES is closed
        raise ValueError(f"unknown breakage {kind!r}")


def write_raw_events(
    table: pa.Table,
    path: str | Path,
    fmt: str = "jsonl",
    bad_share: float = 0.0,
    duplicate_share: float = 0.0,
    seed: int = 0,
) -> RawWriteStats:
    """Write ``table`` (``EVENT_SCHEMA``) to ``path`` as ``fmt`` with injected defects.

    Broken rows replace originals (their event_ids then never reach the lake);
    duplicates repeat clean rows and are appended after a shuffle-free copy so the
    first occurrence is the original.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if not (0 <= bad_share < 1 and 0 <= duplicate_share < 1):
        raise ValueError("bad_share and duplicate_share must be in [0, 1)")
    rng = np.random.default_rng(seed)
    n = table.num_rows
    columns = _as_raw_strings(table)
    rows = [{name: columns[name][i] for name in EVENT_COLUMNS} for i in range(n)]
    n_bad = int(round(bad_share * n))
    bad_idx = set(rng.choice(n, size=n_bad, replace=False).tolist()) if n_bad else set()
    for k, i in enumerate(sorted(bad_idx)):
        _break_row(rows[i], BREAKAGES[k % len(BREAKAGES)])
    good_idx = np.array([i for i in range(n) if i not in bad_idx], dtype=np.int64)
    n_dup = min(int(round(duplicate_share * n)), len(good_idx))
    dup_idx = np.sort(rng.choice(good_idx, size=n_dup, replace=False)) if n_dup else np.array([], np.int64)
    rows.extend(dict(rows[i]) for i in dup_idx)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        with path.open("w") as out:
            for row in rows:
                out.write(json.dumps(row) + "\n")
    else:
        # CSV/Parquet need one type per column: the broken values make them text.
        raw = pa.table({name: pa.array([None if r[name] is None else str(r[name]) for r in rows], pa.string())
                        for name in EVENT_COLUMNS})
        if fmt == "csv":
            pacsv.write_csv(raw, path)
        else:
            pq.write_table(raw, path)
    return RawWriteStats(rows=len(rows), bad_rows=n_bad, duplicate_rows=n_dup, path=str(path))
