"""`jobs/evaluate.py` (the `ray job submit` entrypoint): by default it evaluates what ships, as `aisys evaluate`
without --model does; --model keeps the runner's baselines. No Ray: the shipped path's training is replaced by a
stand-in that records what it was asked, the baseline path runs for real on a tiny GroupLens folder."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from aisys.shipped_evaluation import ServedLists
from tests.unit.test_evaluate_cli import write_grouplens

JOBS = Path(__file__).resolve().parents[2] / "jobs"


@pytest.fixture()
def job(monkeypatch):
    """jobs/evaluate.py as a module (it imports its sibling _entry, as under `ray job submit`)."""
    monkeypatch.syspath_prepend(str(JOBS))
    spec = importlib.util.spec_from_file_location("evaluate_job", JOBS / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(job, monkeypatch, *argv: str):
    monkeypatch.setattr(sys, "argv", ["jobs/evaluate.py", *argv])
    return job.parse(job.__doc__, job._flags)[1]


def test_default_trains_and_serves_what_ships_with_movielens_and_the_seed_as_train_seed(job, monkeypatch, tmp_path):
    import aisys.runtime
    import aisys.shipped_evaluation

    data = write_grouplens(tmp_path / "ml")
    asked = {}

    def fake_evaluate_shipped(cfg, events, catalogue, split, register=False, on_step=None, on_epoch=None):
        asked.update(cfg=cfg, n_events=events.num_rows, catalogue=list(catalogue), split=split, register=register)
        lists = ServedLists(["1", "2"], [["101", "102"], ["111"]], [False, False], {"ndcg@10": 0.5}, None)
        return SimpleNamespace(bundle=SimpleNamespace(model_kind=cfg.model.kind), seed=cfg.train.seed, lists=lists,
                               test_metrics=lists.metrics, training_metrics={"valid_gain_ease": 0.01},
                               train_seconds=1.0, score_seconds=0.5, registered={})

    monkeypatch.setattr(aisys.shipped_evaluation, "evaluate_shipped", fake_evaluate_shipped)
    monkeypatch.setattr(aisys.runtime, "init_ray", lambda cfg: None)
    export = tmp_path / "out" / "shipped.parquet"
    args = parse(job, monkeypatch, "--config", "configs/local.yaml", "--split", "temporal", "--seed", "7",
                 "--export", str(export), "--set", f"data.movielens.path={data}",
                 "--set", f"paths.workspace={tmp_path / 'ws'}")
    assert args.model is None  # the default is what ships, not a baseline
    printed = job.run(args)

    cfg = asked["cfg"]
    assert cfg.model.kind == "multistage" and cfg.data.source == "movielens" and cfg.train.seed == 7
    assert asked["split"] == "temporal" and asked["register"] is False
    assert asked["n_events"] == len((data / "u.data").read_text().splitlines())
    assert len(asked["catalogue"]) == 30  # every id of the item file
    assert printed["model"] == "shipped" and printed["kind"] == "multistage" and printed["seed"] == 7
    assert printed["test"] == {"ndcg@10": 0.5} and printed["export_users"] == 2
    json.dumps(printed)  # the job prints it as one JSON line
    assert pq.read_table(export).to_pylist() == [
        {"user_id": "1", "rank": 1, "item_id": "101"}, {"user_id": "1", "rank": 2, "item_id": "102"},
        {"user_id": "2", "rank": 1, "item_id": "111"},
    ]


def test_model_flag_keeps_the_runner_baselines(job, monkeypatch, tmp_path):
    data = write_grouplens(tmp_path / "ml")
    export = tmp_path / "ease.parquet"
    args = parse(job, monkeypatch, "--config", "configs/local.yaml", "--model", "ease", "--export", str(export),
                 "--set", f"data.movielens.path={data}", "--set", f"paths.workspace={tmp_path / 'ws'}")
    printed = job.run(args)
    assert printed["model"] == "ease" and printed["seed"] == 0 and "l2" in printed["settings"]
    assert printed["test"]["n_users"] == printed["export_users"] > 0
    assert {r["user_id"] for r in pq.read_table(export).to_pylist()} == {str(u) for u in range(1, 13)}


def test_register_with_a_baseline_is_refused(job, monkeypatch, tmp_path):
    args = parse(job, monkeypatch, "--model", "ease", "--register", "--export", str(tmp_path / "x.parquet"))
    with pytest.raises(SystemExit, match="what ships only"):
        job.run(args)
