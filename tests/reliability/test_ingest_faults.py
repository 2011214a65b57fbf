"""Ingestion faults on real Ray Data: every kind of bad row quarantined with a reason, re-ingest adds nothing,
and a crash between the data files and the manifest leaves no partial snapshot visible.

``tests/ray/test_ingest.py`` already covers the simulator's seven breakages, in-batch and in-lake duplicates and
tie-breaking; this file adds one hand-written file with every rule broken (and non-JSON lines), and the crash.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.compute as pc
import pytest

from aisys.data.ingest import ingest_files
from aisys.data.lake import Lake
from tests.reliability.conftest import report_figure

pytestmark = [pytest.mark.reliability, pytest.mark.ray]

GOOD = {"event_id": "g", "user_id": "u1", "item_id": "i1", "event_type": "view", "value": 1.0,
        "timestamp": "2026-01-02T03:04:05Z", "category": "c1", "price": 2.5}
FUTURE = (datetime.now(timezone.utc) + timedelta(days=30)).isoformat()

# (breakage, fields to change, a needle of the expected reason); None deletes the key.
BAD_ROWS = [
    ("empty user_id", {"user_id": ""}, "user_id: empty"),
    ("null user_id", {"user_id": None}, "user_id"),
    ("missing item_id key", {"item_id": None}, "item_id"),
    ("empty event_id", {"event_id": ""}, "event_id: empty"),
    ("id too long", {"user_id": "u" * 129}, "user_id"),
    ("unknown event_type", {"event_type": "teleport"}, "event_type: unknown 'teleport'"),
    ("value text", {"value": "lots"}, "value: not a number 'lots'"),
    ("value inf text", {"value": "inf"}, "value"),
    ("value nan text", {"value": "nan"}, "value"),
    ("timestamp unparseable", {"timestamp": "2026-13-99T25:61:00Z"}, "timestamp: unparseable"),
    ("timestamp before min", {"timestamp": "1970-01-01T00:00:00Z"}, "timestamp: before"),
    ("timestamp far future", {"timestamp": FUTURE}, "timestamp"),
    ("negative price", {"price": -3.0}, "price: negative"),
    ("price text", {"price": "cheap"}, "price"),
    ("several defects", {"user_id": "", "event_type": "jump"}, "; "),
]
NOT_OBJECTS = ["this is not json", "[1, 2, 3]", '"a string"', "{broken json"]


def write_malformed_file(path: Path, n_good: int = 40) -> tuple[int, int]:
    """A JSONL file of ``n_good`` good rows, every bad row kind, non-object lines; returns (good, bad)."""
    lines = []
    for n in range(n_good):
        lines.append(json.dumps(GOOD | {"event_id": f"g{n}", "user_id": f"u{n % 7}", "item_id": f"i{n % 5}"}))
    for n, (_, change, _) in enumerate(BAD_ROWS):
        row = GOOD | {"event_id": f"bad{n}"} | change
        if "item_id" in change and change["item_id"] is None:
            row.pop("item_id")
        lines.append(json.dumps(row))
    lines += NOT_OBJECTS
    path.write_text("\n".join(lines) + "\n")
    return n_good, len(BAD_ROWS) + len(NOT_OBJECTS)


def test_every_bad_row_is_quarantined_with_a_reason_and_counts_reconcile(small_config, ray_session, tmp_path):
    good, bad = write_malformed_file(tmp_path / "bad.jsonl")
    manifest = ingest_files(small_config, [tmp_path / "bad.jsonl"], source="malformed")
    c = manifest.counts
    assert (c["input"], c["clean"], c["quarantined"], c["written"]) == (good + bad, good, bad, good)
    assert c["input"] == c["written"] + c["quarantined"] + c["duplicates_in_batch"] + c["duplicates_in_lake"]

    lake = Lake.from_config(small_config.paths)
    quarantine = lake.read_quarantine(manifest.snapshot_id)
    assert quarantine.num_rows == bad
    reasons = dict(zip(quarantine.column("event_id").to_pylist(), quarantine.column("reject_reason").to_pylist()))
    assert all(reasons.values())  # every row carries a reason
    for n, (case, change, needle) in enumerate(BAD_ROWS):
        rid = change.get("event_id", f"bad{n}")  # quarantine keeps the raw text, "" included
        assert needle in reasons[rid], (case, reasons[rid])
    no_id = [r for rid, r in zip(quarantine.column("event_id").to_pylist(),
                                 quarantine.column("reject_reason").to_pylist()) if rid is None]
    assert len(no_id) == len(NOT_OBJECTS) and all("missing" in r or "empty" in r for r in no_id), no_id
    report_figure("malformed JSONL: 15 broken rows + 4 non-object lines, 40 good",
                  f"quarantined {c['quarantined']} with a reason each; input {c['input']} = written {c['written']} "
                  f"+ quarantined {c['quarantined']}", f"{good - c['written']} good rows")
    lake_ids = set(lake.read_events(manifest.snapshot_id).column("event_id").to_pylist())
    assert lake_ids == {f"g{n}" for n in range(good)}


def test_a_crash_before_the_manifest_shows_nothing_and_the_rerun_is_identical(
        small_config, ray_session, tmp_path, monkeypatch):
    path = tmp_path / "events.jsonl"
    good, bad = write_malformed_file(path)
    lake = Lake.from_config(small_config.paths)
    first = ingest_files(small_config, [path], source="first")  # a parent snapshot to protect
    before = lake.read_events()
    second_file = tmp_path / "more.jsonl"
    second_file.write_text("\n".join(json.dumps(GOOD | {"event_id": f"m{n}", "user_id": f"w{n}"})
                                     for n in range(25)) + "\n")

    def crash(self, manifest):  # the process dies after the data files, before the manifest
        raise SystemExit("killed between data files and manifest")

    with monkeypatch.context() as patch:
        patch.setattr(Lake, "commit", crash)
        with pytest.raises(SystemExit):
            ingest_files(small_config, [second_file], source="crashed")
    # Orphan data files exist, but no reader sees them.
    data_dirs = sorted(p.name for p in (Path(small_config.paths.lake_uri) / "events" / "data").iterdir())
    assert len(data_dirs) == 2
    assert [m.snapshot_id for m in lake.list_snapshots()] == [first.snapshot_id]
    assert lake.latest().snapshot_id == first.snapshot_id
    assert lake.read_events().equals(before)
    assert not set(lake.existing_event_ids().to_pylist()) & {f"m{n}" for n in range(25)}

    rerun = ingest_files(small_config, [second_file], source="rerun")
    assert rerun.parent_id == first.snapshot_id and rerun.counts["written"] == 25
    assert rerun.counts["total_rows"] == good + 25
    after = lake.read_events(rerun.snapshot_id)
    assert after.num_rows == good + 25 and len(pc.unique(after.column("event_id"))) == after.num_rows

    # The same content as an ingest that never crashed, in a fresh lake.
    clean_cfg = small_config.model_copy(deep=True)
    clean_cfg.paths.lake_uri = str(tmp_path / "reference-lake")
    ingest_files(clean_cfg, [path], source="first")
    reference = ingest_files(clean_cfg, [second_file], source="rerun")
    ref_table = Lake.from_config(clean_cfg.paths).read_events(reference.snapshot_id)
    assert after.equals(ref_table)
    assert {k: v for k, v in rerun.counts.items()} == reference.counts

    report_figure("ingest killed between data files and manifest (Lake.commit raises)",
                  "readers still see the parent snapshot only; rerun = same rows as a never-crashed ingest",
                  f"{good + 25 - after.num_rows} rows")
    # Ingesting the same events again adds 0 rows.
    again = ingest_files(small_config, [path, second_file], source="again")
    assert again.counts["written"] == 0 and again.counts["duplicates_in_lake"] == good + 25
    assert lake.read_events(again.snapshot_id).equals(after)
    report_figure("the same events ingested twice", f"second ingest wrote {again.counts['written']} rows",
                  f"{again.counts['written']} duplicate rows added")
