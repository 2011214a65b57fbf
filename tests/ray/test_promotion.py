"""The gate on real registered models (MLflow on SQLite): refuse worse and NaN, promote better, roll back.

No Ray is needed: the models are trained in plain torch in the test, registered with the real registry code,
and the holdout comes from a real lake snapshot.
"""

import json
import time

import mlflow
import numpy as np
import pytest
import torch

from aisys.data.lake import Lake
from aisys.data.simulator import simulate_events
from aisys.features.sequences import build_vocabulary, user_histories
from aisys.models.bundle import ModelBundle
from aisys.models.sasrec import MODEL_KIND, SASRec, SASRecConfig, cpu_state_dict
from aisys.quality.protocol import leave_last_one_out
from aisys.registry.champion import HISTORY_TAG, champion_history
from aisys.registry.mlflow_registry import configure_mlflow, get_model_info, log_and_register
from aisys.registry.promotion import promote, rollback
from aisys.training.loop import iterate_batches, seed_everything, train_epoch, training_examples
from tests.e2e.cluster_helpers import commit_events

torch.set_num_threads(1)


def commit_snapshot(cfg, table) -> str:
    """``table`` as one committed snapshot of the config's lake (what `aisys ingest` leaves behind)."""
    return commit_events(Lake.from_config(cfg.paths), table)


def train_bundle(cfg, events, epochs: int) -> ModelBundle:
    """SASRec trained in plain torch on the snapshot's leave-last-one-out train part (0 epochs: untrained)."""
    seed_everything(0)
    vocab = build_vocabulary(events, cfg.features.event_weights)
    split = leave_last_one_out(user_histories(events, vocab.item_index()))
    config = SASRecConfig(n_items=vocab.n_items, max_seq_len=20, embedding_dim=32, n_layers=1, n_heads=2, dropout=0.1)
    model = SASRec(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.005)
    inputs, targets = training_examples(split.train, config.max_seq_len)
    for epoch in range(epochs):
        train_epoch(model, iterate_batches(inputs, targets, 64, seed=epoch), optimizer)
    return ModelBundle(MODEL_KIND, config.to_dict(), vocab.item_ids, vocab.item_popularity, cpu_state_dict(model),
                       vocab.item_categories, max_seq_len=config.max_seq_len)


def register(cfg, bundle, snapshot_id, alias=None) -> str:
    return log_and_register(cfg, bundle, {}, {}, [], snapshot_id, alias=alias).version


def decision_of(outcome) -> dict:
    run = mlflow.MlflowClient().get_run(outcome.run_id)
    local = mlflow.artifacts.download_artifacts(run_id=outcome.run_id, artifact_path="decision.json")
    with open(local) as handle:
        content = json.load(handle)
    return {"tags": run.data.tags, "params": run.data.params, "metrics": run.data.metrics, "json": content}


