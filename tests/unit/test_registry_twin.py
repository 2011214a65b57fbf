"""The registry's in-memory twin answers as the MLflow backend does (the same scenario run against both).

The scenario is what the compositions do: register without an alias, register a champion, move the challenger
alias, tag a version and its run, read a run's metrics, load by alias and by version, look up a missing alias.
MLflow runs on the test's own SQLite store (no server, no Ray).
"""

from __future__ import annotations

import pytest
import torch

from aisys.models.bundle import ModelBundle
from aisys.models.sasrec import SASRec, SASRecConfig
from aisys.registry.interface import ModelRegistry
from aisys.registry.memory import InMemoryRegistry

N_ITEMS = 12


def tiny_bundle(seed: int) -> ModelBundle:
    torch.manual_seed(seed)
    config = SASRecConfig(n_items=N_ITEMS, max_seq_len=4, embedding_dim=8, n_layers=1, n_heads=2, dropout=0.0)
    return ModelBundle(
        model_kind="sasrec",
        model_config=config.to_dict(),
        item_ids=[""] + [f"i{i}" for i in range(1, N_ITEMS + 1)],
        item_popularity=[0.0] + [float(N_ITEMS - i) for i in range(1, N_ITEMS + 1)],
        state_dict=SASRec(config).state_dict(),
        item_categories=[None] + ["c"] * N_ITEMS,
        max_seq_len=4,
        lineage={"code_version": f"code-{seed}"},
    )


def run_scenario(registry: ModelRegistry) -> dict:
    """Everything a caller can observe through the interface, as plain data."""
    first = registry.log_and_register(tiny_bundle(1), {"train.lr": 0.01}, {"ndcg@10": 0.25, "hr@10": 0.5},
                                      [{"epoch": 1, "loss": 2.0, "hr@10": 0.4}, {"epoch": 2, "loss": 1.5}],
                                      "snap-1", alias=None)
    second = registry.log_and_register(tiny_bundle(2), {"train.lr": 0.02}, {"ndcg@10": 0.3},
                                       [], "snap-2", alias="champion")
    registry.set_alias("challenger", first.version)
    registry.tag_version(first.version, {"aisys.gate_decision": "refuse", "long": "x" * 6000}, [first.run_id])
    champion, champion_info = registry.load_bundle()  # default: the champion
    by_version, version_info = registry.load_bundle(version=first.version)
    with pytest.raises(LookupError, match="no version of model .* has alias 'nobody'"):
        registry.model_info("nobody")
    keep = ("version", "alias", "aliases", "snapshot_id", "code_version", "model_uri")
    return {
        "versions": (first.version, second.version),
        "uris": (first.uri.split("/")[-1], second.uri.split("/")[-1]),
        "challenger": {k: registry.model_info("challenger")[k] for k in keep},
        "champion_info": {k: champion_info[k] for k in keep},
        "version_info": {k: version_info[k] for k in keep},
        "champion_lineage": (champion.lineage["snapshot_id"], champion.lineage["run_id"] == second.run_id),
        "champion_weights_equal": all(torch.equal(champion.state_dict[k], tiny_bundle(2).state_dict[k])
                                      for k in champion.state_dict),
        "version_items": by_version.item_ids,
        "metrics": registry.run_metrics(first.run_id),
        "history": registry.champion_history(),
    }


def test_the_twin_and_mlflow_answer_the_same(small_config):
    from aisys.registry.mlflow_registry import MlflowRegistry

    twin = run_scenario(InMemoryRegistry.from_config(small_config))
    real = run_scenario(MlflowRegistry(small_config))
    assert twin == real
    # And what they agree on is what a caller expects, not just the same mistake twice.
    assert twin["versions"] == ("1", "2") and twin["uris"] == ("1", "2")
    assert twin["champion_info"]["aliases"] == ["champion"] and twin["champion_info"]["alias"] == "champion"
    assert twin["version_info"]["alias"] is None and twin["version_info"]["snapshot_id"] == "snap-1"
    assert twin["challenger"]["version"] == "1" and twin["challenger"]["code_version"] == "code-1"
    assert twin["champion_lineage"] == ("snap-2", True) and twin["champion_weights_equal"]
    # A run's metrics are each series' latest step (MLflow's rule): the per-epoch loss and hr@10 win.
    assert twin["metrics"] == {"ndcg_at_10": 0.25, "hr_at_10": 0.4, "loss": 1.5}
    assert twin["history"] == ["2"]


