"""User sequences: the one feature code path shared by training and serving.

Training turns the lake's events into a :class:`Vocabulary` and per-user item
histories; serving keeps the same histories online with :func:`append_event`
and feeds the model :func:`recent_window`. Both sides therefore see exactly the
same encoding: item index 0 is padding, real items are ``1..n_items``, and a
window is the user's last ``max_len`` items, oldest first, left-padded with 0.

Item order in the vocabulary: **sorted by item id** (string order). That makes
the vocabulary independent of row order and of how the lake split its files,
so two trainings on the same snapshot produce the same indices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PAD_INDEX = 0


@dataclass
class Vocabulary:
    """Item index <-> external id, with each item's category and popularity.

    Index 0 is padding: ``item_ids[0] == ""``, ``item_categories[0] is None``,
    ``item_popularity[0] == 0.0``. Real items are sorted by id.
    """

    item_ids: list[str]
    item_categories: list[str | None]
    item_popularity: list[float]

    @property
    def n_items(self) -> int:
        """Number of real items (padding excluded)."""
        return len(self.item_ids) - 1

    def item_index(self) -> dict[str, int]:
        """External item id -> index (padding excluded)."""
        return {item: i for i, item in enumerate(self.item_ids) if i > PAD_INDEX}


def _require_columns(events: pa.Table, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in events.column_names]
    if missing:
        raise ValueError(f"events table lacks column(s) {missing}; it has {events.column_names}")


def build_vocabulary(events: pa.Table, event_weights: dict[str, float]) -> Vocabulary:
    """Build the item vocabulary from events.

    Popularity of an item is the sum of ``event_weights[event_type]`` over its
    events (``cfg.features.event_weights``); event types missing from the
    weights count 0. An item's category is the first non-null category among
    its events in row order (the lake stores events in time order).
    """
    _require_columns(events, ("item_id", "event_type"))
    items = events.column("item_id").to_pylist()
    types = events.column("event_type").to_pylist()
    has_category = "category" in events.column_names
    categories = events.column("category").to_pylist() if has_category else [None] * len(items)

    popularity: dict[str, float] = {}
    category_of: dict[str, str | None] = {}
    for item, event_type, category in zip(items, types, categories):
        if item is None:
            raise ValueError("events.item_id holds a null; validate events before building features")
        popularity[item] = popularity.get(item, 0.0) + float(event_weights.get(event_type, 0.0))
        if category_of.get(item) is None:
            category_of[item] = category

    ordered = sorted(popularity)
    return Vocabulary(
        item_ids=[""] + ordered,
        item_categories=[None] + [category_of[i] for i in ordered],
        item_popularity=[0.0] + [popularity[i] for i in ordered],
    )


def user_histories(events: pa.Table, item_index: dict[str, int]) -> dict[str, list[int]]:
    """Per user, the item indices of their events ordered by timestamp.

    Ties on timestamp keep the table's row order (a stable sort). Items that
    ``item_index`` does not know are skipped (e.g. launched after training).
    Users whose every item is unknown are left out.
    """
    _require_columns(events, ("user_id", "item_id", "timestamp"))
    n = events.num_rows
    if n == 0:
        return {}
    users = np.asarray(events.column("user_id").to_pylist(), dtype=object)
    items = events.column("item_id").to_pylist()
    # Integer time keeps sorting exact and independent of the timestamp unit's tz.
    ts = pc.cast(events.column("timestamp"), pa.int64()).to_numpy(zero_copy_only=False)
    idx = np.fromiter((item_index.get(i, PAD_INDEX) for i in items), dtype=np.int64, count=n)

    user_keys, user_codes = np.unique(users, return_inverse=True)
    # lexsort: last key is primary. Row number as the final tie-breaker makes
    # the order explicit rather than relying on the sort algorithm's stability.
    order = np.lexsort((np.arange(n), ts, user_codes))
    histories: dict[str, list[int]] = {}
    for row in order:
        if idx[row] == PAD_INDEX:
            continue
        histories.setdefault(str(user_keys[user_codes[row]]), []).append(int(idx[row]))
    return histories


def recent_window(history: Sequence[int], max_len: int) -> np.ndarray:
    """The last ``max_len`` items of ``history``, oldest first, left-padded with 0.

    Returns an int64 array of shape ``(max_len,)``: the model's input for one user.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    window = np.zeros(max_len, dtype=np.int64)
    tail = list(history)[-max_len:]
    if tail:
        window[max_len - len(tail) :] = tail
    return window


def append_event(history: list[int], item: int, max_len: int) -> list[int]:
    """Online update for serving: append ``item`` and keep the last ``max_len`` items.

    Returns a new list; the truncation matches :func:`recent_window`, so
    ``recent_window(append_event(h, i, L), L) == recent_window(h + [i], L)``.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    if item == PAD_INDEX:
        raise ValueError("item index 0 is padding and cannot be appended to a history")
    return (list(history) + [int(item)])[-max_len:]
