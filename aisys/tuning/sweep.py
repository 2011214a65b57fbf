"""A Ray Tune sweep with ASHA over SASRec settings; the best trial is registered as ``challenger``.

events -> vocabulary + histories -> leave-last-one-out split -> ``cfg.tune.num_samples`` random trials over
``cfg.tune``'s search space, ``cfg.tune.max_concurrent`` at a time on ``cfg.tune.cpus_per_trial`` CPUs each. A
trial is a function trainable that runs the one plain-torch fit (:func:`aisys.training.fit.fit_sasrec`, as Ray
Train's workers do, with every ``train.*`` setting but the ones Tune owns: ``tune.max_epochs``, the searched
``lr``, and validation every epoch) on the train split and reports the validation metrics after every epoch
(``tune.report``); ASHA stops the weak ones after ``grace_period`` epochs. A trial saves a checkpoint only when
its validation metric improves, so its one kept checkpoint holds its best weights.

MLflow: one parent run per sweep and one child run per trial (tag ``mlflow.parentRunId``) with the trial's
settings as params and its per-epoch metrics as steps. The child runs are written by the driver after the sweep
from Tune's results, not by the trials themselves: concurrent trials writing to one SQLite store would contend
for its lock, and each trial would pay MLflow's import time. The best trial's weights are then evaluated on the
test split and registered with :func:`~aisys.registry.mlflow_registry.log_and_register` under
``cfg.online.challenger_alias``; that run is a child of the sweep too.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import torch

from aisys.config import AppConfig
from aisys.models.sasrec import SASRecConfig
from aisys.quality.protocol import EvalSet
from aisys.training.fit import EpochEnd, FitSettings, fit_sasrec, validation_metrics
from aisys.training.loop import training_examples
from aisys.tuning.tracking import log_sweep, register_best

_CHECKPOINT_FILE = "trial.pt"
EVAL_K = 10
SEARCHED = ("embedding_dim", "n_layers", "n_heads", "max_seq_len", "dropout", "lr")


@dataclass
class SweepData:
    """What every trial trains and validates on (shipped once through the object store)."""

    train: dict[str, list[int]]
    valid: EvalSet
    n_items: int


@dataclass
class SweepOutcome:
    """The sweep's winner, every trial, and where they were logged and registered."""

    best_config: dict[str, Any]
    best_metrics: dict[str, float]  # the best trial's best validation row (valid_ndcg@10, ...) and its test metrics
    trials: list[dict[str, Any]]  # per trial: trial_id, config, epochs, best valid metric, status, run_id
    parent_run_id: str
    model_version: str | None
    wall_s: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)  # the best trial's per-epoch rows


def search_space(cfg: AppConfig) -> dict[str, Any]:
    """Tune's search space from ``cfg.tune`` (lists -> choice, dropout -> uniform, lr -> log-uniform)."""
    from ray import tune

    t = cfg.tune

    def pick(values: list[int]):
        return tune.choice(list(values)) if len(values) > 1 else values[0]

    low_d, high_d = t.dropout
    low_lr, high_lr = t.lr
    return {
        "embedding_dim": pick(t.embedding_dim),
        "n_layers": pick(t.n_layers),
        "n_heads": pick(t.n_heads),
        "max_seq_len": pick(t.max_seq_len),
        "dropout": tune.uniform(low_d, high_d) if high_d > low_d else low_d,
        "lr": tune.loguniform(low_lr, high_lr) if high_lr > low_lr else low_lr,
    }


def trial_settings(cfg: AppConfig) -> dict[str, Any]:
    """The settings every trial shares (not searched): the fit's settings from ``cfg.train`` (see
    :class:`~aisys.training.fit.FitSettings`) except ``lr`` (searched), ``epochs`` (``cfg.tune.max_epochs``, ASHA's
    ``max_t``) and ``eval_every`` (1: ASHA compares trials at every epoch), plus the metric to select by."""
    fit = FitSettings.from_config(cfg, epochs=cfg.tune.max_epochs, eval_every=1).to_dict()
    del fit["lr"]
    return {**fit, "metric": f"valid_{cfg.tune.metric}"}


def trial_fit_settings(params: dict[str, Any]) -> FitSettings:
    """A trial's :class:`FitSettings`: :func:`trial_settings` plus its searched ``lr``."""
    return FitSettings.from_dict({**params, "lr": float(params["lr"])})


