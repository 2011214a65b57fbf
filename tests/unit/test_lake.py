"""The lake: commit, read, time travel, atomic visibility."""

from __future__ import annotations

import pyarrow as pa
import pytest

from aisys.config import SimulatorConfig
from aisys.data.lake import COUNT_KEYS, Lake, Manifest, new_snapshot_id
from aisys.data.simulator import simulate_events
from aisys.schemas import LAKE_SCHEMA, QUARANTINE_SCHEMA, schema_hash


def _events() -> pa.Table:
    return simulate_events(SimulatorConfig(n_users=20, n_items=15, n_categories=3, n_sessions=60, days=4))


def _snapshot(lake: Lake, table: pa.Table, parent: Manifest | None, quarantine: pa.Table | None = None) -> Manifest:
    sid = new_snapshot_id()
    files = lake.write_event_files(table, sid)
    qfiles = lake.write_quarantine_file(quarantine, sid) if quarantine is not None else []
    manifest = Manifest(
        snapshot_id=sid, parent_id=parent.snapshot_id if parent else None, created_at="2026-01-01T00:00:00Z",
        source="test", schema_hash=schema_hash(), counts={k: 0 for k in COUNT_KEYS},
        files=(parent.files if parent else []) + [f for f, _ in files],
        quarantine_files=[f for f, _ in qfiles], partitions=sorted({f.split("/")[2] for f, _ in files}),
    )
    lake.commit(manifest)
    return manifest


def test_empty_lake(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    assert lake.list_snapshots() == [] and lake.latest() is None
    assert lake.read_events().num_rows == 0 and len(lake.existing_event_ids()) == 0


def test_commit_and_read_back_sorted_with_event_date(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    events = _events()
    shuffled = events.take(pa.array(list(range(events.num_rows))[::-1]))
    manifest = _snapshot(lake, shuffled, None)
    table = lake.read_events()
    assert table.schema.equals(LAKE_SCHEMA)
    assert table.drop_columns(["event_date"]).equals(events.cast(table.drop_columns(["event_date"]).schema))
    assert table.column("event_date")[0].as_py() == "2026-01-01"
    assert all(p.startswith("event_date=") for p in manifest.partitions) and len(manifest.partitions) >= 3
    files = list((tmp_path / "lake/events/data" / manifest.snapshot_id).glob("event_date=*/*.parquet"))
    assert len(files) == len(manifest.files)
    assert lake.read_events(columns=["event_id"]).column_names == ["event_id"]


def test_time_travel_by_snapshot_id(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    events = _events()
    first = _snapshot(lake, events.slice(0, 100), None)
    second = _snapshot(lake, events.slice(100), first)
    assert [m.snapshot_id for m in lake.list_snapshots()] == [first.snapshot_id, second.snapshot_id]
    assert lake.latest().snapshot_id == second.snapshot_id
    assert lake.read_events(first.snapshot_id).num_rows == 100
    assert lake.read_events().num_rows == events.num_rows
    assert sorted(lake.existing_event_ids(first.snapshot_id).to_pylist()) == sorted(
        events.slice(0, 100).column("event_id").to_pylist())
    assert lake.get(first.snapshot_id) == first


def test_unknown_snapshot_is_a_clear_error(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    with pytest.raises(KeyError, match="nope"):
        lake.get("nope")


def test_files_without_manifest_are_invisible(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    events = _events()
    first = _snapshot(lake, events.slice(0, 50), None)
    # An ingest killed before commit: data written, temp manifest left behind, no manifest.
    orphan = new_snapshot_id()
    lake.write_event_files(events.slice(50), orphan)
    (tmp_path / "lake/events/_manifests" / f".{orphan}.json.tmp").write_text("{partial")
    assert [m.snapshot_id for m in lake.list_snapshots()] == [first.snapshot_id]
    assert lake.read_events().num_rows == 50


def test_commit_refuses_to_overwrite_a_snapshot(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    manifest = _snapshot(lake, _events(), None)
    with pytest.raises(FileExistsError):
        lake.commit(manifest)


def test_quarantine_round_trip(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    bad = pa.table({**{n: pa.array(["x"], pa.string()) for n in QUARANTINE_SCHEMA.names}})
    manifest = _snapshot(lake, _events(), None, quarantine=bad)
    assert lake.read_quarantine(manifest.snapshot_id).to_pylist() == bad.to_pylist()


def test_snapshot_ids_sort_by_time():
    from datetime import datetime, timezone

    early = new_snapshot_id(datetime(2026, 1, 1, tzinfo=timezone.utc))
    late = new_snapshot_id(datetime(2026, 1, 2, tzinfo=timezone.utc))
    assert early < late and early.startswith("20260101T000000.000000Z-")