def test_the_twin_keeps_its_own_copies_and_refuses_unknown_versions():
    registry = InMemoryRegistry()
    bundle = tiny_bundle(3)
    registered = registry.log_and_register(bundle, {}, {}, [], "snap", alias=None)
    bundle.item_ids[1] = "changed-after-registering"
    loaded, _ = registry.load_bundle(version=registered.version)
    assert loaded.item_ids[1] == "i1"
    loaded.item_ids[1] = "changed-after-loading"
    assert registry.load_bundle(version="1")[0].item_ids[1] == "i1"
    with pytest.raises(LookupError, match="no version 9"):
        registry.set_alias("champion", "9")
    with pytest.raises(LookupError, match="alias 'champion'"):
        registry.load_bundle()


@pytest.mark.parametrize("promote", [True, False])
def test_train_and_register_hands_the_trained_model_to_the_registry_it_is_given(small_config, monkeypatch, promote):
    # The composition (aisys.pipeline), not training, registers: train_model is stubbed (training needs Ray).
    from aisys import pipeline
    from aisys.training import pipeline as training_pipeline
    from aisys.training.pipeline import TrainedModel

    steps: list[str] = []
    trained = TrainedModel(bundle=tiny_bundle(4), metrics={"ndcg@10": 0.2}, baseline_metrics={"ndcg@10": 0.1},
                           history=[{"epoch": 1, "loss": 1.0}], params={"train.lr": 0.01},
                           logged={"test_ndcg@10": 0.2, "baseline_ndcg@10": 0.1})
    monkeypatch.setattr(training_pipeline, "train_model", lambda cfg, events, snapshot_id, on_epoch, on_step: trained)
    registry = InMemoryRegistry.from_config(small_config)

    outcome = pipeline.train_and_register(small_config, None, "snap-9", promote=promote, on_step=steps.append,
                                          registry=registry)

    assert steps == ["register"] and (outcome.model_version, outcome.model_name) == ("1", small_config.registry.model_name)
    assert outcome.metrics == {"ndcg@10": 0.2} and outcome.baseline_metrics == {"ndcg@10": 0.1}
    assert registry.run_metrics(outcome.run_id) == {"test_ndcg_at_10": 0.2, "baseline_ndcg_at_10": 0.1, "loss": 1.0}
    assert outcome.bundle.lineage["snapshot_id"] == "snap-9" and outcome.promotion is None
    assert registry.champion_history() == (["1"] if promote else [])
    if not promote:
        with pytest.raises(LookupError):
            registry.model_info(small_config.registry.champion_alias)


