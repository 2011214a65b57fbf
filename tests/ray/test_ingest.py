"""Ingest on real Ray Data: broken and duplicated rows reconcile exactly, re-ingest adds nothing."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from aisys.config import IngestConfig, SimulatorConfig
from aisys.data.ingest import ingest_files
from aisys.data.ingest_blocks import (clean_rows, hash_strings, pick_winners, pick_winners_hashed, quarantine_of,
                                      validate_to_tagged)
from aisys.data.lake import Lake
from aisys.data.raw_files import BREAKAGES, write_raw_events
from aisys.data.simulator import simulate_events
from aisys.data.validate import ValidationRules, dedupe_events, validate_events
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


def test_hash_strings_is_equal_on_equal_ids_and_spreads_others():
    ids = pa.chunked_array([pa.array(["e1", "e10", "", "e1", "x" * 40]), pa.array(["e10", "e01"]).slice(0)])
    h = hash_strings(ids)
    assert h.dtype == np.uint64 and len(h) == 7
    assert h[0] == h[3] and h[1] == h[5]
    assert len(set(h.tolist())) == 5
    many = hash_strings(pa.array([f"e{k}" for k in range(100_000)]))
    assert len(np.unique(many)) == 100_000
    assert (hash_strings(pa.array(["ab", "cd"]).slice(1)) == hash_strings(pa.array(["cd"]))).all()


@pytest.mark.parametrize("weak_hash", [False, True])
def test_pick_winners_hashed_matches_pick_winners(weak_hash):
    # weak_hash: every id collides with many others, so exactness rests on the fetch.
    rng = np.random.default_rng(5)
    n = 4000
    ids = pa.array([f"e{k}" for k in rng.integers(0, 3000, size=n)])
    ts = rng.integers(0, 20, size=n).astype(np.int64) * 1_000_000
    existing = pa.array([f"e{k}" for k in range(0, 3000, 11)])
    hash_fn = (lambda a: hash_strings(a) % np.uint64(97)) if weak_hash else hash_strings
    fetched = []

    def fetch(rows):
        fetched.append(len(rows))
        return ids.take(pa.array(rows))

    expected = pick_winners(ids, pa.array(ts), existing)
    got = pick_winners_hashed(hash_fn(ids), ts, fetch, existing, hash_fn=hash_fn)
    assert got[0].tolist() == expected[0].tolist() and got[1:] == expected[1:]
    assert fetched and (fetched[0] == n) == weak_hash  # a good hash fetches only candidates
    unique = pa.array([f"u{k}" for k in range(50)])
    winners, in_batch, in_lake = pick_winners_hashed(hash_strings(unique), np.zeros(50, np.int64), fetch)
    assert winners.tolist() == list(range(50)) and (in_batch, in_lake) == (0, 0)


def test_tagged_block_round_trips_clean_and_rejected_rows():
    events = _events([("a", "u1", 1), ("b", "u2", 2), ("c", "u3", 3)])
    raw = events.cast(pa.schema([pa.field(f.name, pa.string()) for f in EVENT_SCHEMA]))
    raw = raw.set_column(1, "user_id", pa.array(["u1", "", "u3"]))  # row b: empty user_id
    rules = ValidationRules.from_config(IngestConfig(), now=datetime(2026, 6, 1, tzinfo=timezone.utc))
    clean, quarantine = validate_events(raw, rules)
    tagged = validate_to_tagged(raw, rules)
    assert tagged.num_rows == clean.num_rows + 1  # one carrier row for all rejected rows
    assert clean_rows(tagged).equals(clean.cast(EVENT_SCHEMA))
    assert quarantine_of(tagged).equals(quarantine.cast(quarantine_of(tagged).schema))
    assert quarantine_of(tagged).num_rows == 1
    # A block cut in two (as Ray may do) still yields each row once.
    halves = [tagged.slice(0, 1), tagged.slice(1)]
    assert sum(clean_rows(h).num_rows for h in halves) == clean.num_rows
    assert sum(quarantine_of(h).num_rows for h in halves) == 1


def test_two_racing_ingests_lose_nothing(small_config, ray_session, tmp_path):
    """Two `ingest_files` at once on one lake, from the same parent, with 100 events in both batches: both
    snapshots land in a chain, every clean event is in the lake exactly once, and the counts still add up."""
    import threading

    events = simulate_events(SimulatorConfig(n_users=30, n_items=20, n_categories=4, n_sessions=120, days=5))
    third = events.num_rows // 3
    a = write_raw_events(events.slice(0, 2 * third), tmp_path / "a.jsonl", "jsonl", bad_share=0, duplicate_share=0)
    b = write_raw_events(events.slice(2 * third - 100), tmp_path / "b.jsonl", "jsonl", bad_share=0, duplicate_share=0)
    start = threading.Barrier(2)
    results: dict[str, object] = {}

    def ingest(name: str, path) -> None:
        start.wait()
        try:
            results[name] = ingest_files(small_config, [path], source=name)
        except BaseException as err:  # noqa: BLE001 - asserted below
            results[name] = err

    threads = [threading.Thread(target=ingest, args=(n, r.path)) for n, r in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not [r for r in results.values() if isinstance(r, BaseException)], results

    lake = Lake.from_config(small_config.paths)
    snapshots = lake.list_snapshots()
    assert len(snapshots) == 2 and snapshots[1].parent_id == snapshots[0].snapshot_id
    # Both started from the empty lake, so the second to commit was rebased: it got a new snapshot id, while
    # its files stay in the folder named by the id it started with. (Without the race this proves nothing.)
    own = [f for f in snapshots[1].files if f not in snapshots[0].files]
    assert own and all(f.split("/")[1] != snapshots[1].snapshot_id for f in own)
    table = lake.read_events()
    assert table.num_rows == events.num_rows == len(pc.unique(table.column("event_id")))
    for manifest in snapshots:
        c = manifest.counts
        assert c["clean"] == c["written"] + c["duplicates_in_batch"] + c["duplicates_in_lake"]
    assert sum(m.counts["written"] for m in snapshots) == events.num_rows
    assert sum(m.counts["duplicates_in_lake"] for m in snapshots) == 100
    assert snapshots[-1].counts["total_rows"] == events.num_rows
