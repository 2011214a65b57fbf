"""Online hit-rate: the arithmetic, per version and arm, the baseline, and bounded memory."""

from __future__ import annotations

import pytest

from aisys.monitoring.online_quality import HitRateTracker


def test_a_list_is_a_hit_when_the_user_interacts_with_an_item_within_the_horizon():
    tracker = HitRateTracker(horizon_events=3)
    tracker.record_list("u1", ["a", "b"], "1")
    assert tracker.record_event("u1", "x") == []
    assert tracker.record_event("u1", "b") == [("1", "champion", True)]
    rate = tracker.get("1")
    assert (rate.hits, rate.judged, rate.hit_rate) == (1, 1, 1.0)
    assert tracker.open_lists == 0


def test_a_list_is_a_miss_after_horizon_events_without_a_recommended_item():
    tracker = HitRateTracker(horizon_events=2)
    tracker.record_list("u1", ["a"], "1")
    tracker.record_event("u1", "x")
    assert tracker.record_event("u1", "y") == [("1", "champion", False)]
    # The item comes too late: the list was already judged.
    assert tracker.record_event("u1", "a") == []
    assert tracker.get("1").hit_rate == 0.0


def test_other_users_events_do_not_judge_a_list():
    tracker = HitRateTracker(horizon_events=1)
    tracker.record_list("u1", ["a"], "1")
    assert tracker.record_event("u2", "a") == []
    assert tracker.open_lists == 1


def test_each_open_list_is_judged_by_the_users_next_events():
    # A list before each event (the replay's protocol): three lists open at once.
    tracker = HitRateTracker(horizon_events=3)
    tracker.record_list("u", ["a"], "1")
    tracker.record_event("u", "z")
    tracker.record_list("u", ["b"], "1")
    tracker.record_event("u", "z")
    tracker.record_list("u", ["z"], "1")
    judged = tracker.record_event("u", "z")
    # First list: 3 events without 'a' -> miss. Third: 'z' at once -> hit. Second stays open (2 of 3).
    assert sorted(judged) == [("1", "champion", False), ("1", "champion", True)]
    assert tracker.open_lists == 1


def test_hit_rates_are_kept_per_model_version_and_arm():
    tracker = HitRateTracker(horizon_events=1)
    for n in range(10):
        user = f"u{n}"
        tracker.record_list(user, ["good"], "1", "champion")
        tracker.record_list(user, ["bad"], "2", "challenger")
        tracker.record_event(user, "good" if n < 6 else "other")
    champion, challenger = tracker.get("1", "champion"), tracker.get("2", "challenger")
    assert (champion.hits, champion.judged) == (6, 10)
    assert champion.hit_rate == pytest.approx(0.6)
    assert challenger.hit_rate == 0.0
    assert tracker.get("1", "challenger") is None
    assert [(r.model_version, r.arm) for r in tracker.all()] == [("1", "champion"), ("2", "challenger")]


def test_baseline_freezes_over_the_first_lists_and_recent_rate_follows_the_latest():
    tracker = HitRateTracker(horizon_events=1, baseline_lists=4, window_lists=4)
    outcomes = [True, True, True, False] + [False] * 4  # 75% at first, then 0%
    for n, hit in enumerate(outcomes):
        tracker.record_list(f"u{n}", ["a"], "1")
        tracker.record_event(f"u{n}", "a" if hit else "b")
        if n == 2:
            assert tracker.get("1").baseline_hit_rate is None  # not enough lists yet
    rate = tracker.get("1")
    assert rate.baseline_hit_rate == pytest.approx(0.75)
    assert rate.recent_hit_rate == 0.0 and rate.recent_judged == 4
    assert rate.hit_rate == pytest.approx(3 / 8)


def test_memory_is_bounded_and_dropped_lists_count_as_expired_not_missed():
    tracker = HitRateTracker(horizon_events=5, max_users=2, max_pending_per_user=2)
    for n in range(3):
        tracker.record_list("heavy", [f"i{n}"], "1")  # the oldest of three is dropped
    tracker.record_list("u1", ["a"], "1")
    tracker.record_list("u2", ["a"], "1")  # three users: the least recently active one goes
    assert tracker.tracked_users == 2
    assert tracker.open_lists == 2
    rate = tracker.get("1")
    assert rate.expired == 3 and rate.judged == 0


def test_empty_lists_are_not_judged_and_bad_settings_are_named():
    tracker = HitRateTracker(horizon_events=1)
    tracker.record_list("u", [], "1")
    assert tracker.open_lists == 0
    with pytest.raises(ValueError, match="horizon_events"):
        HitRateTracker(horizon_events=0)
    with pytest.raises(ValueError, match="hit_rate"):
        tracker.set_baseline("1", "champion", 1.5)
