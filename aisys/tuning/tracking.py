"""MLflow side of a sweep: the parent run, one child run per trial, and the best trial's registration.

Called by :mod:`aisys.tuning.sweep` in the driver after Tune finishes (see its docstring for why not in the
trials). mlflow is imported inside the functions, so importing this module has no side effects.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from aisys.config import AppConfig
from aisys.features.sequences import Vocabulary
from aisys.models.bundle import ModelBundle
from aisys.models.popularity import PopularityModel
from aisys.models.sasrec import MODEL_KIND, SASRec, SASRecConfig
from aisys.training.loop import evaluate
from aisys.evaluation.protocol import EvalSet

SWEEP_TAG = "aisys.sweep"
TRIAL_TAG = "aisys.trial_id"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's UI nests runs by this tag
EVAL_K = 10
_BATCH = 900  # MLflow's log_batch takes at most 1000 metrics per call


def _log_metric_rows(client, run_id: str, rows: list[dict[str, float]], step_key: str = "epoch") -> None:
    from mlflow.entities import Metric

    from aisys.registry.mlflow_registry import mlflow_metric_name

    now = int(time.time() * 1000)
    metrics = [
        Metric(mlflow_metric_name(k), float(v), now, int(row.get(step_key, n)))
        for n, row in enumerate(rows)
        for k, v in row.items()
        if k != step_key
    ]
    for start in range(0, len(metrics), _BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + _BATCH])


def log_sweep(cfg: AppConfig, snapshot_id: str, trials: list[dict[str, Any]], best: dict[str, Any]) -> str:
    """Log the sweep's parent run and one child run per trial; return the parent run id.

    Each trial dict gains ``run_id`` (its child run).
    """
    import mlflow
    from mlflow.entities import Param

    from aisys.registry.mlflow_registry import SNAPSHOT_TAG, configure_mlflow, mlflow_metric_name

    experiment_id = configure_mlflow(cfg)
    client = mlflow.MlflowClient()
    parent = client.create_run(
        experiment_id,
        run_name=f"sweep-{snapshot_id}",
        tags={SWEEP_TAG: "parent", SNAPSHOT_TAG: snapshot_id},
    )
    parent_id = parent.info.run_id
    tune_params = {f"tune.{k}": v for k, v in cfg.tune.model_dump().items()}
    client.log_batch(parent_id, params=[Param(k, str(v)) for k, v in tune_params.items()])
    for trial in trials:
        child = client.create_run(
            experiment_id,
            run_name=f"trial-{trial['trial_id']}",
            tags={PARENT_TAG: parent_id, SWEEP_TAG: "trial", TRIAL_TAG: trial["trial_id"],
                  SNAPSHOT_TAG: snapshot_id, "aisys.trial_status": trial["status"]},
        )
        trial["run_id"] = child.info.run_id
        client.log_batch(child.info.run_id, params=[Param(k, str(v)) for k, v in trial["config"].items()])
        _log_metric_rows(client, child.info.run_id, trial["history"])
        client.set_terminated(child.info.run_id, "FAILED" if trial["status"].startswith("error") else "FINISHED")
    client.log_batch(parent_id, params=[Param(f"best.{k}", str(v)) for k, v in best["config"].items()])
    metric_key = next(k for k in best if k.startswith("best_valid_"))
    client.log_metric(parent_id, mlflow_metric_name(metric_key), float(best[metric_key]))
    client.set_tag(parent_id, "aisys.best_trial_id", best["trial_id"])
    client.log_dict(parent_id, [{k: v for k, v in t.items() if k != "path"} for t in trials], "trials.json")
    client.set_terminated(parent_id, "FINISHED")
    return parent_id


def register_best(
    cfg: AppConfig,
    vocab: Vocabulary,
    test: EvalSet,
    best_state: dict[str, Any],
    best: dict[str, Any],
    snapshot_id: str,
    parent_run_id: str,
    trained_at: str,
):
    """Evaluate the best trial's weights on the test split, register them under the challenger alias.

    Returns ``(RegisteredModel, test_metrics)``. The registration run becomes a child of the sweep's run.
    """
    import mlflow

    from aisys.registry.mlflow_registry import log_and_register
    from aisys.training.pipeline import code_version

    model_config = best_state["model_config"]
    model = SASRec(SASRecConfig(**model_config))
    model.load_state_dict(best_state["state_dict"])
    model.eval()
    max_len = model_config["max_seq_len"]
    before = torch.get_num_threads()
    torch.set_num_threads(cfg.train.torch_threads)
    try:
        metrics = evaluate(model, test, max_len, k=EVAL_K, item_popularity=vocab.item_popularity)
        baseline = evaluate(PopularityModel(vocab), test, max_len, k=EVAL_K, item_popularity=vocab.item_popularity)
    finally:
        torch.set_num_threads(before)
    bundle = ModelBundle(
        model_kind=MODEL_KIND,
        model_config=model_config,
        item_ids=vocab.item_ids,
        item_popularity=vocab.item_popularity,
        state_dict=best_state["state_dict"],
        item_categories=vocab.item_categories,
        max_seq_len=max_len,
        lineage={
            "snapshot_id": snapshot_id,
            "code_version": code_version(),
            "trained_at": trained_at,
            "best_epoch": best_state["epoch"],
            "sweep_run_id": parent_run_id,
            "trial_id": best["trial_id"],
        },
        metrics=metrics,
    )
    params = {
        **{f"model.{k}": v for k, v in model_config.items()},
        "train.lr": best["config"]["lr"],
        "train.batch_size": cfg.train.batch_size,
        "train.weight_decay": cfg.train.weight_decay,
        "train.seed": cfg.train.seed,
        "data.snapshot_id": snapshot_id,
        "data.n_eval_users": len(test),
        "best_epoch": best_state["epoch"],
        "sweep.trial_id": best["trial_id"],
    }
    logged = {**{f"test_{k}": v for k, v in metrics.items()}, **{f"baseline_{k}": v for k, v in baseline.items()}}
    registered = log_and_register(
        cfg, bundle, params, logged, best["history"], snapshot_id, alias=cfg.online.challenger_alias
    )
    client = mlflow.MlflowClient()
    client.set_tag(registered.run_id, PARENT_TAG, parent_run_id)
    client.set_tag(registered.run_id, SWEEP_TAG, "registered")
    client.set_tag(parent_run_id, "aisys.registered_version", registered.version)
    return registered, metrics
