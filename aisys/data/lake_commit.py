"""Committing a snapshot when another writer may have committed first: rebase, then retry.

:meth:`Lake.commit` refuses a manifest whose parent is no longer the latest snapshot
(:class:`ConcurrentCommitError`). An ingest that lost that race rebases: its new files are kept,
any of their rows whose event_id the winning snapshots already added are dropped (counted as
``duplicates_in_lake``, as if the ingest had started after them), and the manifest is rebuilt on
top of the new latest snapshot under a fresh, later snapshot id. So two concurrent ingests both
land, in commit order, and no row is lost or stored twice.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from aisys.data.lake import ConcurrentCommitError, Lake, Manifest, new_snapshot_id

DEFAULT_ATTEMPTS = 8


def commit_with_rebase(lake: Lake, manifest: Manifest, attempts: int = DEFAULT_ATTEMPTS) -> Manifest:
    """Commit ``manifest``; on a lost race rebase it onto the new latest snapshot and try again.

    Returns the manifest that was committed (its id and counts differ from ``manifest`` after a rebase).
    """
    parent_files = set(lake.get(manifest.parent_id).files) if manifest.parent_id else set()
    own_files = [f for f in manifest.files if f not in parent_files]
    for _ in range(attempts):
        try:
            lake.commit(manifest)
            return manifest
        except ConcurrentCommitError:
            manifest, own_files = rebase(lake, manifest, own_files)
    raise ConcurrentCommitError(manifest.parent_id, None)


def rebase(lake: Lake, manifest: Manifest, own_files: list[str]) -> tuple[Manifest, list[str]]:
    """``manifest`` rebuilt on top of the lake's latest snapshot; returns it and its own data files."""
    latest = lake.latest()
    if latest is None:  # cannot happen after a lost race, but a rebase onto nothing is the manifest itself
        return manifest, own_files
    before = set(lake.get(manifest.parent_id).files) if manifest.parent_id else set()
    landed_meanwhile = [f for f in latest.files if f not in before]
    taken = _event_ids(lake, landed_meanwhile)
    kept_files, dropped = [], 0
    for rel in own_files:
        rel, n_dropped = _without_ids(lake, rel, taken)
        dropped += n_dropped
        if rel is not None:
            kept_files.append(rel)
    counts = dict(manifest.counts)
    counts["written"] -= dropped
    counts["duplicates_in_lake"] += dropped
    counts["total_rows"] = latest.counts.get("total_rows", 0) + counts["written"]
    rebased = replace(
        manifest,
        snapshot_id=new_snapshot_id(),  # later than the winner's, so `latest()` (sorted by id) finds this one
        parent_id=latest.snapshot_id,
        created_at=datetime.now(timezone.utc).isoformat(),
        counts=counts,
        files=list(latest.files) + kept_files,
        partitions=sorted({path.split("/")[2] for path in kept_files}),
    )
    return rebased, kept_files


def _event_ids(lake: Lake, relative_paths: list[str]) -> pa.Array:
    if not relative_paths:
        return pa.array([], pa.string())
    dataset = ds.dataset([lake._abs(f) for f in relative_paths], format="parquet", filesystem=lake.fs)
    return dataset.to_table(columns=["event_id"]).column("event_id").combine_chunks().cast(pa.string())


def _without_ids(lake: Lake, relative_path: str, taken: pa.Array) -> tuple[str | None, int]:
    """The file with rows whose event_id is in ``taken`` removed: (new relative path or None if empty, rows dropped).

    The file is rewritten under a new name (files are immutable once written), and the old one
    deleted, since no committed manifest lists it yet.
    """
    if len(taken) == 0:
        return relative_path, 0
    path = lake._abs(relative_path)
    table = pq.read_table(path, filesystem=lake.fs)
    clash = pc.is_in(table.column("event_id"), value_set=taken)
    dropped = int(pc.sum(clash).as_py() or 0)
    if dropped == 0:
        return relative_path, 0
    kept = table.filter(pc.invert(clash))
    lake.fs.delete_file(path)
    if kept.num_rows == 0:
        return None, dropped
    new_path = f"{path.rsplit('/', 1)[0]}/part-{uuid.uuid4().hex[:12]}.parquet"
    pq.write_table(kept, new_path, filesystem=lake.fs)
    return lake._rel(new_path), dropped
