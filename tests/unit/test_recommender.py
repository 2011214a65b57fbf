"""The pure recommender: model path, popularity fallback, exclusion, reasons, batching; the session table."""

from __future__ import annotations

import asyncio

import numpy as np

from aisys.serving.rules import RECENT_REASON
import pytest
import torch

from aisys.features.sequences import recent_window
from aisys.models.bundle import ModelBundle
from aisys.models.sasrec import SASRec, SASRecConfig
from aisys.serving.recommender import Recommender, ScoreRequest, top_k
from aisys.serving.session_store import InMemorySessionStore, SessionTable, UserSession

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


def session(*items: str, purchased: tuple[str, ...] = ()) -> UserSession:
    return UserSession(items=tuple(items), last_event_id="e", purchased=frozenset(purchased))


@pytest.fixture
def bundle() -> ModelBundle:
    return tiny_bundle()


@pytest.fixture
def rec(bundle: ModelBundle) -> Recommender:
    return Recommender(bundle)


def expected_model_ranking(rec: Recommender, history: list[int], exclude: set[int]) -> list[str]:
    """Rank every item by the model's own scores for the window, independently of Recommender."""
    window = torch.from_numpy(recent_window(history, MAX_LEN)).unsqueeze(0)
    with torch.inference_mode():
        scores = rec.model.score_next(window)[0].double().numpy()
    candidates = [i for i in range(1, N_ITEMS + 1) if i not in exclude]
    candidates.sort(key=lambda i: (-scores[i], i))
    return [rec.bundle.item_ids[i] for i in candidates]


def ids(recommendation) -> list[str]:
    return [s.item_id for s in recommendation.items]


def test_unknown_user_gets_popularity_fallback_flagged(rec: Recommender, bundle: ModelBundle):
    out = rec.recommend(UserSession(), k=3)
    assert out.fallback is True and out.fallback_reason == "unknown_user"
    by_popularity = sorted(range(1, N_ITEMS + 1), key=lambda i: -bundle.item_popularity[i])
    assert ids(out) == [bundle.item_ids[i] for i in by_popularity[:3]]
    assert [s.score for s in out.items] == [bundle.item_popularity[i] for i in by_popularity[:3]]
    assert [s.category for s in out.items] == [bundle.item_categories[i] for i in by_popularity[:3]]
    assert {s.reason for s in out.items} == {"popular now"}


def test_a_session_of_only_unknown_items_is_an_unknown_user(rec: Recommender):
    out = rec.recommend(session("new-1", "new-2"), k=2)
    assert out.fallback is True and out.fallback_reason == "unknown_user"


def test_known_user_is_ranked_by_the_model_and_nothing_is_excluded_unasked(rec: Recommender):
    out = rec.recommend(session("i1", "i2", "i3"), k=N_ITEMS)
    assert out.fallback is False and out.fallback_reason is None
    assert ids(out) == expected_model_ranking(rec, [1, 2, 3], set())
    scores = [s.score for s in out.items]
    assert scores == sorted(scores, reverse=True)


def test_excluded_ids_never_come_back(rec: Recommender):
    out = rec.recommend(session("i1", "i2", "i3"), k=N_ITEMS, exclude=frozenset({"i2", "i7", "unknown"}))
    assert ids(out) == expected_model_ranking(rec, [1, 2, 3], {2, 7})
    popular = rec.recommend(UserSession(), k=N_ITEMS, exclude=frozenset({"i1"}))
    assert "i1" not in ids(popular) and len(popular.items) == N_ITEMS - 1


def test_model_input_maps_ids_to_this_bundles_window(rec: Recommender):
    s = session("i1", "brand-new", *[f"i{i}" for i in range(2, 8)])
    assert rec.known_history(s) == [1, 2, 3, 4, 5, 6, 7]
    assert rec.model_input(s).tolist() == [3, 4, 5, 6, 7]  # the newest MAX_LEN known items
    assert rec.model_input(session("i4")).tolist() == [0, 0, 0, 0, 4]


def test_model_picks_name_the_most_similar_viewed_item(rec: Recommender):
    out = rec.recommend(session("i1", "i5"), k=4)
    emb = rec.model.item_emb.weight.detach().numpy()
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)  # row 0 (padding) is zero
    for item in out.items:
        j = rec.item_index[item.item_id]
        if j in (1, 5):  # viewed (not purchased) items may come back, as a reminder
            assert item.reason == RECENT_REASON
            continue
        best = max((1, 5), key=lambda h: float(unit[j] @ unit[h]))
        assert item.reason == f"because you viewed i{best}"


