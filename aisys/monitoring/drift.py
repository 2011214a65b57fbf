"""Fast drift statistics (pure numpy/pandas): PSI and Jensen-Shannon distance.

Both compare a reference distribution ``p`` (training) with a current one ``q``
(the live window) over the same buckets:

* PSI = sum((q - p) * ln(q / p)). Rule of thumb: < 0.1 stable, 0.1-0.2 moderate,
  > 0.2 a real shift.
* JS is the Jensen-Shannon *distance* with base-2 logs (the square root of the
  divergence), in [0, 1]; the same measure Evidently uses for large samples.

Empty buckets would make PSI infinite, so both sides are smoothed with
``epsilon`` before normalising. Categorical features are compared over the
reference's categories plus an ``__other__`` bucket for anything unseen (new
categories, new items), which is exactly where drift shows. Numeric features
are binned at the reference's quantiles, so each reference bin holds about the
same share and a shift moves mass between bins.

The features compared (see :func:`compare_to_profile`): category mix, item
popularity bucket (share of events on the reference's head, torso, tail and
unseen items), price, user activity (events per user in a window of a fixed
size), user taste (share of events in the user's reference favourite
categories: a taste shift leaves the overall mix alone) and prediction scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # a type only: profile imports this module
    from aisys.monitoring.profile import ReferenceProfile

EPSILON = 1e-4
OTHER = "__other__"
MISSING = "__missing__"
STATISTICS: tuple[str, ...] = ("psi", "js")


def smooth(probabilities: np.ndarray, epsilon: float = EPSILON) -> np.ndarray:
    """Add ``epsilon`` to every bucket and renormalise, so no bucket is empty."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 1 or len(p) == 0:
        raise ValueError(f"a distribution must be a non-empty 1-D array, got shape {p.shape}")
    if (p < 0).any():
        raise ValueError("a distribution cannot have negative buckets")
    total = p.sum()
    p = p / total if total > 0 else np.full(len(p), 1.0 / len(p))
    p = p + epsilon
    return p / p.sum()


def psi(reference: np.ndarray, current: np.ndarray, epsilon: float = EPSILON) -> float:
    """Population stability index of ``current`` against ``reference`` (counts or shares per bucket)."""
    p, q = _pair(reference, current, epsilon)
    return float(np.sum((q - p) * np.log(q / p)))


def jensen_shannon(reference: np.ndarray, current: np.ndarray, epsilon: float = EPSILON) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two bucket distributions."""
    p, q = _pair(reference, current, epsilon)
    m = 0.5 * (p + q)
    divergence = 0.5 * np.sum(p * np.log2(p / m)) + 0.5 * np.sum(q * np.log2(q / m))
    return float(np.sqrt(max(divergence, 0.0)))


def _pair(reference: np.ndarray, current: np.ndarray, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    reference, current = np.asarray(reference, dtype=np.float64), np.asarray(current, dtype=np.float64)
    if reference.shape != current.shape:
        raise ValueError(f"reference has {reference.shape} buckets but current has {current.shape}")
    return smooth(reference, epsilon), smooth(current, epsilon)


# --- buckets ----------------------------------------------------------------------------------


def category_shares(values: Iterable, top_k: int | None = None) -> dict[str, float]:
    """Share of each category (None/NaN -> ``__missing__``); beyond ``top_k`` -> ``__other__``."""
    series = _labels(values)
    if series.empty:
        return {}
    shares = series.value_counts(normalize=True, sort=True)
    if top_k is not None and len(shares) > top_k:
        head = shares.iloc[:top_k]
        result = {str(k): float(v) for k, v in head.items()}
        result[OTHER] = float(shares.iloc[top_k:].sum())
        return result
    return {str(k): float(v) for k, v in shares.items()}


def categorical_counts(reference_categories: Sequence[str], values: Iterable) -> np.ndarray:
    """Counts of ``values`` over ``reference_categories`` plus a last ``__other__`` bucket
    (when the reference has none) for every value the reference does not list."""
    labels = _labels(values)
    buckets = list(reference_categories)
    if OTHER not in buckets:
        buckets.append(OTHER)
    position = {c: i for i, c in enumerate(buckets)}
    other = position[OTHER]
    counts = np.zeros(len(buckets), dtype=np.float64)
    if labels.empty:
        return counts
    codes = labels.map(position).fillna(other).astype(np.int64).to_numpy()
    np.add.at(counts, codes, 1.0)
    return counts


def reference_buckets(shares: dict[str, float]) -> tuple[list[str], np.ndarray]:
    """The reference's bucket names (with ``__other__`` last) and their shares."""
    names = [c for c in shares if c != OTHER] + [OTHER]
    return names, np.array([shares.get(c, 0.0) for c in names], dtype=np.float64)


def _labels(values: Iterable) -> pd.Series:
    series = values if isinstance(values, pd.Series) else pd.Series(list(values), dtype=object)
    return series.astype(object).where(series.notna(), MISSING).astype(str)


def quantile_cuts(values: Iterable[float], n_bins: int = 10) -> list[float]:
    """Interior bin edges at the quantiles of ``values`` (duplicates dropped, NaN ignored).

    Bin ``i`` holds ``cuts[i-1] < x <= cuts[i]``, with open outer bins, so values
    outside the reference range still land in a bucket.
    """
    if n_bins < 2:
        raise ValueError(f"n_bins must be at least 2, got {n_bins}")
    x = _finite(values)
    if len(x) == 0:
        return []
    cuts = np.quantile(x, np.linspace(0, 1, n_bins + 1)[1:-1])
    return [float(c) for c in np.unique(cuts)]


