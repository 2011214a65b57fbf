"""Business rules: exclusion policies, stock (in memory and a shared JSON file), and reasons."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aisys.serving.rules import (
    RECENT_REASON,
    POPULAR_REASON,
    InMemoryInventory,
    JsonFileInventory,
    excluded_items,
    explain,
    mask_items,
    normalised_rows,
)
from aisys.serving.session_store import UserSession

ITEM_IDS = ["", "a", "b", "c", "d"]


def test_exclusion_policies():
    s = UserSession(items=("a", "b", "c"), purchased=frozenset({"b", "z"}))
    assert excluded_items(s, "purchased") == {"b", "z"}
    assert excluded_items(s, "seen") == {"a", "b", "c", "z"}
    with pytest.raises(ValueError, match="online.exclude"):
        excluded_items(s, "everything")  # type: ignore[arg-type]


def test_mask_items_ignores_ids_the_vocabulary_lacks():
    scores = np.ones(5)
    mask_items(scores, {"b", "unknown"}, {item: i for i, item in enumerate(ITEM_IDS) if i})
    assert scores.tolist() == [1, 1, -np.inf, 1, 1]


def test_reason_names_the_most_similar_history_item_by_embedding():
    emb = normalised_rows(np.array([[0, 0], [1, 0], [0, 1], [1, 0.1], [0.1, 1]], dtype=np.float32))
    # history a (x-axis) then b (y-axis): c is close to a, d close to b.
    reasons = explain([3, 4], [1, 2], ITEM_IDS, unit_embeddings=emb)
    assert reasons == ["because you viewed a", "because you viewed b"]
    # Equal similarity: the newer history item is named.
    assert explain([4], [1, 2, 1, 3], ITEM_IDS, unit_embeddings=normalised_rows(np.ones((5, 2))))[0].endswith(" c")
    # An item already in the history is a reminder, not its own explanation.
    assert explain([3, 4], [1, 3], ITEM_IDS, unit_embeddings=emb) == [RECENT_REASON, "because you viewed c"]
    assert explain([3], [1, 3], ITEM_IDS) == [RECENT_REASON]  # the category path too


def test_reason_without_embeddings_uses_the_category_then_the_newest_item():
    categories = [None, "x", "y", "x", "z"]
    assert explain([3, 4], [1, 2], ITEM_IDS, categories=categories) == [
        "because you viewed a",  # same category x
        "because you viewed b",  # no history item of category z: the newest
    ]
    assert explain([3, 4], [], ITEM_IDS, categories=categories) == [POPULAR_REASON] * 2


def test_in_memory_inventory():
    inv = InMemoryInventory({"a"})
    assert inv.in_stock(["a", "b"]) == [False, True]
    assert inv.set_stock({"a": True, "b": False, "c": False}) == {"b", "c"}
    assert inv.in_stock(["a", "b", "c", "d"]) == [True, False, False, True]


def test_json_inventory_is_shared_through_its_file(tmp_path: Path):
    path = tmp_path / "online" / "stock.json"
    writer, reader = JsonFileInventory(path), JsonFileInventory(path)
    assert reader.out_of_stock() == set()  # no file yet: everything in stock
    writer.set_stock({"a": False, "b": False})
    assert reader.in_stock(["a", "b", "c"]) == [False, False, True]
    reader.set_stock({"a": True})  # the other instance's update is merged, not overwritten
    assert writer.out_of_stock() == {"b"}
    assert json.loads(path.read_text()) == {"out_of_stock": ["b"]}


def test_json_inventory_names_a_broken_file(tmp_path: Path):
    path = tmp_path / "stock.json"
    path.write_text('{"out_of_stock": "a"}')
    with pytest.raises(ValueError, match=str(path)):
        JsonFileInventory(path).out_of_stock()
