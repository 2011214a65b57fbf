"""The multi-stage model, pure: blend tuning on valid, the scorer, the bundle, serving and the gate's holdout."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pytest
import torch

from aisys.config import StagesConfig
from aisys.models.baselines import standardize_rows
from aisys.quality.ranking import rank_metrics
from aisys.models.blend_tuning import (
    CONTEXT_GAP_THRESHOLDS,
    CONTEXT_MIN_GAIN,
    RECENCY_BLEND_WEIGHTS,
    SASREC_BLEND_WEIGHTS,
    BlendChoice,
    blend_z_scores,
    tune_blend,
)
from aisys.models.bundle import MULTISTAGE_FEATURE_SET_VERSION, ModelBundle, UnknownBundleVersion
from aisys.models.multistage import MultistageScorer, SASRecScorer, build_scorer
from aisys.models.sasrec import SASRec, SASRecConfig
from aisys.models.stages import StageSpec, fit_stage, score_stage, stage_specs
from aisys.schemas import EVENT_SCHEMA
from aisys.serving.recommender import Recommender, ScoreRequest
from aisys.serving.session_store import UserSession

N_ITEMS = 12
MAX_LEN = 6
HOUR = 3_600.0


def one_hot_z(targets: np.ndarray, n_cols: int, rng: np.random.Generator, noise: float = 0.3) -> np.ndarray:
    """Standardised scores that rank each user's target first (plus noise)."""
    scores = rng.normal(0, noise, (len(targets), n_cols))
    scores[np.arange(len(targets)), targets] += 3.0
    scores[:, 0] = -np.inf
    return standardize_rows(scores)


def test_tuning_keeps_what_adds_drops_noise_and_gives_came_back_users_their_own_weights():
    rng = np.random.default_rng(0)
    n_users, n_cols = 400, 40
    targets = rng.integers(1, n_cols, n_users)
    gaps = np.where(np.arange(n_users) % 4 == 0, 10 * 86_400.0, 60.0)  # every 4th user came back after 10 days
    came_back = gaps > 86_400
    # SASRec knows the target of the users in the session, "recent" that of the users who came back; "noise" none.
    sasrec = one_hot_z(np.where(came_back, rng.integers(1, n_cols, n_users), targets), n_cols, rng)
    recent = one_hot_z(np.where(came_back, targets, rng.integers(1, n_cols, n_users)), n_cols, rng)
    noise = standardize_rows(np.where(np.arange(n_cols) == 0, -np.inf, rng.normal(size=(n_users, n_cols))))
    histories = [[] for _ in range(n_users)]

    choice = tune_blend({"sasrec": sasrec, "noise": noise, "recent": recent}, targets, histories, gaps)

    assert len(choice.gap_thresholds) == 1 and 60 < choice.gap_thresholds[0] < 10 * 86_400  # splits the groups
    weights = dict(zip(choice.stages, zip(*choice.bucket_weights)))
    assert weights["noise"] == (0.0, 0.0)  # adds nothing: dropped
    assert weights["recent"][1] > weights["sasrec"][1]  # came back: recent popularity leads
    assert weights["sasrec"][0] > weights["recent"][0]  # in session: SASRec leads
    assert choice.bucket_gain >= CONTEXT_MIN_GAIN and choice.stage_gain["recent"] > 0.1
    assert choice.active_stages() == ["sasrec", "recent"]

    # The tuner's valid NDCG is what scoring through the blend gives (the scorer's code path).
    row_weights = np.asarray(choice.bucket_weights)[came_back.astype(int)]
    blended = blend_z_scores([sasrec, noise, recent], row_weights)
    assert choice.valid_ndcg == pytest.approx(rank_metrics(blended, targets, histories)["ndcg@10"], abs=1e-6)


def test_a_bucket_that_gains_too_little_is_not_kept():
    rng = np.random.default_rng(1)
    targets = rng.integers(1, 30, 200)
    sasrec = one_hot_z(targets, 30, rng)
    choice = tune_blend({"sasrec": sasrec}, targets, [[] for _ in targets], np.full(200, 10 * 86_400.0))
    assert choice.gap_thresholds == [] and len(choice.bucket_weights) == 1 and choice.bucket_gain == 0.0


def test_the_config_defaults_are_the_runner_grids():
    stages = StagesConfig()
    assert stages.weight_grid == list(RECENCY_BLEND_WEIGHTS)
    assert stages.sasrec_weight_grid == [1.0, *SASREC_BLEND_WEIGHTS]
    assert stages.gap_thresholds_s == list(CONTEXT_GAP_THRESHOLDS) and stages.min_gain == CONTEXT_MIN_GAIN


