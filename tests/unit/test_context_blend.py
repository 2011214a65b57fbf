"""The context-aware blend: request gaps, gap buckets, per-bucket weights, and the runner's rebuild of it."""

from __future__ import annotations

import numpy as np
import pytest

from aisys.models.baselines import RecentPopularity, SequentialLinear, blend_many
from aisys.models.context_blend import ContextBlend, blend_by_bucket, gap_buckets, request_gaps
from aisys.quality.protocol import EvalTask, Interactions, leave_one_out_tasks, temporal_tasks

US = 1_000_000  # the event schema's timestamps are microseconds


class Fixed:
    """A fitted stand-in model: the same score row for every user."""

    def __init__(self, row: list[float]) -> None:
        self.row = np.asarray([-np.inf, *row], dtype=np.float64)

    def fit(self, train, n_items):
        return self

    def score(self, users, histories):
        return np.tile(self.row, (len(users), 1))


def test_gap_buckets_count_the_thresholds_below_each_gap():
    gaps = [0.0, 3_600.0, 3_601.0, 86_400.0, 10**7, np.nan]
    assert gap_buckets(gaps, [3_600.0, 86_400.0]).tolist() == [0, 0, 1, 1, 2, 0]  # equal stays low, NaN -> 0
    assert gap_buckets(gaps, []).tolist() == [0] * 6
    with pytest.raises(ValueError, match="strictly increasing"):
        gap_buckets(gaps, [86_400.0, 3_600.0])


def test_request_gaps_are_seconds_since_the_last_interaction_and_refuse_the_future():
    assert request_gaps([10, 100], [10, 3_700]).tolist() == [0.0, 3_600.0]
    with pytest.raises(ValueError, match=r"request_times\[1\] is before last_seen\[1\]"):
        request_gaps([10, 100], [20, 50])


def test_blend_by_bucket_gives_each_row_its_buckets_weights():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    a[:, 0] = b[:, 0] = -np.inf
    weights = [[1.0, 0.2], [0.3, 2.0]]
    buckets = np.array([0, 1, 1, 0, 1])
    out = blend_by_bucket([a, b], weights, buckets)
    for bucket, w in enumerate(weights):
        rows = buckets == bucket
        np.testing.assert_allclose(out[rows], blend_many([a, b], w)[rows])
    assert np.all(np.isneginf(out[:, 0]))
    with pytest.raises(ValueError, match="bucket indices must be in 0..1"):
        blend_by_bucket([a, b], weights, np.array([0, 2, 0, 0, 0]))
    with pytest.raises(ValueError, match="one entry per score row"):
        blend_by_bucket([a, b], weights, np.array([0, 1]))


def test_context_blend_switches_models_by_the_gap():
    session, came_back = Fixed([3.0, 1.0, 0.0]), Fixed([0.0, 1.0, 3.0])  # best item 1 vs best item 3
    blend = ContextBlend([session, came_back], [[1.0, 0.0], [0.0, 1.0]], [3_600.0])
    scores = blend.score(["a", "b", "c"], [[], [], []], gaps=[5.0, 86_400.0, 3_600.0])
    assert np.argmax(scores, axis=1).tolist() == [1, 3, 1]
    assert blend.weights == [1.0, 0.0]  # the WeightedBlend view: bucket 0
    with pytest.raises(ValueError, match="needs gaps="):
        blend.score(["a"], [[]])
    with pytest.raises(ValueError, match="one entry per user"):
        blend.score(["a"], [[]], gaps=[1.0, 2.0])
    one = ContextBlend([session, came_back], [[0.0, 1.0]])  # one bucket: no gaps needed
    assert np.argmax(one.score(["a"], [[]]), axis=1).tolist() == [3]


def test_context_blend_rejects_malformed_weights():
    models = [Fixed([1.0]), Fixed([2.0])]
    with pytest.raises(ValueError, match="1 thresholds make 2 buckets, got 1"):
        ContextBlend(models, [[1.0, 1.0]], [60.0])
    with pytest.raises(ValueError, match=r"bucket_weights\[1\] has 1 weights for 2 models"):
        ContextBlend(models, [[1.0, 1.0], [1.0]], [60.0])
    with pytest.raises(ValueError, match=r"bucket_weights\[0\] must be >= 0"):
        ContextBlend(models, [[-1.0, 1.0]])


def make(rows: list[tuple[str, int, int]], n_items: int = 9) -> Interactions:
    """Interactions from (user, item index, timestamp in seconds) rows in file order."""
    users, items, ts = zip(*rows)
    return Interactions(
        np.asarray(users, dtype=object), np.asarray(items, dtype=np.int64), np.asarray(ts, dtype=np.int64) * US,
        [""] + [str(i) for i in range(1, n_items + 1)],
    )


def test_task_request_gaps_run_from_the_last_train_interaction_to_the_next_one():
    from aisys.evaluation.runner import task_request_gaps

    # u1: 10, 30, 30 (tie, file order), 5000; u2: 10, 20, 100_000.
    data = make([("u1", 5, 30), ("u2", 1, 10), ("u1", 6, 30), ("u1", 2, 10), ("u2", 4, 20), ("u2", 7, 100_000),
                 ("u1", 8, 5_000)])
    valid, test = leave_one_out_tasks(data)
    assert valid.users == ["u1", "u2"]
    assert task_request_gaps(data, valid).tolist() == [0.0, 10.0]  # u1's valid target shares its last second
    assert task_request_gaps(data, test).tolist() == [4_970.0, 99_980.0]
    _, t_test = temporal_tasks(data)
    for user, gap in zip(t_test.users, task_request_gaps(data, t_test)):
        seq_times = {"u1": [10, 30, 30, 5_000], "u2": [10, 20, 100_000]}[user]
        n = len(t_test.train[user])
        assert gap == seq_times[n] - seq_times[n - 1]
    with pytest.raises(ValueError, match="none after it"):
        task_request_gaps(data, EvalTask("bad", 9, {"u1": [2, 5, 6, 8]}, ["u1"], [[1]]))


