"""Concurrent commits: exactly one writer wins a parent, the loser rebases, and no row is lost or stored twice."""

from __future__ import annotations

import threading

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from aisys.config import SimulatorConfig
from aisys.data.lake import COUNT_KEYS, ConcurrentCommitError, Lake, Manifest, new_snapshot_id
from aisys.data.lake_commit import commit_with_rebase
from aisys.data.simulator import simulate_events
from aisys.schemas import schema_hash


def _events() -> pa.Table:
    return simulate_events(SimulatorConfig(n_users=30, n_items=20, n_categories=3, n_sessions=120, days=4))


def _prepare(lake: Lake, table: pa.Table, parent: Manifest | None) -> Manifest:
    """What an ingest has before it commits: its files written, its manifest built on ``parent``."""
    sid = new_snapshot_id()
    files = [f for f, _ in lake.write_event_files(table, sid)]
    previous = parent.counts["total_rows"] if parent else 0
    counts = {key: 0 for key in COUNT_KEYS}
    counts.update(input=table.num_rows, clean=table.num_rows, written=table.num_rows,
                  total_rows=previous + table.num_rows)
    return Manifest(
        snapshot_id=sid, parent_id=parent.snapshot_id if parent else None, created_at="2026-01-01T00:00:00Z",
        source="test", schema_hash=schema_hash(), counts=counts,
        files=(parent.files if parent else []) + files, partitions=sorted({f.split("/")[2] for f in files}),
    )


def test_the_second_writer_on_one_parent_is_refused(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    events = _events()
    first = _prepare(lake, events.slice(0, 50), None)
    second = _prepare(lake, events.slice(50, 50), None)
    lake.commit(first)
    with pytest.raises(ConcurrentCommitError, match="no longer the latest"):
        lake.commit(second)
    assert [m.snapshot_id for m in lake.list_snapshots()] == [first.snapshot_id]


def test_a_lost_race_rebases_and_drops_only_rows_the_winner_added(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    events = _events()
    base = _prepare(lake, events.slice(0, 100), None)
    lake.commit(base)
    # Both start from `base`; their batches overlap in 40 rows.
    winner = _prepare(lake, events.slice(100, 100), base)
    loser = _prepare(lake, events.slice(160, 100), base)
    lake.commit(winner)
    landed = commit_with_rebase(lake, loser)

    assert landed.parent_id == winner.snapshot_id and landed.snapshot_id > winner.snapshot_id
    assert lake.latest().snapshot_id == landed.snapshot_id
    table = lake.read_events()
    ids = table.column("event_id")
    assert table.num_rows == 260 and pc.count_distinct(ids).as_py() == 260  # nothing lost, nothing twice
    assert set(ids.to_pylist()) == set(events.slice(0, 260).column("event_id").to_pylist())
    counts = landed.counts
    assert counts["written"] == 60 and counts["duplicates_in_lake"] == 40
    assert counts["clean"] == counts["written"] + counts["duplicates_in_batch"] + counts["duplicates_in_lake"]
    assert counts["total_rows"] == 260 == lake.file_rows(landed.files)


def test_writers_racing_in_threads_all_land(tmp_path):
    """Eight writers commit from the same parent at once: every row of every batch is in the final table."""
    lake = Lake(str(tmp_path / "lake"))
    events = _events()
    n_writers, size = 8, 30
    prepared = [_prepare(lake, events.slice(i * size, size), None) for i in range(n_writers)]
    start = threading.Barrier(n_writers)
    landed: list[Manifest] = []
    errors: list[BaseException] = []

    def write(manifest: Manifest) -> None:
        start.wait()
        try:
            landed.append(commit_with_rebase(Lake(str(tmp_path / "lake")), manifest, attempts=n_writers + 2))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(m,)) for m in prepared]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    snapshots = lake.list_snapshots()
    assert len(snapshots) == n_writers
    # A chain: each snapshot's parent is the one before it.
    assert [m.parent_id for m in snapshots] == [None] + [m.snapshot_id for m in snapshots[:-1]]
    table = lake.read_events()
    assert table.num_rows == n_writers * size == pc.count_distinct(table.column("event_id")).as_py()
    assert lake.latest().counts["total_rows"] == n_writers * size


def test_a_writer_killed_after_its_claim_is_rolled_forward(tmp_path):
    """The claim holds the whole manifest: the next commit publishes it instead of losing it."""
    lake = Lake(str(tmp_path / "lake"))
    events = _events()
    orphan = _prepare(lake, events.slice(0, 50), None)
    lake.commit(orphan)
    # Simulate a crash between the claim and the publish: the claim exists, the manifest does not.
    lake.fs.delete_file(f"{lake.events_root}/_manifests/{orphan.snapshot_id}.json")
    assert lake.latest() is None
    later = _prepare(lake, events.slice(50, 50), None)
    landed = commit_with_rebase(lake, later)
    assert [m.snapshot_id for m in lake.list_snapshots()] == [orphan.snapshot_id, landed.snapshot_id]
    assert lake.read_events().num_rows == 100
