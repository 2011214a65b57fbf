"""Choose the multistage model's ranking stage on the validation window: the blend or the learned ranker.

A fair comparison scores both **out of fold** on the same folds of the valid users: for each fold the blend is
tuned (:func:`~aisys.models.blend_tuning.tune_blend`) on the other folds, the ranker is trained on the other folds
(over features that include *that* blend's score, so nothing tuned on a held-out user reaches the ranker either),
and both score the held-out fold. ``auto`` keeps the ranker only when its out-of-fold NDCG@10 beats the blend's by
``min_gain``; the blend is simpler, cheaper to serve and has no online state, so a tie keeps it.

Everything here is numpy + LightGBM over score matrices already computed: the caller (``aisys.training``) fits
the generators; :func:`fit_final_ranker` trains the ranker that ships on every valid user.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from aisys.features.candidates import CandidateFeatures, candidate_features
from aisys.models.blend_tuning import BlendChoice
from aisys.quality.ranking import user_metrics
from aisys.models.ranker import (
    ONLINE_RANKER_FEATURE_SET,
    LearnedRanker,
    RankerSettings,
    candidate_labels,
    fit_ranker_holding_out,
    ranked_with_fallback,
)

RANKING_KINDS = ("auto", "blend", "lgbm")
K = 10


@dataclass(frozen=True)
class RankingDecision:
    """Which ranking stage ships, what was asked, and both out-of-fold valid NDCG@10 figures (None: not run)."""

    requested: str
    chosen: str  # "blend" or "lgbm"
    blend_valid_ndcg: float | None = None
    ranker_valid_ndcg: float | None = None
    folds: int = 0
    min_gain: float = 0.0
    # Standard error of the mean per-user (ranker - blend) NDCG@10 difference: the comparison's own noise.
    paired_se: float | None = None
    min_z: float = 0.0
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ValidTask:
    """What the comparison needs of the valid window, all arrays over the valid users (U of them).

    ``raw[name]``: generator ``name``'s (U, V) scores (fit on train); ``blend_for(choice, raw, gaps)`` the blend's
    (U, V) scores of a tuned :class:`BlendChoice` (the serving scorer's own blend code); ``tune(rows)`` tunes a
    blend on the valid users ``rows``; ``activity`` answers item features as of each request
    (:class:`~aisys.features.activity.PointInTimeActivity`); ``categories`` (V, C) or None.
    ``targets`` is each user's next item (what ``tune`` tunes the blend on); ``all_targets`` every relevant item
    of each user (a temporal window's several; None: the next item only): the ranker's labels and the metric.
    """

    raw: Mapping[str, np.ndarray]
    histories: Sequence[Sequence[int]]
    targets: np.ndarray
    gaps: np.ndarray
    request_times: np.ndarray
    activity: Any
    categories: np.ndarray | None
    tune: Callable[[np.ndarray], BlendChoice]
    blend_for: Callable[[BlendChoice, Mapping[str, np.ndarray], np.ndarray], np.ndarray]
    depth: int = 50
    all_targets: Sequence[Sequence[int]] | None = None
    # Who made each request (a user may make two: a next item and a return); folds keep a user's requests together.
    users: Sequence[str] | None = None

    def relevant(self, rows: np.ndarray) -> list[list[int]]:
        """The relevant items of the users ``rows``."""
        if self.all_targets is None:
            return [[int(self.targets[i])] for i in rows]
        return [list(map(int, self.all_targets[i])) for i in rows]


def ndcg_at_k(scores: np.ndarray, targets: Sequence[Sequence[int]], histories: Sequence[Sequence[int]],
              k: int = K) -> np.ndarray:
    """Per-user NDCG@k of one or more targets each (the protocol's metric: history never ranked, ties pessimistic)."""
    return user_metrics(scores, targets, histories, k).ndcg


def _subset(task: ValidTask, rows: np.ndarray) -> tuple[dict[str, np.ndarray], list, np.ndarray]:
    return ({n: m[rows] for n, m in task.raw.items()}, [task.histories[i] for i in rows], task.gaps[rows])


def ranker_inputs(
    task: ValidTask, blend: BlendChoice, rows: np.ndarray
) -> tuple[dict[str, np.ndarray], CandidateFeatures]:
    """The score matrices the ranker reads (the blend, then its active generators) and the features of ``rows``."""
    raw, histories, gaps = _subset(task, rows)
    scores = {"blend": task.blend_for(blend, raw, gaps), **{n: raw[n] for n in blend.active_stages()}}
    features = candidate_features(scores, histories, task.request_times[rows], gaps, task.activity,
                                  task.categories, task.depth)
    return scores, features


def _fit(task: ValidTask, blend: BlendChoice, rows: np.ndarray, settings: RankerSettings, stop_share: float,
         seed: int) -> LearnedRanker:
    _, features = ranker_inputs(task, blend, rows)
    labels = candidate_labels(features, task.relevant(rows))
    return fit_ranker_holding_out(features, labels, settings, stop_share, seed, ONLINE_RANKER_FEATURE_SET)


def out_of_fold(task: ValidTask, folds: int, settings: RankerSettings, stop_share: float, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per-user out-of-fold valid NDCG@10 of the blend and of the ranker, on the same ``folds`` folds."""
    n = len(task.targets)
    if folds < 2 or n < 2 * folds:
        raise ValueError(f"an out-of-fold comparison needs folds >= 2 and >= 2 users per fold, got {folds}, {n} users")
    fold_of = fold_assignment(n, folds, seed, task.users)
    blend_ndcg, ranker_ndcg = np.zeros(n), np.zeros(n)
    for fold in range(folds):
        held, rest = np.flatnonzero(fold_of == fold), np.flatnonzero(fold_of != fold)
        blend = task.tune(rest)
        ranker = _fit(task, blend, rest, settings, stop_share, seed + fold)
        scores, features = ranker_inputs(task, blend, held)
        targets, histories = task.relevant(held), [task.histories[i] for i in held]
        blend_ndcg[held] = ndcg_at_k(scores["blend"], targets, histories)
        ranker_ndcg[held] = ndcg_at_k(ranked_with_fallback(ranker, features, scores["blend"]), targets, histories)
    return blend_ndcg, ranker_ndcg


def fold_assignment(n: int, folds: int, seed: int, users: Sequence[str] | None = None) -> np.ndarray:
    """Each of ``n`` requests' fold: at random, every request of one user (``users``, None: each its own) in the
    same fold, so no fold is scored by a model that learned from the same user's other request."""
    if users is None or len(set(users)) == n:
        return np.random.default_rng(seed).permutation(n) % folds
    names, group = np.unique(np.asarray(users, dtype=object).astype(str), return_inverse=True)
    return (np.random.default_rng(seed).permutation(len(names)) % folds)[group]


def choose_ranking(
    requested: str, task: ValidTask | None, *, folds: int = 3, min_gain: float = 0.0, min_z: float = 0.0,
    settings: RankerSettings | None = None, stop_share: float = 0.2, seed: int = 0,
) -> RankingDecision:
    """The ranking stage to ship: ``blend`` and ``lgbm`` as asked (no comparison), ``auto`` by out-of-fold valid.

    ``auto`` keeps the ranker only when its mean out-of-fold NDCG@10 beats the blend's by more than ``min_gain``
    and by more than ``min_z`` paired standard errors of the per-user difference (a gain the comparison's own
    noise could give is not a reason to ship a model with more parts and online state).
    """
    if requested not in RANKING_KINDS:
        raise ValueError(f"model.stages.ranking must be one of {', '.join(RANKING_KINDS)}, got {requested!r}")
    if requested == "blend":
        return RankingDecision(requested, "blend", reason="asked for (no comparison run)")
    if requested == "lgbm" or task is None:
        return RankingDecision(requested, "lgbm", reason="asked for (no comparison run)")
    blend_ndcg, ranker_ndcg = out_of_fold(task, folds, settings or RankerSettings(), stop_share, seed)
    blend_mean, ranker_mean = float(blend_ndcg.mean()), float(ranker_ndcg.mean())
    difference = ranker_ndcg - blend_ndcg
    se = float(difference.std(ddof=1) / np.sqrt(difference.size))
    bar = max(min_gain, min_z * se)
    wins = ranker_mean - blend_mean > bar
    verdict = "more" if wins else "no more"
    reason = (f"out-of-fold valid NDCG@10 ({folds} folds of {len(blend_ndcg)} users): ranker {ranker_mean:.4f} vs "
              f"blend {blend_mean:.4f} (paired se {se:.4f}); the ranker gains {verdict} than "
              f"max(min_gain {min_gain:g}, {min_z:g} se) = {bar:.4f}")
    return RankingDecision(requested, "lgbm" if wins else "blend", blend_mean, ranker_mean, folds, min_gain, se,
                           min_z, reason)


def fit_final_ranker(task: ValidTask, blend: BlendChoice, settings: RankerSettings | None = None,
                     stop_share: float = 0.2, seed: int = 0) -> LearnedRanker:
    """The ranker that ships: trained on every valid user over the final blend, early-stopped on ``stop_share``."""
    return _fit(task, blend, np.arange(len(task.targets)), settings or RankerSettings(), stop_share, seed)
