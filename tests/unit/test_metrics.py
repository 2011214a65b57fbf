import math

import numpy as np
import pytest

from aisys.quality.ranking import rank_metrics, target_ranks, top_k_items


def test_hand_computed_ranks_and_averages():
    # Items 1..4 (column 0 is padding, never ranked even with a huge score).
    scores = np.array(
        [
            [99.0, 0.9, 0.5, 0.1, 0.3],  # target 1 -> rank 0
            [99.0, 0.9, 0.5, 0.1, 0.3],  # target 4 -> rank 2 (after 1 and 2)
        ]
    )
    m = rank_metrics(scores, np.array([1, 4]), exclude=None, k=2)
    # user 0 hits at rank 0; user 1 (rank 2) misses at k=2.
    assert m["hr@2"] == pytest.approx(0.5)
    assert m["ndcg@2"] == pytest.approx(0.5 * 1.0)
    assert m["mrr@2"] == pytest.approx(0.5)
    m3 = rank_metrics(scores, np.array([1, 4]), exclude=None, k=3)
    assert m3["hr@3"] == pytest.approx(1.0)
    assert m3["ndcg@3"] == pytest.approx((1.0 + 1.0 / math.log2(4)) / 2)
    assert m3["mrr@3"] == pytest.approx((1.0 + 1.0 / 3) / 2)
    assert set(m3) >= {"hr@3", "ndcg@3", "mrr@3", "coverage@3"}


def test_ties_are_pessimistic():
    constant = np.zeros((3, 6))
    ranks = target_ranks(constant, np.array([1, 3, 5]))
    # Every other real item (5 - 1 = 4) ties with the target and ranks ahead of it.
    assert ranks.tolist() == [4, 4, 4]
    assert rank_metrics(constant, np.array([1, 3, 5]), None, k=4)["hr@4"] == 0.0
    # One tie with the target: the target goes after it.
    scores = np.array([[0.0, 0.2, 0.7, 0.7, 0.1]])
    assert target_ranks(scores, np.array([3])).tolist() == [1]


def test_history_is_excluded_but_never_the_target():
    scores = np.array([[0.0, 0.9, 0.8, 0.7, 0.1]])
    # Without exclusion, target 3 is third.
    assert target_ranks(scores, np.array([3])).tolist() == [2]
    # Items 1 and 2 are known history: excluded, so the target moves to the top.
    assert target_ranks(scores, np.array([3]), [[1, 2]]).tolist() == [0]
    # The target itself in the history (a re-purchase) still counts.
    assert target_ranks(scores, np.array([3]), [[1, 3]]).tolist() == [1]
    assert top_k_items(scores, 2, [[1, 3]]).tolist() == [[2, 4]]


def test_coverage_and_popularity_of_recommended_items():
    scores = np.array([[0.0, 0.9, 0.8, 0.1, 0.2], [0.0, 0.9, 0.1, 0.8, 0.2]])
    pop = [0.0, 10.0, 4.0, 2.0, 1.0]
    m = rank_metrics(scores, np.array([4, 4]), exclude=None, k=2, item_popularity=pop)
    # Recommended: {1, 2} and {1, 3} -> 3 of 4 items; mean popularity (10+4+10+2)/4.
    assert m["coverage@2"] == pytest.approx(0.75)
    assert m["popularity@2"] == pytest.approx(6.5)


def test_bad_targets_are_named():
    with pytest.raises(ValueError, match="targets"):
        rank_metrics(np.zeros((1, 4)), np.array([0]), None)
