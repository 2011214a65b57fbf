"""Pure helpers of the demo: the live-tail split and latency percentiles."""

import math
from datetime import datetime, timedelta, timezone

import pyarrow as pa

from aisys.demo import latency_percentiles, split_live_tail


def test_split_live_tail_keeps_time_order_and_counts():
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    # Rows deliberately out of order: the split must sort by time.
    ts = [t0 + timedelta(minutes=m) for m in (5, 1, 3, 2, 4)]
    table = pa.table({"event_id": [f"e{m}" for m in (5, 1, 3, 2, 4)], "timestamp": ts})
    history, live = split_live_tail(table, 2)
    assert history.num_rows == 3 and live.num_rows == 2
    assert live.column("event_id").to_pylist() == ["e4", "e5"]
    assert max(history.column("timestamp").to_pylist()) < min(live.column("timestamp").to_pylist())


def test_split_live_tail_never_empties_history():
    table = pa.table({"event_id": ["a", "b"], "timestamp": [1, 2]})
    history, live = split_live_tail(table, 10)
    assert history.num_rows == 1 and live.num_rows == 1


def test_latency_percentiles():
    p = latency_percentiles([0.001 * i for i in range(1, 101)])
    assert abs(p["p50_ms"] - 50.5) < 1e-6
    assert 98 < p["p99_ms"] <= 100
    assert math.isnan(latency_percentiles([])["p50_ms"])
