"""Full-ranking metrics for next-item recommendation (pure numpy).

Every real item is ranked for every user (no sampled negatives). Rules:
- the padding index 0 is never ranked;
- the user's known history is excluded (score -inf) -- except the target
  itself, which is always ranked even if the user saw it before;
- ties are broken **pessimistically**: the target ranks after every other
  candidate with an equal score, so a constant scorer gets no credit.

``rank`` below is 0-based: HR@k = [rank < k], NDCG@k = 1/log2(rank + 2) when a
hit, MRR@k = 1/(rank + 1) when a hit; all averaged over users.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _check(scores: np.ndarray, targets: np.ndarray | None, exclude: Sequence[Sequence[int]] | None) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-d (users, n_items + 1), got shape {scores.shape}")
    n_users, n_cols = scores.shape
    if targets is not None:
        if targets.shape != (n_users,):
            raise ValueError(f"targets must have shape ({n_users},), got {targets.shape}")
        if n_users and (targets.min() < 1 or targets.max() >= n_cols):
            raise ValueError(f"targets must be item indices in 1..{n_cols - 1} (0 is padding)")
    if exclude is not None and len(exclude) != n_users:
        raise ValueError(f"exclude must have one entry per user ({n_users}), got {len(exclude)}")
    return scores


def _candidate_mask(
    shape: tuple[int, int], exclude: Sequence[Sequence[int]] | None, targets: np.ndarray | None
) -> np.ndarray:
    """True where an item competes: not padding, not in the user's history (the target always does)."""
    candidates = np.ones(shape, dtype=bool)
    candidates[:, 0] = False
    if exclude is not None:
        for u, items in enumerate(exclude):
            if len(items):
                candidates[u, np.asarray(items, dtype=np.int64)] = False
    if targets is not None:
        candidates[np.arange(shape[0]), targets] = True
    return candidates


def target_ranks(
    scores: np.ndarray, targets: np.ndarray, exclude: Sequence[Sequence[int]] | None = None
) -> np.ndarray:
    """0-based rank of each user's target among its candidates, ties pessimistic."""
    targets = np.asarray(targets, dtype=np.int64)
    scores = _check(scores, targets, exclude)
    n_users = scores.shape[0]
    others = _candidate_mask(scores.shape, exclude, targets)
    others[np.arange(n_users), targets] = False
    target_score = scores[np.arange(n_users), targets][:, None]  # (U, 1)
    # >= : an equal-scored competitor ranks ahead of the target (pessimistic tie rule).
    return ((scores >= target_score) & others).sum(axis=1).astype(np.int64)


def top_k_items(scores: np.ndarray, k: int, exclude: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """The k best item indices per user, best first, shape (U, min(k, n_items)).

    Padding and each user's ``exclude`` items are never recommended (what a user
    would be shown). Ties resolve to the lower item index.
    """
    scores = _check(scores, None, exclude)
    masked = np.where(_candidate_mask(scores.shape, exclude, None), scores, -np.inf)
    k = min(k, masked.shape[1] - 1)
    return np.argsort(-masked, axis=1, kind="stable")[:, :k]


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

    ``recommended`` is the (U, k) top-k list per user (from :func:`top_k_items`).
    Returns ``hr@k, ndcg@k, mrr@k, coverage@k`` (share of the catalogue that is
    recommended to anyone), ``n_users`` and, with ``item_popularity``,
    ``popularity@k`` (mean popularity of recommended items).
    """
    ranks = np.asarray(ranks, dtype=np.int64)
    metrics = {name: float(values.mean()) if ranks.size else 0.0
               for name, values in per_user_rank_metrics(ranks, k).items()}
    metrics.update({
        f"coverage@{k}": float(np.unique(recommended).size / n_items) if recommended.size and n_items else 0.0,
        "n_users": float(ranks.size),
    })
    if item_popularity is not None:
        pop = np.asarray(item_popularity, dtype=np.float64)
        metrics[f"popularity@{k}"] = float(pop[recommended].mean()) if recommended.size else 0.0
    return metrics


def rank_metrics(
    scores: np.ndarray,
    targets: np.ndarray,
    exclude: Sequence[Sequence[int]] | None,
    k: int = 10,
    item_popularity: Sequence[float] | None = None,
) -> dict[str, float]:
    """Full-ranking HR@k, NDCG@k, MRR@k (+ coverage@k, popularity@k) averaged over users.

    ``scores`` is (users, n_items + 1) with column 0 the padding index;
    ``targets`` the held-out item per user; ``exclude`` each user's known
    history (set to -inf, never the target). Ties are pessimistic.
    """
    ranks = target_ranks(scores, targets, exclude)
    recommended = top_k_items(scores, k, exclude)
    return summarize_ranks(ranks, recommended, np.asarray(scores).shape[1] - 1, k, item_popularity)
