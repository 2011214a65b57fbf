"""Recording a sweep: the parent run, one child run per trial, and the best trial's registration.

Called by :mod:`aisys.tuning.sweep` in the driver after Tune finishes (see its docstring for why not in the
trials). The MLflow calls are the registry's (:mod:`aisys.registry.sweep_runs`): only the registry imports mlflow.
"""

from __future__ import annotations

from typing import Any

import torch

from aisys.config import AppConfig
from aisys.features.sequences import Vocabulary
from aisys.models.bundle import ModelBundle
from aisys.models.popularity import PopularityModel
from aisys.models.sasrec import MODEL_KIND, SASRec, SASRecConfig
from aisys.quality.protocol import EvalSet
from aisys.training.loop import evaluate

EVAL_K = 10


def log_sweep(cfg: AppConfig, snapshot_id: str, trials: list[dict[str, Any]], best: dict[str, Any]) -> str:
    """Log the sweep's parent run and one child run per trial (:mod:`aisys.registry.sweep_runs`); return the
    parent run id.

    Each trial dict gains ``run_id`` (its child run).
    """
    from aisys.registry.sweep_runs import log_sweep_runs

    search_params = {f"tune.{k}": v for k, v in cfg.tune.model_dump().items()}
    return log_sweep_runs(cfg, snapshot_id, search_params, trials, best)


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
    from aisys.registry.mlflow_registry import log_and_register
    from aisys.registry.sweep_runs import nest_registration_under_sweep
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
    nest_registration_under_sweep(cfg, registered.run_id, parent_run_id, registered.version)
    return registered, metrics
