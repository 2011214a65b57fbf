"""The pure recommender: model path, popularity fallback, exclusion, online events, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aisys.features.sequences import recent_window
from aisys.models.bundle import ModelBundle
from aisys.models.sasrec import SASRec, SASRecConfig
from aisys.serving.recommender import Recommender, top_k
from aisys.serving.session_store import InMemorySessionStore

N_ITEMS = 8
MAX_LEN = 5


def tiny_bundle(with_weights: bool = True) -> ModelBundle:
    """An untrained SASRec over items i1..i8; popularity falls with the index."""
    torch.manual_seed(0)
    config = SASRecConfig(n_items=N_ITEMS, max_seq_len=MAX_LEN, embedding_dim=16, n_layers=1, n_heads=2, dropout=0.0)
    model = SASRec(config)
    return ModelBundle(
        model_kind="sasrec",
        model_config=config.to_dict(),
        item_ids=[""] + [f"i{i}" for i in range(1, N_ITEMS + 1)],
        item_popularity=[0.0] + [float(N_ITEMS - i + 1) for i in range(1, N_ITEMS + 1)],
        state_dict=model.state_dict() if with_weights else None,
        item_categories=[None] + [f"c{i % 3}" for i in range(1, N_ITEMS + 1)],
        max_seq_len=MAX_LEN,
        lineage={"snapshot_id": "snap-1", "run_id": "run-1"},
    )


@pytest.fixture
def bundle() -> ModelBundle:
    return tiny_bundle()


@pytest.fixture
def rec(bundle: ModelBundle) -> Recommender:
    return Recommender(bundle, {"alice": [1, 2, 3], "bob": [4]})


def expected_model_ranking(rec: Recommender, user: str, exclude: set[int]) -> list[str]:
    """Rank every item by the model's own scores for the user's window, independently of Recommender."""
    window = torch.from_numpy(recent_window(rec.history(user), MAX_LEN)).unsqueeze(0)
    with torch.inference_mode():
        scores = rec.model.score_next(window)[0].double().numpy()
    candidates = [i for i in range(1, N_ITEMS + 1) if i not in exclude]
    candidates.sort(key=lambda i: (-scores[i], i))
    return [rec.bundle.item_ids[i] for i in candidates]


def test_unknown_user_gets_popularity_fallback_flagged(rec: Recommender, bundle: ModelBundle):
    out = rec.recommend("nobody", k=3)
    assert out.fallback is True
    assert out.reason == "unknown_user"
    by_popularity = sorted(range(1, N_ITEMS + 1), key=lambda i: -bundle.item_popularity[i])
    assert [s.item_id for s in out.items] == [bundle.item_ids[i] for i in by_popularity[:3]]
    assert [s.score for s in out.items] == [bundle.item_popularity[i] for i in by_popularity[:3]]
    assert [s.category for s in out.items] == [bundle.item_categories[i] for i in by_popularity[:3]]


def test_known_user_is_ranked_by_the_model(rec: Recommender):
    out = rec.recommend("alice", k=4)
    assert out.fallback is False and out.reason is None
    assert [s.item_id for s in out.items] == expected_model_ranking(rec, "alice", {1, 2, 3})[:4]
    scores = [s.score for s in out.items]
    assert scores == sorted(scores, reverse=True)


def test_history_items_are_excluded_only_when_asked(rec: Recommender):
    seen = {"i1", "i2", "i3"}
    excluded = rec.recommend("alice", k=N_ITEMS)
    assert seen.isdisjoint(s.item_id for s in excluded.items)
    assert len(excluded.items) == N_ITEMS - len(seen)
    included = rec.recommend("alice", k=N_ITEMS, exclude_seen=False)
    assert seen <= {s.item_id for s in included.items}
    assert len(included.items) == N_ITEMS


def test_an_event_changes_the_window_and_the_next_recommendation(rec: Recommender):
    window_before = rec.model_input("bob").copy()
    before = rec.recommend("bob", k=N_ITEMS)
    pick = before.items[0].item_id  # bob's current top item: after the event it must disappear

    assert rec.record_event("bob", pick, "purchase") is True

    window_after = rec.model_input("bob")
    assert not np.array_equal(window_before, window_after)
    assert window_after[-1] == rec.bundle.item_index()[pick]
    after = rec.recommend("bob", k=N_ITEMS)
    assert pick not in {s.item_id for s in after.items}
    assert [(s.item_id, s.score) for s in after.items] != [(s.item_id, s.score) for s in before.items]
    assert [s.item_id for s in after.items] == expected_model_ranking(rec, "bob", {4, rec.bundle.item_index()[pick]})


def test_an_event_turns_an_unknown_user_into_a_personalised_one(rec: Recommender):
    assert rec.recommend("carol", k=2).fallback is True
    rec.record_event("carol", "i6", "view")
    out = rec.recommend("carol", k=2)
    assert out.fallback is False
    assert "i6" not in {s.item_id for s in out.items}


def test_unknown_items_are_accepted_but_do_not_enter_the_sequence(rec: Recommender):
    before = rec.history("alice")
    assert rec.record_event("alice", "brand-new-item", "view") is False
    assert rec.history("alice") == before


def test_history_is_bounded_and_the_window_keeps_the_newest(bundle: ModelBundle):
    rec = Recommender(bundle, {"u": list(range(1, 9)) * 3}, history_limit=MAX_LEN)
    assert len(rec.history("u")) == MAX_LEN
    rec.record_event("u", "i1")
    assert rec.history("u")[-1] == 1 and len(rec.history("u")) == MAX_LEN
    assert list(rec.model_input("u")) == rec.history("u")


@pytest.mark.parametrize("bad_k", [0, -1, True, 2.5])
def test_k_must_be_a_positive_integer(rec: Recommender, bad_k):
    with pytest.raises(ValueError, match="k must be"):
        rec.recommend("alice", k=bad_k)


def test_k_larger_than_the_catalogue_returns_each_item_once(rec: Recommender):
    out = rec.recommend("nobody", k=1000)
    ids = [s.item_id for s in out.items]
    assert len(ids) == N_ITEMS == len(set(ids))
    assert "" not in ids  # padding never leaks out


class CountingModel:
    """Wraps a model and records each forward call's batch size."""

    def __init__(self, model) -> None:
        self.model = model
        self.batch_sizes: list[int] = []

    def score_next(self, seqs):
        self.batch_sizes.append(int(seqs.shape[0]))
        return self.model.score_next(seqs)


