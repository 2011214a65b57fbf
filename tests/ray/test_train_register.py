"""Train on Ray Train (and the multi-stage generators on Ray tasks), register in MLflow (SQLite), load back by alias,
serve the loaded bundle."""

from datetime import datetime, timedelta, timezone

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from aisys.models.multistage import build_scorer
from aisys.pipeline import train_and_register
from aisys.registry.mlflow_registry import get_model_info, load_bundle, set_alias
from aisys.schemas import EVENT_SCHEMA

pytestmark = pytest.mark.ray

N_ITEMS = 30


def cyclic_events(n_users: int = 100, length: int = 14, seed: int = 0) -> pa.Table:
    """Each user walks the catalogue in order from a random start: a pure sequential pattern.

    Item popularity is nearly flat, so only a sequence model can predict the next item.
    """
    rng = np.random.default_rng(seed)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = {name: [] for name in EVENT_SCHEMA.names}
    for u in range(n_users):
        start = int(rng.integers(0, N_ITEMS))
        for t in range(length):
            rows["event_id"].append(f"e{u}-{t}")
            rows["user_id"].append(f"user{u}")
            rows["item_id"].append(f"item{(start + t) % N_ITEMS:02d}")
            rows["event_type"].append("view")
            rows["value"].append(1.0)
            rows["timestamp"].append(t0 + timedelta(minutes=u + 7 * t))
            rows["category"].append("c")
            rows["price"].append(1.0)
    return pa.Table.from_pydict(rows, schema=EVENT_SCHEMA)


@pytest.mark.slow
def test_train_register_load_by_alias(ray_session, small_config):
    cfg = small_config
    cfg.train.epochs = 6
    cfg.train.lr = 0.01
    cfg.model.dropout = 0.0
    cfg.model.stages.refit_sasrec = True  # what ships: the shipped SASRec is refit on train + valid

    steps: list[str] = []
    outcome = train_and_register(cfg, cyclic_events(), snapshot_id="snap-001",  # the default kind: multistage
                                 on_step=steps.append)
    # A progress display hears of every step after the epochs: the choice on valid and the refit included.
    assert steps == ["train", "choose", "refit", "evaluate", "register"], steps

    # A real sequential pattern: the model must clearly beat popularity.
    assert outcome.metrics["hr@10"] > 0.8
    assert outcome.metrics["hr@10"] > outcome.baseline_metrics["hr@10"] + 0.4
    assert len(outcome.history) == 6
    assert outcome.history[-1]["loss"] < outcome.history[0]["loss"]
    assert outcome.bundle.lineage["snapshot_id"] == "snap-001"
    assert outcome.bundle.lineage["run_id"] == outcome.run_id

    client = mlflow.MlflowClient()
    run = client.get_run(outcome.run_id)
    assert run.data.tags["lake.snapshot_id"] == "snap-001"
    assert run.data.tags["code_version"]
    assert run.data.params["train.epochs"] == "6"
    assert run.data.metrics["test_hr_at_10"] == pytest.approx(outcome.metrics["hr@10"])
    assert "baseline_ndcg_at_10" in run.data.metrics
    assert len(client.get_metric_history(outcome.run_id, "loss")) == 6
    # What each generator added on valid is logged, and the blend's columns are its params.
    blend = outcome.bundle.model_config["blend"]
    assert outcome.bundle.model_kind == "multistage" and outcome.bundle.feature_set_version == "multistage-v1"
    # Every generator was fit (as Ray tasks beside Ray Train) and weighed on valid, whatever the blend kept.
    assert blend["stages"] == ["sasrec", "ease", "slit", "recentpop_1d", "recentpop_3d"]
    assert {f"valid_gain_{name}" for name in blend["stages"]} <= set(run.data.metrics)
    assert run.data.params["blend.stages"].split(",")[0] == "sasrec"
    # Live popularity: the bundle says when its recent-popularity counts stop (the newest event but the test items).
    second_newest = max(datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=u + 7 * 12)
                        for u in range(100))
    assert outcome.bundle.model_config["popularity_as_of"] == second_newest.timestamp()
    artifacts = {a.path for a in client.list_artifacts(outcome.run_id)}
    assert "training_curve.png" in artifacts

    bundle, info = load_bundle(cfg, alias="champion")
    assert info["version"] == outcome.model_version
    assert info["run_id"] == outcome.run_id
    assert info["snapshot_id"] == "snap-001"
    assert bundle.item_ids == outcome.bundle.item_ids
    # The registered folder carries every stage the blend uses: SASRec's weights and the generators' arrays.
    assert set(bundle.arrays) == set(outcome.bundle.arrays) and bundle.model_config == outcome.bundle.model_config

    trained, loaded = build_scorer(outcome.bundle), build_scorer(bundle)
    histories, gaps = [[1, 2, 3], [7]], np.array([60.0, 30 * 86_400.0])
    assert np.array_equal(trained.score_sessions(histories, gaps), loaded.score_sessions(histories, gaps))

    # The serving Recommender serves the loaded bundle: past the seen items, the next item of the walk comes first.
    from aisys.serving.recommender import Recommender, ScoreRequest
    from aisys.serving.session_store import UserSession

    seen = ("item03", "item04", "item05")
    served = Recommender(bundle).recommend_many(
        [ScoreRequest(UserSession(items=seen, last_event_time=0.0), 5, frozenset(seen), now=60.0)]
    )[0]
    assert not served.fallback and served.items[0].item_id == "item06"

    # The logged model also loads as a generic pyfunc and recommends what the model ranks first.
    pyfunc = mlflow.pyfunc.load_model(f"models:/{outcome.model_name}@champion")
    history = ["item03", "item04", "item05"]
    out = pyfunc.predict(pd.DataFrame({"history": [history]}), params={"k": 5})
    assert len(out["item_ids"][0]) == 5 and not set(out["item_ids"][0]) & set(history)
    index = bundle.item_index()
    scores = loaded.score_sessions([[index[h] for h in history]], np.array([np.nan]))[0]
    scores[[index[h] for h in history]] = -np.inf
    assert out["item_ids"][0][0] == bundle.item_ids[int(scores.argmax())]

    set_alias(cfg, "challenger", outcome.model_version)
    assert get_model_info(cfg, "challenger")["version"] == outcome.model_version
    with pytest.raises(LookupError, match="no-such-alias"):
        get_model_info(cfg, "no-such-alias")

