"""ANN retrieval in the recommender: same interface, same answers as exact scoring on small catalogues."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aisys.config import ConfigError, OnlineConfig, config_from_dict
from aisys.models.bundle import ModelBundle
from aisys.models.sasrec import SASRec, SASRecConfig
from aisys.retrieval import FaissIndex
from aisys.serving.recommender import Recommender, ScoreRequest, retrieval_options
from aisys.serving.session_store import UserSession

N_ITEMS = 600  # default_nlist(600) = 15 lists of ~40 items
MAX_LEN = 8


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    torch.manual_seed(3)
    config = SASRecConfig(n_items=N_ITEMS, max_seq_len=MAX_LEN, embedding_dim=16, n_layers=1, n_heads=2, dropout=0.0)
    model = SASRec(config)
    with torch.no_grad():  # spread the norms, like trained embeddings: inner-product search must respect them
        model.item_emb.weight.mul_(torch.rand(N_ITEMS + 1, 1) * 3 + 0.5)
    return ModelBundle(
        model_kind="sasrec",
        model_config=config.to_dict(),
        item_ids=[""] + [f"i{i}" for i in range(1, N_ITEMS + 1)],
        item_popularity=[0.0] + [float(N_ITEMS - i) for i in range(1, N_ITEMS + 1)],
        state_dict=model.state_dict(),
        item_categories=[None] + [f"c{i % 5}" for i in range(1, N_ITEMS + 1)],
        max_seq_len=MAX_LEN,
    )


def requests() -> list[ScoreRequest]:
    """Known users with different k and exclusions (purchases), one unknown user, in one batch."""
    rng = np.random.default_rng(0)
    out = []
    for n in range(12):
        history = tuple(f"i{j}" for j in rng.integers(1, N_ITEMS + 1, size=1 + n % MAX_LEN))
        banned = frozenset(f"i{j}" for j in rng.integers(1, N_ITEMS + 1, size=n * 5)) | {"not-in-catalogue"}
        out.append(ScoreRequest(UserSession(items=history, last_event_id=f"e{n}"), k=1 + 7 * n, exclude=banned))
    out.append(ScoreRequest(UserSession(items=("stranger-item",)), k=5))
    return out


def as_lists(recs) -> list[tuple[list[str], list[float], list[str | None], bool]]:
    return [([i.item_id for i in r.items], [i.score for i in r.items], [i.reason for i in r.items], r.fallback)
            for r in recs]


def test_exhaustive_ivf_gives_exactly_the_exact_answers(bundle: ModelBundle):
    exact = Recommender(bundle, retrieval="exact")
    # nprobe above nlist probes every list: the ANN path must then reproduce exact scoring item for item.
    ann = Recommender(bundle, retrieval="ivf_flat", retrieval_min_items=1, nprobe=10_000)
    assert exact.index is None
    assert isinstance(ann.index, FaissIndex) and ann.index.n_items == N_ITEMS

    expected, got = as_lists(exact.recommend_many(requests())), as_lists(ann.recommend_many(requests()))
    for (e_ids, e_scores, e_reasons, e_fb), (g_ids, g_scores, g_reasons, g_fb) in zip(expected, got):
        assert g_ids == e_ids and g_reasons == e_reasons and g_fb == e_fb
        assert g_scores == pytest.approx(e_scores, rel=1e-4, abs=1e-4)  # Faiss and torch round differently
    assert [len(ids) for ids, *_ in got] == [r.k for r in requests()]
    assert got[-1][3] is True  # the unknown user still gets popularity


def test_excluded_items_never_come_back_from_the_index(bundle: ModelBundle):
    ann = Recommender(bundle, retrieval="ivf_flat", retrieval_min_items=1, nprobe=2)
    session = UserSession(items=("i1", "i2", "i3"))
    top = [i.item_id for i in ann.recommend(session, k=50).items]
    banned = frozenset(top[:40])  # the model's favourites: the index must look past them
    again = ann.recommend(session, k=50, exclude=banned)
    assert len(again.items) == 50 and again.fallback is False
    assert not banned & {i.item_id for i in again.items}
    scores = [i.score for i in again.items]
    assert scores == sorted(scores, reverse=True)


def test_default_nprobe_keeps_recall_high_on_a_small_catalogue(bundle: ModelBundle):
    exact = Recommender(bundle)
    ann = Recommender(bundle, **retrieval_options(OnlineConfig(retrieval_min_items=N_ITEMS)))
    assert ann.index is not None and ann.index.params()["nprobe"] == ann.index.nlist  # 64 probes >= 15 lists
    for req in requests()[:-1]:
        assert ([i.item_id for i in ann.recommend_many([req])[0].items]
                == [i.item_id for i in exact.recommend_many([req])[0].items])


def test_catalogues_below_the_threshold_are_scored_exactly(bundle: ModelBundle):
    small = Recommender(bundle, **retrieval_options(OnlineConfig(retrieval="ivf_flat")))  # default threshold 100k
    assert small.index is None
    exact = Recommender(bundle, retrieval="exact", retrieval_min_items=1)
    assert exact.index is None  # 'exact' never builds an index, whatever the size
    assert as_lists(small.recommend_many(requests())) == as_lists(exact.recommend_many(requests()))


def test_models_without_embeddings_and_bundles_without_weights_stay_exact(bundle: ModelBundle):
    class ScoresOnly:
        def score_next(self, windows: torch.Tensor) -> torch.Tensor:
            scores = torch.arange(N_ITEMS + 1, dtype=torch.float32).repeat(windows.shape[0], 1)
            scores[:, 0] = float("-inf")
            return scores

    rec = Recommender(bundle, model=ScoresOnly(), retrieval="ivf_flat", retrieval_min_items=1)
    assert rec.index is None
    assert [i.item_id for i in rec.recommend(UserSession(items=("i1",)), k=2).items] == ["i600", "i599"]

    no_weights = ModelBundle(**{**bundle.__dict__, "state_dict": None})
    popular = Recommender(no_weights, retrieval="ivf_flat", retrieval_min_items=1)
    assert popular.index is None
    assert popular.recommend(UserSession(items=("i1",)), k=3).fallback_reason == "no_model"


def test_bad_retrieval_settings_are_refused_by_name(bundle: ModelBundle):
    with pytest.raises(ValueError, match="retrieval must be one of exact, ivf_flat"):
        Recommender(bundle, retrieval="hnsw")
    with pytest.raises(ConfigError, match="online.retrieval"):
        config_from_dict({"online": {"retrieval": "hnsw"}})
    with pytest.raises(ConfigError, match="online.nprobe"):
        config_from_dict({"online": {"nprobe": 0}})
