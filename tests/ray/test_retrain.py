"""Retraining behind the gate on real parts: a lake with a drifted snapshot ingested by Ray Data, Ray Train,
MLflow on SQLite, the gate, the alias, and the monitor's reference handed over."""

from datetime import datetime, timedelta, timezone

import mlflow
import pyarrow as pa
import pytest
import torch

from aisys import pipeline
from aisys.config import SimulatorConfig
from aisys.data.lake import Lake
from aisys.data.simulator import drift_midpoint, simulate_events
from aisys.features.sequences import build_vocabulary, user_histories
from aisys.loop.decider import RetrainDecider
from aisys.loop.controller import (
    OUTCOME_MARKER,
    RetrainController,
    claim_collected_files,
    parse_outcome,
)
from aisys.loop.retrain import (
    PARENT_TAG,
    REASON_TAG,
    TRIGGER_TAG,
    RetrainOutcome,
    describe_request,
    retrain,
    window_events,
)
from aisys.models.bundle import ModelBundle
from aisys.models.sasrec import MODEL_KIND, SASRec, SASRecConfig, cpu_state_dict
from aisys.monitoring.audit import InMemoryAuditLog
from aisys.monitoring.monitor_actor import DriftMonitor
from aisys.monitoring.profile import build_profile
from aisys.quality.protocol import leave_last_one_out
from aisys.registry.mlflow_registry import get_model_info, log_and_register
from aisys.schemas import EVENT_SCHEMA
from aisys.training.loop import iterate_batches, seed_everything, train_epoch, training_examples
from tests.e2e.cluster_helpers import commit_events

pytestmark = pytest.mark.ray

torch.set_num_threads(1)
SIM = dict(n_users=150, n_items=80, n_sessions=1200, days=10, seed=5, taste_shift=1.0, new_items=20)


# --------------------------------------------------------------------------- pure parts (no Ray)


def stamped(days: list[float]) -> pa.Table:
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    n = len(days)
    return pa.Table.from_pydict({
        "event_id": [f"e{i}" for i in range(n)], "user_id": ["u"] * n, "item_id": [f"i{i}" for i in range(n)],
        "event_type": ["view"] * n, "value": [1.0] * n, "timestamp": [t0 + timedelta(days=d) for d in days],
        "category": ["c"] * n, "price": [1.0] * n,
    }, schema=EVENT_SCHEMA)


def test_window_keeps_the_last_days_before_the_newest_event():
    table = stamped([0.0, 2.5, 6.9, 7.1, 9.0, 10.0])
    assert window_events(table, None).num_rows == 6
    assert window_events(table, 3).column("item_id").to_pylist() == ["i3", "i4", "i5"]  # after day 7.0
    assert window_events(table, 100).num_rows == 6
    assert window_events(stamped([]), 3).num_rows == 0
    with pytest.raises(ValueError, match="at least 1 day"):
        window_events(table, 0)


def test_request_description_and_outcome_parsing():
    assert describe_request(None) == ("manual retrain", "manual")
    request = {"triggers": ["drift", "new_data"], "reasons": ["drift: PSI 0.9", "new data: 60000"], "at": "t"}
    assert describe_request(request) == ("drift: PSI 0.9; new data: 60000", "drift,new_data")
    outcome = RetrainOutcome("s1", "4", "3", True, ["ok"], "r1", "g1", 100, 7, "why", "drift")
    logs = f"noise\n(pid=1) {OUTCOME_MARKER}{__import__('json').dumps(outcome.to_dict())}\nmore noise\n"
    parsed = parse_outcome(logs)
    assert parsed == outcome and parsed.champion_after == "4"
    with pytest.raises(ValueError, match="AISYS_RETRAIN_OUTCOME"):
        parse_outcome("job crashed\n")


def test_claiming_collector_files_moves_them_once(tmp_path):
    folder = tmp_path / "collector"
    folder.mkdir()
    (folder / "events-20261129.jsonl").write_text('{"a": 1}\n')
    (folder / "notes.txt").write_text("not an event file")
    first = claim_collected_files(folder, token="t1")
    assert [p.name for p in first] == ["events-20261129.t1.jsonl"]
    assert not (folder / "events-20261129.jsonl").exists() and (folder / "notes.txt").exists()
    # The collector's next append starts a fresh file; unfinished claims come back with it.
    (folder / "events-20261129.jsonl").write_text('{"a": 2}\n')
    again = claim_collected_files(folder, token="t2")
    assert [p.name for p in again] == ["events-20261129.t1.jsonl", "events-20261129.t2.jsonl"]
    assert claim_collected_files(tmp_path / "missing") == []


# --------------------------------------------------------------------------- helpers


def commit(cfg, table: pa.Table) -> str:
    """``table`` as one committed snapshot of the config's lake (what `aisys ingest` leaves behind)."""
    return commit_events(Lake.from_config(cfg.paths), table)


