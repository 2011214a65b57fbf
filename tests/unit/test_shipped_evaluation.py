"""The serving-path evaluation's pure parts: sessions at the request time, lists scored by the protocol's metrics."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from aisys.quality.protocol import interactions_from_events, split_tasks
from aisys.quality.ranking import ranking_metrics
from aisys.schemas import EVENT_SCHEMA
from aisys.serving.recommender import Recommendation, ScoredItem
from aisys.shipped_evaluation import (
    export_lists,
    list_metrics,
    request_sessions,
    served_lists,
    training_events,
)

US = 1_000_000  # the event schema's timestamps are microseconds


def events(rows: list[tuple[str, str, int]]) -> pa.Table:
    """(user, item, seconds) rows as an event table."""
    n = len(rows)
    return pa.table({
        "event_id": [f"e{i}" for i in range(n)], "user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
        "event_type": ["view"] * n, "value": [1.0] * n,
        "timestamp": pa.array([r[2] * US for r in rows], pa.timestamp("us", tz="UTC")),
        "category": [None] * n, "price": [None] * n,
    }, schema=EVENT_SCHEMA)


CATALOGUE = [str(i) for i in range(1, 7)]
ROWS = [("a", "1", 10), ("a", "2", 20), ("a", "3", 30), ("a", "4", 4000),
        ("b", "2", 15), ("b", "5", 25), ("b", "6", 35)]


def test_sessions_hold_the_known_history_and_ask_at_the_target_time():
    data = interactions_from_events(events(ROWS), CATALOGUE)
    _, test = split_tasks(data, "loo")
    sessions, now = request_sessions(data, test)
    by_user = dict(zip(test.users, zip(sessions, now)))
    session, t = by_user["a"]
    assert session.items == ("1", "2", "3") and session.last_event_time == 30.0 and t == 4000.0
    session, t = by_user["b"]
    assert session.items == ("2", "5") and session.last_event_time == 25.0 and t == 35.0


def test_temporal_training_events_stop_at_the_cut():
    table = events(ROWS)
    data = interactions_from_events(table, CATALOGUE)
    kept = training_events(table, data, "temporal")
    cut_rows = int(np.ceil(0.8 * len(ROWS)))
    assert kept.num_rows == cut_rows  # no ties at the cut here
    assert training_events(table, data, "loo") is table
    with pytest.raises(ValueError, match="split"):
        training_events(table, data, "random")


def test_list_metrics_equal_the_full_score_metrics_of_the_same_ranking():
    data = interactions_from_events(events(ROWS), CATALOGUE)
    _, test = split_tasks(data, "loo")
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(len(test), data.n_items + 1))
    scores[:, 0] = -np.inf
    histories = test.histories()
    lists = []
    for u, history in enumerate(histories):
        order = [int(i) for i in np.argsort(-scores[u]) if i and i not in history]
        lists.append([data.item_ids[i] for i in order])
    metrics, _ = list_metrics(lists, data, test, k=2)
    expected = ranking_metrics(scores, test.targets, histories, k=2)
    for key in ("hr@2", "ndcg@2", "mrr@2", "coverage@2"):
        assert metrics[key] == pytest.approx(expected[key])
    # A list that leaves the target out is a miss, whatever else it holds.
    empty, _ = list_metrics([[] for _ in lists], data, test, k=2)
    assert empty["hr@2"] == 0.0 and empty["ndcg@2"] == 0.0


class EchoRecommender:
    """Lists the catalogue in reverse id order minus the exclusions, and records what it was asked."""

    def __init__(self):
        self.requests = []

    def recommend_many(self, requests):
        self.requests += list(requests)
        return [Recommendation([ScoredItem(i, 0.0) for i in reversed(CATALOGUE) if i not in r.exclude][: r.k])
                for r in requests]


def test_served_lists_are_what_the_recommender_answered_excluding_the_history():
    data = interactions_from_events(events(ROWS), CATALOGUE)
    _, test = split_tasks(data, "loo")
    fake = EchoRecommender()
    lists = served_lists(fake, data, test, depth=3, batch=1)
    assert len(fake.requests) == 2 and all(r.k == 3 for r in fake.requests)
    assert [r.now for r in fake.requests] == [4000.0, 35.0]
    assert fake.requests[0].exclude == frozenset({"1", "2", "3"})
    assert lists.item_ids == [["6", "5", "4"], ["6", "4", "3"]]
    # a's target 4 is third (NDCG 1/log2(4) = 0.5); b's target 6 is first (1).
    assert lists.metrics["ndcg@10"] == pytest.approx(0.75)
    table = export_lists(lists)
    assert table.column_names == ["user_id", "rank", "item_id"]
    assert table.column("rank").to_pylist() == [1, 2, 3, 1, 2, 3]


def tiny_multistage_bundle():
    """A random multi-stage bundle over items 1..6 (ids "1".."6"): SASRec, EASE and recent popularity, two gap
    buckets (recent popularity weighted only for users who came back after an hour)."""
    import torch

    from aisys.models.blend_tuning import BlendChoice
    from aisys.models.bundle import MULTISTAGE_FEATURE_SET_VERSION, ModelBundle
    from aisys.models.sasrec import SASRec, SASRecConfig, cpu_state_dict
    from aisys.models.stages import StageSpec

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    config = SASRecConfig(n_items=6, max_seq_len=4, embedding_dim=8, n_layers=1, n_heads=1)
    specs = [StageSpec("ease", "ease", {"l2": 10.0, "input_decay": 1.0, "half_life_days": None}),
             StageSpec("recentpop_1d", "recentpop", {"half_life_days": 1.0})]
    arrays = {"ease": rng.random((7, 7), dtype=np.float32), "recentpop_1d": rng.random(7, np.float32)}
    blend = BlendChoice(["sasrec", "ease", "recentpop_1d"], [[1.0, 0.5, 0.0], [0.2, 0.5, 2.0]], [3_600.0])
    return ModelBundle(
        "multistage", {"sasrec": config.to_dict(), "stages": [s.to_dict() for s in specs], "blend": blend.to_dict()},
        [""] + CATALOGUE, [0.0] + [1.0] * 6, cpu_state_dict(SASRec(config)), max_seq_len=4,
        feature_set_version=MULTISTAGE_FEATURE_SET_VERSION, arrays=arrays,
    )


def test_stage_ablation_drops_each_weighted_stage_and_the_came_back_bucket():
    from aisys.config import load_config
    from aisys.serving.recommender import Recommender
    from aisys.shipped_evaluation import stage_ablation

    data = interactions_from_events(events(ROWS), CATALOGUE)
    _, test = split_tasks(data, "loo")
    bundle = tiny_multistage_bundle()
    cfg = load_config(None, [])
    ablation = stage_ablation(cfg, bundle, data, test)
    assert set(ablation) == {"without sasrec", "without ease", "without recentpop_1d", "without gap_bucket"}
    # Dropping a stage is the same Recommender over the bundle with that stage's weights at 0 in every bucket.
    full = served_lists(Recommender(bundle), data, test)
    assert ablation["without ease"]["n_users"] == full.metrics["n_users"] == 2
    zeroed = bundle.model_config["blend"] | {"bucket_weights": [[1.0, 0.0, 0.0], [0.2, 0.0, 2.0]]}
    import dataclasses

    by_hand = dataclasses.replace(bundle, model_config=bundle.model_config | {"blend": zeroed})
    assert ablation["without ease"] == served_lists(Recommender(by_hand), data, test).metrics
    # A SASRec-only bundle has no stages to drop.
    assert stage_ablation(cfg, dataclasses.replace(bundle, model_kind="sasrec"), data, test) == {}