def test_context_settings_rebuild_the_blend_with_a_came_back_bucket():
    from aisys.evaluation.runner import _sequential_model

    base = {"max_seq_len": 8, "embedding_dim": 8, "n_layers": 1, "n_heads": 1, "epochs": 1}
    recency = {"ease_l2": 300.0, "ease_input_decay": 1.0, "ease_half_life_days": None, "blend_weight": 0.5,
               "recent_half_life_days": 1.0, "recent_weight": 0.0, "sasrec_weight": 1.0, "slit_weight": 0.25}
    blend = _sequential_model({
        **base, **recency, "ctx_gap_seconds": 3_600.0, "ctx_sasrec_weight": 0.5, "ctx_ease_weight": 0.25,
        "ctx_slit_weight": 0.0, "ctx_recent_half_life_days": 3.0, "ctx_recent_weight": 2.0,
    })
    assert isinstance(blend, ContextBlend) and blend.gap_thresholds == [3_600.0]
    assert blend.bucket_weights == [[1.0, 0.5, 0.0, 0.25, 0.0], [0.5, 0.25, 0.0, 0.0, 2.0]]
    assert isinstance(blend.models[3], SequentialLinear)
    assert [m.half_life_days for m in blend.models if isinstance(m, RecentPopularity)] == [1.0, 3.0]
    single = _sequential_model({**base, **recency, "ctx_gap_seconds": None})
    assert isinstance(single, ContextBlend) and single.bucket_weights == [[1.0, 0.5, 0.0, 0.25]]


def test_score_task_hands_the_gaps_to_a_context_model_only():
    from aisys.evaluation.runner import score_task

    task = EvalTask("t", 3, {"a": [2], "b": [2]}, ["a", "b"], [[1], [3]])
    blend = ContextBlend([Fixed([3.0, 0.0, 1.0]), Fixed([1.0, 0.0, 3.0])], [[1.0, 0.0], [0.0, 1.0]], [60.0])
    metrics, _, _ = score_task(blend, task, gaps=np.array([0.0, 600.0]))
    assert metrics["hr@10"] == 1.0 and metrics["mrr@10"] == 1.0  # each user's target ranks first
    metrics, _, _ = score_task(blend, task, gaps=np.array([600.0, 0.0]))
    assert metrics["mrr@10"] == 0.5  # swapped contexts: each target ranks second
    plain, _, _ = score_task(Fixed([3.0, 0.0, 1.0]), task, gaps=np.array([0.0, 0.0]))
    assert plain["mrr@10"] == 0.75


def tiny_movielens_for_blends(tmp_path, monkeypatch):
    """A tiny GroupLens folder, its interactions and a small-SASRec config, with the runner's blend grids made
    coarse (the tests check the wiring, not the tuning's reach) and every extra bucket kept whatever it gains."""
    from aisys.config import load_config
    from aisys.data.movielens import read_grouplens, read_item_ids
    from aisys.evaluation import blends, runner
    from aisys.quality.protocol import interactions_from_events
    from tests.unit.test_evaluate_cli import write_grouplens

    monkeypatch.setattr(blends, "RECENCY_BLEND_WEIGHTS", (0.0, 1.0))
    monkeypatch.setattr(blends, "CONTEXT_SASREC_WEIGHTS", (1.0,))
    monkeypatch.setattr(blends, "CONTEXT_MIN_GAIN", -1.0)
    monkeypatch.setattr(blends, "CONTEXT_GAP_THRESHOLDS", (5.0,))  # the tiny data's ratings are 10 s apart
    monkeypatch.setitem(
        runner.BASELINE_GRIDS, "ease-recency", [{"l2": 30.0, "input_decay": 1.0, "half_life_days": None}]
    )
    folder = write_grouplens(tmp_path / "ml")
    data = interactions_from_events(read_grouplens(folder), read_item_ids(folder))
    cfg = load_config(None, [
        "features.max_seq_len=8", "model.embedding_dim=8", "model.n_layers=1", "train.epochs=2",
        "train.eval_every=1", "train.batch_size=8", f"paths.workspace={tmp_path / 'ws'}",
        f"data.movielens.path={folder}",
    ])
    return folder, data, cfg


def test_ctx_blend_is_tuned_on_valid_refit_and_exported(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from aisys.evaluation import runner

    folder, data, cfg = tiny_movielens_for_blends(tmp_path, monkeypatch)
    gaps = runner.task_request_gaps(data, runner.split_tasks(data, "loo")[0])
    result = runner.evaluate_model("sasrec+ctx-blend", data, "loo", cfg, seed=0)
    assert result.settings["ctx_gap_seconds"] == 5.0 and np.any(gaps > 5.0)
    half_lives = {p["half_life_days"] for p in runner.BASELINE_GRIDS["recentpop"]}
    assert result.settings["ctx_recent_half_life_days"] in half_lives
    assert result.component is not None and result.component.model == "sasrec"
    assert 0.0 <= result.test_metrics["ndcg@10"] <= 1.0
    again = runner.evaluate_model("sasrec+ctx-blend", data, "loo", cfg, seed=0, settings=result.settings)
    assert again.test_metrics == result.test_metrics  # the settings rebuild the same model
    path = runner.write_export(result, data.item_ids, tmp_path / "ctx.parquet")
    table = pq.read_table(path)
    assert table.column_names == ["user_id", "rank", "item_id"]
    assert set(table.column("user_id").to_pylist()) == set(result.test_task.users)
