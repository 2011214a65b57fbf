"""A blend whose weights depend on the request's context: the time since the user's last interaction.

One set of blend weights for every user is a compromise: a request seconds after
the user's last rating is the same rating session (what comes next after what they
just rated: SASRec, SLIT, EASE), while a user who comes back after days or weeks
picks more of what is popular *now* (recent popularity). The gap between the
user's newest history interaction and the request time is known when serving
(the request carries its time), so it can choose the weights without looking at
the target.

- :func:`request_gaps`: that gap, in seconds, per user.
- :func:`gap_buckets`: bucket index per user from a few gap thresholds.
- :func:`blend_by_bucket`: :func:`~aisys.models.baselines.blend_many` with each
  user's bucket's weights.
- :class:`ContextBlend`: the models, their per-bucket weights and the thresholds.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from aisys.models.baselines import Recommender, WeightedBlend, blend_many


def request_gaps(last_seen: Sequence[float], request_times: Sequence[float]) -> np.ndarray:
    """Seconds from each user's newest history interaction (``last_seen``) to their request, float64.

    A request before the newest history interaction is an error (the history would
    hold the future); NaN (no history) stays NaN.
    """
    last = np.asarray(last_seen, dtype=np.float64)
    now = np.asarray(request_times, dtype=np.float64)
    if last.shape != now.shape or last.ndim != 1:
        raise ValueError(f"last_seen and request_times must be 1-d of one length, got {last.shape}, {now.shape}")
    gaps = now - last
    if np.any(gaps < 0):
        row = int(np.nonzero(gaps < 0)[0][0])
        raise ValueError(f"request_times[{row}] is before last_seen[{row}]: the history holds a later interaction")
    return gaps


def gap_buckets(gaps: Sequence[float], thresholds: Sequence[float]) -> np.ndarray:
    """Bucket index per user: 0 for ``gap <= thresholds[0]``, 1 up to ``thresholds[1]``, ... (int64).

    ``thresholds`` must increase; no thresholds put everyone in bucket 0. A NaN gap
    (unknown: no history) goes to bucket 0, the default weights.
    """
    edges = np.asarray(thresholds, dtype=np.float64)
    if edges.ndim != 1 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"gap thresholds must be strictly increasing, got {list(thresholds)}")
    gaps = np.asarray(gaps, dtype=np.float64)
    buckets = np.searchsorted(edges, gaps, side="left")  # gap == threshold stays in the lower bucket
    return np.where(np.isnan(gaps), 0, buckets).astype(np.int64)


def blend_by_bucket(
    scores: Sequence[np.ndarray], bucket_weights: Sequence[Sequence[float]], buckets: Sequence[int]
) -> np.ndarray:
    """Row ``u`` is ``blend_many(scores[:][u], bucket_weights[buckets[u]])`` (per-user z-scores, weighted).

    ``blend_many`` standardises each row on its own, so blending each bucket's rows
    apart gives exactly the rows a one-bucket blend would.
    """
    buckets = np.asarray(buckets, dtype=np.int64)
    if not scores:
        raise ValueError("blend_by_bucket needs at least one score matrix")
    n_rows = scores[0].shape[0]
    if buckets.shape != (n_rows,):
        raise ValueError(f"buckets must have one entry per score row ({n_rows}), got shape {buckets.shape}")
    if buckets.size and (buckets.min() < 0 or buckets.max() >= len(bucket_weights)):
        raise ValueError(f"bucket indices must be in 0..{len(bucket_weights) - 1}, got {sorted(set(buckets))}")
    out = np.full(scores[0].shape, -np.inf)
    for b in np.unique(buckets):
        rows = np.nonzero(buckets == b)[0]
        out[rows] = blend_many([s[rows] for s in scores], bucket_weights[b])
    return out


class ContextBlend(WeightedBlend):
    """:class:`WeightedBlend` with one weight vector per gap bucket (see :func:`gap_buckets`).

    ``bucket_weights[b][k]`` weighs ``models[k]`` for users in bucket ``b``;
    ``gap_thresholds`` has one entry fewer than ``bucket_weights``. ``weights`` (the
    :class:`WeightedBlend` view) are bucket 0's. ``score`` needs each user's gap in
    seconds (``gaps=``) whenever there is more than one bucket.
    """

    uses_context = True

    def __init__(
        self, models: Sequence[Recommender], bucket_weights: Sequence[Sequence[float]],
        gap_thresholds: Sequence[float] = (),
    ) -> None:
        if len(bucket_weights) != len(gap_thresholds) + 1:
            raise ValueError(
                f"ContextBlend needs one weight vector per bucket: {len(gap_thresholds)} thresholds make "
                f"{len(gap_thresholds) + 1} buckets, got {len(bucket_weights)} weight vectors"
            )
        gap_buckets([], gap_thresholds)  # validates the thresholds
        for b, weights in enumerate(bucket_weights):
            if len(weights) != len(models):
                raise ValueError(f"bucket_weights[{b}] has {len(weights)} weights for {len(models)} models")
            if any(w < 0 for w in weights):
                raise ValueError(f"bucket_weights[{b}] must be >= 0, got {list(weights)}")
        super().__init__(models, bucket_weights[0])
        self.bucket_weights = [[float(w) for w in weights] for weights in bucket_weights]
        self.gap_thresholds = [float(t) for t in gap_thresholds]

    def score(
        self, users: Sequence[str], histories: Sequence[Sequence[int]], gaps: Sequence[float] | None = None
    ) -> np.ndarray:
        """Blended scores; ``gaps[u]``: seconds from user ``u``'s newest history item to the request."""
        if gaps is None:
            if self.gap_thresholds:
                raise ValueError("ContextBlend.score needs gaps= (seconds since each user's last interaction)")
            gaps = np.zeros(len(users))
        if len(gaps) != len(users):
            raise ValueError(f"gaps must have one entry per user ({len(users)}), got {len(gaps)}")
        buckets = gap_buckets(gaps, self.gap_thresholds)
        return blend_by_bucket([m.score(users, histories) for m in self.models], self.bucket_weights, buckets)