def train_trial(
    params: dict[str, Any],
    data: SweepData,
    report: Callable[[dict[str, float], dict[str, Any] | None], None],
) -> None:
    """Train one SASRec setting epoch by epoch (plain torch); ``report(row, best_state_or_None)`` after each.

    ``params`` holds the searched keys plus :func:`trial_settings`. ``best_state`` is passed only when the
    validation metric improved: ``{"state_dict", "model_config", "epoch"}``.
    """
    model_config = SASRecConfig(
        n_items=data.n_items,
        max_seq_len=int(params["max_seq_len"]),
        embedding_dim=int(params["embedding_dim"]),
        n_layers=int(params["n_layers"]),
        n_heads=int(params["n_heads"]),
        dropout=float(params["dropout"]),
    )
    inputs, targets = training_examples(data.train, model_config.max_seq_len)

    def after_epoch(end: EpochEnd) -> None:
        best = (
            {"state_dict": end.state.best_state, "model_config": model_config.to_dict(), "epoch": end.epoch}
            if end.improved
            else None
        )
        report(end.row, best)

    fit_sasrec(
        model_config, trial_fit_settings(params), inputs, targets,
        validate=validation_metrics(data.valid, model_config.max_seq_len, k=EVAL_K),
        select_metric=params["metric"], on_epoch=after_epoch,
    )


def sasrec_trainable(config: dict[str, Any], data: SweepData) -> None:
    """The Tune function trainable: :func:`train_trial` with ``tune.report`` (+ a checkpoint on improvement)."""
    from ray import tune

    def report(row: dict[str, float], best_state: dict[str, Any] | None) -> None:
        if best_state is None:
            tune.report(row)
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save(best_state, Path(folder) / _CHECKPOINT_FILE)
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(folder))

    train_trial(config, data, report)


TrialEvent = Callable[[dict[str, Any]], None]


def run_sweep(
    cfg: AppConfig, snapshot_id: str | None = None, *, verbose: int = 1, on_trial: TrialEvent | None = None
) -> SweepOutcome:
    """Sweep on a lake snapshot (latest by default) and register the best trial as ``challenger``.

    ``on_trial(event)`` is called in this process as trials report and end (see :func:`sweep_events`).
    """
    from aisys.data.lake import Lake

    lake = Lake.from_config(cfg.paths)
    manifest = lake.get(snapshot_id) if snapshot_id else lake.latest()
    if manifest is None:
        raise FileNotFoundError(f"the lake at {cfg.paths.lake_uri} has no snapshot yet: run `aisys ingest` first")
    return sweep_events(cfg, lake.read_events(manifest.snapshot_id), manifest.snapshot_id, verbose=verbose,
                        on_trial=on_trial)