def register_weak_champion(cfg, events: pa.Table, snapshot_id: str) -> str:
    """A deliberately weak champion: one epoch of plain torch on the pre-shift data."""
    seed_everything(0)
    vocab = build_vocabulary(events, cfg.features.event_weights)
    split = leave_last_one_out(user_histories(events, vocab.item_index()))
    config = SASRecConfig(n_items=vocab.n_items, max_seq_len=cfg.features.max_seq_len, embedding_dim=32,
                          n_layers=1, n_heads=2, dropout=0.2)
    model = SASRec(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    inputs, targets = training_examples(split.train, config.max_seq_len)
    train_epoch(model, iterate_batches(inputs, targets, 64, seed=0), optimizer)
    bundle = ModelBundle(MODEL_KIND, config.to_dict(), vocab.item_ids, vocab.item_popularity, cpu_state_dict(model),
                         vocab.item_categories, max_seq_len=config.max_seq_len)
    return log_and_register(cfg, bundle, {}, {}, [], snapshot_id, alias="champion").version


def drifted_lake(cfg, tmp_path):
    """Snapshot 1: the pre-shift half. Snapshot 2: the post-shift half (taste shift + new items) ingested
    through the real raw-file ingest on top of it."""
    sim = SimulatorConfig(**SIM)
    events = simulate_events(sim)
    mid = drift_midpoint(sim)
    ts = events.column("timestamp").to_pylist()
    before = events.filter(pa.array([t < mid for t in ts]))
    after = events.filter(pa.array([t >= mid for t in ts]))
    first = commit(cfg, before)
    raw = pipeline.generate_raw_events(cfg, out=tmp_path / "after.jsonl", table=after)
    second = pipeline.ingest(cfg, [str(raw.path)], source="drifted")
    assert second.parent_id == first and second.counts["written"] == after.num_rows
    return before, after, first, second.snapshot_id


def version_tags(cfg, version: str) -> dict:
    return mlflow.MlflowClient().get_model_version(cfg.registry.model_name, version).tags


# --------------------------------------------------------------------------- the retrain on real parts


@pytest.mark.slow  # two Ray Train runs and a Ray Data ingest
def test_retrain_promotes_a_better_candidate_then_the_gate_refuses_with_a_reason(ray_session, small_config, tmp_path):
    cfg = small_config
    cfg.train.epochs = 6
    cfg.train.lr = 5e-3
    cfg.monitor.train_window_days = 7
    before, after, first, snapshot = drifted_lake(cfg, tmp_path)
    v1 = register_weak_champion(cfg, before, first)
    monitor = DriftMonitor(cfg, build_profile(before.to_pandas(), snapshot_id=first, model_version=v1),
                           link_reports_to_mlflow=False)

    request = {"triggers": ["drift"], "reasons": ["drift: PSI above 0.2 for 3 consecutive checks (user_taste 1.8)"]}
    reason, trigger = describe_request(request)
    outcome = retrain(cfg, reason=reason, trigger=trigger, monitor=monitor)

    # A new version trained on the drifted snapshot's last 7 days, gated against v1, promoted.
    assert outcome.snapshot_id == snapshot and outcome.champion_before == v1
    assert outcome.new_version != v1
    total = before.num_rows + after.num_rows
    assert 0 < outcome.train_events < total  # the window cut the oldest days
    assert outcome.promoted, outcome.reasons
    assert get_model_info(cfg, "champion")["version"] == outcome.new_version

    # MLflow: lineage on the version and the training run; the gate's decision run names both versions.
    tags = version_tags(cfg, outcome.new_version)
    assert tags[REASON_TAG] == reason and tags[TRIGGER_TAG] == "drift" and tags[PARENT_TAG] == v1
    assert tags["lake.snapshot_id"] == snapshot and tags["aisys.gate_decision"] == "promote"
    assert tags["aisys.train_events"] == str(outcome.train_events)
    client = mlflow.MlflowClient()
    train_run = client.get_run(outcome.train_run_id)
    assert train_run.data.tags[REASON_TAG] == reason and train_run.data.tags[PARENT_TAG] == v1
    assert train_run.data.params["data.n_events"] == str(outcome.train_events)
    gate_run = client.get_run(outcome.gate_run_id)
    assert gate_run.data.tags["aisys.decision"] == "promote" and gate_run.data.tags[TRIGGER_TAG] == "drift"
    assert gate_run.data.params["candidate_version"] == outcome.new_version
    assert gate_run.data.params["champion_version"] == v1
    assert gate_run.data.params["holdout_id"] == f"{snapshot}/loo-test"

    # The monitor now compares against the new model's training window, and the profile is in the lake.
    assert outcome.reference_updated
    assert monitor.model_version == outcome.new_version and monitor.profile.snapshot_id == snapshot
    assert monitor.profile.n_events == outcome.train_events
    assert outcome.profile_path and Lake(cfg.paths.lake_uri).fs.get_file_info(outcome.profile_path).size > 0

    # The same loop, through the controller, with a gate nothing can pass: refused, with the reason; the
    # alias and the monitor's reference stay; the refusal is logged and recorded.
    v2 = outcome.new_version
    cfg.gate.min_improvement = 100.0  # the candidate would need +10,000% over the champion
    cfg.train.epochs = 1
    controller = RetrainController(cfg, submit="inline", monitor=monitor, ingest=False,
                                   decider=RetrainDecider(cfg.monitor, InMemoryAuditLog()))
    controller.request_retrain("by hand, to see a refusal")
    records = controller.records
    assert len(records) == 1 and records[0].error is None, records[0].error
    refused = records[0].outcome
    assert refused["promoted"] is False and refused["champion_before"] == v2 and refused["trigger"] == "manual"
    assert any(r.startswith("ndcg@10") for r in refused["reasons"]), refused["reasons"]
    assert get_model_info(cfg, "champion")["version"] == v2
    assert monitor.model_version == v2 and len(controller.decider.retrain_times) == 1  # the manual retrain counted
    assert controller.decider.audit_log()["triggers"].tolist()[-1].tolist() == ["manual"]  # and audited
    assert client.get_run(refused["gate_run_id"]).data.tags["aisys.decision"] == "refuse"
    assert version_tags(cfg, refused["new_version"])["aisys.gate_decision"] == "refuse"
    history = controller.history_path.read_text().splitlines()
    assert len(history) == 1 and '"promoted": false' in history[0]
