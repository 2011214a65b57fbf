"""Ingest on real Ray Data: broken and duplicated rows reconcile exactly, re-ingest adds nothing."""

from __future__ import annotations

import pyarrow.compute as pc
import pytest

from aisys.config import SimulatorConfig
from aisys.data.ingest import ingest_files
from aisys.data.lake import Lake
from aisys.data.raw_files import BREAKAGES, write_raw_events
from aisys.data.simulator import simulate_events

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
