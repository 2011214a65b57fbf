"""Ingest on real Ray Data: broken and duplicated rows reconcile exactly, re-ingest adds nothing."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from aisys.config import SimulatorConfig
from aisys.data.ingest import ingest_files, pick_winners
from aisys.data.lake import Lake
from aisys.data.raw_files import BREAKAGES, write_raw_events
from aisys.data.simulator import simulate_events
from aisys.data.validate import dedupe_events
from aisys.schemas import EVENT_SCHEMA, TIMESTAMP_TYPE

pytestmark = pytest.mark.ray


def test_ingest_jsonl_and_csv_reconciles_and_is_idempotent(small_config, ray_session, tmp_path):
    events = simulate_events(SimulatorConfig(n_users=30, n_items=20, n_categories=4, n_sessions=120, days=5))
    half = events.num_rows // 2
    jsonl = write_raw_events(events.slice(0, half), tmp_path / "a.jsonl", "jsonl", bad_share=0.1,
                             duplicate_share=0.05, seed=1)
    csv = write_raw_events(events.slice(half), tmp_path / "b.csv", "csv", bad_share=0.1,
                           duplicate_share=0.05, seed=2)
    bad = jsonl.bad_rows + csv.bad_rows
    dups = jsonl.duplicate_rows + csv.duplicate_rows
    assert bad >= len(BREAKAGES) and dups > 0

    manifest = ingest_files(small_config, [jsonl.path, csv.path], source="test")
    c = manifest.counts
    assert c["input"] == jsonl.rows + csv.rows
    assert c["quarantined"] == bad
    assert c["duplicates_in_batch"] == dups and c["duplicates_in_lake"] == 0
    assert c["written"] == events.num_rows - bad == c["total_rows"]
    assert c["input"] == c["clean"] + c["quarantined"] and c["clean"] == (
        c["written"] + c["duplicates_in_batch"] + c["duplicates_in_lake"])

    lake = Lake(small_config.paths.lake_uri)
    table = lake.read_events(manifest.snapshot_id)
    assert table.num_rows == c["written"]
    ids = table.column("event_id")
    assert len(pc.unique(ids)) == len(ids)
    quarantine = lake.read_quarantine(manifest.snapshot_id)
    assert quarantine.num_rows == bad
    reasons = quarantine.column("reject_reason").to_pylist()
    assert all(reasons)
    for needle in ["user_id: empty", "event_type: unknown 'teleport'", "price: negative", "timestamp: unparseable",
                   "timestamp: before", "value: not a number 'lots'", "item_id: empty"]:
        assert any(needle in r for r in reasons), needle
    # Every quarantined row is one of the injected ones: none of its ids reached the lake.
    assert not set(quarantine.column("event_id").to_pylist()) & set(ids.to_pylist())

    again = ingest_files(small_config, [csv.path], source="again")
    assert again.parent_id == manifest.snapshot_id
    assert again.counts["written"] == 0
    assert again.counts["duplicates_in_lake"] == csv.rows - csv.bad_rows - csv.duplicate_rows
    assert lake.read_events().num_rows == c["written"]
    assert lake.read_events(manifest.snapshot_id).equals(table)


def _events(rows: list[tuple[str, str, int]]) -> pa.Table:
    """(event_id, user_id, seconds after 2026-01-01) -> an EVENT_SCHEMA table."""
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return pa.table({
        "event_id": [r[0] for r in rows], "user_id": [r[1] for r in rows], "item_id": ["i1"] * len(rows),
        "event_type": ["view"] * len(rows), "value": [1.0] * len(rows),
        "timestamp": pa.array([start + timedelta(seconds=r[2]) for r in rows], TIMESTAMP_TYPE),
        "category": [None] * len(rows), "price": pa.array([None] * len(rows), pa.float64()),
    }, schema=EVENT_SCHEMA)


def test_pick_winners_follows_the_dedupe_rule():
    rng = np.random.default_rng(3)
    n = 5000
    ids = pa.array([f"e{k}" for k in rng.integers(0, 1500, size=n)])
    ts = pa.array(rng.integers(0, 20, size=n) * 1_000_000, pa.int64()).cast(TIMESTAMP_TYPE)
    table = pa.table({"event_id": ids, "timestamp": ts, "row": pa.array(np.arange(n))})
    existing = pa.array([f"e{k}" for k in range(0, 1500, 7)])
    expected, in_batch, in_lake = dedupe_events(table, existing)
    winners, got_in_batch, got_in_lake = pick_winners(ids, ts, existing)
    assert (got_in_batch, got_in_lake) == (in_batch, in_lake)
    assert winners.tolist() == expected.column("row").to_pylist()


def test_ties_go_to_the_earlier_file_and_row(small_config, ray_session, tmp_path):
    # The tie winners sort last by content: only input order can pick them.
    first = _events([("a", "u-z-first", 5), ("b", "u-late", 9), ("c", "u-c2", 1), ("c", "u-c1", 1)])
    second = _events([("a", "u-a-second", 5), ("b", "u-early", 3), ("d", "u-d", 2)])
    pq.write_table(first, tmp_path / "1.parquet")
    pq.write_table(second, tmp_path / "2.parquet")
    manifest = ingest_files(small_config, [str(tmp_path / "1.parquet"), str(tmp_path / "2.parquet")])
    assert manifest.counts["written"] == 4 and manifest.counts["duplicates_in_batch"] == 3
    table = Lake(small_config.paths.lake_uri).read_events(manifest.snapshot_id)
    winner = dict(zip(table.column("event_id").to_pylist(), table.column("user_id").to_pylist()))
    assert winner == {"a": "u-z-first", "b": "u-early", "c": "u-c2", "d": "u-d"}
