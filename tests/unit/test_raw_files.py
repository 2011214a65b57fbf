"""The raw event file writer and its injected defects."""

from __future__ import annotations

import json

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from aisys.config import SimulatorConfig
from aisys.data.raw_files import write_raw_events
from aisys.data.simulator import simulate_events
from aisys.data.validate import ValidationRules, validate_events
from datetime import datetime, timezone

RULES = ValidationRules(datetime(1990, 1, 1, tzinfo=timezone.utc), datetime(2027, 1, 1, tzinfo=timezone.utc), 64)


def _events():
    return simulate_events(SimulatorConfig(n_users=20, n_items=15, n_categories=3, n_sessions=40, days=3))


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_written_files_reconcile_with_validation(tmp_path, fmt):
    events = _events()
    stats = write_raw_events(events, tmp_path / f"raw.{fmt}", fmt, bad_share=0.1, duplicate_share=0.05, seed=3)
    assert stats.rows == events.num_rows + stats.duplicate_rows and stats.bad_rows == round(0.1 * events.num_rows)
    if fmt == "jsonl":
        rows = [json.loads(line) for line in open(stats.path)]
        import pyarrow as pa
        table = pa.Table.from_pylist([{k: None if v is None else str(v) for k, v in r.items()} for r in rows])
    elif fmt == "csv":
        table = pacsv.read_csv(stats.path)
    else:
        table = pq.read_table(stats.path)
    assert table.num_rows == stats.rows
    clean, quarantine = validate_events(table, RULES)
    assert quarantine.num_rows == stats.bad_rows
    ids = clean.column("event_id").to_pylist()
    assert len(ids) - len(set(ids)) == stats.duplicate_rows


def test_each_defect_kind_is_injected(tmp_path):
    events = _events()
    stats = write_raw_events(events, tmp_path / "raw.jsonl", bad_share=0.2, seed=1)
    rows = [json.loads(line) for line in open(stats.path)]
    import pyarrow as pa

    table = pa.Table.from_pylist([{k: None if v is None else str(v) for k, v in r.items()} for r in rows])
    _, quarantine = validate_events(table, RULES)
    reasons = " | ".join(quarantine.column("reject_reason").to_pylist())
    for needle in ["user_id: empty", "event_type: unknown", "price: negative", "timestamp: unparseable",
                   "timestamp: before", "value: not a number", "item_id: empty"]:
        assert needle in reasons


def test_timestamps_are_iso_strings_and_round_trip(tmp_path):
    events = _events()
    stats = write_raw_events(events, tmp_path / "raw.jsonl")
    first = json.loads(open(stats.path).readline())
    assert first["timestamp"].endswith("Z") and "T" in first["timestamp"]
    assert first["event_id"] == events.column("event_id")[0].as_py()


def test_bad_format_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="fmt"):
        write_raw_events(_events(), tmp_path / "x.xml", "xml")
