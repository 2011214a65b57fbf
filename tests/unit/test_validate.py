"""Validation rules, quarantine reasons, the counts invariant, and dedupe."""

from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa
import pytest

from aisys.config import IngestConfig
from aisys.data.validate import ValidationRules, dedupe_events, validate_events
from aisys.schemas import EVENT_SCHEMA, QUARANTINE_SCHEMA

RULES = ValidationRules(
    min_timestamp=datetime(1990, 1, 1, tzinfo=timezone.utc),
    max_timestamp=datetime(2027, 1, 1, tzinfo=timezone.utc),
    max_id_length=12,
)
GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "event_type": "view", "value": "1",
        "timestamp": "2026-01-01T00:00:00Z", "category": "c1", "price": "9.5"}


def _one(**changes) -> tuple[pa.Table, pa.Table]:
    row = {**GOOD, **changes}
    return validate_events(pa.table({k: pa.array([v], pa.string()) for k, v in row.items()}), RULES)


def test_good_row_is_clean_and_typed():
    clean, quarantine = _one()
    assert clean.schema.equals(EVENT_SCHEMA) and quarantine.schema.equals(QUARANTINE_SCHEMA)
    assert clean.num_rows == 1 and quarantine.num_rows == 0
    row = clean.to_pylist()[0]
    assert row["value"] == 1.0 and row["price"] == 9.5
    assert row["timestamp"] == datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"user_id": ""}, "user_id: empty"),
        ({"item_id": None}, "item_id: empty"),
        ({"event_id": "x" * 13}, "event_id: longer than 12 characters"),
        ({"event_type": "teleport"}, "event_type: unknown 'teleport'"),
        ({"value": "lots"}, "value: not a number 'lots'"),
        ({"value": "inf"}, "value: not a number 'inf'"),
        ({"value": None}, "value: missing"),
        ({"timestamp": "2026-13-99"}, "timestamp: unparseable '2026-13-99'"),
        ({"timestamp": "yesterday"}, "timestamp: unparseable 'yesterday'"),
        ({"timestamp": "1970-01-01T00:00:00Z"}, "timestamp: before 1990-01-01"),
        ({"timestamp": "2030-01-01T00:00:00Z"}, "timestamp: after 2027-01-01"),
        ({"price": "-1"}, "price: negative or not finite"),
        ({"price": "cheap"}, "price: not a number 'cheap'"),
        ({"user_id": "u\x00x"}, "user_id: holds a control or bidirectional-control character"),
        ({"item_id": "i\u202egnp"}, "item_id: holds a control or bidirectional-control character"),
        ({"event_id": "e\tf"}, "event_id: holds a control or bidirectional-control character"),
    ],
)
def test_each_rule_quarantines_with_a_reason_naming_the_field(changes, reason):
    clean, quarantine = _one(**changes)
    assert clean.num_rows == 0 and quarantine.num_rows == 1
    got = quarantine.column("reject_reason")[0].as_py()
    assert reason in got
    field = next(iter(changes))
    assert quarantine.column(field)[0].as_py() == (None if changes[field] is None else str(changes[field]))


@pytest.mark.parametrize(
    "ts", ["2026-01-01T00:00:00", "2026-01-01 00:00:00", "2026-01-01", "2026-01-01T01:00:00+01:00",
           "1767225600", "2026-01-01T00:00:00.000000Z"],
)
def test_timestamp_formats_all_mean_the_same_instant(ts):
    clean, _ = _one(timestamp=ts)
    assert clean.column("timestamp")[0].as_py() == datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_empty_price_and_category_mean_unknown():
    clean, _ = _one(price="", category="")
    assert clean.column("price")[0].as_py() is None and clean.column("category")[0].as_py() is None


def test_several_failures_are_all_reported():
    _, quarantine = _one(user_id="", event_type="zap", price="-3")
    reasons = quarantine.column("reject_reason")[0].as_py().split("; ")
    assert reasons == ["user_id: empty", "event_type: unknown 'zap'", "price: negative or not finite"]


def test_typed_input_and_missing_columns():
    batch = pa.table({
        "event_id": ["a", "b"], "user_id": ["u", "u"], "item_id": ["i", "i"], "event_type": ["view", "view"],
        "timestamp": pa.array([1767225600, 1767225601], pa.int64()),
    })
    clean, quarantine = validate_events(batch, RULES)
    assert clean.num_rows == 2 and clean.column("value").to_pylist() == [1.0, 1.0]
    assert clean.column("price").null_count == 2
    clean, quarantine = validate_events(batch.drop_columns(["user_id"]), RULES)
    assert clean.num_rows == 0
    assert quarantine.column("reject_reason").to_pylist() == ["user_id: missing column"] * 2


def test_counts_invariant_on_a_mixed_batch():
    rows = [dict(GOOD, event_id=f"e{i}") for i in range(50)]
    for i in range(0, 50, 7):
        rows[i]["timestamp"] = "nope"
    for i in range(3, 50, 11):
        rows[i]["event_type"] = "??"
    batch = pa.Table.from_pylist(rows)
    clean, quarantine = validate_events(batch, RULES)
    expected_bad = len(set(range(0, 50, 7)) | set(range(3, 50, 11)))
    assert quarantine.num_rows == expected_bad
    assert clean.num_rows + quarantine.num_rows == batch.num_rows


def test_rules_from_config():
    now = datetime(2026, 6, 1, tzinfo=timezone.utc)
    rules = ValidationRules.from_config(IngestConfig(max_future_seconds=3600, max_id_length=9), now=now)
    assert rules.max_timestamp == datetime(2026, 6, 1, 1, tzinfo=timezone.utc)
    assert rules.min_timestamp == datetime(1990, 1, 1, tzinfo=timezone.utc) and rules.max_id_length == 9


def _events(ids, seconds, users=None) -> pa.Table:
    n = len(ids)
    return pa.table({
        "event_id": ids, "user_id": users or [f"u{k}" for k in range(n)], "item_id": ["i"] * n,
        "event_type": ["view"] * n, "value": [1.0] * n,
        "timestamp": pa.array([s * 1_000_000 for s in seconds], pa.int64()).cast(pa.timestamp("us", "UTC")),
        "category": [None] * n, "price": [None] * n,
    }).cast(EVENT_SCHEMA)


def test_dedupe_keeps_earliest_then_first_row_and_keeps_order():
    table = _events(["a", "b", "a", "c", "b", "b"], [5, 2, 3, 1, 2, 9], users=["a5", "b2", "a3", "c1", "b2'", "b9"])
    unique, in_batch, in_lake = dedupe_events(table)
    assert (in_batch, in_lake) == (3, 0)
    assert unique.column("event_id").to_pylist() == ["b", "a", "c"]
    assert unique.column("user_id").to_pylist() == ["b2", "a3", "c1"]


def test_dedupe_against_existing_ids():
    table = _events(["a", "b", "b", "c"], [1, 2, 3, 4])
    unique, in_batch, in_lake = dedupe_events(table, pa.array(["c", "zz"]))
    assert unique.column("event_id").to_pylist() == ["a", "b"]
    assert (in_batch, in_lake) == (1, 1)
    assert unique.num_rows + in_batch + in_lake == table.num_rows
