"""Percentiles and latency summaries: pure functions over lists of seconds (one implementation for everyone)."""

from __future__ import annotations

import math
from typing import Sequence

QUANTILES = (50, 90, 99)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile of ``values`` with linear interpolation (numpy's default); None when empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"q must be within [0, 100], got {q}")
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_summary(latencies_s: Sequence[float], digits: int = 2) -> dict[str, float | None]:
    """``p50_ms``, ``p90_ms``, ``p99_ms`` and ``max_ms`` of latencies given in seconds (None when empty)."""
    out: dict[str, float | None] = {}
    for q in QUANTILES:
        value = percentile(latencies_s, q)
        out[f"p{q}_ms"] = None if value is None else round(value * 1000, digits)
    out["max_ms"] = round(max(latencies_s) * 1000, digits) if latencies_s else None
    return out
