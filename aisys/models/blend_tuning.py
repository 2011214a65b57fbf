"""Tune the multi-stage blend on the validation window: weights per generator and per gap bucket (pure numpy).

The blend scores item ``i`` for user ``u`` as ``sum_s w[b(u), s] * z_s[u, i]``, where
``z_s`` is generator ``s``'s scores standardised per user (:func:`~aisys.models.baselines.standardize_rows`)
and ``b(u)`` the user's gap bucket (:func:`~aisys.models.context_blend.gap_buckets`). :func:`tune_blend`
chooses ``w`` and the bucket threshold on valid targets, every generator fit on the train window:

1. one weight vector for everyone: a coordinate search, SASRec at 1, each other generator's weight
   over ``weight_grid`` in turn (two passes), then SASRec's own weight over ``sasrec_weight_grid``;
2. a generator whose removal costs less than ``min_gain`` valid NDCG@10 is dropped (weight 0), the
   least useful first;
3. for each candidate threshold, the users whose gap exceeds it ("came back") get their own weights (the
   same search and the same dropping on those users only, from the global weights); the best threshold
   is kept only if it gains ``min_gain`` valid NDCG@10 over one weight vector.

Every candidate is scored on the whole (users x items) matrix at once (one weighted sum, one comparison
with the target's score), so a search of a few hundred candidates takes seconds on ML-100K. The grids
of the evaluation runner (``aisys.evaluation.runner``) live here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from aisys.models.context_blend import gap_buckets

# The grids of the evaluation runner's blends (the defaults of `model.stages` are the same values).
RECENCY_BLEND_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0)
SASREC_BLEND_WEIGHTS = (0.75, 0.5, 0.3, 0.2, 0.1)
# Users whose request comes more than one of these gaps (seconds) after their last interaction ("came back")
# get their own weights; 1 hour, 1 day, 1 week (a coarse grid: ~5-7% of LOO users are past each).
CONTEXT_GAP_THRESHOLDS = (3_600.0, 86_400.0, 604_800.0)
CONTEXT_SASREC_WEIGHTS = (1.0, 0.5, 0.25)
# A bucket (and, in the multi-stage model, a generator) is kept only if it gains this much valid NDCG@10
# (943 LOO users, ~60 of them in the bucket: smaller gains are within what tuning on valid finds by chance).
CONTEXT_MIN_GAIN = 0.002
# The title similarity's history window and age decay (screened on LOO valid) and the runner's weight grid.
TITLE_WINDOW = 20
TITLE_DECAY = 0.9
TITLE_WEIGHTS = (0.0, 0.05, 0.1, 0.15, 0.25, 0.5)
K = 10


@dataclass
class BlendChoice:
    """The tuned blend: generator names (columns), one weight vector per gap bucket, and what each added."""

    stages: list[str]
    bucket_weights: list[list[float]]
    gap_thresholds: list[float]
    valid_ndcg: float = 0.0
    # Valid NDCG@10 lost when a generator is removed from the final blend (its weights 0 in every bucket);
    # a dropped generator keeps what removing it cost when it was dropped (< min_gain); one never weighted, 0.
    stage_gain: dict[str, float] = field(default_factory=dict)
    bucket_gain: float = 0.0  # valid NDCG@10 the came-back bucket added over one weight vector (0: none kept)

    def active_stages(self) -> list[str]:
        """Generators with a non-zero weight in some bucket (the others need not be scored)."""
        return [s for j, s in enumerate(self.stages) if any(w[j] > 0 for w in self.bucket_weights)]

    def to_dict(self) -> dict:
        """JSON-able form (stored in the bundle)."""
        return {"stages": list(self.stages), "bucket_weights": [list(map(float, w)) for w in self.bucket_weights],
                "gap_thresholds": list(map(float, self.gap_thresholds)), "valid_ndcg": float(self.valid_ndcg),
                "stage_gain": {k: float(v) for k, v in self.stage_gain.items()}, "bucket_gain": float(self.bucket_gain)}

    @classmethod
    def from_dict(cls, data: Mapping) -> "BlendChoice":
        """Inverse of :meth:`to_dict`."""
        return cls(list(data["stages"]), [list(map(float, w)) for w in data["bucket_weights"]],
                   list(map(float, data["gap_thresholds"])), float(data.get("valid_ndcg", 0.0)),
                   dict(data.get("stage_gain", {})), float(data.get("bucket_gain", 0.0)))


def blend_z_scores(z_scores: Sequence[np.ndarray], row_weights: np.ndarray) -> np.ndarray:
    """``out[u] = sum_s row_weights[u, s] * z_scores[s][u]``; an entry non-finite in any input is -inf.

    ``z_scores`` are standardised (U, V) matrices (padding at -inf), ``row_weights`` is (U, S): each user's
    bucket's weights. The model's scorer and the tuner both blend through this.
    """
    if not z_scores:
        raise ValueError("blend_z_scores needs at least one score matrix")
    row_weights = np.asarray(row_weights, dtype=np.float64)
    if row_weights.shape != (z_scores[0].shape[0], len(z_scores)):
        raise ValueError(f"row_weights must be (users, stages) = {(z_scores[0].shape[0], len(z_scores))}, "
                         f"got {row_weights.shape}")
    finite = np.logical_and.reduce([np.isfinite(z) for z in z_scores])
    total = np.zeros(z_scores[0].shape, dtype=np.float64)
    for s, z in enumerate(z_scores):
        total += row_weights[:, s : s + 1] * np.where(finite, z, 0.0)
    return np.where(finite, total, -np.inf)


class _ValidSet:
    """The valid users' z-scores stacked once, with the ranking rules of :mod:`aisys.quality.ranking`.

    With ``all_targets`` (one or more relevant items per user: a returning user's every later item) the NDCG is
    the protocol's multi-target one: each target's gain at its position in the list, over the ideal list's.
    A target's position counts every competing item scoring at least as high, other targets included (the
    protocol orders equal-scoring targets by index: it differs only when two targets tie exactly).
    """

    def __init__(self, z: Sequence[np.ndarray], targets: np.ndarray, exclude: Sequence[Sequence[int]], k: int,
                 all_targets: Sequence[Sequence[int]] | None = None):
        finite = np.logical_and.reduce([np.isfinite(m) for m in z])
        self.stack = np.stack([np.where(finite, m, 0.0).astype(np.float32) for m in z])  # (S, U, V)
        n_users = self.stack.shape[1]
        # 0 where an item competes, -inf where it never does (padding, non-finite, the user's history).
        penalty = np.where(finite, 0.0, -np.inf).astype(np.float32)
        for u, items in enumerate(exclude):
            if len(items):
                penalty[u, np.asarray(items, dtype=np.int64)] = -np.inf
        self.targets = np.asarray(targets, dtype=np.int64)
        penalty[np.arange(n_users), self.targets] = 0.0  # the target always competes
        self.pairs = None
        if all_targets is not None and any(len(t) > 1 for t in all_targets):
            if len(all_targets) != n_users:
                raise ValueError(f"all_targets needs one entry per valid user ({n_users})")
            lengths = np.array([len(t) for t in all_targets], dtype=np.int64)
            pair_user = np.repeat(np.arange(n_users), lengths)
            pair_item = np.concatenate([np.asarray(t, dtype=np.int64) for t in all_targets])
            penalty[pair_user, pair_item] = 0.0
            discounts = np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))
            self.pairs = (pair_user, pair_item, discounts[np.minimum(lengths, k) - 1])
        self.penalty, self.k = penalty, k

    def ndcg(self, weights: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Per-user NDCG@k of the blend with ``weights`` (S,) over ``rows`` (all users by default)."""
        stack = self.stack if rows is None else self.stack[:, rows]
        penalty = self.penalty if rows is None else self.penalty[rows]
        scores = np.tensordot(np.asarray(weights, dtype=np.float32), stack, axes=1) + penalty  # (U, V)
        if self.pairs is not None:
            return self._multi_target_ndcg(scores, rows)
        targets = self.targets if rows is None else self.targets[rows]
        target = scores[np.arange(scores.shape[0]), targets][:, None]
        # Pessimistic ties: every competitor scoring >= the target ranks ahead (the target itself counted once).
        ranks = (scores >= target).sum(axis=1) - 1
        return np.where(ranks < self.k, 1.0 / np.log2(ranks + 2.0), 0.0)

    def _multi_target_ndcg(self, scores: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
        pair_user, pair_item, ideal = self.pairs
        if rows is not None:
            row_of = np.full(self.stack.shape[1], -1, dtype=np.int64)
            row_of[rows] = np.arange(len(rows))
            keep = row_of[pair_user] >= 0
            pair_user, pair_item, ideal = row_of[pair_user[keep]], pair_item[keep], ideal[rows]
        target = scores[pair_user, pair_item]
        ranks = (scores[pair_user] >= target[:, None]).sum(axis=1) - 1
        gains = np.where(ranks < self.k, 1.0 / np.log2(ranks + 2.0), 0.0)
        return np.bincount(pair_user, gains, minlength=scores.shape[0]) / ideal


def _coordinate_search(
    data: _ValidSet, start: np.ndarray, base: int, grid: Sequence[float], base_grid: Sequence[float],
    rows: np.ndarray | None, passes: int = 2,
) -> tuple[np.ndarray, float]:
    """Best weights found from ``start``: each non-base weight over ``grid`` in turn, then the base's."""
    best_w = np.asarray(start, dtype=np.float64).copy()
    best = data.ndcg(best_w, rows).sum()
    for _ in range(passes):
        for s in range(len(best_w)):
            if s == base:
                continue
            for w in grid:
                trial = best_w.copy()
                trial[s] = w
                total = data.ndcg(trial, rows).sum()
                if total > best + 1e-9:
                    best, best_w = total, trial
    for w in base_grid:
        trial = best_w.copy()
        trial[base] = w
        total = data.ndcg(trial, rows).sum()
        if total > best + 1e-9:
            best, best_w = total, trial
    return best_w, float(best)


def _drop_weak(
    data: _ValidSet, weights: np.ndarray, base: int, min_gain: float, rows: np.ndarray | None = None
) -> tuple[np.ndarray, dict[int, float]]:
    """Zero, one at a time and least useful first, each generator whose removal costs < ``min_gain`` valid
    NDCG@10 (summed over ``rows``, divided by every valid user: a bucket's share of the whole)."""
    weights = weights.copy()
    n_users = data.stack.shape[1]
    dropped: dict[int, float] = {}
    while True:
        full = data.ndcg(weights, rows).sum()
        losses = {}
        for s in np.flatnonzero(weights > 0):
            if s == base:
                continue
            trial = weights.copy()
            trial[s] = 0.0
            losses[int(s)] = (full - data.ndcg(trial, rows).sum()) / n_users
        weak = [s for s, loss in losses.items() if loss < min_gain]
        if not weak:
            return weights, dropped
        s = min(weak, key=lambda j: losses[j])
        dropped[s] = losses[s]
        weights[s] = 0.0


def tune_blend(
    z_scores: Mapping[str, np.ndarray],
    targets: np.ndarray,
    exclude: Sequence[Sequence[int]],
    gaps: np.ndarray,
    *,
    base: str = "sasrec",
    weight_grid: Sequence[float] = RECENCY_BLEND_WEIGHTS,
    base_weight_grid: Sequence[float] = (1.0, *SASREC_BLEND_WEIGHTS),
    gap_thresholds: Sequence[float] = CONTEXT_GAP_THRESHOLDS,
    min_gain: float = CONTEXT_MIN_GAIN,
    k: int = K,
    all_targets: Sequence[Sequence[int]] | None = None,
) -> BlendChoice:
    """Choose the blend on valid (see the module docstring).

    ``z_scores[name]``: generator ``name``'s standardised (U, n_items + 1) scores of the valid users;
    ``targets``: their valid items; ``exclude``: their histories (never ranked, as in the metrics);
    ``gaps``: seconds from each user's newest history event to the target's time (NaN: bucket 0);
    ``all_targets``: every relevant item of each user (a returning user's several; None: ``targets`` only),
    which the NDCG is then computed over.
    """
    names = list(z_scores)
    if base not in names:
        raise ValueError(f"tune_blend needs the base generator {base!r} among {names}")
    gaps = np.asarray(gaps, dtype=np.float64)
    if gaps.shape != (len(targets),) or len(exclude) != len(targets):
        raise ValueError(f"gaps and exclude need one entry per valid user ({len(targets)})")
    data = _ValidSet([z_scores[n] for n in names], targets, exclude, k, all_targets)
    n_users, b = len(targets), names.index(base)
    start = np.zeros(len(names))
    start[b] = 1.0
    weights, _ = _coordinate_search(data, start, b, weight_grid, base_weight_grid, None)
    weights, dropped = _drop_weak(data, weights, b, min_gain)
    per_user = data.ndcg(weights)

    best_gain, best = -np.inf, None
    for threshold in gap_thresholds:
        rows = np.flatnonzero(gaps > threshold)  # NaN compares False: unknown gaps stay in bucket 0
        if rows.size == 0:
            continue
        came_back, _ = _coordinate_search(data, weights, b, weight_grid, base_weight_grid, rows)
        came_back, _ = _drop_weak(data, came_back, b, min_gain, rows)
        total = data.ndcg(came_back, rows).sum()
        gain = (total - per_user[rows].sum()) / n_users
        if gain > best_gain + 1e-12:
            best_gain, best = gain, (float(threshold), came_back)
    bucket_weights, thresholds, bucket_gain = [weights], [], 0.0
    if best is not None and best_gain >= min_gain:
        thresholds, bucket_weights, bucket_gain = [best[0]], [weights, best[1]], float(best_gain)

    matrix = np.asarray(bucket_weights)  # (buckets, S)
    buckets = gap_buckets(gaps, thresholds)
    final = _bucketed_ndcg(data, matrix, buckets)
    stage_gain = {names[s]: loss for s, loss in dropped.items()}
    for s in range(len(names)):
        if matrix[:, s].any():
            ablated = matrix.copy()
            ablated[:, s] = 0.0
            stage_gain[names[s]] = float((final.sum() - _bucketed_ndcg(data, ablated, buckets).sum()) / n_users)
    for name in names:
        stage_gain.setdefault(name, 0.0)  # never weighted: it added nothing the search could find
    return BlendChoice(names, matrix.tolist(), thresholds, float(final.mean()), stage_gain, bucket_gain)


def _bucketed_ndcg(data: _ValidSet, bucket_weights: np.ndarray, buckets: np.ndarray) -> np.ndarray:
    """Per-user NDCG@k when each user gets their bucket's weights."""
    out = np.zeros(len(buckets))
    for bucket in np.unique(buckets):
        rows = np.flatnonzero(buckets == bucket)
        out[rows] = data.ndcg(bucket_weights[bucket], rows)
    return out
