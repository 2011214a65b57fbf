"""Per-(user, candidate) features of the ranking stage: one code path offline (benchmarks, training) and online.

The ranking stage reorders the union of the candidate generators' top lists. What it
sees of each (user, candidate) pair is built here, from arrays only, so the
offline evaluation and a serving replica compute exactly the same numbers:

- :func:`candidate_union`: the union of each generator's ``depth`` best items, the
  user's history (and padding) left out.
- :class:`ItemEventIndex`: every known interaction's (item, time), sorted, so that an
  item's popularity in a window before the request and its first interaction are
  binary searches *as of each request* (point in time: nothing after the request).
- :func:`genre_profiles`: a user's genre shares over the whole history and over its
  recent items (recency-weighted).
- :func:`candidate_features`: the (M, F) feature matrix with :func:`feature_names`.

Everything is plain numpy: no model, no stage owns these features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

# Seconds in a day: ages and popularity windows are in days.
_DAY = 86_400.0
# The popularity windows before the request (days): a day, a week, a month.
POPULARITY_WINDOWS_DAYS = (1.0, 7.0, 30.0)
# The recent-genre profile weighs the newest history item 1, the one before it RECENT_GENRE_DECAY, ...
RECENT_GENRE_DECAY = 0.8
# Per generator: its raw score, its per-user z-score and its 0-based rank among the non-history items.
GENERATOR_FEATURES = ("score", "z", "rank")
# What ranker-v1 knows of an item as of the request (ItemEventIndex: windowed counts by binary search).
ITEM_EVENT_FEATURES = (
    "log_item_age_days", *(f"log_pop_{int(days)}d" for days in POPULARITY_WINDOWS_DAYS), "log_pop_all",
)
USER_FEATURES = ("log_gap_seconds", "log_history_length")
AFFINITY_FEATURES = ("genre_affinity", "recent_genre_affinity", "n_generators_proposing")
CONTEXT_FEATURES = (*USER_FEATURES, *ITEM_EVENT_FEATURES, *AFFINITY_FEATURES)
# Item index and time share one int64 key: time (seconds) below 2**40 (~34,000 years), items above.
_TIME_BITS = 40


def feature_names(generators: Sequence[str], item_features: Sequence[str] = ITEM_EVENT_FEATURES) -> tuple[str, ...]:
    """The column names of :func:`candidate_features` for ``generators`` (in that order), then the context
    (``item_features``: the names of the item source's columns, e.g. ``ItemEventIndex.feature_names``)."""
    return (*(f"{g}_{kind}" for g in generators for kind in GENERATOR_FEATURES), *USER_FEATURES, *item_features,
            *AFFINITY_FEATURES)


@dataclass
class CandidateFeatures:
    """The candidates of a batch of users, one row per (user, candidate), grouped by user.

    ``rows[m]`` is the user's row in the batch (non-decreasing: a user's candidates are
    contiguous, what LambdaRank's query groups need), ``items[m]`` the candidate's item
    index, ``values[m]`` its features named ``names``.
    """

    rows: np.ndarray  # (M,) int64
    items: np.ndarray  # (M,) int64
    values: np.ndarray  # (M, F) float32
    names: tuple[str, ...]
    n_users: int

    def group_sizes(self) -> np.ndarray:
        """Candidates per user of the batch, (n_users,) int64 (0 for a user without any)."""
        return np.bincount(self.rows, minlength=self.n_users).astype(np.int64)

    def take_users(self, users: np.ndarray) -> "CandidateFeatures":
        """The candidates of the batch rows ``users`` (sorted unique), renumbered 0..len(users) - 1."""
        users = np.asarray(users, dtype=np.int64)
        keep = np.isin(self.rows, users)
        renumber = np.full(self.n_users, -1, dtype=np.int64)
        renumber[users] = np.arange(users.size)
        return CandidateFeatures(renumber[self.rows[keep]], self.items[keep], self.values[keep], self.names,
                                 int(users.size))


def candidate_union(
    scores: Sequence[np.ndarray], histories: Sequence[Sequence[int]], depth: int
) -> list[np.ndarray]:
    """Per user: the sorted union of each score matrix's ``depth`` best items, history and padding excluded.

    ``scores[k]`` is generator ``k``'s (U, n_items + 1) matrix; -inf entries are never candidates.
    """
    if depth < 1:
        raise ValueError(f"candidate depth must be >= 1, got {depth}")
    tops = []
    for matrix in scores:
        masked = _mask_history(matrix, histories)
        k = min(depth, masked.shape[1] - 1)
        top = np.argpartition(-masked, k - 1, axis=1)[:, :k]
        tops.append(np.where(np.isfinite(np.take_along_axis(masked, top, axis=1)), top, 0))
    stacked = np.concatenate(tops, axis=1)
    return [np.unique(row[row > 0]) for row in stacked]


@dataclass(frozen=True)
class ItemEventIndex:
    """Known interactions as sorted ``item << 40 | time`` keys: point-in-time item statistics by binary search.

    Build it from what the generators were fit on (offline: the task's train; online:
    the event log). Times are integer seconds >= 0.
    """

    keys: np.ndarray  # (N,) int64, sorted
    feature_names = ITEM_EVENT_FEATURES

    @classmethod
    def from_events(cls, items: Sequence[int], times: Sequence[float]) -> "ItemEventIndex":
        """The index of interactions ``(items[n], times[n])``."""
        items = np.asarray(items, dtype=np.int64)
        times = np.asarray(times, dtype=np.int64)
        if items.shape != times.shape or items.ndim != 1:
            raise ValueError(f"items and times must be 1-d of one length, got {items.shape} and {times.shape}")
        if times.size and (times.min() < 0 or times.max() >= 1 << _TIME_BITS):
            raise ValueError("interaction times must be seconds in [0, 2**40)")
        return cls(np.sort((items << _TIME_BITS) | times))

    def count_between(self, items: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Interactions with ``items[m]`` at times in ``[start[m], end[m])`` (int64)."""
        base = np.asarray(items, dtype=np.int64) << _TIME_BITS
        lo = np.clip(np.asarray(start, dtype=np.int64), 0, (1 << _TIME_BITS) - 1)
        hi = np.clip(np.asarray(end, dtype=np.int64), 0, (1 << _TIME_BITS) - 1)
        return np.searchsorted(self.keys, base | hi) - np.searchsorted(self.keys, base | lo)

    def item_features(self, items: np.ndarray, now: np.ndarray) -> list[np.ndarray]:
        """Columns named :data:`ITEM_EVENT_FEATURES` of ``items[m]`` as of ``now[m]`` (events before it only)."""
        first = self.first_before(items, now)
        return [
            np.log1p(np.maximum(now - first, 0.0) / _DAY),
            *(np.log1p(self.count_between(items, now - days * _DAY, now)) for days in POPULARITY_WINDOWS_DAYS),
            np.log1p(self.count_between(items, np.zeros_like(now), now)),
        ]

    def first_before(self, items: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Time of each ``items[m]``'s first interaction before ``end[m]`` (float64 seconds; NaN: none)."""
        base = np.asarray(items, dtype=np.int64) << _TIME_BITS
        pos = np.searchsorted(self.keys, base)
        found = self.keys[np.minimum(pos, self.keys.size - 1)] if self.keys.size else np.zeros_like(base)
        first = (found - base).astype(np.float64)
        ok = (pos < self.keys.size) & ((found >> _TIME_BITS) == (base >> _TIME_BITS))
        ok &= first < np.asarray(end, dtype=np.float64)
        return np.where(ok, first, np.nan)


def genre_profiles(
    histories: Sequence[Sequence[int]], item_genres: np.ndarray, decay: float = RECENT_GENRE_DECAY
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's genre shares: (U, G) over the whole history and (U, G) recency-weighted (rows sum to 1 or 0).

    ``item_genres`` is (n_items + 1, G), 1 where the item has the genre; an item with
    several genres splits its weight among them.
    """
    per_item = item_genres / np.maximum(item_genres.sum(axis=1, keepdims=True), 1.0)
    overall = np.zeros((len(histories), item_genres.shape[1]))
    recent = np.zeros_like(overall)
    for u, history in enumerate(histories):
        if not len(history):
            continue
        items = np.asarray(history, dtype=np.int64)
        overall[u] = per_item[items].sum(axis=0)
        recent[u] = (decay ** np.arange(items.size)[::-1]) @ per_item[items]
    return _normalise_rows(overall), _normalise_rows(recent)


def candidate_features(
    generator_scores: Mapping[str, np.ndarray], histories: Sequence[Sequence[int]], request_times: Sequence[float],
    gaps: Sequence[float], events: ItemEventIndex, item_genres: np.ndarray | None, depth: int,
) -> CandidateFeatures:
    """The candidates of each user (:func:`candidate_union` at ``depth``) and their features.

    ``generator_scores[name]`` is a (U, n_items + 1) score matrix (names in the order
    of :func:`feature_names`); ``request_times[u]`` the request's time (seconds) and
    ``gaps[u]`` the seconds since the user's newest interaction; ``events`` what is
    known of the items as of each request (``feature_names`` and ``item_features(items, now)``:
    an :class:`ItemEventIndex`, or :mod:`aisys.features.activity`'s decayed counts); ``item_genres``
    (n_items + 1, G) or None
    (genre affinities are then NaN: a tree sends them down its default branch).
    """
    names = list(generator_scores)
    matrices = [np.asarray(generator_scores[n], dtype=np.float64) for n in names]
    n_users = len(histories)
    for name, matrix in zip(names, matrices):
        if matrix.ndim != 2 or matrix.shape[0] != n_users or matrix.shape != matrices[0].shape:
            raise ValueError(f"generator {name!r} scores must be (users={n_users}, n_items + 1), got {matrix.shape}")
    request_times = np.asarray(request_times, dtype=np.float64)
    gaps = np.asarray(gaps, dtype=np.float64)
    if request_times.shape != (n_users,) or gaps.shape != (n_users,):
        raise ValueError(f"request_times and gaps need one entry per user ({n_users})")
    candidates = candidate_union(matrices, histories, depth)
    rows = np.repeat(np.arange(n_users), [c.size for c in candidates])
    items = np.concatenate(candidates) if candidates else np.zeros(0, dtype=np.int64)
    columns: list[np.ndarray] = []
    proposing = np.zeros(items.size)
    for matrix in matrices:
        masked = _mask_history(matrix, histories)
        z = _row_z_scores(masked)
        # 0-based rank among the user's non-history items (ties: lower index first, as the top lists).
        order = np.argsort(-masked, axis=1, kind="stable")
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(order.shape[1])[None, :], axis=1)
        columns += [masked[rows, items], z[rows, items], rank[rows, items].astype(np.float64)]
        proposing += rank[rows, items] < depth
    now = request_times[rows]
    columns += [np.log1p(gaps[rows]), np.log1p(np.array([len(h) for h in histories], dtype=np.float64)[rows])]
    columns += events.item_features(items, now)
    if item_genres is None:
        columns += [np.full(items.size, np.nan), np.full(items.size, np.nan)]
    else:
        overall, recent = genre_profiles(histories, item_genres)
        genres = item_genres[items]
        share = genres / np.maximum(genres.sum(axis=1, keepdims=True), 1.0)
        columns += [(overall[rows] * share).sum(axis=1), (recent[rows] * share).sum(axis=1)]
    columns.append(proposing)
    values = np.column_stack(columns).astype(np.float32) if items.size else np.zeros((0, len(columns)), np.float32)
    values[~np.isfinite(values)] = np.nan  # a generator that rules an item out (-inf): "missing" to a tree
    return CandidateFeatures(rows.astype(np.int64), items.astype(np.int64), values,
                             feature_names(names, events.feature_names), n_users)


def _mask_history(scores: np.ndarray, histories: Sequence[Sequence[int]]) -> np.ndarray:
    """A float64 copy with padding and each user's history at -inf (never candidates, never competitors)."""
    masked = np.array(scores, dtype=np.float64, copy=True)
    masked[:, 0] = -np.inf
    for u, history in enumerate(histories):
        if len(history):
            masked[u, np.asarray(history, dtype=np.int64)] = -np.inf
    return masked


def _row_z_scores(scores: np.ndarray) -> np.ndarray:
    """Each row standardised over its finite entries (the blend's z-scores); -inf stays -inf."""
    finite = np.isfinite(scores)
    counts = np.maximum(finite.sum(axis=1, keepdims=True), 1)
    values = np.where(finite, scores, 0.0)
    mean = values.sum(axis=1, keepdims=True) / counts
    std = np.sqrt((np.where(finite, scores - mean, 0.0) ** 2).sum(axis=1, keepdims=True) / counts)
    return np.where(finite, (values - mean) / np.maximum(std, 1e-12), -np.inf)


def _normalise_rows(matrix: np.ndarray) -> np.ndarray:
    total = matrix.sum(axis=1, keepdims=True)
    return np.where(total > 0, matrix / np.where(total > 0, total, 1.0), 0.0)