def binned_counts(cuts: Sequence[float], values: Iterable[float]) -> np.ndarray:
    """Counts of the finite ``values`` in the ``len(cuts) + 1`` bins that ``cuts`` define."""
    x = _finite(values)
    counts = np.zeros(len(cuts) + 1, dtype=np.float64)
    if len(x):
        np.add.at(counts, np.searchsorted(np.asarray(cuts, dtype=np.float64), x, side="left"), 1.0)
    return counts


def column_psi(reference: Iterable, current: Iterable, numerical: bool, n_bins: int = 10,
               epsilon: float = EPSILON) -> float:
    """PSI of one column's raw values, bucketed as the monitor buckets its features.

    Numerical: the reference's quantile cuts (:func:`quantile_cuts`, ``n_bins``) with open outer bins;
    categorical: the reference's categories plus ``__other__``. The drift report runs this same function
    (as Evidently's ``aisys_psi`` test), so its verdicts and the retrain trigger's agree.
    """
    if numerical:
        cuts = quantile_cuts(reference, n_bins)
        return psi(binned_counts(cuts, reference), binned_counts(cuts, current), epsilon)
    names, _ = reference_buckets(category_shares(reference))
    return psi(categorical_counts(names, reference), categorical_counts(names, current), epsilon)


def _finite(values: Iterable[float]) -> np.ndarray:
    x = np.asarray(values if isinstance(values, (np.ndarray, pd.Series)) else list(values), dtype=np.float64)
    return x[np.isfinite(x)]


def events_per_user(users: Iterable, window_events: int) -> np.ndarray:
    """Events per user within consecutive chunks of ``window_events`` events, pooled.

    Counting per equal-sized chunk makes a long training table comparable with a
    short live window (a user's count grows with the window's length).
    A trailing partial chunk is dropped unless it is the only one.
    """
    if window_events < 1:
        raise ValueError(f"window_events must be at least 1, got {window_events}")
    u = pd.Series(list(users) if not isinstance(users, (pd.Series, np.ndarray)) else users)
    if u.empty:
        return np.array([], dtype=np.float64)
    n_full = len(u) // window_events
    if n_full == 0:
        chunk = np.zeros(len(u), dtype=np.int64)
    else:
        u = u.iloc[: n_full * window_events]
        chunk = np.arange(len(u)) // window_events
    counts = pd.DataFrame({"chunk": chunk, "user": u.to_numpy()}).groupby(["chunk", "user"]).size()
    return counts.to_numpy(dtype=np.float64)


# --- comparing a window with a profile ---------------------------------------------------------


@dataclass(frozen=True)
class FeatureDrift:
    """Drift of one feature: PSI, Jensen-Shannon distance, and the current sample size."""

    feature: str
    psi: float
    js: float
    n_current: int

    def to_dict(self) -> dict:
        return {"feature": self.feature, "psi": self.psi, "js": self.js, "n_current": self.n_current}


def compare_counts(feature: str, reference: np.ndarray, current: np.ndarray, epsilon: float = EPSILON) -> FeatureDrift:
    """Both statistics for one feature's bucket counts or shares."""
    return FeatureDrift(
        feature=feature,
        psi=psi(reference, current, epsilon),
        js=jensen_shannon(reference, current, epsilon),
        n_current=int(np.asarray(current).sum()),
    )


def compare_to_profile(
    profile: "ReferenceProfile",
    events: pd.DataFrame,
    scores: Sequence[float] | np.ndarray | None = None,
    min_events: int = 1,
) -> dict[str, FeatureDrift]:
    """Drift of a live window against ``profile``, per feature.

    ``events`` needs ``user_id`` and ``item_id``; ``category`` and ``price`` are
    used when present. ``scores`` are served recommendation scores (compared when
    the profile has a score reference). User activity is compared only once the
    window holds ``profile.activity.window_events`` events; it uses the latest
    that many. A feature with fewer than ``min_events`` current values is left out.
    """
    missing = [c for c in ("user_id", "item_id") if c not in events.columns]
    if missing:
        raise ValueError(f"events lack column(s) {missing}; got {list(events.columns)}")
    out: dict[str, FeatureDrift] = {}

    def add(feature: str, reference: np.ndarray, current: np.ndarray) -> None:
        if current.sum() >= min_events:
            out[feature] = compare_counts(feature, reference, current, profile.epsilon)

    if profile.category is not None and "category" in events.columns:
        names, ref = reference_buckets(profile.category)
        add("category", ref, categorical_counts(names, events["category"]))
    if profile.popularity is not None:
        add("item_popularity", profile.popularity.reference_shares(),
            profile.popularity.bucket_counts(events["item_id"]))
    if profile.price is not None and "price" in events.columns:
        add("price", profile.price.probabilities_array(), binned_counts(profile.price.cuts, events["price"]))
    if profile.activity is not None and len(events) >= profile.activity.window_events:
        latest = events["user_id"].iloc[-profile.activity.window_events:]
        per_user = events_per_user(latest, profile.activity.window_events)
        add("user_activity", profile.activity.probabilities_array(), binned_counts(profile.activity.cuts, per_user))
    if profile.taste is not None and "category" in events.columns:
        add("user_taste", profile.taste.reference_shares(),
            profile.taste.bucket_counts(events["user_id"], events["category"]))
    if profile.scores is not None and scores is not None and len(scores):
        add("score", profile.scores.probabilities_array(), binned_counts(profile.scores.cuts, scores))
    return out


def worst(stats: dict[str, FeatureDrift], statistic: str = "psi") -> tuple[str | None, float]:
    """The feature with the largest ``statistic`` and its value (``(None, 0.0)`` when empty)."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    if not stats:
        return None, 0.0
    feature = max(stats, key=lambda f: getattr(stats[f], statistic))
    return feature, float(getattr(stats[feature], statistic))
