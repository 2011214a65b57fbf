"""Ray Train adapter: runs :func:`aisys.training.fit.fit_sasrec` on each worker of a TorchTrainer.

The work is the one plain-torch fit; this module only moves data to the workers
(through the object store), shards it per epoch (:func:`_epoch_rows`), wraps the
model for DDP, and reports per-epoch metrics with a checkpoint from the fit's
``on_epoch`` hook. Each checkpoint holds the model and optimizer state, the
epoch, the history so far and the best (by validation NDCG@10) weights
(:meth:`~aisys.training.fit.FitState.to_checkpoint`), so a re-created trainer
with the same ``RunConfig(name, storage_path)`` resumes where it stopped
(``ray.train.get_checkpoint()``).

A worker that dies mid-run (killed, OOM, node lost) is handled by Ray Train's
``FailureConfig(max_failures)``: the worker group is restarted and resumes from
the latest checkpoint. Such a resume trains the same as the uninterrupted run
(the fit's ``resume`` semantics: each epoch's rows and batches come from
``(seed, epoch)`` and the global RNGs are re-seeded per epoch). Every history
row says where its attempt started (``resumed_from_epoch``: -1 for a fresh start).
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from aisys.config import AppConfig
from aisys.features.sequences import Vocabulary
from aisys.models.sasrec import SASRecConfig
from aisys.quality.protocol import EvalSet
from aisys.training.fit import (
    RESUMED_FROM,
    SELECT_METRIC,
    EpochEnd,
    FitSettings,
    FitState,
    fit_sasrec,
    validation_metrics,
)
from aisys.training.loop import training_examples

__all__ = ["RESUMED_FROM", "SELECT_METRIC", "RayTrainResult", "train_with_ray"]

_CHECKPOINT_FILE = "train_state.pt"

_log = logging.getLogger(__name__)


@dataclass
class RayTrainResult:
    """What a Ray Train run produced, read back from its last checkpoint."""

    state_dict: dict[str, torch.Tensor]  # best weights by validation NDCG@10, no `module.` prefix
    model_config: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    best_epoch: int = -1
    checkpoint_path: str | None = None
    run_path: str | None = None


def _epoch_rows(n_rows: int, rank: int, world: int, seed: int) -> np.ndarray:
    """This worker's rows for one epoch: a global shuffle, then an equal-sized shard.

    Every worker gets the same number of rows (the remainder is dropped, and a
    different one each epoch) so DDP workers run the same number of steps and
    never wait on each other forever.
    """
    order = np.random.default_rng(seed).permutation(n_rows)
    per_worker = n_rows // world if world > 1 else n_rows
    return order[rank::world][:per_worker]


def loop_config(cfg: AppConfig, model_config: dict[str, Any]) -> dict[str, Any]:
    """What every worker gets besides the data: the model's config and the fit's settings (all of ``cfg.train``'s
    that change training: :meth:`FitSettings.from_config`)."""
    return {
        "model_config": model_config,
        "max_seq_len": cfg.features.max_seq_len,
        "fit": FitSettings.from_config(cfg).to_dict(),
    }


def scaling_settings(cfg: AppConfig, max_failures: int | None = None) -> dict[str, Any]:
    """The TorchTrainer's workers and restarts from ``cfg.train`` (``max_failures`` overrides the config's)."""
    return {
        "num_workers": cfg.train.num_workers,
        "use_gpu": cfg.train.use_gpu,
        "resources_per_worker": {"CPU": cfg.train.cpus_per_worker},
        "max_failures": cfg.train.max_failures if max_failures is None else max_failures,
    }


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The function each Ray Train worker runs (see module docstring)."""
    import ray
    import ray.train
    import ray.train.torch

    settings = FitSettings(**config["fit"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    inputs, targets = ray.get(config["examples"])
    device = ray.train.torch.get_device()

    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            payload = torch.load(Path(folder) / _CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        resume = FitState.from_checkpoint(payload)

    # Only rank 0 validates: Ray Train keeps rank 0's metrics, and the other workers would only repeat the same
    # computation.
    validate = validation_metrics(ray.get(config["valid"]), config["max_seq_len"], device=device) if rank == 0 else None

    def report(end: EpochEnd) -> None:
        if rank != 0:
            ray.train.report(end.row, checkpoint=None)
            return
        if config.get("progress") is not None:
            # The driver shows it now (`aisys train`'s bar); Ray Train itself hands metrics back only at the end.
            try:
                config["progress"].put_nowait(dict(end.row))
            except Exception:  # progress is best effort: never fail an epoch over it
                pass
        with tempfile.TemporaryDirectory() as folder:
            payload = {**end.checkpoint().to_checkpoint(), "model_config": config["model_config"]}
            torch.save(payload, Path(folder) / _CHECKPOINT_FILE)
            ray.train.report(end.row, checkpoint=ray.train.Checkpoint.from_directory(folder))

    fit_sasrec(
        SASRecConfig(**config["model_config"]), settings, inputs, targets,
        validate=validate, select_metric=SELECT_METRIC, on_epoch=report, resume=resume,
        epoch_rows=lambda epoch: _epoch_rows(len(inputs), rank, world, settings.seed + epoch),
        prepare_model=ray.train.torch.prepare_model,  # moves to `device`; DDP when world > 1
        device=device,
    )


def _local_storage(storage_path: str) -> str:
    return storage_path if "://" in storage_path else str(Path(storage_path).expanduser().resolve())


def train_with_ray(
    cfg: AppConfig,
    train_histories: dict[str, list[int]],
    eval_split: EvalSet,
    vocab: Vocabulary,
    storage_path: str,
    run_name: str | None = None,
    max_failures: int | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> RayTrainResult:
    """Train SASRec with a TorchTrainer as ``cfg.train`` says; return the best weights and history.

    ``eval_split`` is the validation set reported each epoch. Re-running with
    the same ``run_name`` and ``storage_path`` resumes from the latest checkpoint;
    so does the run itself, up to ``max_failures`` times (default
    ``cfg.train.max_failures``), when a worker fails (``-1``: without limit,
    ``0``: fail at once).

    ``on_epoch(row)`` is called in this (the driver's) process with each epoch's history row as rank 0
    reports it (from a helper thread, while ``fit()`` runs): how the CLI shows epochs as they finish.
    """
    from aisys.runtime import init_ray

    ray = init_ray(cfg)
    if len(eval_split) == 0:
        raise ValueError("eval_split is empty: no user has the 3 interactions needed for validation")
    model_config = SASRecConfig.from_app(cfg, vocab.n_items).to_dict()
    inputs, targets = training_examples(train_histories, cfg.features.max_seq_len)
    if len(inputs) < cfg.train.num_workers:
        raise ValueError(
            f"only {len(inputs)} training windows for train.num_workers={cfg.train.num_workers}: need more events"
        )
    worker_config = {
        **loop_config(cfg, model_config),
        "examples": ray.put((inputs, targets)),
        "valid": ray.put(eval_split),
    }
    with _epoch_feed(on_epoch) as feed:
        if feed is not None:
            worker_config["progress"] = feed
        result = _trainer(cfg, worker_config, storage_path, run_name, max_failures).fit()
    if result.error is not None:
        raise RuntimeError(f"Ray Train run failed: {result.error}") from result.error
    if result.checkpoint is None:
        raise RuntimeError("Ray Train run reported no checkpoint (train.epochs must be >= 1)")
    with result.checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / _CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    best = state["best"]
    return RayTrainResult(
        state_dict=best["state"] if best["state"] is not None else state["model"],
        model_config=state["model_config"],
        history=state["history"],
        best_epoch=best["epoch"],
        checkpoint_path=result.checkpoint.path,
        run_path=result.path,
    )


def _trainer(cfg: AppConfig, worker_config: dict[str, Any], storage_path: str, run_name: str | None,
             max_failures: int | None):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    scaling = scaling_settings(cfg, max_failures)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=worker_config,
        scaling_config=ScalingConfig(
            num_workers=scaling["num_workers"],
            use_gpu=scaling["use_gpu"],
            resources_per_worker=scaling["resources_per_worker"],
        ),
        run_config=RunConfig(
            name=run_name or f"sasrec-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=_local_storage(storage_path),
            # Each checkpoint carries the best weights so far, so the latest two suffice.
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=scaling["max_failures"]),
        ),
    )


@contextmanager
def _epoch_feed(on_epoch: Callable[[dict], None] | None) -> Iterator[Any]:
    """A small Ray queue whose rows (rank 0's, per epoch) reach ``on_epoch`` in the driver while the run lasts.

    Yields the queue for the loop config, or None without ``on_epoch``.
    """
    if on_epoch is None:
        yield None
        return
    from ray.util.queue import Empty, Queue

    queue = Queue(actor_options={"num_cpus": 0})
    done = threading.Event()

    def drain() -> None:
        while True:
            try:
                row = queue.get(timeout=0.5)
            except Empty:
                if done.is_set():
                    return
                continue
            except Exception:  # the queue actor is gone (Ray shutting down): progress is best effort
                return
            try:
                on_epoch(row)
            except Exception:  # a display error must not fail the training run
                _log.exception("on_epoch callback failed")

    thread = threading.Thread(target=drain, name="aisys-train-progress", daemon=True)
    thread.start()
    try:
        yield queue
    finally:
        done.set()
        thread.join(timeout=10)
        try:
            queue.shutdown()
        except Exception:  # already gone
            pass
