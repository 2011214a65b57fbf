"""Full-ranking metrics with one or more targets per user (pure numpy).

Extends :mod:`aisys.training.metrics` (single target) to the temporal split,
where a user has several relevant items. Rules, as in the protocol:

- every real item is a candidate except the user's known history (score
  -inf); a target is always a candidate; index 0 (padding) never is;
- ties are pessimistic: a target ranks after every non-target with an equal
  score (targets tied with each other take consecutive positions);
- per user: HR@k = 1 if any target is in the top k; NDCG@k = DCG / ideal DCG
  with binary relevance; MRR@k = 1 / (position of the first target) if it is
  within k. With one target these equal :func:`aisys.training.metrics.rank_metrics`.

Catalogue coverage@k is the share of the catalogue recommended to anyone in
the top k; popularity@k is the mean train popularity of the recommended items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from aisys.training.metrics import top_k_items


@dataclass
class UserMetrics:
    """Per-user metric arrays (aligned with the task's users) and each user's top-k list."""

    hr: np.ndarray  # (U,)
    ndcg: np.ndarray  # (U,)
    mrr: np.ndarray  # (U,)
    top_k: np.ndarray  # (U, k) item indices, best first
    target_positions: list[np.ndarray]  # per user, 0-based positions of the targets (pessimistic)
    single_ranks: list[np.ndarray]  # per user, each target's rank among non-targets alone


def masked_scores(scores: np.ndarray, exclude: Sequence[Sequence[int]] | None) -> np.ndarray:
    """A float64 copy of ``scores`` with padding and each user's ``exclude`` items at -inf."""
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


def user_metrics(
    scores: np.ndarray,
    targets: Sequence[Sequence[int]],
    exclude: Sequence[Sequence[int]] | None,
    k: int = 10,
) -> UserMetrics:
    """Per-user HR@k, NDCG@k, MRR@k of ``scores`` (U, n_items + 1) against ``targets``."""
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
    recommended = per_user.top_k
    metrics = {
        f"hr@{k}": float(per_user.hr.mean()) if n else 0.0,
        f"ndcg@{k}": float(per_user.ndcg.mean()) if n else 0.0,
        f"mrr@{k}": float(per_user.mrr.mean()) if n else 0.0,
        f"coverage@{k}": float(np.unique(recommended[recommended > 0]).size / n_items) if n and n_items else 0.0,
        "n_users": float(n),
    }
    if item_popularity is not None:
        pop = np.asarray(item_popularity, dtype=np.float64)
        metrics[f"popularity@{k}"] = float(pop[recommended].mean()) if recommended.size else 0.0
    return metrics


def ranking_metrics(
    scores: np.ndarray,
    targets: Sequence[Sequence[int]],
    exclude: Sequence[Sequence[int]] | None,
    k: int = 10,
    item_popularity: Sequence[float] | None = None,
) -> dict[str, float]:
    """Full-ranking HR@k, NDCG@k, MRR@k, coverage@k (+ popularity@k) averaged over users."""
    per_user = user_metrics(scores, targets, exclude, k)
    return summarize(per_user, np.asarray(scores).shape[1] - 1, k, item_popularity)
