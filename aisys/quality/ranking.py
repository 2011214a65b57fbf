"""Full-ranking metrics for next-item recommendation (pure numpy): the one home of the ranking metrics.

Training's validation (:func:`aisys.training.loop.evaluate`), the promotion gate (:mod:`aisys.registry.gate`,
:mod:`aisys.registry.holdout`) and the evaluation runner all import them from here. Every real item is ranked for
every user (no sampled negatives). Rules:

- the padding index 0 is never ranked;
- the user's known history is excluded (score -inf), except a target, which is always ranked even if the user saw
  it before;
- ties are broken **pessimistically**: a target ranks after every non-target with an equal score, so a constant
  scorer gets no credit (targets tied with each other take consecutive positions).

Two call shapes, because two kinds of task need them:

- **one target per user** (leave-last-one-out; training and the gate): :func:`target_ranks` gives each user's
  0-based ``rank``; HR@k = [rank < k], NDCG@k = 1/log2(rank + 2) when a hit, MRR@k = 1/(rank + 1) when a hit
  (:func:`per_user_rank_metrics`), averaged by :func:`summarize_ranks`; :func:`rank_metrics` does all of it;
- **one or more targets per user** (the temporal split; the runner): :func:`user_metrics` gives per-user HR@k
  (any target in the top k), NDCG@k = DCG / ideal DCG with binary relevance, MRR@k (first target within k);
  :func:`ranking_metrics` averages them. With one target these equal the single-target figures (tested).

Catalogue coverage@k is the share of the catalogue recommended to anyone in the top k; popularity@k is the mean
(train) popularity of the recommended items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def masked_scores(scores: np.ndarray, exclude: Sequence[Sequence[int]] | None) -> np.ndarray:
    """A float64 copy of ``scores`` (U, n_items + 1) with padding and each user's ``exclude`` items at -inf."""
    masked = np.array(scores, dtype=np.float64, copy=True)
    if masked.ndim != 2:
        raise ValueError(f"scores must be 2-d (users, n_items + 1), got shape {masked.shape}")
    masked[:, 0] = -np.inf
    if exclude is not None:
        if len(exclude) != masked.shape[0]:
            raise ValueError(f"exclude must have one entry per user ({masked.shape[0]}), got {len(exclude)}")
        for u, items in enumerate(exclude):
            if len(items):
                masked[u, np.asarray(items, dtype=np.int64)] = -np.inf
    return masked


