"""The in-repo baselines on tiny synthetic data: each one must find the structure it is built for."""

from __future__ import annotations

import numpy as np
import pytest

from aisys.models.baselines import EASE, ItemKNN, MostPopular, interaction_matrix
from aisys.models.bprmf import BPRMF


def two_clusters(n_users: int = 40, seed: int = 0) -> dict[str, list[int]]:
    """Half the users like items 1-5, half items 6-10; each has 3 random items of their cluster."""
    rng = np.random.default_rng(seed)
    train = {}
    for u in range(n_users):
        base = 1 if u % 2 == 0 else 6
        train[f"u{u}"] = [int(i) for i in rng.choice(np.arange(base, base + 5), size=3, replace=False)]
    return train


def cluster_accuracy(scores: np.ndarray, histories: list[list[int]], clusters: list[int]) -> float:
    """Share of users whose best unseen item is in their own cluster."""
    hits = 0
    for row, history, base in zip(scores, histories, clusters):
        row = row.copy()
        row[history] = -np.inf
        best = int(np.argmax(row))
        hits += base <= best < base + 5
    return hits / len(histories)


def test_interaction_matrix_is_binary_and_rejects_unknown_items():
    assert interaction_matrix([[1, 1, 3]], 3).tolist() == [[0, 1, 0, 1]]
    with pytest.raises(ValueError, match="outside 1..3"):
        interaction_matrix([[4]], 3)


def test_most_popular_ranks_by_train_count_and_never_scores_padding():
    model = MostPopular().fit({"a": [2, 3], "b": [3], "c": [3, 1]}, n_items=4)
    scores = model.score(["x", "y"], [[], [1]])
    assert scores.shape == (2, 5)
    assert np.all(np.isneginf(scores[:, 0]))
    assert list(np.argsort(-scores[0])[:3]) == [3, 1, 2] or list(np.argsort(-scores[0])[:1]) == [3]
    assert scores[0, 3] > scores[0, 2] > scores[0, 4]


@pytest.mark.parametrize(
    "model", [ItemKNN(neighbors=4, shrink=0.0), EASE(l2=1.0), BPRMF(dim=8, epochs=20, lr=0.05, batch_size=16)],
    ids=["itemknn", "ease", "bpr"],
)
def test_collaborative_baselines_recommend_from_the_users_own_cluster(model):
    train = two_clusters()
    model.fit(train, n_items=10)
    users = list(train)
    histories = list(train.values())
    scores = model.score(users, histories)
    assert scores.shape == (len(users), 11) and np.all(np.isneginf(scores[:, 0]))
    clusters = [1 if u % 2 == 0 else 6 for u in range(len(users))]
    assert cluster_accuracy(scores, histories, clusters) >= 0.9
    # Popularity cannot do this: the clusters are equally popular.
    pop = MostPopular().fit(train, 10).score(users, histories)
    assert cluster_accuracy(pop, histories, clusters) < 0.8


def test_ease_weights_solve_the_closed_form_with_a_zero_diagonal():
    train = two_clusters(10)
    model = EASE(l2=2.0).fit(train, n_items=10)
    X = interaction_matrix(list(train.values()), 10).astype(np.float64)
    B = model.weights
    assert np.allclose(np.diag(B), 0.0)
    # Stationarity of ||X - XB||^2 + l2 ||B||^2 off the diagonal: (X^T X + l2 I) B = X^T X - diag(mu).
    G = X.T @ X
    residual = (G + 2.0 * np.eye(11)) @ B - G
    off_diagonal = residual - np.diag(np.diag(residual))
    assert np.allclose(off_diagonal, 0.0, atol=1e-8)


def test_itemknn_keeps_only_the_requested_neighbours_per_item():
    model = ItemKNN(neighbors=2, shrink=0.0).fit(two_clusters(), n_items=10)
    assert ((model.similarity > 0).sum(axis=0) <= 2).all()


