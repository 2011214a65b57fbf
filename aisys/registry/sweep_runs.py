"""The MLflow runs of a sweep: the parent run, one child run per trial, and the registration nested under it.

The registry is the only MLflow importer (contract ``mlflow-only-in-registry``); a sweep (:mod:`aisys.tuning`)
hands its trials here as plain data. Nothing here knows how the trials were searched (the registry never
imports a search: contract ``registry-without-search``).
"""

from __future__ import annotations

import time
from typing import Any, Mapping

from aisys.config import AppConfig
from aisys.registry.mlflow_registry import SNAPSHOT_TAG, configure_mlflow, mlflow_metric_name

SWEEP_TAG = "aisys.sweep"
TRIAL_TAG = "aisys.trial_id"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's UI nests runs by this tag
_BATCH = 900  # MLflow's log_batch takes at most 1000 metrics per call


def _log_metric_rows(client, run_id: str, rows: list[dict[str, float]], step_key: str = "epoch") -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [
        Metric(mlflow_metric_name(k), float(v), now, int(row.get(step_key, n)))
        for n, row in enumerate(rows)
        for k, v in row.items()
        if k != step_key
    ]
    for start in range(0, len(metrics), _BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + _BATCH])


def log_sweep_runs(
    cfg: AppConfig, snapshot_id: str, search_params: Mapping[str, Any], trials: list[dict[str, Any]],
    best: dict[str, Any],
) -> str:
    """Log the sweep's parent run (``search_params``, the best trial) and one child run per trial; return the
    parent run id. Each trial dict (``trial_id``, ``status``, ``config``, ``history``) gains ``run_id``."""
    import mlflow
    from mlflow.entities import Param

    experiment_id = configure_mlflow(cfg)
    client = mlflow.MlflowClient()
    parent = client.create_run(
        experiment_id,
        run_name=f"sweep-{snapshot_id}",
        tags={SWEEP_TAG: "parent", SNAPSHOT_TAG: snapshot_id},
    )
    parent_id = parent.info.run_id
    client.log_batch(parent_id, params=[Param(k, str(v)) for k, v in search_params.items()])
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


def nest_registration_under_sweep(cfg: AppConfig, run_id: str, parent_run_id: str, version: str) -> None:
    """Make the registration run ``run_id`` a child of the sweep's run, and name the version on the parent."""
    import mlflow

    configure_mlflow(cfg)
    client = mlflow.MlflowClient()
    client.set_tag(run_id, PARENT_TAG, parent_run_id)
    client.set_tag(run_id, SWEEP_TAG, "registered")
    client.set_tag(parent_run_id, "aisys.registered_version", version)