def top_k_items(scores: np.ndarray, k: int, exclude: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """The k best item indices per user, best first, shape (U, min(k, n_items)).

    Padding and each user's ``exclude`` items are never recommended (what a user would be shown). Ties resolve to
    the lower item index.
    """
    masked = masked_scores(scores, exclude)
    k = min(k, masked.shape[1] - 1)
    return np.argsort(-masked, axis=1, kind="stable")[:, :k]


def catalogue_metrics(
    recommended: np.ndarray, n_items: int, k: int, item_popularity: Sequence[float] | None = None
) -> dict[str, float]:
    """``coverage@k`` (distinct recommended items / catalogue; index 0 = none) and, with ``item_popularity``,
    ``popularity@k`` (mean popularity of the recommended items)."""
    recommended = np.asarray(recommended, dtype=np.int64)
    shown = recommended[recommended > 0]
    metrics = {f"coverage@{k}": float(np.unique(shown).size / n_items) if shown.size and n_items else 0.0}
    if item_popularity is not None:
        pop = np.asarray(item_popularity, dtype=np.float64)
        metrics[f"popularity@{k}"] = float(pop[recommended].mean()) if recommended.size else 0.0
    return metrics


# --------------------------------------------------------------------------- one target per user


def _check_single(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-d (users, n_items + 1), got shape {scores.shape}")
    n_users, n_cols = scores.shape
    if targets.shape != (n_users,):
        raise ValueError(f"targets must have shape ({n_users},), got {targets.shape}")
    if n_users and (targets.min() < 1 or targets.max() >= n_cols):
        raise ValueError(f"targets must be item indices in 1..{n_cols - 1} (0 is padding)")
    return scores


def target_ranks(
    scores: np.ndarray, targets: np.ndarray, exclude: Sequence[Sequence[int]] | None = None
) -> np.ndarray:
    """0-based rank of each user's single target among its candidates, ties pessimistic."""
    targets = np.asarray(targets, dtype=np.int64)
    scores = _check_single(scores, targets)
    rows = np.arange(scores.shape[0])
    others = _competitors(scores.shape, exclude)
    others[rows, targets] = False  # the target is not its own competitor
    target_score = scores[rows, targets][:, None]  # (U, 1): the raw score, even if the target is in the history
    # >= : an equal-scored competitor ranks ahead of the target (pessimistic tie rule).
    return ((scores >= target_score) & others).sum(axis=1).astype(np.int64)


def _competitors(shape: tuple[int, int], exclude: Sequence[Sequence[int]] | None) -> np.ndarray:
    """True where an item competes with the target: not padding, not in the user's history."""
    candidates = np.ones(shape, dtype=bool)
    candidates[:, 0] = False
    if exclude is not None:
        if len(exclude) != shape[0]:
            raise ValueError(f"exclude must have one entry per user ({shape[0]}), got {len(exclude)}")
        for u, items in enumerate(exclude):
            if len(items):
                candidates[u, np.asarray(items, dtype=np.int64)] = False
    return candidates


def per_user_rank_metrics(ranks: np.ndarray, k: int = 10) -> dict[str, np.ndarray]:
    """Each user's ``hr@k``, ``ndcg@k`` and ``mrr@k`` from the target's 0-based rank (a miss scores 0)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    hit = ranks < k
    return {
        f"hr@{k}": hit.astype(np.float64),
        f"ndcg@{k}": np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0),
        f"mrr@{k}": np.where(hit, 1.0 / (ranks + 1.0), 0.0),
    }


def summarize_ranks(
    ranks: np.ndarray,
    recommended: np.ndarray,
    n_items: int,
    k: int = 10,
    item_popularity: Sequence[float] | None = None,
) -> dict[str, float]:
    """Average rank-based metrics and catalogue statistics over users.

    ``recommended`` is the (U, k) top-k list per user (from :func:`top_k_items`). Returns ``hr@k, ndcg@k, mrr@k,
    coverage@k``, ``n_users`` and, with ``item_popularity``, ``popularity@k`` (see :func:`catalogue_metrics`).
    """
    ranks = np.asarray(ranks, dtype=np.int64)
    metrics = {name: float(values.mean()) if ranks.size else 0.0
               for name, values in per_user_rank_metrics(ranks, k).items()}
    metrics.update(catalogue_metrics(recommended, n_items, k, item_popularity))
    metrics["n_users"] = float(ranks.size)
    return metrics


def rank_metrics(
    scores: np.ndarray,
    targets: np.ndarray,
    exclude: Sequence[Sequence[int]] | None,
    k: int = 10,
    item_popularity: Sequence[float] | None = None,
) -> dict[str, float]:
    """Full-ranking HR@k, NDCG@k, MRR@k (+ coverage@k, popularity@k) averaged over users, one target each.

    ``scores`` is (users, n_items + 1) with column 0 the padding index; ``targets`` the held-out item per user;
    ``exclude`` each user's known history (set to -inf, never the target).
    """
    ranks = target_ranks(scores, targets, exclude)
    recommended = top_k_items(scores, k, exclude)
    return summarize_ranks(ranks, recommended, np.asarray(scores).shape[1] - 1, k, item_popularity)


# --------------------------------------------------------------------------- one or more targets per user


@dataclass
class UserMetrics:
    """Per-user metric arrays (aligned with the task's users) and each user's top-k list."""

    hr: np.ndarray  # (U,)
    ndcg: np.ndarray  # (U,)
    mrr: np.ndarray  # (U,)
    top_k: np.ndarray  # (U, k) item indices, best first
    target_positions: list[np.ndarray]  # per user, 0-based positions of the targets (pessimistic)
    single_ranks: list[np.ndarray]  # per user, each target's rank among non-targets alone


def user_metrics(
    scores: np.ndarray,
    targets: Sequence[Sequence[int]],
    exclude: Sequence[Sequence[int]] | None,
    k: int = 10,
) -> UserMetrics:
    """Per-user HR@k, NDCG@k, MRR@k of ``scores`` (U, n_items + 1) against ``targets`` (one or more each)."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(targets) != scores.shape[0]:
        raise ValueError(f"targets must have one entry per user ({scores.shape[0]}), got {len(targets)}")
    masked = masked_scores(scores, exclude)
    n_cols = scores.shape[1]
    hr, ndcg, mrr = (np.zeros(scores.shape[0]) for _ in range(3))
    positions, singles = [], []
    discounts = 1.0 / np.log2(np.arange(k) + 2.0)
    for u, tgt in enumerate(targets):
        tgt = np.unique(np.asarray(tgt, dtype=np.int64))
        if tgt.size == 0:
            raise ValueError(f"user row {u} has no target")
        if tgt.min() < 1 or tgt.max() >= n_cols:
            raise ValueError(f"targets of user row {u} must be item indices in 1..{n_cols - 1}")
        row = masked[u]
        tscore = scores[u, tgt]  # targets compete even if excluded: use their raw scores
        others = row.copy()
        others[tgt] = -np.inf
        finite_others = np.sort(others[np.isfinite(others)])
        # Pessimistic: non-targets with score >= the target's rank ahead of it.
        single = finite_others.size - np.searchsorted(finite_others, tscore, side="left")
        # Among targets, higher score first; equal scores by item index (consecutive positions).
        order = np.lexsort((tgt, -tscore))
        pos = single[order] + np.arange(tgt.size)
        positions.append(pos)
        singles.append(single)
        hits = pos[pos < k]
        hr[u] = float(hits.size > 0)
        ideal = discounts[: min(tgt.size, k)].sum()
        ndcg[u] = float(discounts[hits].sum() / ideal)
        mrr[u] = float(1.0 / (pos.min() + 1.0)) if hits.size else 0.0
    return UserMetrics(hr, ndcg, mrr, top_k_items(masked, k), positions, singles)


def summarize(
    per_user: UserMetrics, n_items: int, k: int = 10, item_popularity: Sequence[float] | None = None
) -> dict[str, float]:
    """Means over users, plus coverage@k and (with ``item_popularity``) popularity@k."""
    n = per_user.hr.size
    metrics = {
        f"hr@{k}": float(per_user.hr.mean()) if n else 0.0,
        f"ndcg@{k}": float(per_user.ndcg.mean()) if n else 0.0,
        f"mrr@{k}": float(per_user.mrr.mean()) if n else 0.0,
    }
    metrics.update(catalogue_metrics(per_user.top_k, n_items, k, item_popularity))
    metrics["n_users"] = float(n)
    return metrics


def ranking_metrics(
    scores: np.ndarray,
    targets: Sequence[Sequence[int]],
    exclude: Sequence[Sequence[int]] | None,
    k: int = 10,
    item_popularity: Sequence[float] | None = None,
) -> dict[str, float]:
    """Full-ranking HR@k, NDCG@k, MRR@k, coverage@k (+ popularity@k) averaged over users (one or more targets)."""
    per_user = user_metrics(scores, targets, exclude, k)
    return summarize(per_user, np.asarray(scores).shape[1] - 1, k, item_popularity)
