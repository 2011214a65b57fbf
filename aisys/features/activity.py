"""Item activity as of a moment: decayed recent popularity, all-time count and age, one code path offline and online.

The ranking stage reads, for each candidate item, how popular it is *now*. Online, "now" moves and events keep
arriving, so the statistic must be cheap to keep current: :class:`ItemActivity` holds, per item, a count decayed
with a few half-lives (``value * 0.5 ** (elapsed / half_life)``), the all-time count and the first time seen.
Observing an event is O(half-lives); asking for a batch of items is a few vectorised numpy lines.

- **online**: a replica's scorer starts from the bundle's snapshot (:meth:`ItemActivity.to_arrays` /
  :meth:`ItemActivity.from_arrays`, stored beside the generators) and :meth:`ItemActivity.observe` is called for every
  posted event; :meth:`ItemActivity.item_features` answers at the request's clock.
- **offline** (training the ranker): :func:`point_in_time_item_features` replays the training events in time order
  through the same class and asks :meth:`ItemActivity.item_features` at each request's time, having observed only
  the events strictly before it.

The decayed count does not depend on the order events are observed in (an event older than the newest one is
decayed to the newest time on arrival), so a replica that sees events out of order ends in the same state.
``tests/unit/test_online_features.py`` replays a slice of events both ways and checks they agree.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np

_DAY = 86_400.0
# Half-lives of the decayed counts (days): a day, a week, a month (the windows ranker-v1 counted in).
ACTIVITY_HALF_LIVES_DAYS = (1.0, 7.0, 30.0)
ACTIVITY_FEATURE_NAMES = (
    "log_item_age_days", *(f"log_decayed_pop_{int(h)}d" for h in ACTIVITY_HALF_LIVES_DAYS), "log_pop_all",
)


@dataclass(frozen=True)
class _Arrays:
    decayed: np.ndarray  # (H, V) float64: each half-life's count as of ``last``
    last: np.ndarray  # (V,) float64: time the decayed counts are as of (-inf: never seen)
    total: np.ndarray  # (V,) float64: all-time count
    first: np.ndarray  # (V,) float64: first time seen (+inf: never)


class ItemActivity:
    """Per-item decayed counts, all-time counts and first-seen times over ``n_items + 1`` indices (0: padding)."""

    feature_names = ACTIVITY_FEATURE_NAMES

    def __init__(self, n_items: int, half_lives_days: Sequence[float] = ACTIVITY_HALF_LIVES_DAYS) -> None:
        if n_items < 1 or not half_lives_days or any(h <= 0 for h in half_lives_days):
            raise ValueError(f"need n_items >= 1 and positive half-lives, got {n_items}, {list(half_lives_days)}")
        self.half_lives_s = np.asarray(half_lives_days, dtype=np.float64) * _DAY  # (H,)
        v = n_items + 1
        self._a = _Arrays(np.zeros((len(half_lives_days), v)), np.full(v, -np.inf), np.zeros(v), np.full(v, np.inf))
        self.clock = -np.inf  # the newest event time observed
        # Replicas observe events on the event loop while requests read in worker threads.
        self._lock = threading.Lock()

    @property
    def n_items(self) -> int:
        return self._a.total.size - 1

    def observe(self, item: int, time_s: float) -> None:
        """Count one interaction with item index ``item`` at ``time_s`` (seconds); any order gives one state."""
        self.observe_many([item], [time_s])

    def observe_many(self, items: Sequence[int], times: Sequence[float]) -> None:
        """Count the interactions ``(items[n], times[n])``, in any order.

        Each touched item's counts move to its newest time ``T`` (old counts decayed by ``T - last``) and each
        event adds ``0.5 ** ((T - t) / half_life)``: the same state one event at a time or all at once.
        """
        items = np.asarray(items, dtype=np.int64).reshape(-1)
        times = np.asarray(times, dtype=np.float64).reshape(-1)
        if items.shape != times.shape:
            raise ValueError(f"items and times must have one length, got {items.size}, {times.size}")
        if items.size == 0:
            return
        if items.min() < 1 or items.max() > self.n_items or not np.isfinite(times).all():
            raise ValueError(f"item indices must be in 1..{self.n_items} and times finite")
        with self._lock:
            a = self._a
            newest = a.last.copy()
            np.maximum.at(newest, items, times)
            touched = np.unique(items)
            old = a.last[touched]
            gap = np.where(np.isfinite(old), newest[touched] - old, np.inf)
            a.decayed[:, touched] *= np.exp2(-gap[None, :] / self.half_lives_s[:, None])
            weights = np.exp2(-(newest[items] - times)[None, :] / self.half_lives_s[:, None])  # (H, N)
            for h in range(self.half_lives_s.size):
                np.add.at(a.decayed[h], items, weights[h])
            a.last[touched] = newest[touched]
            np.add.at(a.total, items, 1.0)
            np.minimum.at(a.first, items, times)
            self.clock = max(self.clock, float(times.max()))

    def item_features(self, items: np.ndarray, now: np.ndarray) -> list[np.ndarray]:
        """Columns named :data:`ACTIVITY_FEATURE_NAMES` for ``items[m]`` at time ``now[m]`` (float64 (M,) each).

        ``now`` earlier than an item's newest observed event counts that event undecayed (a replica's clock
        behind an event's stamp); a NaN ``now`` means "as of the newest event observed".
        """
        items = np.asarray(items, dtype=np.int64)
        now = np.asarray(now, dtype=np.float64)
        with self._lock:
            a = self._a
            now = np.where(np.isnan(now), self.clock, now)
            last = a.last[items]
            elapsed = np.where(np.isfinite(last), np.maximum(now - last, 0.0), 0.0)  # (M,)
            decayed = a.decayed[:, items] * np.exp2(-elapsed[None, :] / self.half_lives_s[:, None])  # (H, M)
            total, first = a.total[items], a.first[items]
        age = np.where(np.isfinite(first), np.maximum(now - first, 0.0) / _DAY, np.nan)
        return [np.log1p(age), *np.log1p(decayed), np.log1p(total)]

    def decayed_counts(self, now: float | None = None) -> np.ndarray:
        """(H, n_items + 1) float64: every item's decayed count as of ``now`` (None or NaN: the newest event seen).

        The blend's recent-popularity generators read this row by row: every item decayed to one time, so the
        order (and a row's z-scores) is the same whatever time that is, as long as it is past every event seen.
        """
        with self._lock:
            a = self._a
            at = self.clock if now is None or np.isnan(now) else float(now)
            elapsed = np.where(np.isfinite(a.last), np.maximum(at - a.last, 0.0), 0.0)  # (V,)
            return a.decayed * np.exp2(-elapsed[None, :] / self.half_lives_s[:, None])

    @classmethod
    def from_decayed_counts(
        cls, counts: np.ndarray, as_of: float, half_lives_days: Sequence[float]
    ) -> "ItemActivity":
        """An activity whose decayed counts are ``counts`` (H, n_items + 1) as of ``as_of`` (seconds).

        A bundle's recent-popularity generators are such counts (:class:`~aisys.models.baselines.RecentPopularity`,
        decayed to the newest training event); seeded here, the events a replica observes afterwards add to them
        exactly as if training had seen them. All-time counts and first-seen times start empty (unknown).
        """
        counts = np.atleast_2d(np.asarray(counts, dtype=np.float64))
        if counts.shape[0] != len(half_lives_days) or counts.shape[1] < 2 or not np.isfinite(as_of):
            raise ValueError(f"need one count row per half-life ({len(half_lives_days)}) over >= 1 item and a finite "
                             f"as_of, got shape {counts.shape} and {as_of}")
        out = cls(counts.shape[1] - 1, half_lives_days)
        decayed = np.where(np.isfinite(counts), np.maximum(counts, 0.0), 0.0)
        decayed[:, 0] = 0.0  # padding
        out._a = _Arrays(decayed, np.full(counts.shape[1], float(as_of)), np.zeros(counts.shape[1]),
                         np.full(counts.shape[1], np.inf))
        out.clock = float(as_of)
        return out

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The state as named arrays (a bundle stores them; :meth:`from_arrays` reads them back)."""
        with self._lock:
            a = self._a
            return {"decayed": a.decayed.copy(), "last": a.last.copy(), "total": a.total.copy(),
                    "first": a.first.copy(), "half_lives_s": self.half_lives_s.copy()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "ItemActivity":
        """An activity holding the state :meth:`to_arrays` wrote."""
        missing = {"decayed", "last", "total", "first", "half_lives_s"} - set(arrays)
        if missing:
            raise ValueError(f"item activity arrays lack {sorted(missing)}")
        decayed = np.asarray(arrays["decayed"], dtype=np.float64)
        out = cls(decayed.shape[1] - 1, tuple(np.asarray(arrays["half_lives_s"], np.float64) / _DAY))
        out._a = _Arrays(decayed.copy(), np.asarray(arrays["last"], np.float64).copy(),
                         np.asarray(arrays["total"], np.float64).copy(), np.asarray(arrays["first"], np.float64).copy())
        if out._a.decayed.shape[0] != out.half_lives_s.size or any(
            x.shape != (decayed.shape[1],) for x in (out._a.last, out._a.total, out._a.first)
        ):
            raise ValueError("item activity arrays disagree on their shapes")
        seen = out._a.last[np.isfinite(out._a.last)]
        out.clock = float(seen.max()) if seen.size else -np.inf
        return out


def activity_from_events(n_items: int, items: Sequence[int], times: Sequence[float]) -> ItemActivity:
    """An :class:`ItemActivity` that observed every ``(items[n], times[n])``."""
    activity = ItemActivity(n_items)
    activity.observe_many(items, times)
    return activity


class PointInTimeActivity:
    """Offline: :meth:`item_features` of each row as of its own ``now``, from events strictly before it.

    Replays ``(items, times)`` in time order through one :class:`ItemActivity` and asks it at each distinct
    request time (the online path, one request time at a time).
    """

    feature_names = ACTIVITY_FEATURE_NAMES

    def __init__(self, n_items: int, items: Sequence[int], times: Sequence[float]) -> None:
        times = np.asarray(times, dtype=np.float64)
        order = np.argsort(times, kind="stable")
        self.n_items = n_items
        self.items, self.times = np.asarray(items, dtype=np.int64)[order], times[order]

    def item_features(self, items: np.ndarray, now: np.ndarray) -> list[np.ndarray]:
        items, now = np.asarray(items, dtype=np.int64), np.asarray(now, dtype=np.float64)
        if np.isnan(now).any():
            raise ValueError("offline item features need every row's request time")
        activity = ItemActivity(self.n_items)
        columns = [np.zeros(items.size) for _ in ACTIVITY_FEATURE_NAMES]
        seen = 0
        order = np.argsort(now, kind="stable")
        boundaries = np.flatnonzero(np.diff(now[order])) + 1
        for group in np.split(order, boundaries):
            if group.size == 0:
                continue
            t = now[group[0]]
            upto = int(np.searchsorted(self.times, t, side="left"))  # strictly before the request
            activity.observe_many(self.items[seen:upto], self.times[seen:upto])
            seen = max(seen, upto)
            for column, values in zip(columns, activity.item_features(items[group], now[group])):
                column[group] = values
        return columns


def category_matrix(item_categories: Sequence[str | None]) -> np.ndarray | None:
    """(n_items + 1, C) 0/1: each item's category (one per item; padding and uncategorised rows all 0).

    None when no item has a category (the category affinities are then missing values).
    """
    names = sorted({c for c in item_categories if c})
    if not names:
        return None
    column = {c: j for j, c in enumerate(names)}
    matrix = np.zeros((len(item_categories), len(names)))
    for i, c in enumerate(item_categories):
        if c:
            matrix[i, column[c]] = 1.0
    return matrix