def test_history_based_models_fold_in_a_new_users_history():
    model = EASE(l2=1.0).fit(two_clusters(), n_items=10)
    scores = model.score(["new"], [[6, 7]])
    assert int(np.argmax(np.where(np.isin(np.arange(11), [6, 7]), -np.inf, scores[0]))) in (8, 9, 10)


def test_unfitted_models_and_unknown_bpr_users_fail_loudly():
    with pytest.raises(RuntimeError, match="not fitted"):
        EASE().score(["a"], [[1]])
    model = BPRMF(dim=4, epochs=1).fit({"a": [1, 2]}, n_items=3)
    with pytest.raises(KeyError, match="zed"):
        model.score(["zed"], [[1]])
    with pytest.raises(ValueError, match="l2"):
        EASE(l2=0.0)


def test_bpr_is_reproducible_with_a_seed():
    train = two_clusters(10)
    a = BPRMF(dim=4, epochs=3, seed=3).fit(train, 10).score(["u0"], [[]])
    b = BPRMF(dim=4, epochs=3, seed=3).fit(train, 10).score(["u0"], [[]])
    assert np.array_equal(a, b)


def test_blend_standardises_each_models_scores_before_weighting():
    from aisys.models.baselines import ScoreBlend, blend_scores, standardize_rows

    first = np.array([[-np.inf, 1.0, 2.0, 3.0]])
    second = np.array([[-np.inf, 300.0, 200.0, 100.0]])  # another scale, the opposite order
    z = standardize_rows(first)
    assert np.isneginf(z[0, 0]) and np.allclose(z[0, 1:].mean(), 0) and np.allclose(z[0, 1:].std(), 1)
    assert np.array_equal(blend_scores(first, second, 0.0)[0, 1:], z[0, 1:])  # weight 0: the first alone
    assert np.argmax(blend_scores(first, second, 0.5)[0]) == 3  # the first still wins at half weight
    assert np.argmax(blend_scores(first, second, 2.0)[0]) == 1  # the second's scale does not decide, its weight does
    blend = ScoreBlend(MostPopular(), EASE(l2=1.0), 1.0).fit(two_clusters(), 10)
    assert blend.score(["u0"], [[1]]).shape == (1, 11) and blend.fit_seconds[0] >= 0


DAY = 86400


def test_recency_matrix_weighs_the_newest_item_one_and_older_ones_by_powers_of_decay():
    from aisys.models.baselines import recency_matrix

    matrix = recency_matrix([[3, 1, 2], []], 4, decay=0.5)
    assert matrix.tolist() == [[0.0, 0.5, 1.0, 0.25, 0.0], [0.0] * 5]
    assert np.array_equal(recency_matrix([[3, 1]], 4, 1.0), interaction_matrix([[3, 1]], 4))
    with pytest.raises(ValueError, match="decay"):
        recency_matrix([[1]], 4, 0.0)


def test_recent_popularity_ranks_what_is_popular_now_above_what_was_popular_long_ago():
    from aisys.models.baselines import RecentPopularity

    # Item 1: five interactions 100 days ago; item 2: two today.
    train = {f"old{u}": [1] for u in range(5)} | {"new0": [2], "new1": [2]}
    times = {u: [0] for u in train if u.startswith("old")} | {"new0": [100 * DAY], "new1": [100 * DAY]}
    scores = RecentPopularity(half_life_days=10.0).fit(train, 3, times=times).score(["x"], [[]])
    assert scores[0, 2] > scores[0, 1] > scores[0, 3] == 0 and np.isneginf(scores[0, 0])
    assert np.isclose(scores[0, 1], 5 * 0.5**10)
    slow = RecentPopularity(half_life_days=1e6).fit(train, 3, times=times).score(["x"], [[]])
    assert slow[0, 1] > slow[0, 2]  # a very long half-life is plain popularity
    with pytest.raises(ValueError, match="needs times"):
        RecentPopularity().fit(train, 3)
    with pytest.raises(ValueError, match="one timestamp per train item"):
        RecentPopularity().fit(train, 3, times={**times, "new0": []})