def test_recommend_many_scores_all_known_users_in_one_forward_pass(bundle: ModelBundle):
    from aisys.models.sasrec import build_model

    counting = CountingModel(build_model(bundle))
    rec = Recommender(bundle, {"alice": [1, 2, 3], "bob": [4], "dan": [7, 8]}, model=counting)
    users = ["alice", "nobody", "bob", "dan"]
    many = rec.recommend_many(users, k=3)
    assert counting.batch_sizes == [3]
    singles = [rec.recommend(u, k=3) for u in users]
    # Batched and single scoring agree up to float rounding (batch kernels differ).
    for batched, single in zip(many, singles):
        assert [s.item_id for s in batched.items] == [s.item_id for s in single.items]
        assert [s.score for s in batched.items] == pytest.approx([s.score for s in single.items], abs=1e-5)
        assert (batched.fallback, batched.reason) == (single.fallback, single.reason)
    assert [r.fallback for r in many] == [False, True, False, False]


def test_bundle_without_weights_serves_popularity_to_everyone():
    rec = Recommender(tiny_bundle(with_weights=False), {"alice": [1, 2]})
    assert rec.model_loaded is False
    out = rec.recommend("alice", k=2)
    assert out.fallback is True and out.reason == "no_model"
    assert {s.item_id for s in out.items}.isdisjoint({"i1", "i2"})


def test_top_k_skips_excluded_and_breaks_ties_by_index():
    scores = np.array([-np.inf, 1.0, 3.0, 3.0, -np.inf, 2.0])
    idx, values = top_k(scores, 3)
    assert idx.tolist() == [2, 3, 5]
    assert values.tolist() == [3.0, 3.0, 2.0]
    idx_all, _ = top_k(scores, 10)
    assert idx_all.tolist() == [2, 3, 5, 1]


def test_in_memory_session_store_append_and_bulk_load():
    store = InMemorySessionStore()
    assert store.get("x") == []
    store.bulk_load({"x": [1, 2]})
    assert store.append("x", 3, max_len=2) == [2, 3]
    assert store.get("x") == [2, 3]
    got = store.get("x")
    got.append(99)  # callers get copies, not the store's list
    assert store.get("x") == [2, 3]
    with pytest.raises(ValueError, match="padding"):
        store.append("x", 0, max_len=2)