def test_stage_specs_follow_the_config_and_the_catalogue():
    names = [s.name for s in stage_specs(StagesConfig(), 100, has_titles=True)]
    assert names == ["ease", "slit", "recentpop_1d", "recentpop_3d", "title"]
    assert [s.name for s in stage_specs(StagesConfig(), 100, has_titles=False)][-1] == "recentpop_3d"
    dense_off = stage_specs(StagesConfig(max_dense_items=50), 100, has_titles=True)
    assert [s.kind for s in dense_off] == ["recentpop", "recentpop"]


def tiny_sasrec() -> tuple[SASRecConfig, dict]:
    torch.manual_seed(0)
    config = SASRecConfig(n_items=N_ITEMS, max_seq_len=MAX_LEN, embedding_dim=16, n_layers=1, n_heads=2, dropout=0.0)
    return config, SASRec(config).state_dict()


def multistage_bundle() -> ModelBundle:
    """SASRec (untrained, small weight) + EASE-like "next item" matrix in session + recent popularity after a day."""
    config, state = tiny_sasrec()
    train = {f"u{u}": [(u + t) % N_ITEMS + 1 for t in range(6)] for u in range(30)}  # i -> i + 1 walks
    times = {u: [1_000.0 * t for t in range(len(seq))] for u, seq in train.items()}
    ease = StageSpec("ease", "ease", {"l2": 10.0, "input_decay": 0.5, "half_life_days": None})
    recent = StageSpec("recentpop_1d", "recentpop", {"half_life_days": 1.0})
    arrays = {"ease": fit_stage(ease, train, times, N_ITEMS)}
    counts = np.zeros(N_ITEMS + 1, np.float32)
    counts[N_ITEMS] = 100.0  # the last item is what is popular now
    arrays["recentpop_1d"] = counts
    blend = BlendChoice(["sasrec", "ease", "recentpop_1d"], [[0.1, 3.0, 0.0], [0.1, 0.0, 3.0]], [86_400.0])
    return ModelBundle(
        model_kind="multistage", feature_set_version=MULTISTAGE_FEATURE_SET_VERSION,
        model_config={"sasrec": config.to_dict(), "stages": [ease.to_dict(), recent.to_dict()],
                      "blend": blend.to_dict()},
        item_ids=[""] + [f"i{i:02d}" for i in range(1, N_ITEMS + 1)],
        item_popularity=[0.0] + [1.0] * N_ITEMS, state_dict=state, max_seq_len=MAX_LEN, arrays=arrays,
    )


def test_bundle_round_trip_keeps_every_stage_and_scores_alike(tmp_path):
    bundle = multistage_bundle()
    folder = bundle.save(tmp_path / "bundle")
    assert {p.name for p in folder.iterdir()} == {"bundle.json", "weights.pt", "stages.npz"}
    loaded = ModelBundle.load(folder)
    assert loaded.arrays["ease"].dtype == np.float32
    histories, gaps = [[1, 2, 3], [5]], np.array([60.0, np.nan])
    assert np.array_equal(build_scorer(bundle).score_sessions(histories, gaps),
                          build_scorer(loaded).score_sessions(histories, gaps))


