"""The replay benchmark's statistics (aisys.loop.replay): hit-rates per user, paired bootstrap, splits."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pytest

from aisys.loop.replay import (
    bootstrap_capture,
    paired_bootstrap,
    per_user_hit_rates,
    rolling_mean,
    split_train_replay,
    time_sorted,
)


def test_per_user_hit_rates_average_each_users_events_in_the_given_order():
    order, rates = per_user_hit_rates(["b", "a", "b", "b", "a"], [True, False, False, True, True])
    assert order == ["a", "b"]
    assert rates.tolist() == pytest.approx([0.5, 2 / 3])
    order, rates = per_user_hit_rates(["b", "a"], [True, False], order=["b", "a"])
    assert rates.tolist() == [1.0, 0.0]


def test_per_user_hit_rates_refuse_an_order_naming_a_user_without_events():
    with pytest.raises(ValueError, match="no replayed event"):
        per_user_hit_rates(["a"], [True], order=["a", "ghost"])


def test_paired_bootstrap_point_gain_and_an_interval_that_brackets_it():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.1, 0.3, size=400)
    other = base + 0.05  # every user gains exactly 0.05: the paired interval is that gain, no wider
    out = paired_bootstrap(base, other, n_boot=500)
    assert out["abs"] == pytest.approx(0.05)
    assert out["abs_lo"] == pytest.approx(0.05) and out["abs_hi"] == pytest.approx(0.05)
    assert out["rel"] == pytest.approx(0.05 / base.mean())
    assert out["rel_lo"] <= out["rel"] <= out["rel_hi"]


def test_paired_bootstrap_interval_covers_zero_when_there_is_no_gain():
    rng = np.random.default_rng(2)
    base = rng.uniform(0, 1, size=300)
    other = base + rng.normal(0, 0.2, size=300)  # noise around no gain
    out = paired_bootstrap(base, other, n_boot=1000, seed=3)
    assert out["abs_lo"] < 0 < out["abs_hi"]
    assert out == paired_bootstrap(base, other, n_boot=1000, seed=3)  # seeded: reproducible


def test_pairing_makes_the_interval_narrower_than_ignoring_it():
    rng = np.random.default_rng(4)
    base = rng.uniform(0, 1, size=300)  # users differ a lot ...
    other = base + 0.02 + rng.normal(0, 0.01, size=300)  # ... but each gains about 0.02
    out = paired_bootstrap(base, other, n_boot=1000)
    assert out["abs_lo"] > 0  # unpaired, the between-user spread (std ~0.29 / sqrt(300) ~ 0.017) would hide it


def test_paired_bootstrap_refuses_mismatched_or_empty_arrays():
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_bootstrap(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_bootstrap(np.array([]), np.array([]))


def test_bootstrap_capture_is_the_share_of_the_full_gain():
    base = np.full(200, 0.2)
    full = base + 0.1
    partial = base + 0.09
    out = bootstrap_capture(base, full, partial, n_boot=300)
    assert out["share"] == pytest.approx(0.9)
    assert out["share_lo"] == pytest.approx(0.9) and out["share_hi"] == pytest.approx(0.9)
    with pytest.raises(ValueError):
        bootstrap_capture(base, full, partial[:10])


def test_rolling_mean_is_trailing_and_shorter_at_the_start():
    assert rolling_mean([1, 0, 1, 1], 2).tolist() == [1.0, 0.5, 0.5, 1.0]
    assert rolling_mean([True, False], 5).tolist() == [1.0, 0.5]
    with pytest.raises(ValueError, match="window"):
        rolling_mean([1], 0)


def _events(rows: list[tuple[str, int]]) -> pa.Table:
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    return pa.table({
        "event_id": [eid for eid, _ in rows],
        "timestamp": pa.array([start + timedelta(seconds=s) for _, s in rows], pa.timestamp("us", tz="UTC")),
    })


def test_time_sorted_breaks_movielens_ties_by_source_row_not_by_text():
    table = time_sorted(_events([("ml-10", 5), ("ml-9", 5), ("ml-2", 1)]))
    assert table.column("event_id").to_pylist() == ["ml-2", "ml-9", "ml-10"]  # "ml-10" < "ml-9" as text


def test_split_train_replay_cuts_by_time_share_and_limits_the_replay():
    events = _events([(f"e{n}", 10 - n) for n in range(10)])  # reverse time order on input
    train, replay = split_train_replay(events, 0.6, None)
    assert train.num_rows == 6 and replay.num_rows == 4
    assert max(train.column("timestamp").to_pylist()) < min(replay.column("timestamp").to_pylist())
    _, replay = split_train_replay(events, 0.6, 2)
    assert replay.num_rows == 2
    with pytest.raises(ValueError, match="train-share"):
        split_train_replay(events, 1.0, None)