def test_gate_refuses_worse_and_nan_promotes_better_and_rollback_restores(small_config):
    cfg = small_config
    events = simulate_events(cfg.data.simulator)
    snapshot_id = commit_snapshot(cfg, events)

    weak = train_bundle(cfg, events, epochs=1)
    v1 = register(cfg, weak, snapshot_id, alias="champion")  # as `aisys train` leaves it
    with pytest.raises(LookupError, match="challenger"):
        promote(cfg)  # no challenger yet and no version given
    with pytest.raises(LookupError, match="no version '99'"):
        promote(cfg, version="99")

    # An untrained model is worse: refused, with the primary metric named as the reason.
    v2 = register(cfg, train_bundle(cfg, events, epochs=0), snapshot_id)
    worse = promote(cfg, version=v2)
    assert not worse.promoted and worse.champion_version == v1
    assert worse.holdout_id == f"{snapshot_id}/loo-test"
    assert worse.candidate.holdout_id == worse.champion.holdout_id
    assert any(r.startswith("ndcg@10") and "needs >=" in r for r in worse.decision.reasons), worse.decision.reasons
    logged = decision_of(worse)
    assert logged["tags"]["aisys.decision"] == "refuse"
    assert logged["params"]["candidate_version"] == v2 and logged["params"]["champion_version"] == v1
    assert logged["json"]["reasons"] == worse.decision.reasons
    assert logged["metrics"]["candidate_ndcg_at_10"] < logged["metrics"]["champion_ndcg_at_10"]
    assert get_model_info(cfg, "champion")["version"] == v1

    # NaN weights: refused for that reason, although NaN scores would otherwise rank every target first.
    broken = train_bundle(cfg, events, epochs=1)
    broken.state_dict = {k: v.clone() for k, v in broken.state_dict.items()}
    broken.state_dict["item_emb.weight"][3, 0] = float("nan")
    v3 = register(cfg, broken, snapshot_id)
    nan = promote(cfg, version=v3)
    assert not nan.promoted
    assert [c.name for c in nan.decision.failed] == ["candidate_weights_finite"]
    assert "item_emb.weight" in nan.decision.reasons[0]
    assert decision_of(nan)["tags"]["aisys.decision"] == "refuse"

    # A better-trained model, proposed as challenger (the default candidate): promoted on every check.
    v4 = register(cfg, train_bundle(cfg, events, epochs=8), snapshot_id, alias="challenger")
    better = promote(cfg)
    assert better.candidate_version == v4
    assert better.promoted, better.decision.reasons
    assert better.candidate.metrics["ndcg@10"] > better.champion.metrics["ndcg@10"]
    assert {"user_activity", "target_popularity"} <= set(better.candidate.segments)
    # Per-user ranks on one holdout, so the gate can pair users within a segment; they agree with the metrics.
    n_users = int(better.candidate.metrics["n_users"])
    assert len(better.candidate.user_ranks) == len(better.champion.user_ranks) == n_users
    assert set(better.candidate.user_buckets) == set(better.candidate.segments)
    hits = np.asarray(better.candidate.user_ranks) < 10
    assert hits.mean() == pytest.approx(better.candidate.metrics["hr@10"])
    judged = [c for c in better.decision.checks if c.name.startswith("segment:") and c.candidate is not None]
    assert judged, "segments with enough users are judged"
    assert decision_of(better)["tags"]["aisys.decision"] == "promote"
    assert get_model_info(cfg, "champion")["version"] == v4
    assert champion_history(cfg) == [v1, v4]
    info = mlflow.MlflowClient().get_model_version(cfg.registry.model_name, v4)
    assert "aisys.champion_since" in info.tags

    # Gating the champion against itself is refused, not re-promoted.
    again = promote(cfg)
    assert not again.promoted and "already" in again.decision.reasons[0]

    started = time.perf_counter()
    assert rollback(cfg) == (v4, v1)
    assert time.perf_counter() - started < 5.0
    assert get_model_info(cfg, "champion")["version"] == v1
    assert champion_history(cfg) == [v1]
    with pytest.raises(LookupError, match="no earlier champion"):
        rollback(cfg)


def test_rollback_goes_to_the_last_gated_champion_after_a_manual_change(small_config, tmp_path):
    """A champion alias moved by hand (not recorded) rolls back to the last champion aisys recorded."""
    cfg = small_config
    configure_mlflow(cfg)
    client = mlflow.MlflowClient()
    name = cfg.registry.model_name
    client.create_registered_model(name)
    # Rollback only moves aliases and tags: bare versions (no model files) are enough here.
    versions = [str(client.create_model_version(name, source=tmp_path.as_uri()).version) for _ in range(3)]
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(versions[:2]))
    client.set_registered_model_alias(name, "champion", versions[2])  # by hand: MLflow's own client

    assert rollback(cfg) == (versions[2], versions[1])
    assert get_model_info(cfg, "champion")["version"] == versions[1]
    assert "aisys.rolled_back_at" in client.get_model_version(name, versions[2]).tags
    assert rollback(cfg) == (versions[1], versions[0])
    assert champion_history(cfg) == [versions[0]]
