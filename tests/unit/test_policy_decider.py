"""The loop decides on the monitor's findings: one decision per check, the cooldown and budget kept by the loop
(across restarts, through the audit table), manual retrains counted, and the controller's poll (no Ray)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from aisys.config import MonitorConfig
from aisys.loop.controller import RetrainController
from aisys.loop.decider import RetrainDecider
from aisys.loop.retrain import RetrainOutcome
from aisys.monitoring.audit import InMemoryAuditLog, ParquetAuditLog
from aisys.monitoring.findings import Findings, drift_streak
from aisys.monitoring.metrics import InMemoryMetricsSink

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
CFG = MonitorConfig(psi_threshold=0.2, drift_consecutive_checks=2, min_new_events=1_000_000, cooldown_s=3600,
                    max_retrains_per_day=2)
DRIFT, CALM = {"price": 0.45}, {"price": 0.05}


def drifting(n_checks: int, start: datetime = T0, every: timedelta = timedelta(minutes=1)) -> list[Findings]:
    """The findings of ``n_checks`` checks in a row that all see drift."""
    return [Findings(at=start + i * every, check=i + 1, drift_history=(DRIFT,) * (i + 1), model_version="3")
            for i in range(n_checks)]


@pytest.fixture
def sink(monkeypatch) -> InMemoryMetricsSink:
    sink = InMemoryMetricsSink()
    monkeypatch.setattr("aisys.monitoring.metrics._sink_override", sink)
    return sink


def test_drift_streak_counts_the_latest_checks_above_the_threshold():
    assert drift_streak([DRIFT, CALM, DRIFT, DRIFT], 0.2) == 2
    assert drift_streak([DRIFT, CALM], 0.2) == 0 and drift_streak([], 0.2) == 0


def test_one_decision_per_finding_the_cooldown_holds_and_the_request_is_taken_once(sink):
    decider = RetrainDecider(CFG, InMemoryAuditLog())
    decisions = decider.decide_all(reversed(drifting(4)))  # decided oldest first, whatever the order given

    assert [d.outcome for d in decisions] == ["none", "retrain", "blocked", "blocked"]
    assert any(b.startswith("cooldown") for b in decisions[-1].blocked_by)
    assert list(decider.retrain_times) == [T0 + timedelta(minutes=1)]  # counted when decided, at the check's time
    request = decider.take_request()
    assert request["triggers"] == ["drift"] and request["model_version"] == "3"
    assert decider.take_request() is None
    assert decider.audit_log()["outcome"].tolist() == ["none", "retrain", "blocked", "blocked"]
    assert sink.value("aisys_retrain_decisions_total", decision="blocked") == 2
    assert sink.value("aisys_retrain_decisions_total", decision="retrain") == 1


def test_a_restarted_loop_keeps_the_budget_through_the_audit_table(tmp_path, sink):
    audit = ParquetAuditLog(str(tmp_path / "lake"))
    first = RetrainDecider(CFG, audit, now=T0)
    assert first.decide_all(drifting(2))[-1].retrain

    later = T0 + timedelta(hours=2)  # past the cooldown
    again = RetrainDecider(CFG, ParquetAuditLog(str(tmp_path / "lake")), now=later)
    assert list(again.retrain_times) == [T0 + timedelta(minutes=1)]
    again.record_retrain("by hand", at=later)
    blocked = again.decide_all(drifting(2, start=later + timedelta(hours=2)))[-1]
    assert blocked.outcome == "blocked" and blocked.blocked_by[0].startswith("daily budget: 2 retrain(s)")
    # A day later the budget is free again.
    fresh = RetrainDecider(CFG, ParquetAuditLog(str(tmp_path / "lake")), now=T0 + timedelta(days=2))
    assert list(fresh.retrain_times) == []


def test_a_manual_retrain_is_counted_and_audited():
    decider = RetrainDecider(CFG, InMemoryAuditLog())
    decider.record_retrain("operator asked", at=T0)
    row = decider.audit_log().iloc[-1]
    assert row["outcome"] == "retrain" and list(row["triggers"]) == ["manual"] and list(row["reasons"]) == ["operator asked"]
    assert decider.decide_all(drifting(2, start=T0 + timedelta(minutes=5)))[-1].outcome == "blocked"
    assert decider.status()["retrain_times"] == [T0.isoformat()]


class FindingsOnly:
    """A monitor as the controller sees it: it only reports findings."""

    def __init__(self, findings: list[Findings]):
        self.waiting = list(findings)

    def take_findings(self) -> list[Findings]:
        found, self.waiting = self.waiting, []
        return found


def outcome_for(request) -> RetrainOutcome:
    return RetrainOutcome(snapshot_id="s", new_version="4", champion_before="3", promoted=True, reasons=["better"],
                          train_run_id="r", gate_run_id="g", train_events=10, window_days=None,
                          reason="; ".join(request["reasons"]), trigger=",".join(request["triggers"]))


def test_the_controller_decides_on_the_monitor_findings_and_retrains_once(small_config, tmp_path, sink):
    monitor = FindingsOnly(drifting(3))
    asked: list[dict] = []

    def submit(cfg, request):
        asked.append(request)
        return outcome_for(request)

    controller = RetrainController(small_config, submit=submit, monitor=monitor, ingest=False,
                                   decider=RetrainDecider(CFG, InMemoryAuditLog()),
                                   history_path=tmp_path / "retrains.jsonl")
    record = controller.poll_once()
    assert record is not None and record.error is None and record.promoted
    assert [r["triggers"] for r in asked] == [["drift"]]
    assert controller.decider.outcomes() == ["none", "retrain", "blocked"]
    assert controller.poll_once() is None  # nothing new found: nothing decided, nothing retrained
    assert len(controller.history_path.read_text().splitlines()) == 1
