"""Prequential replay statistics: per-user online hit-rates, paired bootstrap gains, and replay splits.

Pure numpy/pyarrow, used by ``benchmarks/replay.py`` (issue 5's replay benchmark) and unit-tested in
``tests/unit/test_replay_stats.py``. A replay asks for a user's top-k before each of their events; a hit is
the event's item being in that list. Gains between two policies are compared per user (the same users see
the same events under every policy), so the bootstrap resamples users and keeps each user's pair together.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def per_user_hit_rates(users: list[str], hits: list[bool], order: list[str] | None = None) -> tuple[list[str], np.ndarray]:
    """Each user's hit-rate over their replayed events, in ``order`` (default: sorted user ids)."""
    totals: dict[str, list[int]] = {}
    for user, hit in zip(users, hits):
        pair = totals.setdefault(user, [0, 0])
        pair[0] += int(hit)
        pair[1] += 1
    order = sorted(totals) if order is None else order
    missing = [u for u in order if u not in totals]
    if missing:
        raise ValueError(f"{len(missing)} user(s) of the order have no replayed event, e.g. {missing[:3]}")
    return order, np.array([totals[u][0] / totals[u][1] for u in order], dtype=np.float64)


def paired_bootstrap(base: np.ndarray, other: np.ndarray, n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
    """Gain of ``other`` over ``base`` (per-user hit-rates of the same users), with paired bootstrap intervals.

    Users are resampled with replacement ``n_boot`` times; each resample keeps a user's two values together
    (paired). Returns the absolute gain of the user-averaged HR and the relative gain (other / base - 1), each
    with its ``level`` percentile interval.
    """
    base, other = np.asarray(base, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if base.shape != other.shape or base.ndim != 1 or base.size == 0:
        raise ValueError(f"base and other must be equal, non-empty 1-D arrays; got {base.shape} and {other.shape}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, base.size, size=(n_boot, base.size))
    b, o = base[idx].mean(axis=1), other[idx].mean(axis=1)
    tail = (1 - level) / 2 * 100
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = o / b - 1
    out = {"abs": float(other.mean() - base.mean()),
           "rel": float(other.mean() / base.mean() - 1) if base.mean() > 0 else float("nan")}
    for name, sample in (("abs", o - b), ("rel", rel)):
        out[f"{name}_lo"], out[f"{name}_hi"] = (float(v) for v in np.nanpercentile(sample, [tail, 100 - tail]))
    return out


def bootstrap_capture(base: np.ndarray, full: np.ndarray, partial: np.ndarray, n_boot: int = 2000,
                      seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Share of ``full``'s gain over ``base`` that ``partial`` captures: (partial - base) / (full - base),
    user-averaged, with a paired bootstrap interval (the same resampled users for all three)."""
    arrays = [np.asarray(a, dtype=np.float64) for a in (base, full, partial)]
    if len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 1 or arrays[0].size == 0:
        raise ValueError("base, full and partial must be equal, non-empty 1-D arrays")
    b, f, p = arrays
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, b.size, size=(n_boot, b.size))
    with np.errstate(divide="ignore", invalid="ignore"):
        sample = (p[idx].mean(1) - b[idx].mean(1)) / (f[idx].mean(1) - b[idx].mean(1))
        point = (p.mean() - b.mean()) / (f.mean() - b.mean())
    tail = (1 - level) / 2 * 100
    lo, hi = np.nanpercentile(sample, [tail, 100 - tail])
    return {"share": float(point), "share_lo": float(lo), "share_hi": float(hi)}


def rolling_mean(values: list[bool] | np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` values (shorter at the start); same length as ``values``."""
    x = np.asarray(values, dtype=np.float64)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    csum = np.concatenate([[0.0], np.cumsum(x)])
    ends = np.arange(1, x.size + 1)
    starts = np.maximum(0, ends - window)
    return (csum[ends] - csum[starts]) / (ends - starts)


def time_sorted(events: pa.Table) -> pa.Table:
    """Events by timestamp, ties by event id's source row (MovieLens ``ml-{row}``) then id."""
    key = [("timestamp", "ascending"), ("event_id", "ascending")]
    if events.num_rows and str(events.column("event_id")[0]).startswith("ml-"):
        rows = pc.cast(pc.utf8_slice_codeunits(events.column("event_id"), 3), pa.int64())
        events = events.append_column("_row", rows)
        key = [("timestamp", "ascending"), ("_row", "ascending")]
        events = events.take(pc.sort_indices(events, sort_keys=key)).drop_columns(["_row"])
        return events
    return events.take(pc.sort_indices(events, sort_keys=key))


def split_train_replay(events: pa.Table, train_share: float, n_events: int | None) -> tuple[pa.Table, pa.Table]:
    """Time-ordered (first ``train_share`` of the rows, the next ``n_events`` rows or all the rest)."""
    if not 0 < train_share < 1:
        raise ValueError(f"--train-share must be in (0, 1), got {train_share}")
    events = time_sorted(events)
    cut = int(round(events.num_rows * train_share))
    rest = events.slice(cut)
    return events.slice(0, cut), rest if n_events is None else rest.slice(0, n_events)
