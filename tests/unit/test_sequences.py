from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pytest

from aisys.features.sequences import append_event, build_vocabulary, recent_window, user_histories
from aisys.schemas import EVENT_SCHEMA

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def events_table(rows):
    """rows: (user, item, event_type, seconds, category)."""
    cols = {name: [] for name in EVENT_SCHEMA.names}
    for n, (user, item, etype, sec, cat) in enumerate(rows):
        cols["event_id"].append(f"e{n}")
        cols["user_id"].append(user)
        cols["item_id"].append(item)
        cols["event_type"].append(etype)
        cols["value"].append(1.0)
        cols["timestamp"].append(T0 + timedelta(seconds=sec))
        cols["category"].append(cat)
        cols["price"].append(None)
    return pa.Table.from_pydict(cols, schema=EVENT_SCHEMA)


WEIGHTS = {"view": 1.0, "add_to_cart": 2.0, "purchase": 3.0}


def test_vocabulary_sorted_ids_padding_and_weighted_popularity():
    table = events_table(
        [
            ("u1", "b", "view", 1, None),
            ("u1", "a", "purchase", 2, "shoes"),
            ("u2", "b", "add_to_cart", 3, "hats"),
            ("u2", "c", "rating", 4, "bags"),  # type absent from weights -> 0
            ("u3", "b", "view", 5, "caps"),
        ]
    )
    vocab = build_vocabulary(table, WEIGHTS)
    assert vocab.item_ids == ["", "a", "b", "c"]
    assert vocab.item_popularity == [0.0, 3.0, 4.0, 0.0]
    # First non-null category in row order.
    assert vocab.item_categories == [None, "shoes", "hats", "bags"]
    assert vocab.item_index() == {"a": 1, "b": 2, "c": 3}


def test_histories_order_by_time_with_stable_ties_and_skip_unknown():
    table = events_table(
        [
            ("u1", "c", "view", 10, None),
            ("u2", "a", "view", 5, None),
            ("u1", "a", "view", 3, None),
            ("u1", "b", "view", 10, None),  # same time as "c": row order keeps c first
            ("u1", "zzz", "view", 1, None),  # unknown item: skipped
            ("u3", "zzz", "view", 1, None),  # only unknown items: user absent
        ]
    )
    hist = user_histories(table, {"a": 1, "b": 2, "c": 3})
    assert hist == {"u1": [1, 3, 2], "u2": [1]}
    # Reversing the two tied rows reverses their order in the history.
    rows = table.to_pylist()
    rows[0], rows[3] = rows[3], rows[0]
    swapped = pa.Table.from_pylist(rows, schema=EVENT_SCHEMA)
    assert user_histories(swapped, {"a": 1, "b": 2, "c": 3})["u1"] == [1, 2, 3]


def test_recent_window_pads_left_and_truncates_to_newest():
    short = recent_window([4, 5], 4)
    assert short.dtype == np.int64 and short.shape == (4,)
    assert short.tolist() == [0, 0, 4, 5]
    assert recent_window([1, 2, 3, 4, 5, 6], 4).tolist() == [3, 4, 5, 6]
    assert recent_window([], 3).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="max_len"):
        recent_window([1], 0)


def test_append_event_matches_recent_window_truncation():
    history: list[int] = []
    full: list[int] = []
    for item in [7, 8, 9, 10, 11]:
        history = append_event(history, item, 3)
        full.append(item)
        assert len(history) <= 3
        assert recent_window(history, 3).tolist() == recent_window(full, 3).tolist()
    assert history == [9, 10, 11]
    with pytest.raises(ValueError, match="padding"):
        append_event(history, 0, 3)
