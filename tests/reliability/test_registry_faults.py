"""Concurrent promotions on one registry (MLflow on SQLite): the aliases and the champion history stay consistent.

Consistency, as asserted by :func:`assert_linear_history`:

- every ``promote`` call returns a decision (no exception escapes, in threads or in processes);
- every promotion names the champion it replaced, no two promotions replaced the same champion (no lost update),
  and those edges form ONE chain from the first champion: a linear history;
- the registered model's ``aisys.champion_history`` tag (what ``rollback`` walks) is exactly that chain;
- ``champion`` is held by exactly one version, the chain's end; the decision runs logged in MLflow tell the same
  story (one ``promote`` run per edge, one run per call);
- ``rollback`` afterwards goes back to the version the winner replaced, in under 5 s.

Before the lock in :mod:`aisys.registry.promotion`, concurrent calls all gated against the same champion and all
moved the alias: several promotions replaced the same version and history entries were lost.

NaN weights and a model worse than the champion are also refused here, with their reasons, while other
promotions race (the single-call case is ``tests/ray/test_promotion.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from aisys.config import AppConfig, config_from_dict
from aisys.data.lake import Lake
from aisys.data.simulator import simulate_events
from aisys.features.sequences import build_vocabulary, user_histories
from aisys.models.bundle import ModelBundle
from aisys.models.sasrec import MODEL_KIND, SASRec, SASRecConfig, cpu_state_dict
from aisys.quality.protocol import leave_last_one_out
from aisys.registry.champion import champion_history
from aisys.registry.mlflow_registry import configure_mlflow, get_model_info, log_and_register
from aisys.registry.promotion import DECISION_TAG, promote, rollback
from aisys.training.loop import iterate_batches, seed_everything, train_epoch, training_examples
from tests.conftest import small_config_dict
from tests.e2e.cluster_helpers import commit_events
from tests.reliability.conftest import report_figure

pytestmark = pytest.mark.reliability

N_GOOD = 6  # candidates that each beat the first champion
N_PROCESSES = 4  # promoting processes (each pays an interpreter and imports: fewer than the threads)
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Decision:
    """What one promote call returned (from an outcome in this process, or a child's JSON line)."""

    candidate: str
    champion: str | None
    promoted: bool
    reasons: list[str]
    failed: list[str]
    champion_changed: bool

    @classmethod
    def of(cls, outcome) -> "Decision":
        return cls(outcome.candidate_version, outcome.champion_version, outcome.promoted, outcome.decision.reasons,
                   [c.name for c in outcome.decision.failed], outcome.champion_changed)


@dataclass
class Bundles:
    first_champion: ModelBundle
    good: list[ModelBundle]  # each trained longer than the last
    worse: ModelBundle  # untrained
    nan: ModelBundle  # trained, one NaN weight


# small_config's data and features (its paths are per test; these fixtures write nothing).
MODULE_CFG = config_from_dict(small_config_dict(Path("/nonexistent")), "tests")


@pytest.fixture(scope="module")
def events():
    return simulate_events(MODULE_CFG.data.simulator)


@pytest.fixture(scope="module")
def bundles(events) -> Bundles:
    """One plain-torch training run, its weights kept after every epoch (1 = the first champion)."""
    torch.set_num_threads(1)
    seed_everything(0)
    vocab = build_vocabulary(events, MODULE_CFG.features.event_weights)
    split = leave_last_one_out(user_histories(events, vocab.item_index()))
    config = SASRecConfig(n_items=vocab.n_items, max_seq_len=20, embedding_dim=32, n_layers=1, n_heads=2, dropout=0.1)
    model = SASRec(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.005)
    inputs, targets = training_examples(split.train, config.max_seq_len)

    def bundle() -> ModelBundle:
        return ModelBundle(MODEL_KIND, config.to_dict(), vocab.item_ids, vocab.item_popularity,
                           cpu_state_dict(model), vocab.item_categories, max_seq_len=config.max_seq_len)

    snapshots = [bundle()]
    for epoch in range(1 + N_GOOD):
        train_epoch(model, iterate_batches(inputs, targets, 64, seed=epoch), optimizer)
        snapshots.append(bundle())
    nan = bundle()
    nan.state_dict = {k: v.clone() for k, v in nan.state_dict.items()}
    nan.state_dict["item_emb.weight"][3, 0] = float("nan")
    return Bundles(first_champion=snapshots[1], good=snapshots[2:], worse=snapshots[0], nan=nan)


def setup_registry(cfg: AppConfig, events, models: list[ModelBundle], champion: ModelBundle) -> tuple[str, list[str]]:
    """A lake snapshot, ``champion`` registered as champion and ``models`` registered bare; returns the versions."""
    snapshot_id = commit_events(Lake.from_config(cfg.paths), events)
    first = log_and_register(cfg, champion, {}, {}, [], snapshot_id, alias="champion").version
    versions = [log_and_register(cfg, m, {}, {}, [], snapshot_id, alias=None).version for m in models]
    return first, versions


def assert_linear_history(cfg: AppConfig, first: str, decisions: list[Decision], calls: int) -> list[str]:
    """Assert the consistency described in the module docstring; return the chain of champions."""
    assert len(decisions) == calls, f"{calls - len(decisions)} promote call(s) returned no decision"
    assert all(d.reasons for d in decisions), "every decision states its reasons"
    promoted = [d for d in decisions if d.promoted]
    replaced = [d.champion for d in promoted]
    assert len(set(replaced)) == len(replaced), f"several promotions replaced the same champion: {replaced}"
    edges = {d.champion: d.candidate for d in promoted}
    chain = [first]
    while chain[-1] in edges:
        chain.append(edges[chain[-1]])
    assert len(chain) == len(promoted) + 1, f"promotions off the one history: chain {chain}, edges {edges}"
    assert champion_history(cfg) == chain

    name = cfg.registry.model_name
    client = mlflow.MlflowClient()
    assert get_model_info(cfg, "champion")["version"] == chain[-1]
    # search_model_versions leaves `aliases` empty: read each version.
    every = [str(mv.version) for mv in client.search_model_versions(f"name='{name}'")]
    holders = [v for v in every if "champion" in client.get_model_version(name, v).aliases]
    assert holders == [chain[-1]], f"versions holding 'champion': {holders}"

    runs = client.search_runs([configure_mlflow(cfg)], "tags.`aisys.kind` = 'gate'", max_results=1000)
    assert len(runs) == calls, "one logged decision per call"
    logged = sorted((r.data.params["champion_version"], r.data.params["candidate_version"])
                    for r in runs if r.data.tags[DECISION_TAG] == "promote")
    assert logged == sorted(edges.items())
    return chain


def timed_rollback(cfg: AppConfig) -> tuple[tuple[str, str], float]:
    started = time.perf_counter()
    result = rollback(cfg)
    return result, time.perf_counter() - started


def test_concurrent_promotions_in_threads_keep_one_linear_history(small_config, events, bundles):
    cfg = small_config
    models = [*bundles.good, bundles.worse, bundles.nan]
    first, versions = setup_registry(cfg, events, models, bundles.first_champion)
    good, worse, nan = versions[:N_GOOD], versions[N_GOOD], versions[N_GOOD + 1]

    decisions: dict[str, Decision] = {}
    errors: dict[str, BaseException] = {}
    barrier = threading.Barrier(len(versions))

    def run(version: str) -> None:
        barrier.wait()
        try:
            decisions[version] = Decision.of(promote(cfg, version=version))
        except BaseException as err:  # noqa: BLE001 - the test reports any escape
            errors[version] = err

    threads = [threading.Thread(target=run, args=(v,)) for v in versions]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    wall = time.perf_counter() - started
    assert not errors, errors

    chain = assert_linear_history(cfg, first, list(decisions.values()), len(versions))
    assert set(chain[1:]) <= set(good)
    assert not decisions[worse].promoted and not decisions[nan].promoted
    assert decisions[nan].failed == ["candidate_weights_finite"]
    assert "item_emb.weight" in decisions[nan].reasons[0]
    assert "beats_champion:ndcg@10" in decisions[worse].failed
    assert any(r.startswith("ndcg@10") and "needs >=" in r for r in decisions[worse].reasons)

    (from_version, to_version), rollback_s = timed_rollback(cfg)
    assert (from_version, to_version) == (chain[-1], chain[-2]) == (chain[-1], decisions[chain[-1]].champion)
    assert get_model_info(cfg, "champion")["version"] == chain[-2]
    assert rollback_s < 5.0

    regated = sum(d.champion_changed for d in decisions.values())
    report_figure(
        f"{len(versions)} concurrent promote() calls in threads ({N_GOOD} candidates that each beat the champion, "
        "1 untrained, 1 with a NaN weight), one MLflow SQLite registry",
        f"all {len(versions)} returned a decision in {wall:.1f}s; {len(chain) - 1} promoted in one linear history "
        f"v{' -> v'.join(chain)}, {regated} re-gated against a champion that moved meanwhile; 1 'champion' alias; "
        f"rollback v{from_version} -> v{to_version} in {rollback_s:.2f}s",
        "0 lost updates (history = chain of promote decisions)",
    )
    report_figure(
        "NaN weights / an untrained (worse) model promoted while others race",
        f"refused: NaN '{decisions[nan].reasons[0][:80]}'; worse: "
        f"'{next(r for r in decisions[worse].reasons if r.startswith('ndcg@10'))[:80]}'",
        "0 bad models promoted",
    )


# A promoting process: it warms up (imports, MLflow store) first, so that all of them promote at the same moment.
CHILD = """
import json, sys, time
from pathlib import Path
import torch
from aisys.config import config_from_dict
from aisys.data.lake import Lake
from aisys.models.sasrec import build_model
from aisys.registry.mlflow_registry import configure_mlflow, load_bundle
from aisys.registry.promotion import promote

torch.set_num_threads(1)
cfg_path, version, ready, go = sys.argv[1:5]
cfg = config_from_dict(json.loads(Path(cfg_path).read_text()), cfg_path)
configure_mlflow(cfg)
Path(ready).touch()
deadline = time.monotonic() + 120
while not Path(go).exists() and time.monotonic() < deadline:
    time.sleep(0.01)
out = promote(cfg, version=version)
print("DECISION " + json.dumps({
    "candidate": out.candidate_version, "champion": out.champion_version, "promoted": out.promoted,
    "reasons": out.decision.reasons, "failed": [c.name for c in out.decision.failed],
    "champion_changed": out.champion_changed,
}), flush=True)
"""


def test_concurrent_promotions_in_processes_keep_one_linear_history_and_the_cli_rolls_back(
    small_config, events, bundles, tmp_path
):
    cfg = small_config
    first, versions = setup_registry(cfg, events, bundles.good[-N_PROCESSES:], bundles.first_champion)
    cfg_json = tmp_path / "cfg.json"
    cfg_json.write_text(json.dumps(cfg.model_dump(mode="json")))
    go = tmp_path / "go"
    children = []
    for v in versions:
        ready = tmp_path / f"ready-{v}"
        cmd = [sys.executable, "-c", CHILD, str(cfg_json), v, str(ready), str(go)]
        children.append((v, ready, subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                    text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})))
    try:
        deadline = time.monotonic() + 180
        while not all(ready.exists() for _, ready, _ in children):
            assert time.monotonic() < deadline, "children never got ready"
            assert all(p.poll() is None for _, _, p in children), "a child died before the start"
            time.sleep(0.05)
        started = time.perf_counter()
        go.touch()  # all processes start promoting at once
        results = {v: p.communicate(timeout=300) for v, _, p in children}
        wall = time.perf_counter() - started
    finally:
        for _, _, p in children:
            if p.poll() is None:
                p.kill()
    decisions = []
    for v, (out, err) in results.items():
        line = next((ln for ln in out.splitlines() if ln.startswith("DECISION ")), None)
        assert line is not None and "Traceback" not in err, f"version {v}: no decision\n{err[-2000:]}"
        decisions.append(Decision(**json.loads(line[len("DECISION "):])))
    assert {p.returncode for _, _, p in children} == {0}

    chain = assert_linear_history(cfg, first, decisions, len(versions))
    winner = next(d for d in decisions if d.promoted and d.candidate == chain[-1])

    # `aisys rollback` as an operator would run it, in its own process.
    cfg_yaml = tmp_path / "cfg.yaml"
    cfg_yaml.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    started = time.perf_counter()
    cli = subprocess.run([sys.executable, "-m", "aisys.cli", "rollback", "--config", str(cfg_yaml)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    cli_s = time.perf_counter() - started
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert f"from version {chain[-1]} to version {winner.champion}" in cli.stdout
    assert get_model_info(cfg, "champion")["version"] == chain[-2] == winner.champion
    assert champion_history(cfg) == chain[:-1]

    regated = sum(d.champion_changed for d in decisions)
    report_figure(
        f"{len(versions)} concurrent promote() calls in separate processes (started together), "
        "one MLflow SQLite registry",
        f"all returned a decision in {wall:.1f}s; {len(chain) - 1} promoted in one linear history "
        f"v{' -> v'.join(chain)}, {regated} re-gated; `aisys rollback` (CLI, new process) v{chain[-1]} -> "
        f"v{chain[-2]} in {cli_s:.1f}s including interpreter start",
        "0 lost updates",
    )