def test_a_retrain_registers_tags_and_reads_the_champion_through_the_registry_it_is_given(small_config, monkeypatch):
    # The loop's retrain against the twin: training and the gate are stubbed (they need Ray and MLflow); what is
    # checked is what the loop writes to the registry: a version without an alias, its lineage, the gate's verdict.
    from types import SimpleNamespace

    from aisys.config import SimulatorConfig
    from aisys.data.lake import Lake
    from aisys.data.simulator import simulate_events
    from aisys.loop import retrain as loop_retrain
    from aisys.registry import promotion
    from aisys.registry.memory import _Run
    from aisys.training import pipeline as training_pipeline
    from aisys.training.pipeline import TrainedModel
    from tests.e2e.cluster_helpers import commit_events

    cfg = small_config
    cfg.monitor.train_window_days = None
    events = simulate_events(SimulatorConfig(n_users=20, n_items=15, n_sessions=60, days=3, seed=1))
    snapshot = commit_events(Lake.from_config(cfg.paths), events)
    registry = InMemoryRegistry.from_config(cfg)
    champion = registry.log_and_register(tiny_bundle(1), {}, {"ndcg@10": 0.3}, [], snapshot,
                                         alias=cfg.registry.champion_alias)
    trained = TrainedModel(bundle=tiny_bundle(2), metrics={"ndcg@10": 0.2}, baseline_metrics={},
                           history=[], params={}, logged={"test_ndcg@10": 0.2})
    monkeypatch.setattr(training_pipeline, "train_model", lambda cfg, events, snapshot_id, on_epoch, on_step: trained)
    monkeypatch.setattr("aisys.runtime.init_ray", lambda cfg: None)
    gated: list[str] = []

    def refuse(cfg, version, snapshot_id):
        gated.append(version)
        registry.runs["gate-run"] = _Run(params={}, metrics={}, history=[])  # the gate's decision run (MLflow's)
        return SimpleNamespace(promoted=False, champion_version=champion.version, run_id="gate-run",
                               decision=SimpleNamespace(reasons=["ndcg@10 0.2 below the champion's 0.3"]))

    monkeypatch.setattr(promotion, "promote", refuse)

    outcome = loop_retrain.retrain(cfg, reason="drift: PSI above 0.2", trigger="drift", monitor=None,
                                   registry=registry)

    assert gated == [outcome.new_version] == ["2"] and not outcome.promoted
    assert outcome.champion_before == champion.version and outcome.train_events == events.num_rows
    assert loop_retrain.champion_version(registry, cfg.registry.champion_alias) == champion.version  # alias stayed
    tags = registry.versions["2"].tags
    assert tags[loop_retrain.PARENT_TAG] == champion.version and tags[loop_retrain.TRIGGER_TAG] == "drift"
    assert tags["aisys.gate_decision"] == "refuse" and tags["aisys.gate_run_id"] == "gate-run"
    assert registry.runs[outcome.train_run_id].tags[loop_retrain.REASON_TAG] == "drift: PSI above 0.2"
    assert loop_retrain.champion_version(InMemoryRegistry.from_config(cfg)) is None  # nothing registered yet


def test_aisys_train_tags_the_gate_verdict_on_the_registry_it_is_given(small_config, monkeypatch):
    # `aisys train`'s composition against the twin (training and the gate stubbed, as above).
    from types import SimpleNamespace

    from aisys import pipeline
    from aisys.config import SimulatorConfig
    from aisys.data.lake import Lake
    from aisys.data.simulator import simulate_events
    from aisys.registry import promotion
    from aisys.training import pipeline as training_pipeline
    from aisys.training.pipeline import TrainedModel
    from tests.e2e.cluster_helpers import commit_events

    cfg = small_config
    events = simulate_events(SimulatorConfig(n_users=20, n_items=15, n_sessions=60, days=3, seed=2))
    snapshot = commit_events(Lake.from_config(cfg.paths), events)
    registry = InMemoryRegistry.from_config(cfg)
    trained = TrainedModel(bundle=tiny_bundle(3), metrics={"ndcg@10": 0.2}, baseline_metrics={},
                           history=[], params={}, logged={"test_ndcg@10": 0.2})
    monkeypatch.setattr(training_pipeline, "train_model", lambda cfg, events, snapshot_id, on_epoch, on_step: trained)
    monkeypatch.setattr("aisys.runtime.init_ray", lambda cfg: None)

    def first_champion(cfg, version, snapshot_id):
        registry.set_alias(cfg.registry.champion_alias, version)  # what the gate does on promote
        return SimpleNamespace(promoted=True, champion_version=None, run_id="gate-1",
                               decision=SimpleNamespace(reasons=["no champion yet; guardrails pass"]))

    monkeypatch.setattr(promotion, "promote", first_champion)
    steps: list[str] = []

    outcome = pipeline.train_from_lake(cfg, on_step=steps.append, registry=registry)

    assert steps == ["register", "gate"] and outcome.promoted and outcome.model_version == "1"
    assert registry.model_info(cfg.registry.champion_alias)["version"] == "1"
    assert registry.versions["1"].tags["aisys.gate_decision"] == "promote"
    assert registry.runs[outcome.run_id].tags["aisys.gate_run_id"] == "gate-1"
    assert registry.versions["1"].bundle.lineage["snapshot_id"] == snapshot
