"""The evaluation runner's recency pieces: timestamps aligned with each task's train, and the blends' rebuild."""

from __future__ import annotations

import numpy as np
import pytest

from aisys.evaluation.runner import _sequential_model, task_times
from aisys.evaluation.sequential import SASRecRecommender
from aisys.models.baselines import EASE, RecentPopularity, SequentialLinear, WeightedBlend
from aisys.quality.protocol import Interactions, leave_one_out_tasks, temporal_tasks

US = 1_000_000  # the event schema's timestamps are microseconds


def make(rows: list[tuple[str, int, int]], n_items: int = 9) -> Interactions:
    """Interactions from (user, item index, timestamp in seconds) rows in file order."""
    users, items, ts = zip(*rows)
    return Interactions(
        np.asarray(users, dtype=object), np.asarray(items, dtype=np.int64), np.asarray(ts, dtype=np.int64) * US,
        [""] + [str(i) for i in range(1, n_items + 1)],
    )


def test_task_times_are_seconds_aligned_with_each_tasks_train_sequence():
    # File order is not time order, and u1 has a tie (items 5 and 6 at t=30: file order decides).
    data = make([("u1", 3, 50), ("u1", 5, 30), ("u2", 1, 10), ("u1", 6, 30), ("u1", 2, 10), ("u2", 4, 20),
                 ("u2", 7, 40), ("u1", 8, 60)])
    valid, test = leave_one_out_tasks(data)
    assert valid.train["u1"] == [2, 5, 6] and task_times(data, valid)["u1"] == [10, 30, 30]
    assert test.train["u2"] == [1, 4] and task_times(data, test)["u2"] == [10, 20]
    t_valid, t_test = temporal_tasks(data)
    for task in (t_valid, t_test):
        times = task_times(data, task)
        assert all(len(times[u]) == len(seq) for u, seq in task.train.items())
        assert all(times[u] == sorted(times[u]) for u in times)
    bad = type(valid)("bad", 9, {"u1": [5, 2]})
    with pytest.raises(ValueError, match="not a prefix"):
        task_times(data, bad)


def test_blend_settings_rebuild_sasrec_alone_or_blended_with_ease_and_recent_popularity():
    base = {"max_seq_len": 8, "embedding_dim": 8, "n_layers": 1, "n_heads": 1, "epochs": 1}
    assert isinstance(_sequential_model(base), SASRecRecommender)
    two = _sequential_model({**base, "ease_l2": 30.0, "blend_weight": 0.5})
    assert isinstance(two, WeightedBlend) and two.weights == [1.0, 0.5] and not two.uses_times
    three = _sequential_model({
        **base, "ease_l2": 300.0, "ease_input_decay": 0.9, "ease_half_life_days": 60.0, "blend_weight": 0.5,
        "recent_half_life_days": 3.0, "recent_weight": 2.0, "sasrec_weight": 0.3, "slit_weight": 0.25,
    })
    assert isinstance(three, WeightedBlend) and three.weights == [0.3, 0.5, 2.0, 0.25] and three.uses_times
    ease, recent, slit = three.models[1:]
    assert isinstance(slit, SequentialLinear)
    assert isinstance(ease, EASE) and (ease.l2, ease.input_decay, ease.half_life_days) == (300.0, 0.9, 60.0)
    assert isinstance(recent, RecentPopularity) and recent.half_life_days == 3.0


def test_recency_blend_is_tuned_on_valid_cached_and_refit_with_the_same_sasrec(tmp_path):
    from aisys.config import load_config
    from aisys.data.movielens import read_grouplens, read_item_ids
    from aisys.evaluation.runner import evaluate_model
    from aisys.quality.protocol import interactions_from_events
    from tests.unit.test_evaluate_cli import write_grouplens

    folder = write_grouplens(tmp_path / "ml")
    data = interactions_from_events(read_grouplens(folder), read_item_ids(folder))
    cfg = load_config(None, [
        "features.max_seq_len=8", "model.embedding_dim=8", "model.n_layers=1", "train.epochs=2",
        "train.eval_every=1", "train.batch_size=8", f"paths.workspace={tmp_path / 'ws'}",
    ])
    cache = tmp_path / "fits"
    tuned = evaluate_model("sasrec+ease+slit+recentpop", data, "temporal", cfg, seed=0, fit_cache=cache)
    assert {"ease_l2", "ease_input_decay", "recent_half_life_days", "slit_weight", "sasrec_weight"} <= set(
        tuned.settings
    )
    assert tuned.component is not None and tuned.component.model == "sasrec"
    assert len(list(cache.glob("sasrec-*.pt"))) == 2  # the valid fit and the test refit
    again = evaluate_model(
        "sasrec+ease+slit+recentpop", data, "temporal", cfg, seed=0, settings=tuned.settings, fit_cache=cache
    )
    # The refit came from the cache: the same SASRec, so the same scores and the original fit time.
    assert again.test_metrics == tuned.test_metrics and len(list(cache.glob("sasrec-*.pt"))) == 2
    assert again.component.train_seconds >= tuned.component.train_seconds * 0.5
