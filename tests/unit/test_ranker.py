"""The learned ranking stage: candidate features, LambdaRank training, -inf outside the candidates, save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aisys.features.candidates import (
    CONTEXT_FEATURES,
    ItemEventIndex,
    candidate_features,
    candidate_union,
    feature_names,
)
from aisys.models.ranker import (
    RANKER_FEATURE_SET,
    RankerFeatureSetError,
    RankerSettings,
    candidate_labels,
    fit_ranker,
    load_ranker,
    rank_candidates,
    save_ranker,
)

N_ITEMS = 30
DAY = 86_400


def _batch(n_users: int, seed: int, depth: int = 8):
    """Two generators over N_ITEMS items: ``signal`` scores each user's target far above the rest, ``noise`` is
    random; with time, popularity and genre context around them (noise to the ranker)."""
    rng = np.random.default_rng(seed)
    histories = [list(rng.choice(np.arange(1, N_ITEMS + 1), size=3, replace=False)) for _ in range(n_users)]
    targets = []
    signal = rng.normal(size=(n_users, N_ITEMS + 1))
    noise = rng.normal(size=(n_users, N_ITEMS + 1))
    for u, history in enumerate(histories):
        free = [i for i in range(1, N_ITEMS + 1) if i not in history]
        target = rng.choice(free)
        signal[u, target] = 5.0 + rng.normal(scale=0.1)
        noise[u, target] = rng.normal()
        targets.append([int(target)])
    scores = {"signal": signal, "noise": noise}
    times = rng.integers(0, 100 * DAY, size=200)
    events = ItemEventIndex.from_events(rng.integers(1, N_ITEMS + 1, size=200), times)
    requests = np.full(n_users, 100.0 * DAY)
    gaps = rng.uniform(0, 10 * DAY, size=n_users)
    genres = (rng.random((N_ITEMS + 1, 4)) < 0.4).astype(float)
    genres[0] = 0
    features = candidate_features(scores, histories, requests, gaps, events, genres, depth)
    return features, candidate_labels(features, targets), histories, targets


def test_features_have_one_row_per_candidate_and_the_documented_names():
    features, labels, histories, _ = _batch(n_users=5, seed=0, depth=4)
    assert features.names == feature_names(["signal", "noise"])
    assert features.names[:3] == ("signal_score", "signal_z", "signal_rank")
    assert features.names[-len(CONTEXT_FEATURES):] == CONTEXT_FEATURES
    assert features.values.shape == (features.rows.size, len(features.names))
    assert features.values.dtype == np.float32
    sizes = features.group_sizes()
    assert sizes.sum() == features.rows.size and np.all((sizes >= 4) & (sizes <= 8))  # union of two top-4s
    assert np.all(np.diff(features.rows) >= 0)  # a user's candidates are contiguous (LambdaRank groups)
    for u, history in enumerate(histories):  # never the padding, never a known item
        mine = features.items[features.rows == u]
        assert 0 not in mine and not set(mine) & set(history)
    assert labels.sum() == 5  # each user's target is in signal's top 4


def test_candidate_union_takes_each_generators_top_items():
    a = np.array([[-np.inf, 5, 4, 3, 2, 1]], dtype=float)
    b = np.array([[-np.inf, 1, 2, 3, 4, 5]], dtype=float)
    assert candidate_union([a, b], [[1]], depth=2).pop().tolist() == [2, 3, 4, 5]  # item 1 is history


def test_item_statistics_are_as_of_each_request():
    events = ItemEventIndex.from_events([1, 1, 1, 2], [10, 20, 30, 5])
    items = np.array([1, 1, 2, 3])
    assert events.count_between(items, np.array([0, 15, 0, 0]), np.array([25, 25, 5, 99])).tolist() == [2, 1, 0, 0]
    first = events.first_before(items, np.array([25, 10, 6, 99]))
    assert first[0] == 10 and np.isnan(first[1]) and first[2] == 5 and np.isnan(first[3])  # 10 is not before 10


def test_a_ranker_trained_on_a_signal_ranks_the_target_first_and_nothing_else_is_ranked():
    train, train_labels, _, _ = _batch(n_users=120, seed=1)
    stop, stop_labels, _, _ = _batch(n_users=40, seed=2)
    settings = RankerSettings(min_data_in_leaf=5, max_rounds=60, early_stopping_rounds=20)
    ranker = fit_ranker(train, train_labels, stop, stop_labels, settings)
    test, _, _, targets = _batch(n_users=40, seed=3)
    scores = rank_candidates(ranker, test, N_ITEMS)
    assert scores.shape == (40, N_ITEMS + 1)
    first = np.argmax(scores, axis=1)
    assert np.mean([first[u] == targets[u][0] for u in range(40)]) >= 0.9
    is_candidate = np.zeros_like(scores, dtype=bool)
    is_candidate[test.rows, test.items] = True
    assert np.all(np.isneginf(scores[~is_candidate])) and np.all(np.isfinite(scores[is_candidate]))


def test_save_and_load_give_the_same_scores_and_a_foreign_feature_set_is_refused(tmp_path):
    train, train_labels, _, _ = _batch(n_users=60, seed=4)
    stop, stop_labels, _, _ = _batch(n_users=20, seed=5)
    ranker = fit_ranker(train, train_labels, stop, stop_labels,
                        RankerSettings(min_data_in_leaf=5, max_rounds=20, early_stopping_rounds=10))
    path = save_ranker(ranker, tmp_path / "ranker.json")
    loaded = load_ranker(path)
    assert loaded.feature_set == RANKER_FEATURE_SET and loaded.names == ranker.names
    np.testing.assert_allclose(loaded.predict(stop), ranker.predict(stop))

    document = json.loads(path.read_text())
    document["feature_set"] = "ranker-v0"
    (tmp_path / "old.json").write_text(json.dumps(document))
    with pytest.raises(RankerFeatureSetError, match="ranker-v0.*retrain"):
        load_ranker(tmp_path / "old.json")
    (tmp_path / "model.pkl").write_bytes(b"\x80\x04not json")
    with pytest.raises(ValueError, match="not readable JSON"):
        load_ranker(tmp_path / "model.pkl")


def test_a_residual_ranker_starts_from_its_base_feature_and_keeps_it_through_save_and_load(tmp_path):
    train, train_labels, _, _ = _batch(n_users=60, seed=7)
    stop, stop_labels, _, _ = _batch(n_users=20, seed=8)
    settings = RankerSettings(min_data_in_leaf=5, max_rounds=10, early_stopping_rounds=5)
    ranker = fit_ranker(train, train_labels, stop, stop_labels, settings, base_feature="signal_score")
    trees_only = np.asarray(ranker.booster.predict(stop.values, num_iteration=ranker.best_iteration or None))
    column = stop.values[:, stop.names.index("signal_score")]
    np.testing.assert_allclose(ranker.predict(stop), trees_only + column, rtol=1e-6)  # base + corrections
    loaded = load_ranker(save_ranker(ranker, tmp_path / "residual.json"))
    assert loaded.base_feature == "signal_score"
    np.testing.assert_allclose(loaded.predict(stop), ranker.predict(stop))
    with pytest.raises(ValueError, match="base_feature 'nope'"):
        fit_ranker(train, train_labels, stop, stop_labels, settings, base_feature="nope")


def test_features_of_other_generators_are_refused():
    train, train_labels, _, _ = _batch(n_users=60, seed=6)
    ranker = fit_ranker(train, train_labels, train, train_labels,
                        RankerSettings(min_data_in_leaf=5, max_rounds=5, early_stopping_rounds=5))
    other = train.__class__(train.rows, train.items, train.values, tuple(reversed(train.names)), train.n_users)
    with pytest.raises(RankerFeatureSetError, match="do not match"):
        rank_candidates(ranker, other, N_ITEMS)
