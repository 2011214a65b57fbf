"""Drift statistics and the reference profile: ~0 without drift, large under each simulator drift knob."""

from __future__ import annotations

import functools
import json

import numpy as np
import pandas as pd
import pytest

from aisys.config import SimulatorConfig
from aisys.data.simulator import drift_midpoint, simulate_events
from aisys.monitoring.drift import (
    OTHER,
    binned_counts,
    categorical_counts,
    compare_to_profile,
    events_per_user,
    jensen_shannon,
    psi,
    quantile_cuts,
    worst,
)
from aisys.monitoring.profile import ReferenceProfile, build_profile, read_profile, write_profile

SIM = dict(n_users=300, n_items=200, n_sessions=3000, days=10, seed=3)
WINDOW = 2000


def halves(**knobs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The simulator's events before and after the midpoint where its drift knobs act."""
    return _halves(tuple(sorted(knobs.items())))


@functools.lru_cache(maxsize=None)
def _halves(knobs: tuple) -> tuple[pd.DataFrame, pd.DataFrame]:
    cfg = SimulatorConfig(**SIM, **dict(knobs))
    events = simulate_events(cfg).to_pandas()
    mid = pd.Timestamp(drift_midpoint(cfg))
    before = events[events["timestamp"] < mid].reset_index(drop=True)
    after = events[events["timestamp"] >= mid].reset_index(drop=True)
    return before, after


@pytest.fixture(scope="module")
def no_drift_stats():
    before, after = halves()
    profile = build_profile(before, activity_window_events=WINDOW)
    return compare_to_profile(profile, after.iloc[-WINDOW:])


# --- the statistics --------------------------------------------------------------------------------


def test_identical_distributions_score_zero_and_both_statistics_grow_with_the_shift():
    p = np.array([0.5, 0.3, 0.2])
    assert psi(p, p) == pytest.approx(0.0, abs=1e-12)
    assert jensen_shannon(p, p) == pytest.approx(0.0, abs=1e-6)
    small, large = np.array([0.45, 0.33, 0.22]), np.array([0.1, 0.2, 0.7])
    assert 0 < psi(p, small) < psi(p, large)
    assert 0 < jensen_shannon(p, small) < jensen_shannon(p, large) <= 1.0
    # Counts and shares are the same distribution.
    assert psi(p * 1000, large * 40) == pytest.approx(psi(p, large))


def test_smoothing_keeps_empty_buckets_finite_and_js_is_symmetric_and_bounded():
    p, q = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    assert np.isfinite(psi(p, q)) and psi(p, q) > 5
    assert jensen_shannon(p, q) == pytest.approx(jensen_shannon(q, p))
    assert 0.99 < jensen_shannon(p, q) <= 1.0


def test_mismatched_bucket_counts_are_an_error():
    with pytest.raises(ValueError, match="buckets"):
        psi(np.ones(3), np.ones(4))


def test_quantile_bins_hold_equal_reference_shares_and_catch_out_of_range_values():
    values = np.random.default_rng(0).lognormal(3, 1, size=10_000)
    cuts = quantile_cuts(values, n_bins=10)
    counts = binned_counts(cuts, values)
    assert len(counts) == 10
    assert np.allclose(counts / counts.sum(), 0.1, atol=0.01)
    # Values beyond the reference's range still land in the open outer bins.
    assert binned_counts(cuts, [-1e9, 1e9, np.nan]).tolist() == [1.0] + [0.0] * 8 + [1.0]


def test_unknown_categories_go_to_the_other_bucket():
    counts = categorical_counts(["a", "b"], ["a", "a", "b", "new", None])
    assert counts.tolist() == [2.0, 1.0, 2.0]  # a, b, __other__ (the unseen 'new' and the missing one)
    assert OTHER not in ["a", "b"]


def test_user_activity_is_counted_per_window_of_equal_size():
    users = ["u1"] * 4 + ["u2"] * 2 + ["u1"] * 6
    # Two full chunks of 6: (u1: 4, u2: 2) and (u1: 6).
    assert sorted(events_per_user(users, 6).tolist()) == [2.0, 4.0, 6.0]
    # A table shorter than one window is one partial chunk.
    assert sorted(events_per_user(users[:3], 6).tolist()) == [3.0]


# --- the profile against the simulator's drift knobs ------------------------------------------------


def test_without_drift_every_feature_stays_below_the_drift_threshold(no_drift_stats):
    assert set(no_drift_stats) == {"category", "item_popularity", "price", "user_activity", "user_taste"}
    for feature, stat in no_drift_stats.items():
        assert stat.psi < 0.1, f"{feature}: PSI {stat.psi:.3f} without drift"
        assert stat.js < 0.15, f"{feature}: JS {stat.js:.3f} without drift"


@pytest.mark.parametrize(
    "knobs, feature",
    [
        ({"new_items": 30}, "item_popularity"),
        ({"price_change": 0.5}, "price"),
        ({"taste_shift": 1.0}, "user_taste"),
    ],
)
def test_each_drift_knob_shows_up_in_its_feature(knobs, feature, no_drift_stats):
    before, after = halves(**knobs)
    profile = build_profile(before, activity_window_events=WINDOW)
    stats = compare_to_profile(profile, after.iloc[-WINDOW:])
    assert stats[feature].psi > 0.4, f"{feature}: PSI {stats[feature].psi:.3f} under {knobs}"
    assert stats[feature].psi > 5 * no_drift_stats[feature].psi
    assert stats[feature].js > 2 * no_drift_stats[feature].js
    assert worst(stats)[0] == feature


def test_a_taste_shift_leaves_the_overall_category_mix_alone():
    # Why the profile carries user_taste: users trading tastes does not move the aggregate mix.
    before, after = halves(taste_shift=1.0)
    stats = compare_to_profile(build_profile(before, activity_window_events=WINDOW), after.iloc[-WINDOW:])
    assert stats["category"].psi < 0.2 < stats["user_taste"].psi


def test_score_drift_is_compared_when_the_profile_has_reference_scores():
    rng = np.random.default_rng(1)
    before, after = halves()
    profile = build_profile(before, scores=rng.normal(0, 1, 3000), activity_window_events=WINDOW)
    same = compare_to_profile(profile, after, scores=rng.normal(0, 1, 3000))["score"]
    shifted = compare_to_profile(profile, after, scores=rng.normal(1.5, 1, 3000))["score"]
    assert same.psi < 0.05 < 0.5 < shifted.psi
    assert "score" not in compare_to_profile(profile, after)  # no served scores, no statistic


def test_small_windows_leave_features_out_and_missing_columns_are_named():
    before, after = halves()
    profile = build_profile(before, activity_window_events=WINDOW)
    small = compare_to_profile(profile, after.iloc[:100], min_events=30)
    assert "user_activity" not in small  # needs a full activity window
    assert "category" in small
    with pytest.raises(ValueError, match="item_id"):
        compare_to_profile(profile, after.drop(columns=["item_id"]))


def test_profile_round_trips_through_json_and_the_lake(tmp_path):
    before, after = halves(new_items=30)
    profile = build_profile(before, snapshot_id="snap-1", model_version="3", scores=[0.1, 0.5, 0.9] * 20,
                            activity_window_events=WINDOW)
    again = ReferenceProfile.from_json(profile.to_json())
    assert again == profile
    json.loads(profile.to_json())  # plain JSON: it can ride in a bundle's lineage
    location = write_profile(str(tmp_path / "lake"), profile)
    assert location.endswith("/monitoring/profiles/snap-1.json")
    loaded = read_profile(location)
    window = after.iloc[-WINDOW:]
    expected = {f: s.psi for f, s in compare_to_profile(profile, window).items()}
    assert {f: s.psi for f, s in compare_to_profile(loaded, window).items()} == pytest.approx(expected)


def test_popularity_buckets_split_reference_events_evenly_and_new_items_are_unseen():
    before, _ = halves()
    popularity = build_profile(before).popularity
    shares = popularity.reference_shares()
    assert popularity.bucket_names[-1] == "unseen" and len(shares) == 6
    # Out-of-sample shares: about a fifth per bucket, and few events on items the ranking never saw.
    assert np.all(np.abs(shares[:-1] - 0.2) < 0.08), shares
    assert shares[-1] < 0.05
    # Zipf: the head bucket holds few items but about as many events as the tail bucket.
    sizes = np.bincount(list(popularity.item_bucket.values()), minlength=len(shares) - 1)
    assert sizes[0] < sizes[-1]
    assert popularity.bucket_counts(["never-seen-item"]).tolist()[-1] == 1.0