@pytest.mark.parametrize("bad_k", [0, -1, True, 2.5])
def test_k_must_be_a_positive_integer(rec: Recommender, bad_k):
    with pytest.raises(ValueError, match="k must be"):
        rec.recommend(session("i1"), k=bad_k)


def test_k_larger_than_the_catalogue_returns_each_item_once(rec: Recommender):
    out = rec.recommend(UserSession(), k=1000)
    assert len(ids(out)) == N_ITEMS == len(set(ids(out)))
    assert "" not in ids(out)  # padding never leaks out


class CountingModel:
    """Wraps a model and records each forward call's batch size."""

    def __init__(self, model) -> None:
        self.model = model
        self.item_emb = model.item_emb
        self.batch_sizes: list[int] = []

    def score_next(self, seqs):
        self.batch_sizes.append(int(seqs.shape[0]))
        return self.model.score_next(seqs)


def test_recommend_many_scores_all_known_users_in_one_forward_pass(bundle: ModelBundle):
    from aisys.models.sasrec import build_model

    counting = CountingModel(build_model(bundle))
    rec = Recommender(bundle, model=counting)
    sessions = [session("i1", "i2", "i3"), UserSession(), session("i4"), session("i7", "i8")]
    many = rec.recommend_many([ScoreRequest(s, 3) for s in sessions])
    assert counting.batch_sizes == [3]
    singles = [rec.recommend(s, k=3) for s in sessions]
    # Batched and single scoring agree up to float rounding (batch kernels differ).
    for batched, single in zip(many, singles):
        assert ids(batched) == ids(single)
        assert [s.score for s in batched.items] == pytest.approx([s.score for s in single.items], abs=1e-5)
        assert (batched.fallback, batched.fallback_reason) == (single.fallback, single.fallback_reason)
    assert [r.fallback for r in many] == [False, True, False, False]


def test_bundle_without_weights_serves_popularity_to_everyone():
    rec = Recommender(tiny_bundle(with_weights=False))
    assert rec.model_loaded is False
    out = rec.recommend(session("i1", "i2"), k=2, exclude=frozenset({"i1"}))
    assert out.fallback is True and out.fallback_reason == "no_model"
    assert ids(out) == ["i2", "i3"]


def test_top_k_skips_excluded_and_breaks_ties_by_index():
    scores = np.array([-np.inf, 1.0, 3.0, 3.0, -np.inf, 2.0])
    idx, values = top_k(scores, 3)
    assert idx.tolist() == [2, 3, 5]
    assert values.tolist() == [3.0, 3.0, 2.0]
    assert top_k(scores, 10)[0].tolist() == [2, 3, 5, 1]
    ties = np.array([-np.inf, 1.0, 1.0, 1.0, 1.0])
    assert top_k(ties, 2)[0].tolist() == [1, 2]  # the lowest indices among equals


def test_session_table_records_events_bounded_with_purchases_and_last_event():
    table = SessionTable(max_items=3)
    assert table.get_many(["x"]) == [UserSession()]
    for n, (item, kind) in enumerate([("a", "view"), ("b", "purchase"), ("c", "view"), ("d", "add_to_cart")]):
        table.record("x", f"e{n}", item, kind)
    (x,) = table.get_many(["x"])
    assert x.items == ("b", "c", "d") and x.last_event_id == "e3" and x.purchased == {"b"}


def test_session_table_bulk_loads_a_snapshot_once_and_keeps_live_users():
    table = SessionTable(max_items=2)
    table.record("live", "e9", "z", "view")
    seeded = table.bulk_load({"live": session("a"), "new": session("a", "b", "c", purchased=("a",))}, "snap-1")
    assert seeded == 1
    live, new = table.get_many(["live", "new"])
    assert live.items == ("z",)  # live state is newer than any snapshot
    assert new.items == ("b", "c") and new.purchased == {"a"}
    assert table.has_snapshot("snap-1") and not table.has_snapshot("snap-2")
    table.record("new", "e10", "d", "view")
    assert table.bulk_load({"new": session("a")}, "snap-1") == 0  # the same snapshot again is a no-op
    assert table.get_many(["new"])[0].items == ("c", "d")


def test_in_memory_store_is_the_async_face_of_the_table():
    async def scenario():
        store = InMemorySessionStore(max_items=5)
        await store.record("u", "e1", "i1", "purchase")
        assert await store.bulk_load({"v": session("i2")}, "s") == 1
        return await store.get_many(["u", "v", "w"]), await store.has_snapshot("s")

    (u, v, w), loaded = asyncio.run(scenario())
    assert u.items == ("i1",) and u.purchased == {"i1"} and v.items == ("i2",) and w == UserSession() and loaded
