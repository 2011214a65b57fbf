"""The retrain policy: each trigger, each block, and an audit row for every decision."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from aisys.config import MonitorConfig
from aisys.loop.policy import PolicyState, RetrainPolicy, drop_p_value
from aisys.monitoring.audit import InMemoryAuditLog, ParquetAuditLog

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
CFG = MonitorConfig(
    psi_threshold=0.2,
    drift_consecutive_checks=3,
    hit_rate_drop=0.2,
    hit_rate_min_lists=100,
    min_new_events=10_000,
    cooldown_s=3600,
    max_retrains_per_day=2,
)
CALM = {"category": 0.05, "price": 0.02}
DRIFT = {"category": 0.05, "price": 0.45}


class Clock:
    """An injectable clock that tests step by hand."""

    def __init__(self, start: datetime = T0):
        self.now = start

    def advance(self, **delta) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture
def policy() -> RetrainPolicy:
    return RetrainPolicy(CFG, InMemoryAuditLog())


def test_drift_triggers_only_after_the_configured_consecutive_checks(policy):
    history: list[dict] = [CALM]
    outcomes = []
    for _ in range(3):
        history.append(DRIFT)
        outcomes.append(policy.evaluate(PolicyState(drift_history=history), T0).retrain)
    assert outcomes == [False, False, True]
    decision = policy.evaluate(PolicyState(drift_history=history), T0)
    assert decision.triggers == ("drift",)
    assert "price 0.450" in decision.reasons[0] and "3 consecutive" in decision.reasons[0]


def test_a_calm_check_breaks_the_drift_streak(policy):
    history = [DRIFT, DRIFT, CALM, DRIFT, DRIFT]
    assert policy.drift_streak(history) == 2
    assert not policy.evaluate(PolicyState(drift_history=history), T0).retrain
    # Exactly at the threshold is not above it.
    assert policy.drift_streak([{"x": 0.2}] * 3) == 0


def test_hit_rate_drop_against_the_models_own_baseline_triggers(policy):
    dropped = PolicyState(online_hit_rate=0.30, baseline_hit_rate=0.40, judged_lists=500)  # -25% > 20%
    within = PolicyState(online_hit_rate=0.33, baseline_hit_rate=0.40, judged_lists=500)  # -17.5%
    decision = policy.evaluate(dropped, T0)
    assert decision.retrain and decision.triggers == ("hit_rate_drop",)
    assert "25%" in decision.reasons[0]
    assert not policy.evaluate(within, T0).retrain


def test_hit_rate_drop_needs_enough_lists_and_a_baseline(policy):
    too_few = PolicyState(online_hit_rate=0.05, baseline_hit_rate=0.40, judged_lists=99)
    no_baseline = PolicyState(online_hit_rate=0.05, baseline_hit_rate=None, judged_lists=5000)
    assert not policy.evaluate(too_few, T0).triggers
    assert not policy.evaluate(no_baseline, T0).triggers


def test_a_drop_that_small_windows_make_by_chance_does_not_trigger(policy):
    # 200 baseline lists at 0.30 against 100 recent at 0.22: -27%, over the 20% allowed, but p = 0.071, which
    # chance gives often enough: not significant at 0.05.
    noisy = PolicyState(online_hit_rate=0.22, baseline_hit_rate=0.30, judged_lists=100, baseline_lists=200)
    decision = policy.evaluate(noisy, T0)
    assert not decision.retrain and decision.triggers == ()
    assert "not significantly" in decision.reasons[0]
    # The same drop over 1,000 recent lists is significant (p = 0.007).
    backed = PolicyState(online_hit_rate=0.22, baseline_hit_rate=0.30, judged_lists=1000, baseline_lists=200)
    decision = policy.evaluate(backed, T0)
    assert decision.triggers == ("hit_rate_drop",) and "p=0.0" in decision.reasons[0]


def test_the_significance_test_can_be_turned_off():
    off = RetrainPolicy(CFG.model_copy(update={"hit_rate_drop_alpha": 0.0}), InMemoryAuditLog())
    noisy = PolicyState(online_hit_rate=0.22, baseline_hit_rate=0.30, judged_lists=100, baseline_lists=200)
    assert off.evaluate(noisy, T0).triggers == ("hit_rate_drop",)


def test_drop_p_value_is_a_one_sided_two_proportion_test():
    assert drop_p_value(0.3, 200, 0.3, 200) == pytest.approx(0.5)
    # z = 0.08 / sqrt(0.26 * 0.74 * (1/200 + 1/200)) = 1.824 -> p = 0.034
    assert drop_p_value(0.30, 200, 0.22, 200) == pytest.approx(0.0341, abs=1e-3)
    assert drop_p_value(0.22, 200, 0.30, 200) == pytest.approx(1 - 0.0341, abs=1e-3)  # a rise is no evidence
    assert drop_p_value(0.3, 0, 0.1, 100) is None
    assert drop_p_value(0.0, 50, 0.0, 50) == 1.0


def test_enough_new_data_triggers_by_itself(policy):
    assert not policy.evaluate(PolicyState(new_events=9_999), T0).retrain
    decision = policy.evaluate(PolicyState(new_events=10_000), T0)
    assert decision.retrain and decision.triggers == ("new_data",)


def test_several_triggers_are_all_reported(policy):
    state = PolicyState(drift_history=[DRIFT] * 3, new_events=20_000,
                        online_hit_rate=0.1, baseline_hit_rate=0.4, judged_lists=1000)
    decision = policy.evaluate(state, T0)
    assert decision.triggers == ("drift", "hit_rate_drop", "new_data")
    assert len(decision.reasons) == 3


def test_cooldown_blocks_until_it_has_passed(policy):
    clock = Clock()
    last_retrain = clock.now
    state = PolicyState(new_events=50_000, retrain_times=[last_retrain])
    blocked = policy.evaluate(state, clock.advance(minutes=59))
    assert not blocked.retrain and blocked.outcome == "blocked"
    assert blocked.triggers == ("new_data",)
    assert blocked.blocked_by and blocked.blocked_by[0].startswith("cooldown")
    allowed = policy.evaluate(state, clock.advance(minutes=1))
    assert allowed.retrain and allowed.blocked_by == ()


def test_daily_budget_blocks_over_a_rolling_day(policy):
    clock = Clock()
    times = [clock.now, clock.advance(hours=2)]  # two retrains: the budget is two a day
    state = PolicyState(new_events=50_000, retrain_times=times)
    blocked = policy.evaluate(state, clock.advance(hours=20))  # cooldown long over, budget used
    assert not blocked.retrain
    assert [b.split(":")[0] for b in blocked.blocked_by] == ["daily budget"]
    # 24 h after the first retrain one slot is free again.
    assert policy.evaluate(state, T0 + timedelta(hours=24, seconds=1)).retrain


def test_blocks_are_only_named_when_something_triggered(policy):
    decision = policy.evaluate(PolicyState(retrain_times=[T0]), T0 + timedelta(minutes=1))
    assert decision.outcome == "none" and decision.blocked_by == ()
    assert decision.reasons[0].startswith("no trigger")


def test_naive_times_are_taken_as_utc(policy):
    naive_last = datetime(2026, 3, 1, 12, 0)
    decision = policy.evaluate(PolicyState(new_events=50_000, retrain_times=[naive_last]),
                               datetime(2026, 3, 1, 12, 30))
    assert decision.blocked_by and decision.at.tzinfo is not None


def test_every_decision_is_audited_with_time_inputs_and_reasons():
    audit = InMemoryAuditLog()
    policy = RetrainPolicy(CFG, audit)
    clock = Clock()
    policy.evaluate(PolicyState(model_version="4", drift_history=[CALM]), clock.now)
    policy.evaluate(PolicyState(model_version="4", new_events=12_000), clock.advance(minutes=5))
    policy.evaluate(PolicyState(model_version="4", new_events=12_000, retrain_times=[clock.now]),
                    clock.advance(minutes=5))
    table = audit.read()
    assert table["outcome"].tolist() == ["none", "retrain", "blocked"]
    assert table["model_version"].tolist() == ["4", "4", "4"]
    assert table["at"].tolist() == [T0, T0 + timedelta(minutes=5), T0 + timedelta(minutes=10)]
    assert json.loads(table["inputs"].iloc[1])["new_events"] == 12_000
    assert json.loads(table["inputs"].iloc[0])["latest_drift"] == CALM
    assert list(table["blocked_by"].iloc[2])[0].startswith("cooldown")
    assert list(table["reasons"].iloc[1])[0].startswith("new_data")


def test_parquet_audit_log_appends_and_reads_back_in_time_order(tmp_path):
    lake = str(tmp_path / "lake")
    policy = RetrainPolicy(CFG, ParquetAuditLog(lake))
    assert ParquetAuditLog(lake).read().empty
    policy.evaluate(PolicyState(new_events=50_000), T0 + timedelta(hours=1))
    policy.evaluate(PolicyState(), T0)
    table = ParquetAuditLog(lake).read()  # a fresh reader sees what another wrote
    assert table["outcome"].tolist() == ["none", "retrain"]
    assert (tmp_path / "lake" / "monitoring" / "retrain_audit").is_dir()