def sweep_events(
    cfg: AppConfig, events: pa.Table, snapshot_id: str, *, verbose: int = 1, on_trial: TrialEvent | None = None
) -> SweepOutcome:
    """Sweep on an events table (from lake snapshot ``snapshot_id``); see the module docstring.

    ``on_trial(event)`` (driver side, from a Tune callback) gets ``{"event": "result" | "complete" |
    "error", "trial_id", "epoch", "<metric>", "finished": trials ended so far, "total": num_samples}``.
    ``verbose`` is Tune's own console verbosity (0: silent).
    """
    from aisys.features.sequences import build_vocabulary, user_histories
    from aisys.quality.protocol import leave_last_one_out
    from aisys.runtime import init_ray

    started = time.perf_counter()
    vocab = build_vocabulary(events, cfg.features.event_weights)
    split = leave_last_one_out(user_histories(events, vocab.item_index()))
    if len(split.valid) == 0:
        raise ValueError(f"snapshot {snapshot_id!r}: no user has the 3 interactions needed for validation and test")
    init_ray(cfg)
    results = _tune(cfg, SweepData(split.train, split.valid, vocab.n_items), verbose, on_trial)

    metric = trial_settings(cfg)["metric"]
    best = results.get_best_result(metric=metric, mode="max", scope="all")
    if best.checkpoint is None:
        raise RuntimeError(f"the best trial ({best.path}) saved no checkpoint")
    with best.checkpoint.as_directory() as folder:
        best_state = torch.load(Path(folder) / _CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    trials = [_trial_summary(result, metric, cfg.tune.max_epochs) for result in results]
    best_summary = next(t for t in trials if t["path"] == best.path)
    parent_run_id = log_sweep(cfg, snapshot_id, trials, best_summary)
    registered, test_metrics = register_best(
        cfg, vocab, split.test, best_state, best_summary, snapshot_id, parent_run_id,
        trained_at=datetime.now(timezone.utc).isoformat(),
    )
    best_row = max(best_summary["history"], key=lambda row: row[metric])
    return SweepOutcome(
        best_config={k: best.config[k] for k in SEARCHED},
        best_metrics={**{k: v for k, v in best_row.items() if k.startswith("valid_")},
                      **{f"test_{k}": v for k, v in test_metrics.items()}},
        trials=[{k: v for k, v in t.items() if k != "path"} for t in trials],
        parent_run_id=parent_run_id,
        model_version=registered.version,
        wall_s=time.perf_counter() - started,
        history=best_summary["history"],
    )


def _trial_callback(on_trial: TrialEvent, metric: str, total: int):
    """A Tune callback (it runs in the driver) that forwards trial results and endings to ``on_trial``."""
    from ray.tune import Callback

    class _Forward(Callback):
        def __init__(self, forward: TrialEvent) -> None:
            self.finished: set[str] = set()
            self.on_trial = forward  # an argument, not a closure: the class itself must pickle without it

        # Tune pickles its callbacks into the experiment state; the display callback (it may hold locks and
        # consoles) stays behind: a restored sweep simply reports nothing.
        def __getstate__(self) -> dict:
            return {"finished": set(self.finished)}

        def __setstate__(self, state: dict) -> None:
            self.finished, self.on_trial = state["finished"], lambda event: None

        def _send(self, kind: str, trial, result: dict | None = None) -> None:
            if kind != "result":
                self.finished.add(trial.trial_id)
            row = result or {}
            self.on_trial({"event": kind, "trial_id": trial.trial_id, "epoch": row.get("epoch"),
                      metric: row.get(metric), "finished": len(self.finished), "total": total})

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self._send("result", trial, result)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._send("complete", trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._send("error", trial)

    return _Forward(on_trial)


def _tune(cfg: AppConfig, data: SweepData, verbose: int, on_trial: TrialEvent | None = None):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # num_to_keep=1 makes Tune snapshot its experiment state after each checkpoint and warn that this may be
    # a bottleneck: true for cloud storage, not for the local folder used here (ms per snapshot).
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    settings = trial_settings(cfg)
    trainable = tune.with_resources(
        tune.with_parameters(sasrec_trainable, data=data), {"cpu": cfg.tune.cpus_per_trial}
    )
    tuner = tune.Tuner(
        trainable,
        param_space={**search_space(cfg), **settings},
        tune_config=tune.TuneConfig(
            metric=settings["metric"],
            mode="max",
            num_samples=cfg.tune.num_samples,
            scheduler=ASHAScheduler(
                time_attr="training_iteration",
                max_t=cfg.tune.max_epochs,
                grace_period=min(cfg.tune.grace_period, cfg.tune.max_epochs),
                reduction_factor=cfg.tune.reduction_factor,
            ),
            # The generator seeds the random search, and bounds concurrency itself.
            search_alg=BasicVariantGenerator(max_concurrent=cfg.tune.max_concurrent, random_state=cfg.tune.seed),
        ),
        run_config=tune.RunConfig(
            name=f"sweep-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(Path(cfg.paths.workspace, "ray_results").expanduser().resolve()),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=verbose,
            callbacks=[_trial_callback(on_trial, settings["metric"], cfg.tune.num_samples)] if on_trial else None,
        ),
    )
    results = tuner.fit()
    if results.num_errors == len(results):
        raise RuntimeError(f"every trial of the sweep failed; first error: {results.errors[0]}")
    return results


def _trial_summary(result, metric: str, max_epochs: int) -> dict[str, Any]:
    frame = result.metrics_dataframe
    columns = list(frame.columns) if frame is not None else []
    keep = ["epoch", "loss", "epoch_s"] + [c for c in columns if c.startswith("valid_")]
    history = [] if frame is None else [
        {k: float(row[k]) for k in keep if k in row and row[k] == row[k]} for _, row in frame.iterrows()
    ]
    scores = [row[metric] for row in history if metric in row]
    if result.error is not None:
        status = f"error: {type(result.error).__name__}"
    elif len(history) < max_epochs:
        status = "stopped by ASHA"
    else:
        status = "completed"
    return {
        "trial_id": (result.metrics or {}).get("trial_id") or Path(result.path).name,
        "config": {k: result.config.get(k) for k in SEARCHED},
        "epochs": len(history),
        f"best_{metric}": max(scores) if scores else float("nan"),
        "status": status,
        "history": history,
        "path": result.path,
    }