def test_ease_input_decay_follows_the_users_latest_taste():
    train = two_clusters()
    history = [1, 2, 3, 6]  # mostly cluster 1-5, but the newest item is from cluster 6-10
    plain = EASE(l2=1.0).fit(train, 10).score(["x"], [history])[0]
    recent = EASE(l2=1.0, input_decay=0.3).fit(train, 10).score(["x"], [history])[0]
    for row in (plain, recent):
        row[history] = -np.inf
    assert 1 <= int(np.argmax(plain)) <= 5
    assert 6 <= int(np.argmax(recent)) <= 10


def test_ease_half_life_lets_recent_co_occurrences_outweigh_old_ones():
    # Long ago 6 users took items 1 and 2 together; lately 3 users took 1 and 3 together.
    train = {f"old{u}": [1, 2] for u in range(6)} | {f"new{u}": [1, 3] for u in range(3)}
    times = {u: [0, 0] for u in train if u.startswith("old")} | {
        u: [200 * DAY, 200 * DAY] for u in train if u.startswith("new")
    }
    plain = EASE(l2=1.0).fit(train, 3).score(["x"], [[1]])[0]
    decayed = EASE(l2=1.0, half_life_days=20.0).fit(train, 3, times=times).score(["x"], [[1]])[0]
    assert plain[2] > plain[3] and decayed[3] > decayed[2]
    with pytest.raises(ValueError, match="needs times"):
        EASE(l2=1.0, half_life_days=20.0).fit(train, 3)


def test_weighted_blend_passes_times_to_the_models_that_use_them_and_weighs_z_scores():
    from aisys.models.baselines import RecentPopularity, WeightedBlend, blend_many, blend_scores

    first = np.array([[-np.inf, 1.0, 2.0, 3.0]])
    second = np.array([[-np.inf, 300.0, 200.0, 100.0]])
    assert np.allclose(blend_many([first, second], [1.0, 0.7]), blend_scores(first, second, 0.7))
    assert np.argmax(blend_many([first, second], [0.0, 1.0])[0]) == 1
    train = {"a": [1, 2], "b": [2, 3]}
    times = {"a": [0, DAY], "b": [DAY, 50 * DAY]}
    blend = WeightedBlend([EASE(l2=1.0), RecentPopularity(1.0)], [1.0, 2.0])
    assert blend.uses_times
    scores = blend.fit(train, 3, times=times).score(["a"], [[1]])
    assert scores.shape == (1, 4) and np.isneginf(scores[0, 0]) and len(blend.fit_seconds) == 2
    with pytest.raises(ValueError, match="one weight per model"):
        WeightedBlend([EASE()], [1.0, 2.0])


def test_sequential_linear_learns_what_comes_next_not_only_what_goes_together():
    from aisys.models.baselines import SequentialLinear

    rng = np.random.default_rng(0)
    # Users walk items 1..8 in a cycle (next = current + 1) from random starts.
    train = {f"u{u}": [int((s + t) % 8) + 1 for t in range(int(rng.integers(3, 7)))]
             for u, s in enumerate(rng.integers(0, 8, 60))}
    model = SequentialLinear(l2=1.0, window=3).fit(train, 8)
    scores = model.score(["a", "b"], [[5], [2, 3]])
    assert scores.shape == (2, 9) and np.all(np.isneginf(scores[:, 0]))
    assert int(np.argmax(scores[0])) == 6 and scores[0, 6] > scores[0, 4]  # after 5 comes 6, not 4
    assert int(np.argmax(np.where(np.isin(np.arange(9), [2, 3]), -np.inf, scores[1]))) == 4
    with pytest.raises(ValueError, match="no user has 2"):
        SequentialLinear().fit({"a": [1]}, 8)
