"""`aisys evaluate` without --model: the default kind trained as `aisys train` does, its lists from the serving
Recommender, nothing registered (a tiny GroupLens-format dataset; real Ray)."""

from __future__ import annotations

import mlflow
import pyarrow.parquet as pq
import pytest
import yaml

import aisys.shipped_evaluation as shipped
from aisys.cli import main
from aisys.data.movielens import read_grouplens, read_item_ids
from aisys.quality.protocol import interactions_from_events, split_tasks
from aisys.serving.recommender import Recommender, ScoreRequest
from aisys.serving.session_store import UserSession
from tests.conftest import small_config_dict
from tests.unit.test_evaluate_cli import write_grouplens

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_evaluate_without_model_exports_the_serving_recommenders_lists(ray_session, tmp_path, monkeypatch, capsys):
    folder = write_grouplens(tmp_path / "ml", n_users=40)
    config = small_config_dict(tmp_path)
    config["features"] = {"max_seq_len": 8}
    config["model"] = {"embedding_dim": 8, "n_layers": 1, "n_heads": 1}
    config["train"] = {"epochs": 2, "batch_size": 16}
    config["data"]["movielens"] = {"path": str(folder)}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    seen = {}
    real = shipped.evaluate_shipped

    def spy(*args, **kwargs):  # the real composition; keep its result to compare against
        seen["result"] = real(*args, **kwargs)
        return seen["result"]

    monkeypatch.setattr(shipped, "evaluate_shipped", spy)
    out = tmp_path / "lists.parquet"
    assert main(["evaluate", "--config", str(tmp_path / "cfg.yaml"), "--export", str(out)]) == 0
    result = seen["result"]
    assert result.bundle.model_kind == "multistage"

    # The export is, row for row, what a serving Recommender over the trained bundle answers each test user
    # at the time of their target event (sessions built here, independently of the composition).
    events = read_grouplens(folder)
    data = interactions_from_events(events, read_item_ids(folder))
    _, test = split_tasks(data, "loo")
    recommender = Recommender(result.bundle)
    order = sorted(range(events.num_rows), key=lambda r: (events["timestamp"][r].value, r))
    rows = [(events["user_id"][r].as_py(), events["item_id"][r].as_py(), events["timestamp"][r].value) for r in order]
    exported = {}
    for row in pq.read_table(out).to_pylist():
        exported.setdefault(row["user_id"], []).append(row["item_id"])
    assert sorted(exported) == sorted(test.users) and len(test.users) == 40
    for user in test.users:
        mine = [r for r in rows if r[0] == user]
        history, (_, _, target_time) = mine[:-1], mine[-1]
        session = UserSession(items=tuple(r[1] for r in history), last_event_time=history[-1][2] / 1e6)
        answer = recommender.recommend_many([ScoreRequest(session, 100, frozenset(session.items),
                                                          target_time / 1e6)])[0]
        assert not answer.fallback
        assert exported[user] == [item.item_id for item in answer.items]

    # Nothing was registered: the workspace's MLflow registry holds no model.
    # Name both URIs: MLflow's registry URI is process-wide, and an earlier test in this process may have set it.
    uri = config["paths"]["mlflow_tracking_uri"]
    assert mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models() == []
    printed = capsys.readouterr().out
    assert "serving Recommender" in printed and "registered nothing" in printed and "NDCG@10" in printed
