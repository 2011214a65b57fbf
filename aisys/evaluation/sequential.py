"""SASRec behind the baselines' ``fit`` / ``score`` interface, trained in plain torch.

``fit`` runs the one SASRec fit that Ray Train's workers and Tune's trials run
(:func:`aisys.training.fit.fit_sasrec`), so the evaluation measures the
production model's training. It can also validate every ``eval_every`` epochs
and remember the best epoch count, which the runner then uses as the fixed
epoch count of the refit (no early stopping on test).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np

from aisys.features.sequences import recent_window

if TYPE_CHECKING:
    from aisys.training.fit import FitSettings

_VALID_SCORE = "valid_score"  # the history column of the runner's own validation score


@dataclass
class SequentialSettings:
    """Model and training settings of one SASRec fit (from ``AppConfig`` by the runner).

    The training fields are ``train.*``'s under the runner's older names (``threads`` = ``torch_threads``,
    ``horizon`` = ``loss_horizon``, ``horizon_weight`` = ``loss_horizon_weight``): kept because stored
    evaluation results and fit-cache keys carry them; :meth:`fit_settings` maps them.
    """

    max_seq_len: int = 200
    embedding_dim: int = 64
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.2
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    threads: int = 1
    eval_every: int = 5
    bucket_by_length: bool = True
    horizon: int = 1
    horizon_weight: float = 0.0

    def fit_settings(self) -> "FitSettings":
        """The :class:`~aisys.training.fit.FitSettings` these settings train with."""
        from aisys.training.fit import FitSettings

        return FitSettings(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
            seed=self.seed, torch_threads=self.threads, eval_every=self.eval_every,
            loss_horizon=self.horizon, loss_horizon_weight=self.horizon_weight,
            bucket_by_length=self.bucket_by_length,
        )


@dataclass
class FitTrace:
    """Validation score per checked epoch and the best epoch count (-1 when never validated)."""

    scores: dict[int, float] = field(default_factory=dict)
    best_epoch: int = -1
    seconds: float = 0.0


class SASRecRecommender:
    """Fit a SASRec on a protocol task's train sequences; score users from their history windows."""

    def __init__(self, settings: SequentialSettings) -> None:
        self.settings = settings
        self.model = None
        self.trace = FitTrace()

    def fit(
        self,
        train: Mapping[str, Sequence[int]],
        n_items: int,
        validate: Callable[["SASRecRecommender"], float] | None = None,
    ) -> "SASRecRecommender":
        """Train ``settings.epochs`` epochs; with ``validate``, score every ``eval_every`` epochs
        (and at the last) and keep the best weights and epoch count (1-based) in :attr:`trace`."""
        from aisys.models.sasrec import SASRecConfig
        from aisys.training.fit import fit_sasrec
        from aisys.training.loop import training_examples

        s = self.settings
        config = SASRecConfig(
            n_items=n_items, max_seq_len=s.max_seq_len, embedding_dim=s.embedding_dim, n_layers=s.n_layers,
            n_heads=s.n_heads, dropout=s.dropout,
        )
        inputs, targets = training_examples(train, s.max_seq_len)
        if len(inputs) == 0:
            raise ValueError("SASRecRecommender.fit: no user has 2 train interactions to learn from")

        def validate_model(model) -> dict[str, float]:
            self.model = model  # `validate` scores through this recommender (self.score)
            return {_VALID_SCORE: float(validate(self))}

        started = time.perf_counter()
        result = fit_sasrec(
            config, s.fit_settings(), inputs, targets,
            validate=validate_model if validate is not None else None, select_metric=_VALID_SCORE,
        )
        self.model = result.model
        # The trace counts epochs from 1: `best_epoch` is the epoch count the runner refits with.
        self.trace = FitTrace(
            scores={int(row["epoch"]) + 1: row[_VALID_SCORE] for row in result.history if _VALID_SCORE in row},
            best_epoch=result.state.best_epoch + 1 if result.state.best_epoch >= 0 else -1,
            seconds=time.perf_counter() - started,
        )
        if result.state.best_state is not None:
            self.model.load_state_dict(result.state.best_state)
        self.model.eval()
        return self

    def score(self, users: Sequence[str], histories: Sequence[Sequence[int]], batch_size: int = 256) -> np.ndarray:
        """Next-item scores (U, n_items + 1) from each user's last ``max_seq_len`` items."""
        import torch

        if self.model is None:
            raise RuntimeError("SASRecRecommender is not fitted: call fit(train, n_items) first")
        windows = np.stack([recent_window(h, self.settings.max_seq_len) for h in histories])
        self.model.eval()
        with torch.no_grad():
            parts = [
                self.model.score_next(torch.from_numpy(windows[i : i + batch_size])).double().numpy()
                for i in range(0, len(windows), batch_size)
            ]
        return np.concatenate(parts) if parts else np.zeros((0, self.model.config.n_items + 1))
