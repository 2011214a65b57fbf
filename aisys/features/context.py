"""The request's context: seconds since the user's last event, one function offline and online.

The multi-stage model weighs its generators by how long ago the user's newest
event was when the request comes (a request seconds after the last one is the
same session; a user who comes back after days picks what is popular now).
The same function computes that gap everywhere:

- offline (training's tuning, the gate's holdout): the request time is the
  held-out target's timestamp and the last event is the newest history item's
  (:func:`user_history_times` gives every history item's time);
- online (:class:`~aisys.serving.recommender.Recommender`): the request time is
  the service's clock and the last event is ``UserSession.last_event_time``.

``tests/unit/test_context_feature.py`` replays events through the session store
and checks that both sides give the same gaps.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aisys.features.sequences import PAD_INDEX
from aisys.schemas import TIMESTAMP_TYPE

# Event timestamps are int64 in the schema's unit; the gap is in seconds.
_UNITS_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[TIMESTAMP_TYPE.unit]


def seconds_since_last_event(last_event_time: float | None, now: float | None) -> float:
    """``now - last_event_time`` in seconds; NaN when either is unknown (no history, no clock).

    A clock behind the newest event (skewed hosts, an event stamped by a client
    ahead of us) gives 0, not a negative gap: the user is in the same session.
    """
    if last_event_time is None or now is None:
        return math.nan
    last, current = float(last_event_time), float(now)
    if math.isnan(last) or math.isnan(current):
        return math.nan
    return max(current - last, 0.0)


def gaps_since_last_event(last_event_times: Sequence[float | None], now: Sequence[float | None]) -> np.ndarray:
    """:func:`seconds_since_last_event` per row, as float64 ``(N,)``."""
    if len(last_event_times) != len(now):
        raise ValueError(f"last_event_times and now must have one length, got {len(last_event_times)}, {len(now)}")
    return np.array([seconds_since_last_event(a, b) for a, b in zip(last_event_times, now)], dtype=np.float64)


def user_history_times(events: pa.Table, item_index: dict[str, int]) -> dict[str, list[float]]:
    """Per user, the event times (seconds since the epoch) aligned with
    :func:`~aisys.features.sequences.user_histories` of the same arguments.

    The order is the same (timestamp, then row), and items ``item_index`` does not
    know are skipped the same way, so ``times[u][j]`` is the time of ``histories[u][j]``.
    """
    for column in ("user_id", "item_id", "timestamp"):
        if column not in events.column_names:
            raise ValueError(f"events table lacks column {column!r}; it has {events.column_names}")
    n = events.num_rows
    if n == 0:
        return {}
    users = np.asarray(events.column("user_id").to_pylist(), dtype=object)
    items = events.column("item_id").to_pylist()
    ts = pc.cast(events.column("timestamp"), pa.int64()).to_numpy(zero_copy_only=False)
    idx = np.fromiter((item_index.get(i, PAD_INDEX) for i in items), dtype=np.int64, count=n)
    user_keys, user_codes = np.unique(users, return_inverse=True)
    order = np.lexsort((np.arange(n), ts, user_codes))  # the order user_histories uses
    times: dict[str, list[float]] = {}
    for row in order:
        if idx[row] == PAD_INDEX:
            continue
        times.setdefault(str(user_keys[user_codes[row]]), []).append(float(ts[row]) / _UNITS_PER_SECOND)
    return times
