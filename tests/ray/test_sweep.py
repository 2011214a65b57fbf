"""A tiny real Tune sweep: trials logged as MLflow child runs, the best registered as challenger."""


import mlflow
import pytest

from aisys.data.lake import Lake
from aisys.data.simulator import simulate_events
from aisys.registry.mlflow_registry import get_model_info, load_bundle
from aisys.tuning.sweep import run_sweep
from tests.e2e.cluster_helpers import commit_events

pytestmark = pytest.mark.ray


def commit_snapshot(cfg, table) -> str:
    """``table`` as one committed snapshot of the config's lake (what `aisys ingest` leaves behind)."""
    return commit_events(Lake.from_config(cfg.paths), table)


def test_two_trial_sweep_logs_child_runs_and_registers_the_best_as_challenger(ray_session, small_config):
    cfg = small_config
    cfg.tune.num_samples = 2
    cfg.tune.max_epochs = 2
    cfg.tune.grace_period = 1
    cfg.tune.embedding_dim = [16, 32]
    cfg.tune.n_layers = [1]
    cfg.tune.max_seq_len = [10, 20]
    snapshot_id = commit_snapshot(cfg, simulate_events(cfg.data.simulator))

    outcome = run_sweep(cfg, verbose=0)

    assert len(outcome.trials) == 2
    metric = "best_valid_ndcg@10"
    assert all(0 < t["epochs"] <= 2 for t in outcome.trials)
    best_trial = max(outcome.trials, key=lambda t: t[metric])
    assert outcome.best_config == best_trial["config"]
    assert outcome.best_metrics["valid_ndcg@10"] == pytest.approx(best_trial[metric])
    assert 0 <= outcome.best_metrics["test_ndcg@10"] <= 1

    client = mlflow.MlflowClient()
    parent = client.get_run(outcome.parent_run_id)
    assert parent.data.tags["lake.snapshot_id"] == snapshot_id
    assert parent.data.params["tune.num_samples"] == "2"
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'"
    )
    trial_runs = [r for r in children if r.data.tags.get("aisys.sweep") == "trial"]
    assert sorted(r.data.tags["aisys.trial_id"] for r in trial_runs) == sorted(t["trial_id"] for t in outcome.trials)
    for run in trial_runs:
        trial = next(t for t in outcome.trials if t["run_id"] == run.info.run_id)
        assert run.data.params["embedding_dim"] == str(trial["config"]["embedding_dim"])
        steps = client.get_metric_history(run.info.run_id, "valid_ndcg_at_10")
        assert len(steps) == trial["epochs"]
        assert max(s.value for s in steps) == pytest.approx(trial[metric])

    info = get_model_info(cfg, cfg.online.challenger_alias)
    assert info["version"] == outcome.model_version
    assert "champion" not in info["aliases"]  # the sweep proposes; only the gate promotes
    registration = [r for r in children if r.info.run_id == info["run_id"]]
    assert registration, "the registration run is a child of the sweep"
    bundle, _ = load_bundle(cfg, alias="challenger")
    assert bundle.lineage["sweep_run_id"] == outcome.parent_run_id
    assert bundle.lineage["trial_id"] == best_trial["trial_id"]
    for key, value in outcome.best_config.items():
        if key in bundle.model_config:
            assert bundle.model_config[key] == pytest.approx(value)
