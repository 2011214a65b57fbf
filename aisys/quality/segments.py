"""Per-segment metrics (pure): who does the model serve well, and with which items?

Four dimensions, each a partition of the evaluated users (or their targets):

- ``gender``: as in the user file (``M`` / ``F``; ``unknown`` when missing);
- ``age``: bands ``<18, 18-24, 25-34, 35-44, 45-54, 55+`` (``unknown`` when missing);
- ``activity``: the user's train interactions, ``<=20, 21-50, 51-150, >150``;
- ``item_popularity``: the bucket of each *target* item by its train
  popularity rank: ``head`` (top 10% of the catalogue), ``torso`` (next 40%),
  ``tail`` (the rest, including never-seen items): :data:`HEAD_SHARE` and
  :data:`TORSO_SHARE`, the same shares the promotion gate's holdout buckets by
  (:mod:`aisys.registry.holdout` imports them from here). This one is measured per
  (user, target) pair, each target ranked as if it were the user's only one
  (among the non-targets, ties pessimistic); with one target per user
  (leave-one-out) it is the user's own result.

Each row: ``dimension, segment, n`` (users, or pairs for item popularity) and
``hr@k, ndcg@k, mrr@k`` averaged over them.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from aisys.quality.ranking import UserMetrics

AGE_BANDS: tuple[tuple[int, str], ...] = ((18, "<18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (55, "45-54"))
OLDEST_BAND = "55+"
ACTIVITY_BUCKETS: tuple[tuple[int, str], ...] = ((20, "<=20"), (50, "21-50"), (150, "51-150"))
MOST_ACTIVE_BUCKET = ">150"
# Target-item popularity buckets, shares of the catalogue ranked by popularity: one definition for the runner's
# segments and the gate's (0.10/0.40 is what the gate's recorded reports were measured with; docs/evaluation.md).
HEAD_SHARE, TORSO_SHARE = 0.10, 0.40
UNKNOWN = "unknown"
DIMENSIONS = ("gender", "age", "activity", "item_popularity")


def age_band(age: Any) -> str:
    """The age band of ``age`` (years); ``unknown`` for a missing age."""
    if age is None or (isinstance(age, float) and np.isnan(age)):
        return UNKNOWN
    for upper, label in AGE_BANDS:
        if age < upper:
            return label
    return OLDEST_BAND


def activity_bucket(n_interactions: int) -> str:
    """The activity bucket of a user with ``n_interactions`` train interactions."""
    for upper, label in ACTIVITY_BUCKETS:
        if n_interactions <= upper:
            return label
    return MOST_ACTIVE_BUCKET


def popularity_buckets(popularity: Sequence[float], head_share: float = HEAD_SHARE,
                       torso_share: float = TORSO_SHARE) -> np.ndarray:
    """Bucket label per item index (index 0, padding, is ``""``) by train popularity rank.

    Items are ranked by popularity, ties by index; the first ``head_share`` of
    the catalogue (rounded up, as the gate's holdout does) is ``head``, up to
    ``head_share + torso_share`` ``torso``, the rest ``tail``.
    """
    pop = np.asarray(popularity, dtype=np.float64)
    n_items = pop.size - 1
    order = np.lexsort((np.arange(n_items), -pop[1:])) + 1  # most popular first
    labels = np.full(pop.size, "tail", dtype=object)
    head_end, torso_end = int(np.ceil(head_share * n_items)), int(np.ceil((head_share + torso_share) * n_items))
    labels[order[:head_end]] = "head"
    labels[order[head_end:torso_end]] = "torso"
    labels[0] = ""
    return labels


def _rows(dimension: str, labels: Sequence[str], hr: np.ndarray, ndcg: np.ndarray, mrr: np.ndarray,
          k: int) -> list[dict[str, Any]]:
    frame = pd.DataFrame({"segment": list(labels), "hr": hr, "ndcg": ndcg, "mrr": mrr})
    rows = []
    for segment, group in frame.groupby("segment", sort=True):
        rows.append({
            "dimension": dimension, "segment": str(segment), "n": int(len(group)),
            f"hr@{k}": float(group["hr"].mean()), f"ndcg@{k}": float(group["ndcg"].mean()),
            f"mrr@{k}": float(group["mrr"].mean()),
        })
    return rows


def segment_metrics(
    per_user: UserMetrics,
    users: Sequence[str],
    histories: Sequence[Sequence[int]],
    targets: Sequence[Sequence[int]],
    demographics: Mapping[str, Mapping[str, Any]],
    popularity: Sequence[float],
    k: int = 10,
) -> pd.DataFrame:
    """Metrics per segment of every dimension (see module doc) as a DataFrame.

    ``per_user`` is :func:`aisys.quality.ranking.user_metrics` on the same
    ``users``/``histories``/``targets``; ``demographics`` maps user id to a
    record with ``gender`` and ``age`` (users missing from it are ``unknown``);
    ``popularity`` is the train popularity per item index.
    """
    n = len(users)
    if not (per_user.hr.size == len(histories) == len(targets) == n):
        raise ValueError(
            f"per_user ({per_user.hr.size}), users ({n}), histories ({len(histories)}) and targets "
            f"({len(targets)}) must be aligned"
        )
    genders = [str(demographics.get(u, {}).get("gender") or UNKNOWN) for u in users]
    ages = [age_band(demographics.get(u, {}).get("age")) for u in users]
    activity = [activity_bucket(len(h)) for h in histories]
    rows = []
    for dimension, labels in (("gender", genders), ("age", ages), ("activity", activity)):
        rows += _rows(dimension, labels, per_user.hr, per_user.ndcg, per_user.mrr, k)

    buckets = popularity_buckets(popularity)
    pair_labels, pair_ranks = [], []
    for tgt, ranks in zip(targets, per_user.single_ranks):
        tgt = np.unique(np.asarray(tgt, dtype=np.int64))  # user_metrics reports ranks in this order
        pair_labels += list(buckets[tgt])
        pair_ranks += list(ranks)
    ranks = np.asarray(pair_ranks, dtype=np.float64)
    hit = ranks < k
    rows += _rows(
        "item_popularity", pair_labels, hit.astype(np.float64),
        np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0), np.where(hit, 1.0 / (ranks + 1.0), 0.0), k,
    )
    return pd.DataFrame(rows, columns=["dimension", "segment", "n", f"hr@{k}", f"ndcg@{k}", f"mrr@{k}"])


def segments_as_dict(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """``{"dimension=segment": {"n": ..., "ndcg@10": ...}}``: the shape a promotion gate compares."""
    out: dict[str, dict[str, float]] = {}
    for row in table.to_dict("records"):
        key = f"{row.pop('dimension')}={row.pop('segment')}"
        out[key] = {name: float(value) for name, value in row.items()}
    return out


def demographics_from_table(users_table: Any) -> dict[str, dict[str, Any]]:
    """``user_id -> {gender, age, occupation}`` from :func:`aisys.data.movielens.read_users`'s table."""
    records = users_table.to_pylist() if hasattr(users_table, "to_pylist") else list(users_table)
    return {str(r["user_id"]): {k: v for k, v in r.items() if k != "user_id"} for r in records}
