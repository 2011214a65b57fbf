"""The one SASRec fit (plain torch, no Ray): what Ray Train's workers, Tune's trials, the evaluation runner and the
throughput benchmark all run.

:func:`fit_sasrec` takes the model's config, a :class:`FitSettings` (every ``train.*`` setting that changes what
is trained, built from the one ``AppConfig`` by :meth:`FitSettings.from_config`) and the training windows, and runs
the epoch loop of :mod:`aisys.training.loop`: per epoch, re-seed, draw the epoch's rows and batches, train, validate
every ``eval_every`` epochs (and after the last), keep the best weights. What differs between callers is passed
in, not re-written:

- ``validate(model) -> metrics``: Ray Train and Tune report ``valid_*`` full-ranking metrics
  (:func:`validation_metrics`), the runner its own score; ``select_metric`` names the one that picks the best epoch;
- ``on_epoch(EpochEnd)``: Ray Train reports and checkpoints there, Tune reports, a progress bar listens;
- ``resume=FitState``: Ray Train's fault tolerance. A run resumed from epoch ``k``'s checkpoint trains epoch
  ``k + 1`` exactly as the uninterrupted run did: each epoch's batch order comes from ``seed + epoch`` and the
  global RNGs (dropout) are re-seeded from :func:`~aisys.training.loop.epoch_seed` at its start, so a checkpoint
  needs no RNG state;
- ``epoch_rows(epoch)``: which windows this process trains on in an epoch (Ray Train's DDP shard); all by default;
- ``prepare_model``: wraps the model after its weights are set (Ray Train's DDP / device placement).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from aisys.models.sasrec import SASRec, SASRecConfig, cpu_state_dict
from aisys.training.loop import epoch_seed, evaluate, iterate_batches, seed_everything, train_epoch

if TYPE_CHECKING:
    from aisys.config import AppConfig, TrainConfig
    from aisys.quality.protocol import EvalSet

SELECT_METRIC = "valid_ndcg@10"
RESUMED_FROM = "resumed_from_epoch"  # history column: the checkpoint's epoch this attempt started from (-1: none)


@dataclass(frozen=True)
class FitSettings:
    """The ``train.*`` settings that change what a fit trains (field names are ``TrainConfig``'s)."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 42
    torch_threads: int = 1
    eval_every: int = 1
    loss_horizon: int = 1
    loss_horizon_weight: float = 0.0
    bucket_by_length: bool = True

    @classmethod
    def from_config(cls, cfg: "AppConfig | TrainConfig", **overrides: Any) -> "FitSettings":
        """Every field from ``cfg.train`` (or a ``TrainConfig``), then ``overrides`` (e.g. Tune's ``epochs``)."""
        train = getattr(cfg, "train", cfg)
        values = {f.name: getattr(train, f.name) for f in fields(cls)}
        unknown = set(overrides) - set(values)
        if unknown:
            raise TypeError(f"FitSettings has no field(s) {sorted(unknown)}")
        return cls(**{**values, **overrides})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "FitSettings":
        """The settings among ``values`` (other keys, such as Tune's searched model sizes, are ignored)."""
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FitState:
    """Where a fit stands after epoch ``epoch``: everything a checkpoint holds to resume it."""

    epoch: int = -1  # the last finished epoch (-1: none)
    model_state: dict[str, torch.Tensor] | None = None
    optimizer_state: dict[str, Any] | None = None
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    best_epoch: int = -1  # 0-based; -1 when never validated
    best_metric: float = -math.inf
    best_state: dict[str, torch.Tensor] | None = None  # the best validated weights (no `module.` prefix)

    def to_checkpoint(self) -> dict[str, Any]:
        """The checkpoint payload (Ray Train's ``train_state.pt`` layout)."""
        return {
            "model": self.model_state,
            "optimizer": self.optimizer_state,
            "epoch": self.epoch,
            "history": self.history,
            "best": {"epoch": self.best_epoch, "metric": self.best_metric, "state": self.best_state},
        }

    @classmethod
    def from_checkpoint(cls, payload: Mapping[str, Any]) -> "FitState":
        best = payload["best"]
        return cls(
            epoch=int(payload["epoch"]), model_state=payload["model"], optimizer_state=payload["optimizer"],
            history=list(payload["history"]), best_epoch=int(best["epoch"]), best_metric=float(best["metric"]),
            best_state=best["state"],
        )


@dataclass
class EpochEnd:
    """What ``on_epoch`` gets after each epoch (the row is already in ``state.history``)."""

    epoch: int
    row: dict[str, float]
    improved: bool  # validated this epoch and the best so far
    model: nn.Module
    optimizer: torch.optim.Optimizer
    state: FitState  # live: model_state / optimizer_state are filled by :meth:`checkpoint`

    def checkpoint(self) -> FitState:
        """The state to save now (copies of the model and optimizer state) to resume after this epoch."""
        # A copy: the optimizer's state_dict holds its live moment tensors, which the next epoch updates in place.
        optimizer_state = copy.deepcopy(self.optimizer.state_dict())
        return FitState(
            epoch=self.epoch, model_state=cpu_state_dict(self.model), optimizer_state=optimizer_state,
            history=list(self.state.history), best_epoch=self.state.best_epoch, best_metric=self.state.best_metric,
            best_state=self.state.best_state,
        )


@dataclass
class FitResult:
    """The trained model (last epoch's weights, as prepared) and the final state (history, best weights)."""

    model: nn.Module
    state: FitState
    seconds: float

    @property
    def history(self) -> list[dict[str, float]]:
        return self.state.history


Validate = Callable[[nn.Module], Mapping[str, float]]


def validation_metrics(eval_set: "EvalSet", max_seq_len: int, k: int = 10, device: Any = None) -> Validate:
    """A ``validate`` callback: full-ranking ``valid_hr@k, valid_ndcg@k, ...`` of the model on ``eval_set``."""

    def validate(model: nn.Module) -> dict[str, float]:
        metrics = evaluate(model, eval_set, max_seq_len, k=k, device=device)
        return {f"valid_{name}": value for name, value in metrics.items() if name != "n_users"}

    return validate


def fit_sasrec(
    model_config: SASRecConfig,
    settings: FitSettings,
    inputs: np.ndarray,
    targets: np.ndarray,
    *,
    validate: Validate | None = None,
    select_metric: str = SELECT_METRIC,
    on_epoch: Callable[[EpochEnd], None] | None = None,
    resume: FitState | None = None,
    epoch_rows: Callable[[int], np.ndarray] | None = None,
    prepare_model: Callable[[nn.Module], nn.Module] | None = None,
    device: Any = None,
) -> FitResult:
    """Train a SASRec on (inputs, targets) windows (:func:`~aisys.training.loop.training_examples`) as
    ``settings`` says; see the module docstring for the hooks.

    Each history row holds ``epoch`` (0-based), ``loss``, ``epoch_s`` (training only, validation excluded),
    ``resumed_from_epoch`` and, on validated epochs, what ``validate`` returned. The best epoch is the validated
    one with the highest ``select_metric`` (the first of equals).
    """
    torch.set_num_threads(settings.torch_threads)
    seed_everything(settings.seed)  # the weight initialisation: the same on every DDP rank
    model: nn.Module = SASRec(model_config)
    state = resume if resume is not None else FitState()
    if state.model_state is not None:
        model.load_state_dict(state.model_state)
    if prepare_model is not None:
        model = prepare_model(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    if state.optimizer_state is not None:
        optimizer.load_state_dict(state.optimizer_state)
    resumed_from = state.epoch
    started = time.perf_counter()
    for epoch in range(state.epoch + 1, settings.epochs):
        epoch_started = time.perf_counter()
        seed_everything(epoch_seed(settings.seed, epoch))  # a resumed epoch draws the same dropout masks
        rows = epoch_rows(epoch) if epoch_rows is not None else None
        epoch_inputs, epoch_targets = (inputs, targets) if rows is None else (inputs[rows], targets[rows])
        batches = iterate_batches(epoch_inputs, epoch_targets, settings.batch_size, seed=settings.seed + epoch,
                                  bucket_by_length=settings.bucket_by_length)
        loss = train_epoch(model, batches, optimizer, device, settings.loss_horizon, settings.loss_horizon_weight)
        row: dict[str, float] = {
            "epoch": epoch, "loss": loss, "epoch_s": time.perf_counter() - epoch_started, RESUMED_FROM: resumed_from,
        }
        # Validate every `eval_every` epochs and after the last one: on ML-100K a full-ranking validation costs
        # about as much as a training epoch.
        improved = False
        if validate is not None and ((epoch + 1) % settings.eval_every == 0 or epoch == settings.epochs - 1):
            row.update(validate(model))
            if select_metric not in row:
                raise KeyError(f"validate returned no {select_metric!r} (it returned {sorted(row)})")
            if row[select_metric] > state.best_metric:
                improved = True
                state.best_epoch, state.best_metric = epoch, float(row[select_metric])
                state.best_state = cpu_state_dict(model)
        state.epoch = epoch
        state.history.append(row)
        if on_epoch is not None:
            on_epoch(EpochEnd(epoch, row, improved, model, optimizer, state))
    state.model_state, state.optimizer_state = None, None  # a finished fit's live weights are `model`'s
    return FitResult(model, state, time.perf_counter() - started)
