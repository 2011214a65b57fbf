"""The evaluation protocol's rules on tiny hand-made interactions (no Ray)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from aisys.quality.protocol import (
    Interactions,
    catalogue,
    interactions_from_events,
    item_popularity,
    leave_one_out_tasks,
    split_tasks,
    temporal_cut,
    temporal_tasks,
    user_sequences,
)


def make(rows: list[tuple[str, int, int]], n_items: int = 9) -> Interactions:
    """Interactions from (user, item index, timestamp) rows in file order."""
    users, items, ts = zip(*rows)
    return Interactions(
        np.asarray(users, dtype=object), np.asarray(items, dtype=np.int64), np.asarray(ts, dtype=np.int64),
        [""] + [str(i) for i in range(1, n_items + 1)],
    )


def test_catalogue_sorts_numeric_ids_as_numbers_and_keeps_padding_first():
    assert catalogue(["10", "2", "1", "2"]) == ["", "1", "2", "10"]
    assert catalogue(["b", "a"]) == ["", "a", "b"]


def test_interactions_cover_the_whole_catalogue_not_only_rated_items():
    events = pa.table({"user_id": ["u", "u"], "item_id": ["3", "1"], "timestamp": [5, 6]})
    data = interactions_from_events(events, ["1", "2", "3", "4"])
    assert data.n_items == 4  # items 2 and 4 were never rated, still in the catalogue
    assert data.items.tolist() == [3, 1]


def test_an_event_item_outside_the_catalogue_is_an_error_naming_it():
    events = pa.table({"user_id": ["u"], "item_id": ["77"], "timestamp": [1]})
    with pytest.raises(ValueError, match="77"):
        interactions_from_events(events, ["1", "2"])


def test_sequences_sort_by_time_and_break_ties_by_file_row():
    data = make([("u", 5, 20), ("u", 3, 10), ("u", 7, 10), ("u", 1, 10)])
    assert user_sequences(data) == {"u": [3, 7, 1, 5]}


def test_loo_last_is_test_second_last_is_valid_rest_is_train():
    data = make([("a", 1, 1), ("a", 2, 2), ("a", 3, 3), ("a", 4, 4), ("b", 5, 1), ("b", 6, 1), ("b", 7, 1)])
    valid, test = leave_one_out_tasks(data)
    assert valid.users == test.users == ["a", "b"]
    assert valid.targets == [[3], [6]] and test.targets == [[4], [7]]
    assert valid.train == {"a": [1, 2], "b": [5]}
    # Test refits on train + valid: the valid target becomes known history.
    assert test.train == {"a": [1, 2, 3], "b": [5, 6]}
    assert test.histories() == [[1, 2, 3], [5, 6]]


def test_loo_users_with_fewer_than_three_interactions_are_train_only():
    data = make([("a", 1, 1), ("a", 2, 2), ("c", 3, 1), ("c", 4, 2), ("c", 5, 3)])
    valid, test = leave_one_out_tasks(data)
    assert valid.users == test.users == ["c"]
    assert valid.train["a"] == test.train["a"] == [1, 2]


def test_temporal_cut_is_the_timestamp_of_the_ceil_08n_th_interaction():
    assert temporal_cut(np.array([5, 1, 4, 2, 3])) == 4  # ceil(0.8 * 5) = 4th in time order
    assert temporal_cut(np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])) == 8  # exactly 0.8 N: no float round-up
    assert temporal_cut(np.array([1, 2, 3, 4, 5, 6]), 0.5) == 3


def test_temporal_ties_at_the_cut_stay_in_train_and_targets_are_new_distinct_items():
    rows = [
        ("a", 1, 1), ("a", 2, 2), ("b", 3, 3), ("b", 4, 4), ("a", 5, 5), ("c", 6, 5),  # t=5 is the cut
        ("a", 1, 7), ("a", 7, 8), ("a", 7, 9), ("b", 8, 9), ("d", 9, 9), ("c", 6, 9),
    ]
    # N = 12, ceil(9.6) = 10 -> the 10th in time order has t = 9: use a share that cuts at t = 5.
    _, test = temporal_tasks(make(rows), train_share=0.5)
    assert test.train == {"a": [1, 2, 5], "b": [3, 4], "c": [6]}
    # a: item 1 was already in train -> only 7, once; b: 8; c re-watched 6 only -> no target, not evaluated;
    # d: no train interaction (cold start) -> not evaluated.
    assert dict(zip(test.users, test.targets)) == {"a": [7], "b": [8]}


def test_temporal_valid_applies_the_same_rule_inside_train():
    rows = [("a", i, i) for i in range(1, 9)] + [("a", 9, 9), ("b", 1, 1), ("b", 2, 10)]
    valid, test = temporal_tasks(make(rows), train_share=0.8)
    # N = 11, ceil(8.8) = 9 -> the 9th timestamp in time order (1, 1, 2, ..., 8) is 8.
    assert test.train == {"a": list(range(1, 9)), "b": [1]}
    assert dict(zip(test.users, test.targets)) == {"a": [9], "b": [2]}
    # Inside train (N = 9, ceil(7.2) = 8): the 8th timestamp is 7 -> valid targets are after t = 7.
    assert valid.train == {"a": list(range(1, 8)), "b": [1]}
    assert valid.users == ["a"] and valid.targets == [[8]]


def test_split_tasks_rejects_an_unknown_split():
    with pytest.raises(ValueError, match="split"):
        split_tasks(make([("a", 1, 1)]), "random")


def test_item_popularity_counts_train_interactions_per_index():
    valid, _ = leave_one_out_tasks(make([("a", 1, 1), ("a", 2, 2), ("a", 3, 3), ("a", 1, 4), ("b", 1, 1)]))
    pop = item_popularity(valid)
    assert pop.shape == (10,) and pop[0] == 0
    assert pop[1] == 2 and pop[2] == 1 and pop[3] == 0  # a's train: [1, 2]; b's: [1]


# --------------------------------------------------------------------------- ranking


from aisys.quality.ranking import ranking_metrics, user_metrics  # noqa: E402
from aisys.quality.ranking import rank_metrics  # noqa: E402


def test_known_history_is_not_ranked_and_the_target_always_is():
    scores = np.array([[0.0, 9.0, 8.0, 1.0, 0.5]])  # item 1 is known history, item 2 is the target
    per_user = user_metrics(scores, [[2]], [[1]], k=1)
    assert per_user.hr.tolist() == [1.0]  # item 1 (higher score) is excluded, so the target is first
    assert per_user.top_k.tolist() == [[2]]


def test_ties_are_pessimistic_a_constant_scorer_gets_no_credit():
    scores = np.zeros((2, 6))
    metrics = ranking_metrics(scores, [[3], [1, 2]], [[], []], k=4)
    # User 0: 4 tied non-targets rank ahead -> position 4, outside the top 4.
    # User 1: the 3 tied non-targets come first -> targets at positions 3 and 4: only one hit.
    per_user = user_metrics(scores, [[3], [1, 2]], [[], []], k=4)
    assert per_user.target_positions[0].tolist() == [4]
    assert per_user.target_positions[1].tolist() == [3, 4]
    assert metrics["hr@4"] == pytest.approx(0.5)


def test_multi_target_ndcg_uses_the_ideal_dcg_of_its_target_count():
    scores = np.array([[0.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    per_user = user_metrics(scores, [[1, 3]], [[]], k=10)
    ideal = 1.0 + 1.0 / np.log2(3.0)
    assert per_user.ndcg[0] == pytest.approx((1.0 + 1.0 / np.log2(4.0)) / ideal)
    assert per_user.mrr[0] == 1.0
    assert per_user.single_ranks[0].tolist() == [0, 1]  # item 3 alone: only item 2 (non-target) beats it


def test_single_target_metrics_equal_the_training_metrics():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(30, 41))
    targets = rng.integers(1, 41, size=30)
    exclude = [[int(i) for i in rng.choice(np.arange(1, 41), 5) if i != t] for t in targets]
    ours = ranking_metrics(scores, [[int(t)] for t in targets], exclude, k=10, item_popularity=np.arange(41.0))
    theirs = rank_metrics(scores, targets, exclude, k=10, item_popularity=np.arange(41.0))
    for key in ("hr@10", "ndcg@10", "mrr@10", "coverage@10", "popularity@10"):
        assert ours[key] == pytest.approx(theirs[key]), key


def test_coverage_counts_distinct_recommended_items_over_the_catalogue():
    scores = np.array([[0.0, 3, 2, 1, 0], [0.0, 3, 2, 1, 0]])
    metrics = ranking_metrics(scores, [[4], [4]], [[1], [2]], k=2)
    assert metrics["coverage@2"] == pytest.approx(3 / 4)  # {2, 3} and {1, 3}
