"""SASRec behind the baselines' ``fit`` / ``score`` interface, trained in plain torch.

The same :mod:`aisys.training.loop` functions that Ray Train runs
(``training_examples``, ``iterate_batches``, ``train_epoch``) train it here, so
the evaluation measures the production model. ``fit`` can also validate every
few epochs and remember the best epoch count, which the runner then uses as the
fixed epoch count of the refit (no early stopping on test).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from aisys.features.sequences import recent_window


@dataclass
class SequentialSettings:
    """Model and training settings of one SASRec fit (from ``AppConfig`` by the runner)."""

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
        (and at the last) and keep the best weights and epoch count in :attr:`trace`."""
        import torch

        from aisys.models.sasrec import SASRec, SASRecConfig, cpu_state_dict
        from aisys.training.loop import iterate_batches, seed_everything, train_epoch, training_examples

        s = self.settings
        torch.set_num_threads(s.threads)
        seed_everything(s.seed)
        config = SASRecConfig(
            n_items=n_items, max_seq_len=s.max_seq_len, embedding_dim=s.embedding_dim, n_layers=s.n_layers,
            n_heads=s.n_heads, dropout=s.dropout,
        )
        self.model = SASRec(config)
        inputs, targets = training_examples(train, s.max_seq_len)
        if len(inputs) == 0:
            raise ValueError("SASRecRecommender.fit: no user has 2 train interactions to learn from")
        optimizer = torch.optim.Adam(self.model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
        self.trace = FitTrace()
        best_state = None
        started = time.perf_counter()
        for epoch in range(1, s.epochs + 1):
            batches = iterate_batches(
                inputs, targets, s.batch_size, seed=s.seed + epoch, bucket_by_length=s.bucket_by_length
            )
            train_epoch(self.model, batches, optimizer, horizon=s.horizon, horizon_weight=s.horizon_weight)
            if validate is not None and (epoch % s.eval_every == 0 or epoch == s.epochs):
                score = float(validate(self))
                self.trace.scores[epoch] = score
                if self.trace.best_epoch < 0 or score > self.trace.scores[self.trace.best_epoch]:
                    self.trace.best_epoch, best_state = epoch, cpu_state_dict(self.model)
        self.trace.seconds = time.perf_counter() - started
        if best_state is not None:
            self.model.load_state_dict(best_state)
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
