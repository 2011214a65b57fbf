"""The training loop's parts in plain torch over plain iterables (no Ray).

Examples are sliding windows of ``max_seq_len + 1`` items over each user's
train history: the input is the first ``max_seq_len`` items and the target at
every position is the item that follows it. Loss is a full softmax
(cross-entropy over all items) at every non-padding position.
:func:`aisys.training.fit.fit_sasrec` composes these parts into the one epoch
loop that Ray Train, Tune trials, the evaluation runner and the benchmarks run;
:func:`evaluate` scores a model with the metrics of :mod:`aisys.quality.ranking`.
"""

from __future__ import annotations

import random
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aisys.features.sequences import recent_window
from aisys.quality.protocol import EvalSet
from aisys.quality.ranking import summarize_ranks, target_ranks, top_k_items


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch so a run is reproducible."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed for one epoch's global RNGs (dropout), derived from ``(seed, epoch)`` only.

    Re-seeding with it at the start of every epoch makes an epoch's randomness
    independent of what ran before it, so a run resumed from epoch ``k``'s
    checkpoint (model + optimizer state) trains epoch ``k + 1`` exactly as the
    uninterrupted run did, with no RNG state to carry in the checkpoint. It
    differs from ``seed`` itself (the weight initialisation's seed).
    """
    return int(np.random.SeedSequence([seed % 2**32, epoch, 0x5EED]).generate_state(1)[0])


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
    inputs: np.ndarray,
    targets: np.ndarray,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    bucket_by_length: bool = True,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (inputs, targets) LongTensor batches, shuffled with ``seed``.

    With ``bucket_by_length`` (the default) each batch holds windows of similar
    length (the batches themselves come in random order) and its all-padding
    leading columns are cut off: the same examples and the same loss per
    position, but a short user's window no longer pays for a long window's
    length (an ML-100K epoch at max_seq_len 200 took half the time).
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(inputs)) if shuffle else np.arange(len(inputs))
    if bucket_by_length:
        lengths = (inputs[order] != 0).sum(axis=1)
        order = order[np.argsort(lengths, kind="stable")]  # shuffled within equal lengths
        starts = np.arange(0, len(order), batch_size)
        if shuffle:
            starts = rng.permutation(starts)
    else:
        starts = np.arange(0, len(order), batch_size)
    for start in starts:
        rows = order[start : start + batch_size]
        batch_inputs, batch_targets = inputs[rows], targets[rows]
        if bucket_by_length:
            batch_inputs, batch_targets = trim_left_padding(batch_inputs, batch_targets)
        yield torch.from_numpy(batch_inputs), torch.from_numpy(batch_targets)


def trim_left_padding(inputs: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop the leading columns that are padding in every row of (B, T) left-padded windows (keeps >= 1)."""
    real = (inputs != 0).any(axis=0)
    first = int(np.argmax(real)) if real.any() else inputs.shape[1] - 1
    return np.ascontiguousarray(inputs[:, first:]), np.ascontiguousarray(targets[:, first:])


def next_item_loss(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    horizon: int = 1,
    horizon_weight: float = 0.0,
) -> torch.Tensor:
    """Mean cross-entropy over all items at every position with a real input and target.

    With ``horizon > 1`` each position also predicts the items 2..``horizon``
    steps ahead (read from the same ``targets`` shifted left), and the mean
    cross-entropy of those is added with ``horizon_weight``: a user's taste
    over the next few items, not only the very next one.
    """
    inner = model.module if hasattr(model, "module") else model
    # Call the (possibly DDP-wrapped) model's forward so gradients synchronise,
    # then project onto the tied item embeddings.
    hidden = model(inputs)  # (B, T, D)
    # Position with a padded input predicts the first item from nothing: skip it.
    real = (inputs != 0) & (targets != 0)  # (B, T)
    # Project only the real positions: left-padded windows are often mostly
    # padding, and the (positions, V) logits are most of an epoch's work.
    logits = hidden[real] @ inner.item_emb.weight.T  # (P, V)
    if horizon <= 1 or horizon_weight <= 0:
        return F.cross_entropy(logits, targets[real])
    log_probs = F.log_softmax(logits, dim=-1)  # (P, V)
    loss = F.nll_loss(log_probs, targets[real])
    ahead = []
    for step in range(1, horizon):
        future = torch.zeros_like(targets)  # (B, T): the item `step + 1` ahead, 0 past the window
        if step < targets.shape[1]:
            future[:, : targets.shape[1] - step] = targets[:, step:]
        ahead.append(future[real])  # (P,)
    future = torch.stack(ahead, dim=1)  # (P, horizon - 1)
    known = future != 0
    if bool(known.any()):
        picked = log_probs.gather(1, future)  # (P, horizon - 1)
        loss = loss - horizon_weight * picked[known].mean()
    return loss


def train_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    device: torch.device | str | None = None,
    horizon: int = 1,
    horizon_weight: float = 0.0,
) -> float:
    """One pass over ``batches``; returns the mean loss per batch (0.0 when there is none).

    ``horizon``/``horizon_weight``: see :func:`next_item_loss` (default: next item only).
    """
    model.train()
    total, count = 0.0, 0
    for inputs, targets in batches:
        if device is not None:
            inputs, targets = inputs.to(device), targets.to(device)
        if not bool((targets.masked_fill(inputs == 0, 0) > 0).any()):
            continue
        optimizer.zero_grad(set_to_none=True)
        loss = next_item_loss(model, inputs, targets, horizon, horizon_weight)
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
    """Full-ranking metrics (see :mod:`aisys.quality.ranking`) of ``model`` on ``eval_set``.

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
