"""The training loop in plain torch over plain iterables (no Ray).

Examples are sliding windows of ``max_seq_len + 1`` items over each user's
train history: the input is the first ``max_seq_len`` items and the target at
every position is the item that follows it. Loss is a full softmax
(cross-entropy over all items) at every non-padding position. Ray Train's
worker function (``aisys.training.ray_train``) calls these same functions.
"""

from __future__ import annotations

import random
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aisys.features.sequences import recent_window
from aisys.training.metrics import summarize_ranks, target_ranks, top_k_items
from aisys.training.split import EvalSet


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch so a run is reproducible."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def training_examples(
    histories: Mapping[str, Sequence[int]] | Iterable[Sequence[int]], max_seq_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cut histories into (inputs, targets), each int64 of shape (N, max_seq_len).

    Windows of ``max_seq_len + 1`` items are taken from the end of each history
    backwards with stride ``max_seq_len``, so every transition is a target
    exactly once; the earliest window is left-padded with 0. Histories with
    fewer than 2 items give no example.
    """
    seqs = histories.values() if isinstance(histories, Mapping) else histories
    inputs, targets = [], []
    span = max_seq_len + 1
    for history in seqs:
        history = list(history)
        end = len(history)
        while end >= 2:
            window = recent_window(history[max(0, end - span) : end], span)  # (T + 1,)
            inputs.append(window[:-1])
            targets.append(window[1:])
            end -= max_seq_len
    if not inputs:
        empty = np.zeros((0, max_seq_len), dtype=np.int64)
        return empty, empty.copy()
    return np.stack(inputs), np.stack(targets)


def iterate_batches(
    inputs: np.ndarray, targets: np.ndarray, batch_size: int, shuffle: bool = True, seed: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (inputs, targets) LongTensor batches, shuffled with ``seed``."""
    order = np.random.default_rng(seed).permutation(len(inputs)) if shuffle else np.arange(len(inputs))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        yield torch.from_numpy(inputs[rows]), torch.from_numpy(targets[rows])


def next_item_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over all items at every position with a real input and target."""
    inner = model.module if hasattr(model, "module") else model
    # Call the (possibly DDP-wrapped) model's forward so gradients synchronise,
    # then project onto the tied item embeddings.
    hidden = model(inputs)  # (B, T, D)
    logits = hidden @ inner.item_emb.weight.T  # (B, T, V)
    # Position with a padded input predicts the first item from nothing: skip it.
    targets = targets.masked_fill(inputs == 0, 0)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=0)


def train_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    device: torch.device | str | None = None,
) -> float:
    """One pass over ``batches``; returns the mean loss per batch (0.0 when there is none)."""
    model.train()
    total, count = 0.0, 0
    for inputs, targets in batches:
        if device is not None:
            inputs, targets = inputs.to(device), targets.to(device)
        if not bool((targets.masked_fill(inputs == 0, 0) > 0).any()):
            continue
        optimizer.zero_grad(set_to_none=True)
        loss = next_item_loss(model, inputs, targets)
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
        count += 1
    return total / count if count else 0.0


def score_windows(model: Any, windows: np.ndarray, device: torch.device | str | None = None) -> np.ndarray:
    """Next-item scores for (B, T) windows from a torch model or a numpy scorer -> (B, V) numpy."""
    if isinstance(model, nn.Module):
        inner = model.module if hasattr(model, "module") else model
        was_training = inner.training
        inner.eval()
        with torch.no_grad():
            batch = torch.from_numpy(windows)
            if device is not None:
                batch = batch.to(device)
            scores = inner.score_next(batch).float().cpu().numpy()
        inner.train(was_training)
        return scores
    return np.asarray(model.score_next(windows))


def evaluate(
    model: Any,
    eval_set: EvalSet,
    max_seq_len: int,
    k: int = 10,
    batch_size: int = 256,
    item_popularity: Sequence[float] | None = None,
    exclude_history: bool = True,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Full-ranking metrics (see :mod:`aisys.training.metrics`) of ``model`` on ``eval_set``.

    ``model`` is a SASRec (or DDP-wrapped one) or anything with
    ``score_next(windows) -> (B, n_items + 1)`` such as ``PopularityModel``.
    Each user's input history is excluded from ranking unless
    ``exclude_history=False``; the target never is.
    """
    ranks, recommended = [], []
    n_cols = None
    for start in range(0, len(eval_set), batch_size):
        hist = eval_set.histories[start : start + batch_size]
        tgt = eval_set.targets[start : start + batch_size]
        windows = np.stack([recent_window(h, max_seq_len) for h in hist])
        scores = score_windows(model, windows, device)  # (B, V)
        n_cols = scores.shape[1]
        exclude = hist if exclude_history else None
        ranks.append(target_ranks(scores, tgt, exclude))
        recommended.append(top_k_items(scores, k, exclude))
    if n_cols is None:
        raise ValueError("eval_set is empty: no user has enough interactions to evaluate")
    return summarize_ranks(np.concatenate(ranks), np.concatenate(recommended), n_cols - 1, k, item_popularity)