@pytest.mark.parametrize("field, value, named", [
    ("feature_set_version", "multistage-v9", "multistage-v1"),
    ("model_kind", "gbdt", "sasrec"),
])
def test_loading_a_bundle_of_an_unknown_version_names_what_the_code_knows(tmp_path, field, value, named):
    import json

    folder = multistage_bundle().save(tmp_path / "bundle")
    meta = json.loads((folder / "bundle.json").read_text())
    meta[field] = value
    (folder / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(UnknownBundleVersion, match=value) as error:
        ModelBundle.load(folder)
    assert named in str(error.value)


def test_the_scorer_blends_z_scores_per_gap_bucket():
    bundle = multistage_bundle()
    scorer = build_scorer(bundle)
    assert isinstance(scorer, MultistageScorer) and scorer.active == ["sasrec", "ease", "recentpop_1d"]
    history = [3, 4, 5]
    raw = scorer.stage_scores([history])
    expected_session = 0.1 * standardize_rows(raw["sasrec"]) + 3.0 * standardize_rows(raw["ease"])
    got = scorer.score_sessions([history, history], np.array([60.0, 2 * 86_400.0]))
    assert np.allclose(got[0, 1:], expected_session[0, 1:])
    assert np.isneginf(got[:, 0]).all()
    assert np.array_equal(score_stage(scorer.specs["ease"], bundle.arrays["ease"], [history]), raw["ease"])


def test_recommender_ranks_a_multistage_bundle_by_the_request_gap():
    rec = Recommender(multistage_bundle())
    session = UserSession(items=("i03", "i04", "i05"), last_event_time=1_000_000.0)
    soon = rec.recommend_many([ScoreRequest(session, 3, now=1_000_000.0 + 60)])[0]
    later = rec.recommend_many([ScoreRequest(session, 3, now=1_000_000.0 + 3 * 86_400)])[0]
    assert not soon.fallback and not later.fallback
    assert soon.items[0].item_id == "i06"  # in session: what follows the last item (the EASE-like stage)
    assert later.items[0].item_id == "i12"  # came back: what is popular now
    unknown = rec.recommend_many([ScoreRequest(session, 3)])[0]  # no clock: bucket 0
    assert [i.item_id for i in unknown.items] == [i.item_id for i in soon.items]
    assert all(item.reason for item in soon.items)  # reasons still come (SASRec's embeddings)
    assert rec.index is None  # exact scoring even if ANN was asked (SASRec-only option)


def test_recommend_many_scores_a_batch_in_one_scorer_call():
    rec = Recommender(multistage_bundle())
    calls = []
    real = rec.scorer.score_sessions
    rec.scorer.score_sessions = lambda h, g: calls.append(len(h)) or real(h, g)
    requests = [ScoreRequest(UserSession(items=(f"i0{i}",), last_event_time=0.0), 2, now=float(i)) for i in range(1, 5)]
    assert len(rec.recommend_many(requests)) == 4 and calls == [4]


def holdout_events() -> pa.Table:
    """u1: a, b, c then d two days later; u2: b, c, then a one minute later."""
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = [("u1", "i01", 0), ("u1", "i02", 60), ("u1", "i03", 120), ("u1", "i12", 120 + 2 * 86_400),
            ("u2", "i02", 0), ("u2", "i03", 30), ("u2", "i04", 90)]
    table = {name: [] for name in EVENT_SCHEMA.names}
    for n, (user, item, seconds) in enumerate(rows):
        for name, value in (("event_id", f"e{n}"), ("user_id", user), ("item_id", item), ("event_type", "view"),
                            ("value", 1.0), ("timestamp", t0 + timedelta(seconds=seconds)), ("category", "c"),
                            ("price", 1.0)):
            table[name].append(value)
    return pa.Table.from_pydict(table, schema=EVENT_SCHEMA)


def test_the_gate_holdout_scores_a_multistage_bundle_with_each_users_gap():
    from aisys.registry.holdout import build_holdout, report_for_bundle

    holdout = build_holdout(holdout_events(), "snap-1", {"view": 1.0})
    assert dict(zip(holdout.users, holdout.gaps)) == {"u1": 2 * 86_400.0, "u2": 60.0}
    report = report_for_bundle(multistage_bundle(), holdout)
    ranks = dict(zip(holdout.users, report.user_ranks))
    assert ranks["u1"] == 0  # came back two days later: recent popularity puts i12 first
    assert report.nonfinite_weights == []


def test_sasrec_scorer_matches_score_next():
    config, state = tiny_sasrec()
    model = SASRec(config)
    model.load_state_dict(state)
    model.eval()
    scorer = SASRecScorer(model, MAX_LEN)
    from aisys.features.sequences import recent_window

    with torch.no_grad():
        expected = model.score_next(torch.from_numpy(recent_window([1, 2], MAX_LEN)[None])).double().numpy()
    assert np.allclose(scorer.score_sessions([[1, 2]], np.array([5.0])), expected)


def test_sparse_recency_rows_equal_the_dense_recency_matrix():
    from aisys.models.baselines import recency_matrix
    from aisys.models.stages import recency_rows

    histories = [[3, 1, 3, 2], [], [5]]
    assert np.allclose(recency_rows(histories, 6, 0.5).toarray(), recency_matrix(histories, 6, 0.5))
    with pytest.raises(ValueError, match="outside 1..6"):
        recency_rows([[7]], 6, 1.0)


def test_the_blend_tuning_scores_several_targets_as_the_protocol_does():
    from aisys.models.blend_tuning import _ValidSet
    from aisys.quality.ranking import user_metrics

    rng = np.random.default_rng(3)
    n_users, n_items = 30, 40
    z = [rng.normal(size=(n_users, n_items + 1)) for _ in range(2)]
    for m in z:
        m[:, 0] = -np.inf  # padding
    histories = [list(rng.choice(np.arange(1, n_items + 1), 3, replace=False)) for _ in range(n_users)]
    all_targets = [[int(i) for i in rng.choice([j for j in range(1, n_items + 1) if j not in h], int(rng.integers(1, 6)),
                                               replace=False)] for h in histories]
    data = _ValidSet(z, np.array([t[0] for t in all_targets]), histories, 10, all_targets)
    weights = np.array([1.0, 0.5])
    blended = weights[0] * z[0] + weights[1] * z[1]
    expected = user_metrics(blended, all_targets, histories, 10).ndcg
    np.testing.assert_allclose(data.ndcg(weights), expected, atol=1e-6)
    rows = np.array([3, 7, 11, 29])
    np.testing.assert_allclose(data.ndcg(weights, rows), expected[rows], atol=1e-6)
